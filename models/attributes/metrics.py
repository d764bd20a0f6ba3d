"""Precision, recall and F1 over attribute-value pairs, as in ExtractGPT (Brinkmann et al., 2023/2024).

Every (product, attribute) pair of the gold set is one decision, counted in one of five cells:

* ``nn`` gold n/a, nothing predicted  (a true negative: counted nowhere)
* ``nv`` gold n/a, a value predicted  (false positive)
* ``vn`` gold has values, nothing predicted  (false negative)
* ``vc`` a predicted value that is one of the gold values  (true positive)
* ``vw`` a wrong value  (both a false positive and a false negative)

``precision = vc / (nv + vc + vw)``, ``recall = vc / (vn + vc + vw)``, F1 their harmonic mean; micro over all
pairs, macro as the mean over (category, attribute) groups that have anything to score. Values are compared
exactly after stripping surrounding whitespace (the protocol's rule; case counts). Attributes predicted for a
product but absent from its gold set are not scored, as in the protocol.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Counts", "Scores", "judge", "score_predictions"]


@dataclass
class Counts:
    nn: int = 0
    nv: int = 0
    vn: int = 0
    vc: int = 0
    vw: int = 0

    def add(self, cell: str) -> None:
        setattr(self, cell, getattr(self, cell) + 1)

    def merge(self, other: Counts) -> None:
        for k in ("nn", "nv", "vn", "vc", "vw"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    @property
    def precision(self) -> float:
        d = self.nv + self.vc + self.vw
        return self.vc / d if d else 0.0

    @property
    def recall(self) -> float:
        d = self.vn + self.vc + self.vw
        return self.vc / d if d else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def scored(self) -> int:
        return self.nv + self.vn + self.vc + self.vw


@dataclass(frozen=True)
class Scores:
    micro: Counts
    macro_precision: float
    macro_recall: float
    macro_f1: float
    groups: dict[tuple[str, str], Counts]   # (category, attribute) -> counts


def judge(prediction: str | None, gold: Sequence[str]) -> str:
    """The cell of one decision; ``gold`` empty (or only 'n/a') means the attribute is absent."""
    targets = [g.strip() for g in gold if g is not None and g.strip() and g.strip() != "n/a"]
    pred = prediction.strip() if isinstance(prediction, str) else None
    if pred in ("", "n/a"):
        pred = None
    if not targets:
        return "nn" if pred is None else "nv"
    if pred is None:
        return "vn"
    return "vc" if pred in targets else "vw"


def score_predictions(categories: Sequence[str], golds: Sequence[Mapping[str, Sequence[str]]],
                      predictions: Sequence[Mapping[str, str | None]]) -> Scores:
    """Score one dataset: per product its category, gold (attribute -> values) and prediction (attribute -> value)."""
    if not len(categories) == len(golds) == len(predictions):
        raise ValueError(f"categories, golds and predictions differ in length: {len(categories)}, {len(golds)}, "
                         f"{len(predictions)}")
    groups: dict[tuple[str, str], Counts] = defaultdict(Counts)
    for category, gold, pred in zip(categories, golds, predictions, strict=True):
        for attribute, values in gold.items():
            groups[(category, attribute)].add(judge(pred.get(attribute), values))
    micro = Counts()
    for c in groups.values():
        micro.merge(c)
    scored = [c for c in groups.values() if c.scored]
    n = len(scored)
    return Scores(
        micro=micro,
        macro_precision=sum(c.precision for c in scored) / n if n else 0.0,
        macro_recall=sum(c.recall for c in scored) / n if n else 0.0,
        macro_f1=sum(c.f1 for c in scored) / n if n else 0.0,
        groups=dict(groups),
    )
