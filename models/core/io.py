"""File plumbing shared by every layer: the atomic write, the ``file://`` parser and the project's cache folder
(standard library only)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from models.core.errors import CatalogEnrichError

__all__ = ["UnsupportedURI", "atomic_write", "cache_root", "local_path"]


class UnsupportedURI(CatalogEnrichError, ValueError):
    """A location that is not on the local file system (an object store, a web address)."""


def cache_root() -> Path:
    """The project's cache folder: ``$CATALOG_ENRICH_CACHE``, else ``catalog-enrich`` in the user's cache
    directory (``$XDG_CACHE_HOME`` or ``~/.cache``). What lives there can always be made again."""
    explicit = os.environ.get("CATALOG_ENRICH_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "catalog-enrich"


def _umask() -> int:
    mask = os.umask(0o022)   # reading the umask means setting it: done once, at import, not in a writer thread
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half of it.

    The bytes go to a temporary file beside ``path`` (same file system), are flushed to disk, and replace
    ``path`` in one ``os.replace``; the temporary file is removed when anything fails. Text is written as
    UTF-8; the file gets the mode a plain ``open`` would give it (the process umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)   # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def local_path(uri: str | os.PathLike[str], what: str = "path") -> str:
    """The local file system path ``uri`` names: a ``file://`` URI decoded, a plain path as it is.

    Raises :class:`UnsupportedURI` (a ``ValueError``) naming ``what`` and the URI for any other scheme (object
    stores are not supported).
    """
    s = str(uri)
    parsed = urlparse(s)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and "://" not in s):   # C:\... is a drive, not a scheme
        return s
    raise UnsupportedURI(f"{what} {s!r}: only local directories and file:// URIs are supported")
