"""The lake's blocking cache: the k-means centroids and the lexical space the last blocking used.

    lake/_blocking/<key>.npz    arrays ``centroids``, ``lexical_idf``, ``lexical_centroids`` (numpy, no pickle)

A full match run fits them (a sample of the catalog, k-means, IDF weights) and keeps them here; an incremental run
of the same embedding model, blocking settings and number of cells reads them instead of sampling the catalog
again: three Spark jobs and two k-means fits less on a night that changed 1% of the products, and cells that do
not move between nights. A catalog that grows or shrinks into another number of cells, another model version or
other settings have another key and fit afresh.

The cache only saves work: a missing or unreadable file means a fresh fit, never a failed run. Files are written
atomically; the newest few are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from models.core.io import atomic_write

__all__ = ["ARRAYS", "BlockingCache"]

log = logging.getLogger(__name__)

ARRAYS = ("centroids", "lexical_idf", "lexical_centroids")
KEEP = 4


class BlockingCache:
    """The blocking cache of one lake, for one (model version, blocking settings, cells) key."""

    def __init__(self, lake_root: str | os.PathLike, model_version: str, cfg: Any, cells: int):
        settings = {k: v for k, v in asdict(cfg).items()
                    if k in ("block_size", "sample_per_cell", "kmeans_iters", "seed", "lexical_sample")}
        text = json.dumps({"model_version": model_version, "cells": cells, "settings": settings}, sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:24]
        self.root = Path(lake_root) / "_blocking"
        self.path = self.root / f"{self.key}.npz"

    def read(self) -> dict[str, np.ndarray]:
        """The cached arrays (empty when there are none or the file is unreadable)."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                out = {k: np.asarray(z[k]) for k in z.files if k in ARRAYS}
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001 - a damaged cache costs a fresh fit, never the run
            log.warning("blocking cache %s is unreadable (%s); fitting the blocks again", self.path, e)
            return {}
        if any(a.dtype.kind != "f" or a.ndim not in (1, 2) for a in out.values()):
            log.warning("blocking cache %s holds unexpected arrays; fitting the blocks again", self.path)
            return {}
        return out

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Keep ``arrays`` under this key (best effort: a failure is logged), and only the newest few keys."""
        buf = io.BytesIO()
        kept: dict[str, Any] = {k: np.asarray(v, np.float32) for k, v in arrays.items() if k in ARRAYS}
        np.savez(buf, allow_pickle=False, **kept)
        try:
            atomic_write(self.path, buf.getvalue())
            old = sorted(self.root.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]
            for p in old:
                p.unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not write the blocking cache %s: %s", self.path, e)
