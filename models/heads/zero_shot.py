"""Zero-shot classification against category names: the fallback when no trained head fits the catalog.

Each label is embedded with the text tower once; a product's score for a label is the cosine between its
embedding and the label's, turned into a distribution with a fixed scale (CLIP's logit scale at inference).
Label sets: the catalog's own seller categories, a text file with one category per line, or the Google
product taxonomy (a Parquet file with ``path_en``, ``path_de``, ... columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.heads.bundle import softmax

__all__ = ["ZeroShotLabels", "label_prompt", "load_label_names", "zero_shot_probs"]

SCALE = 50.0


def label_prompt(label: str) -> str:
    """The text embedded for a label: the leaf named first, then its parents (``Shirts, Topwear, Apparel``).

    Seller titles name the product type, which is the leaf; the parents disambiguate (``Cases`` of what).
    """
    parts = [p.strip() for p in label.replace("/", ">").split(">") if p.strip()]
    return ", ".join(reversed(parts)) if parts else label


@dataclass(frozen=True)
class ZeroShotLabels:
    labels: tuple[str, ...]
    embeddings: np.ndarray        # (L, D) L2-normalised
    source: str                   # e.g. "catalog categories", "google taxonomy (en)"

    @classmethod
    def build(cls, labels: list[str], embed_texts, source: str) -> ZeroShotLabels:
        if not labels:
            raise ValueError("zero-shot classification needs at least one category name")
        uniq = tuple(dict.fromkeys(labels))
        emb = np.asarray(embed_texts([label_prompt(x) for x in uniq]), dtype=np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return cls(uniq, emb, source)


def zero_shot_probs(queries: np.ndarray, labels: ZeroShotLabels, scale: float = SCALE) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return softmax(scale * (q @ labels.embeddings.T))


def load_label_names(path: str | Path, language: str = "en") -> tuple[list[str], str]:
    """Category names from a taxonomy file: Parquet with a ``path_<language>`` (or ``category``) column, or
    text with one name per line. Returns (names, description of the source)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"taxonomy {p} does not exist")
    if p.suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(p)
        for col in (f"path_{language}", "category", "path_en"):
            if col in df.columns:
                names = [str(x) for x in df[col].dropna().tolist() if str(x).strip()]
                return names, f"{p.name} ({col})"
        raise ValueError(f"taxonomy {p} has neither a path_{language} nor a category column: {list(df.columns)}")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()
             and not line.startswith("#")]
    return names, p.name
