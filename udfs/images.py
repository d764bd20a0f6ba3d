"""Where an image may come from, and a UDF that checks each product's image before anything is embedded.

An image URI is fetched only when its scheme is allowed (a plain path or ``file://``) and, after every
``..`` and symbolic link is resolved, it lies under one of the allowed roots. Nothing is ever fetched over
the network.

The check hashes the image's bytes (a re-shot photo at the same URI is new content). An incremental run
need not read every image again: given what an earlier run saw of the file (its :class:`ImageStat`: size,
modification and change times, inode, and the hash), a file whose ``stat`` is unchanged keeps its hash
without being read, as git's index does. A file that changed less than ``RACY_NS`` before it was hashed is
read again next time (it may have changed again within the file system's time resolution).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pandas as pd  # at module level: the UDF type hints are resolved in this module's namespace

from models.core.faults import checkpoint
from models.core.io import local_path
from schemas import reasons
from udfs.task_faults import maybe_fail

__all__ = ["ImagePolicy", "ImageStat", "PathMemo", "Resolved", "inspect_image", "inspect_image_stat",
           "make_inspect_udf", "read_image_bytes", "resolve_image_uri"]

# What an earlier run saw of an image file: the columns of the stat cache (jobs.lake.image_stats).
STAT_TYPES = {"image_path": "string", "image_size": "bigint", "image_mtime_ns": "bigint", "image_ctime_ns": "bigint",
              "image_ino": "bigint", "image_width": "int", "image_height": "int", "image_sha256": "string",
              "image_checked_ns": "bigint"}
STAT_FIELDS = tuple(STAT_TYPES)
STAT_SCHEMA = ", ".join(f"{f} {t}" for f, t in STAT_TYPES.items())
INSPECT_SCHEMA = f"{STAT_SCHEMA}, image_reason string, image_detail string, image_read boolean"
_PANDAS_TYPE = {"bigint": "Int64", "int": "Int32"}
RACY_NS = 2_000_000_000   # a file changed this close before its hash was taken is hashed again


@dataclass(frozen=True)
class ImagePolicy:
    """Which image URIs may be read."""

    image_root: str | None = None                 # relative URIs resolve against this folder
    allowed_roots: tuple[str, ...] = field(default_factory=tuple)  # besides image_root
    allowed_schemes: tuple[str, ...] = ("", "file")
    max_bytes: int = 32 * 1024 * 1024             # a product photo larger than this is refused unread
    max_pixels: int = 40_000_000
    max_aspect_ratio: float = 20.0                # long side / short side (models.images.DEFAULT_MAX_ASPECT_RATIO)

    def roots(self) -> list[str]:
        roots = [self.image_root] if self.image_root else []
        return [os.path.realpath(r) for r in (*roots, *self.allowed_roots)]


@dataclass(frozen=True)
class Resolved:
    path: str | None
    reason: str | None = None
    detail: str | None = None


class PathMemo:
    """What one batch of URIs resolves repeatedly, resolved once: the policy's real roots, and the real path of
    each folder the URIs name. A file whose folder is known resolves by one ``lstat`` of the file instead of
    ``realpath`` (an ``lstat`` of every component) taken twice: when the folder is a directory that resolves
    without a link loop and the file is not a symbolic link, ``realpath`` of ``folder/name`` is the folder's
    real path joined with the name, as ``realpath`` builds it component by component. A link, a name such as
    ``..``, or any other folder takes the full path (:func:`_resolved`). Made for one batch: a folder link
    changed while the batch runs is seen by the next batch."""

    def __init__(self, policy: ImagePolicy):
        self.roots = policy.roots()
        self._folders: dict[str, str | None] = {}

    def resolved(self, path: str) -> str | None:
        folder, name = os.path.split(path)
        if not name or name in (".", "..") or not folder:
            return _resolved(path)
        if folder not in self._folders:
            real = _resolved(folder)
            # Only a folder that is one: realpath does not follow a link loop (it keeps the rest of the path as
            # it is, and after the loop "loop//sub" even became "/sub"), and stat, which follows links, fails
            # there. Any other folder (missing, a loop, links that do not settle) leaves the whole path to
            # _resolved, as without a memo.
            self._folders[folder] = real if real is not None and os.path.isdir(real) else None
        real_folder = self._folders[folder]
        if real_folder is None:
            return _resolved(path)
        candidate = os.path.join(real_folder, name)
        try:
            if stat.S_ISLNK(os.lstat(candidate).st_mode):
                return _resolved(path)
        except OSError:
            pass   # a missing file: realpath, not strict, keeps its name as it is
        return candidate


def resolve_image_uri(uri: str, policy: ImagePolicy, memo: PathMemo | None = None) -> Resolved:
    """Map ``uri`` to a real local path under an allowed root, or say why it may not be read. ``memo`` (made
    from the same ``policy``) shares the roots and folders of a batch of URIs; the result is the same."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    if scheme not in policy.allowed_schemes:
        return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, f"scheme {scheme!r} is not allowed")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, f"file URI on host {parsed.netloc!r}")
        path = local_path(uri, "image URI")
    else:
        path = uri
    if "\x00" in path:
        return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, "NUL byte in path")
    if not os.path.isabs(path):
        if not policy.image_root:
            return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, "relative image URI and no image root")
        path = os.path.join(policy.image_root, path)
    real = _resolved(path) if memo is None else memo.resolved(path)
    if real is None:
        return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, "its symbolic links do not resolve to one path")
    for root in (policy.roots() if memo is None else memo.roots):
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return Resolved(real)
    return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, "resolves outside the allowed image roots")


def _resolved(path: str, rounds: int = 8) -> str | None:
    """``os.path.realpath`` taken again until it no longer changes (None if it still changes after ``rounds``).
    Where realpath meets a symbolic-link loop it stops following links and only normalises the rest: with a loop
    ``loop`` in the image root, ``loop/../link_out.jpg`` came back as ``<root>/link_out.jpg`` with that link not
    followed, inside the root by its name while the link points outside. The next round follows it."""
    real = os.path.realpath(path)
    for _ in range(rounds):
        again = os.path.realpath(real)
        if again == real:
            return real
        real = again
    return None


@dataclass(frozen=True)
class ImageStat:
    """An image file as an earlier check saw it (the fields of :data:`STAT_SCHEMA`)."""

    image_path: str | None = None
    image_size: int | None = None
    image_mtime_ns: int | None = None
    image_ctime_ns: int | None = None
    image_ino: int | None = None
    image_width: int | None = None
    image_height: int | None = None
    image_sha256: str | None = None
    image_checked_ns: int | None = None

    @classmethod
    def from_json(cls, text: str | None) -> ImageStat | None:
        """The stat of a cache row as JSON (None for none, or for a row that is not one)."""
        if not isinstance(text, str):
            return None
        try:
            values = json.loads(text)
            stat_ = cls(**{f: values.get(f) for f in STAT_FIELDS})
        except (ValueError, TypeError):
            return None
        ints = [getattr(stat_, f) for f, t in STAT_TYPES.items() if t != "string"]
        if stat_.image_sha256 is None or not all(isinstance(v, int) for v in ints):
            return None
        return stat_

    def same_file(self, path: str, st: os.stat_result) -> bool:
        """True when ``st`` of ``path`` shows the file this hash was taken of, unchanged since."""
        return (self.image_sha256 is not None and self.image_checked_ns is not None and path == self.image_path
                and stat.S_ISREG(st.st_mode) and st.st_size == self.image_size
                and st.st_mtime_ns == self.image_mtime_ns and st.st_ctime_ns == self.image_ctime_ns
                and st.st_ino == self.image_ino and st.st_ctime_ns < self.image_checked_ns - RACY_NS)


def read_image_bytes(path: str, max_bytes: int) -> bytes:
    """Read at most ``max_bytes``; raise ``OSError`` for missing files and ``ValueError`` for oversized ones.

    Only regular files are read: a named pipe or a device under the image root would block the task forever
    (or stream without end), so the file is opened without blocking and checked before the first read.
    """
    return _read_with_stat(path, max_bytes)[0]


def _read_with_stat(path: str, max_bytes: int) -> tuple[bytes, os.stat_result | None]:
    """The bytes, and the file's stat when it did not change while it was read (else None)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as f:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EISDIR if stat.S_ISDIR(before.st_mode) else errno.EINVAL,
                          "not a regular file (a folder, pipe, socket or device)")
        data = f.read(max_bytes + 1)
        after = os.fstat(fd)
    if len(data) > max_bytes:
        raise ValueError(f"file larger than {max_bytes} bytes")
    unchanged = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (after.st_size, after.st_mtime_ns,
                                                                             after.st_ctime_ns)
    return data, (after if unchanged and after.st_size == len(data) else None)


def inspect_image(uri: str | None, policy: ImagePolicy) -> tuple[str | None, str | None, str | None, str | None]:
    """``(path, sha256, reason, detail)`` for one URI: a cheap check (header only, no pixel decode)."""
    seen, reason, detail, _ = inspect_image_stat(uri, policy)
    return seen.image_path, seen.image_sha256, reason, detail


def inspect_image_stat(uri: str | None, policy: ImagePolicy, known: ImageStat | None = None,
                       memo: PathMemo | None = None) -> tuple[ImageStat, str | None, str | None, bool]:
    """``(what was seen, reason, detail, read)`` for one URI. The URI is resolved and checked against the
    policy every time (``memo``: see :func:`resolve_image_uri`); when ``known`` describes the same, unchanged
    file its hash is kept without reading the file (``read`` False). The caps of the policy apply to the
    remembered size and dimensions too."""
    from PIL import Image

    none = ImageStat()
    if uri is None or not uri.strip():
        return none, None, None, False
    res = resolve_image_uri(uri.strip(), policy, memo)
    if res.path is None:
        return none, res.reason, res.detail, False
    if known is not None:
        try:
            st = os.stat(res.path)
        except OSError:
            st = None
        if st is not None and known.same_file(res.path, st):
            return _capped(known, policy, read=False)
    checked = time.time_ns()
    try:
        data, st = _read_with_stat(res.path, policy.max_bytes)
    except ValueError as e:
        return none, reasons.IMAGE_UNDECODABLE, str(e), True
    except OSError as e:
        return none, reasons.IMAGE_UNREADABLE, f"{type(e).__name__}: {e.strerror or e}", True
    if not data:
        return none, reasons.IMAGE_UNDECODABLE, "empty file", True
    try:
        import io

        with warnings.catch_warnings():  # PIL only warns below twice its own limit: our cap decides below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Exception as e:  # not an image format PIL knows, or a broken header
        from PIL import UnidentifiedImageError

        what = "not a recognised image format" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        return none, reasons.IMAGE_UNDECODABLE, what, True
    digest = hashlib.sha256(data).hexdigest()
    if st is None:  # the file changed while it was read: the hash stands for this run, the stat is not kept
        seen = ImageStat(image_path=res.path, image_width=w, image_height=h, image_sha256=digest)
    else:
        seen = ImageStat(res.path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, w, h, digest, checked)
    return _capped(seen, policy, read=True)


def _capped(seen: ImageStat, policy: ImagePolicy, read: bool) -> tuple[ImageStat, str | None, str | None, bool]:
    if seen.image_size is not None and seen.image_size > policy.max_bytes:
        return ImageStat(), reasons.IMAGE_UNDECODABLE, f"file larger than {policy.max_bytes} bytes", read
    from models.images import aspect_problem

    w, h = seen.image_width or 0, seen.image_height or 0
    if w * h > policy.max_pixels:
        return ImageStat(), reasons.IMAGE_UNDECODABLE, f"{w}x{h} pixels exceeds the cap of {policy.max_pixels}", read
    shape = aspect_problem(w, h, policy.max_aspect_ratio)
    if shape:
        return ImageStat(), reasons.IMAGE_ASPECT_RATIO, shape, read
    return seen, None, None, read


def make_inspect_udf(policy: ImagePolicy):
    """An iterator pandas UDF: ``(image_uri, known)`` -> struct(:data:`INSPECT_SCHEMA`), where ``known`` is the
    JSON of a :data:`STAT_SCHEMA` struct from an earlier run (null when there is none)."""
    from pyspark.sql.functions import pandas_udf

    cols = [*STAT_FIELDS, "image_reason", "image_detail", "image_read"]

    @pandas_udf(INSPECT_SCHEMA)
    def inspect_images(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for uris, known in batches:
            checkpoint("inspect_batch")
            maybe_fail("inspect", uris.iloc[0] if len(uris) else None)  # tests only: see models.core.faults
            out, memo = [], PathMemo(policy)
            for uri, k in zip(uris, known, strict=True):
                seen, reason, detail, read = inspect_image_stat(uri if isinstance(uri, str) else None, policy,
                                                                ImageStat.from_json(k), memo)
                out.append((*(getattr(seen, f) for f in STAT_FIELDS), reason, detail, read))
            # Column by column: a frame built from the rows would turn int columns with a null into float64,
            # which cannot hold a time in nanoseconds exactly.
            yield pd.DataFrame({c: pd.array([r[i] for r in out], dtype=_PANDAS_TYPE.get(STAT_TYPES.get(c), object))
                                for i, c in enumerate(cols)}, index=uris.index)

    return inspect_images
