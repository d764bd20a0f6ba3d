"""Where an image may come from, and a UDF that checks each product's image before anything is embedded.

An image URI is fetched only when its scheme is allowed (a plain path or ``file://``) and, after every
``..`` and symbolic link is resolved, it lies under one of the allowed roots. Nothing is ever fetched over
the network.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import pandas as pd  # at module level: the UDF type hints are resolved in this module's namespace

from jobs.faults import checkpoint, maybe_fail
from schemas import reasons

__all__ = ["ImagePolicy", "Resolved", "inspect_image", "make_inspect_udf", "read_image_bytes", "resolve_image_uri"]

INSPECT_SCHEMA = "image_path string, image_sha256 string, image_reason string, image_detail string"


@dataclass(frozen=True)
class ImagePolicy:
    """Which image URIs may be read."""

    image_root: str | None = None                 # relative URIs resolve against this folder
    allowed_roots: tuple[str, ...] = field(default_factory=tuple)  # besides image_root
    allowed_schemes: tuple[str, ...] = ("", "file")
    max_bytes: int = 32 * 1024 * 1024             # a product photo larger than this is refused unread
    max_pixels: int = 40_000_000

    def roots(self) -> list[str]:
        roots = [self.image_root] if self.image_root else []
        return [os.path.realpath(r) for r in (*roots, *self.allowed_roots)]


@dataclass(frozen=True)
class Resolved:
    path: str | None
    reason: str | None = None
    detail: str | None = None


def resolve_image_uri(uri: str, policy: ImagePolicy) -> Resolved:
    """Map ``uri`` to a real local path under an allowed root, or say why it may not be read."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    if scheme not in policy.allowed_schemes:
        return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, f"scheme {scheme!r} is not allowed")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, f"file URI on host {parsed.netloc!r}")
        path = unquote(parsed.path)
    else:
        path = uri
    if "\x00" in path:
        return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, "NUL byte in path")
    if not os.path.isabs(path):
        if not policy.image_root:
            return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, "relative image URI and no image root")
        path = os.path.join(policy.image_root, path)
    real = os.path.realpath(path)
    for root in policy.roots():
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return Resolved(real)
    return Resolved(None, reasons.IMAGE_URI_NOT_ALLOWED, "resolves outside the allowed image roots")


def read_image_bytes(path: str, max_bytes: int) -> bytes:
    """Read at most ``max_bytes``; raise ``OSError`` for missing files and ``ValueError`` for oversized ones.

    Only regular files are read: a named pipe or a device under the image root would block the task forever
    (or stream without end), so the file is opened without blocking and checked before the first read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
                          "not a regular file (a folder, pipe, socket or device)")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file larger than {max_bytes} bytes")
    return data


def inspect_image(uri: str | None, policy: ImagePolicy) -> tuple[str | None, str | None, str | None, str | None]:
    """``(path, sha256, reason, detail)`` for one URI: a cheap check (header only, no pixel decode)."""
    from PIL import Image

    if uri is None or not uri.strip():
        return None, None, None, None
    res = resolve_image_uri(uri.strip(), policy)
    if res.path is None:
        return None, None, res.reason, res.detail
    try:
        data = read_image_bytes(res.path, policy.max_bytes)
    except ValueError as e:
        return None, None, reasons.IMAGE_UNDECODABLE, str(e)
    except OSError as e:
        return None, None, reasons.IMAGE_UNREADABLE, f"{type(e).__name__}: {e.strerror or e}"
    if not data:
        return None, None, reasons.IMAGE_UNDECODABLE, "empty file"
    try:
        import io

        with warnings.catch_warnings():  # PIL only warns below twice its own limit: our cap decides below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Exception as e:  # not an image format PIL knows, or a broken header
        from PIL import UnidentifiedImageError

        what = "not a recognised image format" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        return None, None, reasons.IMAGE_UNDECODABLE, what
    if w * h > policy.max_pixels:
        return None, None, reasons.IMAGE_UNDECODABLE, f"{w}x{h} pixels exceeds the cap of {policy.max_pixels}"
    return res.path, hashlib.sha256(data).hexdigest(), None, None


def make_inspect_udf(policy: ImagePolicy):
    """An iterator pandas UDF: ``image_uri`` -> struct(image_path, image_sha256, image_reason, image_detail)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(INSPECT_SCHEMA)
    def inspect_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        cols = ["image_path", "image_sha256", "image_reason", "image_detail"]
        for uris in batches:
            checkpoint("inspect_batch")
            maybe_fail("inspect", uris.iloc[0] if len(uris) else None)  # tests only: see jobs.faults
            out = [inspect_image(u if isinstance(u, str) else None, policy) for u in uris]
            yield pd.DataFrame(out, columns=cols, index=uris.index)

    return inspect_images
