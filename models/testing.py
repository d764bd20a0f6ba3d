"""A fake encoder for testing the Spark plumbing without a real model.

Its embeddings are deterministic functions of the input (a hash of the title; the mean colour of the
image), and it logs every load and every batch to files under a folder named in the model reference
(``fake:/path/to/log-dir``), so tests can count loads per worker process and batch sizes.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from models.images import to_model_array
from models.refs import ModelRef

__all__ = ["FakeEncoder", "NanEncoder", "load_fake_encoder", "load_nan_encoder", "read_log"]

DIM = 8


class FakeEncoder:
    image_size = 8
    context_length = 16

    def __init__(self, log_dir: str | None):
        self.log_dir = log_dir
        self.ref = ModelRef("fake", "fake", version="fake-1")
        self._log("loads", "load")

    @property
    def version(self) -> str:
        return self.ref.version

    def _log(self, kind: str, line: str) -> None:
        if self.log_dir:
            with open(os.path.join(self.log_dir, f"{kind}-{os.getpid()}.log"), "a") as f:
                f.write(line + "\n")

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)

    def embed_texts(self, texts):
        self._log("batches", f"text {len(texts)}")
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:DIM], dtype=np.uint8) for t in texts]
        return self._unit(np.stack(rows).astype(np.float32) + 1.0)

    def preprocess(self, img):
        return to_model_array(img, self.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def embed_pixels(self, pixels):
        self._log("batches", f"image {len(pixels)}")
        mean = pixels.mean(axis=(2, 3))  # (n, 3)
        return self._unit(np.concatenate([mean, np.ones((len(pixels), DIM - 3), np.float32)], axis=1))


def load_fake_encoder(model_ref: str, device: str | None = None, precision: str | None = None) -> FakeEncoder:
    log_dir = model_ref.split(":", 1)[1] if model_ref.startswith("fake:") else None
    return FakeEncoder(log_dir or None)


class NanEncoder(FakeEncoder):
    """A broken model: every embedding it makes is NaN (as weights replaced by NaNs would give)."""

    def __init__(self, log_dir: str | None):
        super().__init__(log_dir)
        self.ref = ModelRef("fake", "fake-nan", version="fake-nan-1")

    def embed_texts(self, texts):
        return np.full_like(super().embed_texts(texts), np.nan)

    def embed_pixels(self, pixels):
        return np.full_like(super().embed_pixels(pixels), np.nan)


def load_nan_encoder(model_ref: str, device: str | None = None, precision: str | None = None) -> NanEncoder:
    log_dir = model_ref.split(":", 1)[1] if model_ref.startswith("fake:") else None
    return NanEncoder(log_dir or None)


def read_log(log_dir: str, kind: str) -> dict[int, list[str]]:
    """``{pid: lines}`` for the ``loads`` or ``batches`` log."""
    out: dict[int, list[str]] = {}
    for name in os.listdir(log_dir):
        if name.startswith(kind + "-"):
            with open(os.path.join(log_dir, name)) as f:
                out[int(name.split("-")[1].split(".")[0])] = f.read().split("\n")[:-1]
    return out
