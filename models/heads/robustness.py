"""How the heads hold up when the title carries little: valid products with full titles, titles cut to the brand,
half the words dropped, no title (the photo unchanged), next to text-only and image-only heads, the previously
shipped bundle and a TF-IDF word + character n-gram baseline."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.heads.degrade import degrade, degrade_mixed, known_brands
from models.heads.metrics import accuracy_f1, md_table

__all__ = ["CONDITIONS", "TRAIN_SEED", "VALID_SEED", "DegradedTitles", "calibration_table", "degraded_titles",
           "robustness_table", "tfidf_char_baseline"]

CONDITIONS = {"full": "full titles", "brand": "titles cut to the brand", "half": "half the words dropped",
              "none": "no title"}
TRAIN_SEED = 17     # the degraded copies the heads train on ...
VALID_SEED = 2026   # ... and the degraded valid titles they are measured on: other draws


@dataclass
class DegradedTitles:
    """The degraded train copies (one per product, kind drawn at random) and each valid condition's titles,
    with their text embeddings (``train_txt``; ``valid_txt[condition]``)."""

    train: list[str]
    train_kinds: np.ndarray
    valid: dict[str, list[str]]
    train_txt: np.ndarray
    valid_txt: dict[str, np.ndarray] = field(default_factory=dict)


def _embed_cached(embed: Callable[[list[str]], Any], version: str, titles: list[str], cache_dir: Path
                  ) -> np.ndarray:
    key = hashlib.sha256("\n".join([version, *titles]).encode()).hexdigest()[:16]
    cache = cache_dir / f"heads-titles-{key}.npy"
    if cache.is_file():
        return np.load(cache, allow_pickle=False)
    out = np.concatenate([np.asarray(embed(titles[s: s + 256]), dtype=np.float32)
                          for s in range(0, len(titles), 256)]) if titles else np.zeros((0, 0), np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out, allow_pickle=False)
    return out


def degraded_titles(encoder: Any, train_titles: Sequence[str], valid_titles: Sequence[str], cache_dir: Path,
                    valid_full_txt: np.ndarray) -> DegradedTitles:
    """Degrade the titles (brands read from the train titles only) and embed them with the encoder's text tower
    (cached on disk by content)."""
    brands = known_brands(train_titles)
    train, kinds = degrade_mixed(list(train_titles), TRAIN_SEED, brands)
    valid = {"full": list(valid_titles)}
    valid.update({c: degrade(valid_titles, k, VALID_SEED, brands)
                  for c, k in (("brand", "brand"), ("half", "half"), ("none", "empty"))})
    out = DegradedTitles(train, kinds, valid, _embed_cached(encoder.embed_texts, encoder.version, train, cache_dir))
    out.valid_txt["full"] = valid_full_txt
    for c in ("brand", "half", "none"):
        out.valid_txt[c] = _embed_cached(encoder.embed_texts, encoder.version, valid[c], cache_dir)
    return out


def tfidf_char_baseline(train_text: Sequence[str], train_y: np.ndarray, seed: int = 0
                        ) -> Callable[[Sequence[str]], np.ndarray]:
    """TF-IDF on word 1-2 grams and character 2-5 grams (within words) + logistic regression: the predictor."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    m = train_y >= 0
    model = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True,
                                   max_features=60000)),
        LogisticRegression(C=10.0, max_iter=300, random_state=seed))
    model.fit([t for t, k in zip(train_text, m, strict=True) if k], train_y[m])
    return lambda texts: model.predict(list(texts))


def robustness_table(y: np.ndarray, predictors: dict[str, Callable[[str], np.ndarray]]
                     ) -> tuple[dict[str, dict[str, dict[str, float]]], str]:
    """Accuracy and macro-F1 of each predictor (condition -> predicted class indices, or (N, C) probabilities) in
    every condition. For a predictor of probabilities, each condition's metrics also hold the calibration of its
    top-1 confidence (``ece``, ``confidence``: the mean top-1 probability, beside the accuracy) over the labelled
    rows, and a second table gives them: a head that leans on the photo when the title says nothing should also
    say it is less sure, not keep a full title's confidence."""
    from models.heads.train import expected_calibration_error

    metrics: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    known = y >= 0
    for name, predict in predictors.items():
        metrics[name] = {}
        for c in CONDITIONS:
            out = np.asarray(predict(c))
            if out.ndim == 2:   # probabilities
                metrics[name][c] = accuracy_f1(y, out.argmax(axis=1))
                metrics[name][c]["ece"] = expected_calibration_error(out[known], y[known])
                metrics[name][c]["confidence"] = float(out[known].max(axis=1).mean()) if known.any() else 0.0
            else:
                metrics[name][c] = accuracy_f1(y, out)
        rows.append([name, *[v for c in CONDITIONS for v in (metrics[name][c]["accuracy"],
                                                              metrics[name][c]["macro_f1"])]])
    header = ["model", *[f"{label}: {what}" for label in CONDITIONS.values() for what in ("acc.", "macro-F1")]]
    table = md_table(header, rows)
    calibration = calibration_table(metrics)
    return metrics, table + (f"\n\n{calibration}" if calibration else "")


def calibration_table(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """The calibration part of :func:`robustness_table`'s ``metrics``: per predictor of probabilities, its ECE,
    mean top-1 confidence and accuracy in every condition ('' when no predictor gave probabilities)."""
    rows = [[name, *[v for c in CONDITIONS for v in (m[c]["ece"], m[c]["confidence"], m[c]["accuracy"])]]
            for name, m in metrics.items() if all("ece" in m.get(c, {}) for c in CONDITIONS)]
    if not rows:
        return ""
    header = ["model", *[f"{label}: {what}" for label in CONDITIONS.values()
                         for what in ("ECE", "mean confidence", "acc.")]]
    return ("Calibration of the top-1 confidence in each condition (ECE, 15 equal-width bins; mean top-1 "
            "probability beside the accuracy):\n\n" + md_table(header, rows))
