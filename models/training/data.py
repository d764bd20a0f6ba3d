"""Training data in memory: images decoded once into a uint8 array, titles, group ids and category labels."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.images import ImageDecodeError, box_hw, center_square, decode_image, fit_box

__all__ = ["TrainData", "decode_fit", "decode_square", "decode_all", "encode_labels", "group_ids", "split_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainData:
    """Aligned arrays for N products. ``groups`` (N, K): ids whose equality marks a false negative (-1: none);
    ``labels`` (N,): category index (-1: unknown)."""

    pixels: np.ndarray            # (N, H, W, 3) uint8
    titles: tuple[str, ...]
    groups: np.ndarray | None = None
    labels: np.ndarray | None = None
    n_classes: int = 0

    def __post_init__(self) -> None:
        n = len(self.titles)
        if self.pixels.ndim != 4 or self.pixels.shape[0] != n or self.pixels.dtype != np.uint8:
            raise ValueError(f"TrainData.pixels must be a uint8 (N, H, W, 3) array with N={n}, "
                             f"got {self.pixels.dtype} {self.pixels.shape}")
        for name in ("groups", "labels"):
            arr = getattr(self, name)
            if arr is not None and arr.shape[0] != n:
                raise ValueError(f"TrainData.{name} has {arr.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.titles)

    def subset(self, idx: np.ndarray) -> TrainData:
        return TrainData(self.pixels[idx], tuple(self.titles[i] for i in idx),
                         None if self.groups is None else self.groups[idx],
                         None if self.labels is None else self.labels[idx], self.n_classes)


def split_of(key: str, valid_percent: int = 10) -> str:
    """'valid' or 'train', from a hash of the product id: stable across runs, machines and catalog order."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100
    return "valid" if bucket < valid_percent else "train"


def decode_square(data: bytes, size: int) -> np.ndarray:
    """Decode and shortest-side resize + centre crop to (size, size, 3) uint8.

    The same geometry as :func:`models.images.to_model_array` (which the encoders use at inference), kept in
    uint8 so that a whole catalog fits in memory; normalisation happens per batch.
    """
    img = decode_image(data, target_size=size)
    return np.asarray(center_square(img, size), dtype=np.uint8)


def decode_fit(data: bytes, hw: tuple[int, int]) -> np.ndarray:
    """Decode and fit the whole photo into (H, W) on white, uint8 (H, W, 3): the ``longest`` geometry of
    :func:`models.images.to_model_array`."""
    img = decode_image(data, target_size=max(hw))
    return np.asarray(fit_box(img, hw[0], hw[1]), dtype=np.uint8)


def decode_all(paths: Sequence[str | Path], size: int | tuple[int, int],
               read: Callable[[str | Path], bytes] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image; returns ``(pixels, ok)`` where ``ok`` flags the images that decoded. ``size``: a side
    (centre square, :func:`decode_square`) or an (H, W) box (the whole photo fitted, :func:`decode_fit`)."""
    read = read or (lambda p: Path(p).read_bytes())
    hw = box_hw(size)
    out = np.zeros((len(paths), hw[0], hw[1], 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        try:
            out[i] = decode_square(read(p), size) if isinstance(size, int) else decode_fit(read(p), hw)
            ok[i] = True
        except (OSError, ImageDecodeError) as e:
            log.warning("image %s skipped: %s", p, e)
    return out, ok


def group_ids(values: Sequence[object]) -> np.ndarray:
    """Dense int ids for ``values`` (None/empty -> -1), e.g. duplicate-cluster ids or normalised titles."""
    index: dict[object, int] = {}
    out = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if v is None or v == "" or (isinstance(v, float) and np.isnan(v)):
            continue
        out[i] = index.setdefault(v, len(index))
    return out


def encode_labels(values: Sequence[object], classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Category strings -> indices into ``classes`` (built sorted from ``values`` when not given); unknown -> -1."""
    if classes is None:
        classes = sorted({str(v) for v in values if v is not None and v == v and str(v)})
    pos = {c: i for i, c in enumerate(classes)}
    labels = np.array([pos.get(str(v), -1) if v is not None else -1 for v in values], dtype=np.int64)
    return labels, list(classes)
