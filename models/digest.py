"""sha256 of files: model checksums, model versions and training-data snapshots all use these."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["sha256_file", "sha256_files"]

_CHUNK = 1 << 20


def _feed(h, path: Path, also: Iterable[Any] = ()) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            for other in also:
                other.update(chunk)


def sha256_file(path: str | Path, also: Iterable[Any] = ()) -> str:
    """The file's sha256; ``also``: more hash objects fed the same bytes (one read for several digests)."""
    h = hashlib.sha256()
    _feed(h, Path(path), tuple(also))
    return h.hexdigest()


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One digest over several files, in name order, each preceded by its name."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        _feed(h, p)
    return h.hexdigest()
