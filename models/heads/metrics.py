"""Metrics, the plain baselines the heads are compared with, and markdown tables for the evaluation report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["accuracy_f1", "md_table", "tfidf_baseline"]


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in ``y_true`` (items with label -1 are skipped)."""
    from sklearn.metrics import f1_score

    m = y_true >= 0
    yt, yp = y_true[m], y_pred[m]
    return {"accuracy": float((yt == yp).mean()) if len(yt) else float("nan"),
            "macro_f1": float(f1_score(yt, yp, labels=np.unique(yt), average="macro", zero_division=0)),
            "n": int(len(yt))}


def tfidf_baseline(train_text: Sequence[str], train_y: np.ndarray, test_text: Sequence[str]) -> np.ndarray:
    """TF-IDF (word 1-2 grams) + logistic regression on titles: the plain text baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    m = train_y >= 0
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    xtr = vec.fit_transform([t for t, k in zip(train_text, m, strict=True) if k])
    clf = LogisticRegression(C=10.0, max_iter=1000).fit(xtr, train_y[m])
    return clf.predict(vec.transform(list(test_text)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.3f}"
    return str(v)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
