"""A small versioned store of pair scorers: ``<root>/<version>/scorer.json`` plus a checksummed manifest.

Layout (the same conventions as the encoder store, :mod:`models.store`)::

    <root>/current                      one line: the version the enrich job uses
    <root>/<version>/scorer.json        the scorer (:class:`models.matching.scorer.PairScorer`, JSON)
    <root>/<version>/manifest.json      sha256 of scorer.json, training data, metrics, code version

Loading verifies the checksum and the digest in the version name, and refuses anything but the listed JSON (never
a pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models.core.io import atomic_write
from models.digest import sha256_file
from models.matching.features import FEATURES
from models.matching.scorer import PairScorer
from models.store import (
    ModelIntegrityError,
    check_version_name,
    code_version,
    current_version,
    unused_version,
    version_dir,
)

__all__ = ["DEFAULT_SCORER_STORE", "SCORER_FILE", "load_scorer", "promote_scorer", "resolve_scorer", "save_scorer"]

DEFAULT_SCORER_STORE = Path(__file__).resolve().parents[1] / "store" / "scorers"
SCORER_FILE = "scorer.json"
MANIFEST_FILE = "manifest.json"




def save_scorer(root: Path, scorer: PairScorer, *, name: str = "pair-scorer", training_data: str = "",
                metrics: dict[str, Any] | None = None) -> str:
    """Write a new version and return its id (``<name>-<UTC time>-<digest>``); ``current`` is not touched."""
    text = scorer.to_json() + "\n"
    created = datetime.now(timezone.utc)
    root.mkdir(parents=True, exist_ok=True)
    version = unused_version(root, f"{name}-{created:%Y%m%dT%H%M%S}-{hashlib.sha256(text.encode()).hexdigest()[:10]}")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{version}."))
    (tmp / SCORER_FILE).write_text(text)
    manifest = {"version": version, "name": name, "created_at": created.isoformat(timespec="seconds"),
                "code_version": code_version(), "training_data": training_data, "metrics": metrics or {},
                "files": {SCORER_FILE: sha256_file(tmp / SCORER_FILE)}}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, version_dir(root, version))
    return version


def promote_scorer(root: Path, version: str) -> None:
    """Make ``version`` the one the enrich job loads (after verifying it)."""
    load_scorer(version_dir(root, version))
    atomic_write(root / "current", version + "\n")


def resolve_scorer(ref: str | os.PathLike | None = None) -> Path:
    """The version folder for ``ref``: ``None``/``"current"`` (the shipped store's current version), a version
    id of the shipped store, a version folder, or a store root (its current version)."""
    if ref is None or str(ref) in ("", "current", "default"):
        root, name = DEFAULT_SCORER_STORE, current_version(DEFAULT_SCORER_STORE)
        if name is None:
            raise ModelIntegrityError(f"the scorer store {root} has no current version")
        return version_dir(root, name)
    p = Path(ref).expanduser()
    if (p / MANIFEST_FILE).is_file():
        return p
    if (p / "current").is_file():
        name = current_version(p)
        if name is None:
            raise ModelIntegrityError(f"the scorer store {p} has an empty current pointer")
        return version_dir(p, name)
    if "/" not in str(ref) and (DEFAULT_SCORER_STORE / str(ref) / MANIFEST_FILE).is_file():
        return DEFAULT_SCORER_STORE / str(ref)
    raise ModelIntegrityError(f"no pair scorer at {ref!r} (expected a version folder with {MANIFEST_FILE}, "
                              f"a store root with a current pointer, or a version id of {DEFAULT_SCORER_STORE})")


def load_scorer(ref: str | os.PathLike | None = None) -> PairScorer:
    """Verify and load a scorer (see :func:`resolve_scorer` for ``ref``)."""
    vdir = resolve_scorer(ref)
    try:
        manifest = json.loads((vdir / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelIntegrityError(f"{vdir / MANIFEST_FILE}: unreadable manifest: {e}") from None
    files = manifest.get("files", {})
    extra = sorted(p.name for p in vdir.iterdir() if p.name not in files and p.name != MANIFEST_FILE)
    if extra:
        raise ModelIntegrityError(f"{vdir}: files not in the manifest (refused): {', '.join(extra)}")
    if files.get(SCORER_FILE) is None:
        raise ModelIntegrityError(f"{vdir / MANIFEST_FILE} lists no checksum for {SCORER_FILE}")
    path = vdir / SCORER_FILE
    if not path.is_file() or sha256_file(path) != files[SCORER_FILE]:
        raise ModelIntegrityError(f"{path}: missing, or its sha256 does not match the manifest")
    check_version_name(vdir, manifest, hashlib.sha256(path.read_bytes()).hexdigest())   # the name's digest too
    return PairScorer.from_json(path.read_text(), version=manifest.get("version", vdir.name),
                                expected_features=FEATURES)
