"""Evaluation of an encoder on a held-out split: cross-modal retrieval and linear probes.

Used by the shipped-model training script and by ``jobs/retrain.py`` (champion vs candidate on the same split).

* Retrieval on a fixed gallery (the first ``gallery_size`` held-out items, in product-id order): image->text and
  text->image recall@1 and recall@10. A hit is any gallery item whose title equals the query's own title:
  identical titles have identical text embeddings, so which of them ranks first is arbitrary.
* Linear probe: multinomial logistic regression on standardised embeddings of up to ``probe_train`` training
  items, accuracy on all held-out items with a label; image, text and fused (normalised sum) embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.training.data import TrainData

__all__ = ["EvalConfig", "SelectionMetric", "embed_data", "evaluate", "linear_probe", "recall_at_k"]

log = logging.getLogger(__name__)


class EncoderLike(Protocol):
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EvalConfig:
    gallery_size: int = 1000
    probe_train: int = 5000
    probe_c: float = 1.0
    batch_size: int = 256
    seed: int = 0


@dataclass(frozen=True)
class SelectionMetric:
    """The metric that decides promotion: mean recall@10 over both retrieval directions."""

    name: str = "mean_recall@10"

    def __call__(self, metrics: dict[str, float]) -> float:
        return 0.5 * (metrics["i2t_recall@10"] + metrics["t2i_recall@10"])


def embed_data(encoder: EncoderLike, data: TrainData, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) L2-normalised embeddings of every item."""
    mean = np.asarray(encoder.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(encoder.std, dtype=np.float32).reshape(1, 3, 1, 1)
    imgs, txts = [], []
    for s in range(0, len(data), batch_size):
        px = data.pixels[s: s + batch_size].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        imgs.append(encoder.embed_pixels(np.ascontiguousarray((px - mean) / std)))
        txts.append(encoder.embed_texts(list(data.titles[s: s + batch_size])))
    return np.concatenate(imgs), np.concatenate(txts)


def recall_at_k(queries: np.ndarray, gallery: np.ndarray, keys: list[str], ks: tuple[int, ...]) -> dict[int, float]:
    """Fraction of queries i with an item of key ``keys[i]`` among the top-k gallery items."""
    sims = queries @ gallery.T
    order = np.argsort(-sims, axis=1, kind="stable")
    key_ids = np.unique(np.asarray(keys), return_inverse=True)[1]
    ranked = key_ids[order]
    hit = ranked == key_ids[:, None]
    return {k: float(hit[:, :k].any(axis=1).mean()) for k in ks}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 c: float = 1.0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def _fuse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    v = a + b
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def evaluate(encoder: Any, train: TrainData, valid: TrainData, cfg: EvalConfig = EvalConfig()) -> dict[str, float]:
    """Retrieval and probe metrics of ``encoder`` on ``valid`` (the probe is fitted on ``train``)."""
    metrics: dict[str, float] = {}
    g = valid.subset(np.arange(min(cfg.gallery_size, len(valid))))
    img, txt = embed_data(encoder, g, cfg.batch_size)
    keys = [" ".join(t.lower().split()) for t in g.titles]
    for direction, (q, gal) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        for k, r in recall_at_k(q, gal, keys, (1, 10)).items():
            metrics[f"{direction}_recall@{k}"] = r
    metrics["gallery_size"] = float(len(g))
    has_labels = train.labels is not None and valid.labels is not None
    if has_labels and len(np.unique(train.labels[train.labels >= 0])) >= 2 and bool((valid.labels >= 0).any()):
        rng = np.random.default_rng(cfg.seed)
        tr_idx = np.flatnonzero(train.labels >= 0)
        tr_idx = np.sort(rng.permutation(tr_idx)[: cfg.probe_train])
        va_idx = np.flatnonzero(valid.labels >= 0)
        tr_img, tr_txt = embed_data(encoder, train.subset(tr_idx), cfg.batch_size)
        va_img, va_txt = embed_data(encoder, valid.subset(va_idx), cfg.batch_size)
        ytr, yva = train.labels[tr_idx], valid.labels[va_idx]
        feats = {"image": (tr_img, va_img), "text": (tr_txt, va_txt),
                 "fused": (_fuse(tr_img, tr_txt), _fuse(va_img, va_txt))}
        for name, (a, b) in feats.items():
            metrics[f"probe_{name}_acc"] = linear_probe(a, ytr, b, yva, cfg.probe_c)
        metrics["probe_train_items"], metrics["probe_valid_items"] = float(len(tr_idx)), float(len(va_idx))
    log.info("evaluation: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics
