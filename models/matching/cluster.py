"""Duplicate clusters from matched pairs, in memory: connected components with a guard against giant ones.

The Spark job computes the same clusters at catalog scale (:mod:`jobs.stages.graph`); this version serves the
evaluation and small inputs. Rules, shared by both:

* a cluster is a connected component of the match graph; its id is its smallest product id, so it does not
  change while the membership does not;
* a component larger than ``max_size`` is re-clustered on its pairs scoring at least each of the
  ``strict_thresholds`` in turn, until every part fits (members are marked ``strict:<threshold>``);
  parts still too large after the strictest threshold are dissolved into singletons (``dissolved``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ClusterConfig", "Clusters", "cluster", "connected_components", "pairwise_prf"]


@dataclass(frozen=True)
class ClusterConfig:
    max_size: int = 50
    strict_thresholds: tuple[float, ...] = (0.9, 0.97, 0.99)

    def __post_init__(self):
        if self.max_size < 2:
            raise ValueError(f"ClusterConfig.max_size must be at least 2, got {self.max_size}")
        if list(self.strict_thresholds) != sorted(self.strict_thresholds):
            raise ValueError(f"ClusterConfig.strict_thresholds must increase: {self.strict_thresholds}")


@dataclass(frozen=True)
class Clusters:
    cluster_id: dict[str, str]      # product -> smallest member id
    guard: dict[str, str | None]    # product -> None, "strict:<t>" or "dissolved"

    def sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cluster_id.values():
            out[c] = out.get(c, 0) + 1
        return out


def connected_components(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find: node -> the smallest node of its component."""
    parent = {n: n for n in nodes}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            parent[hi] = lo  # the root is always the smallest id seen in the component
    return {n: find(n) for n in parent}


def cluster(nodes: Iterable[str], a: Sequence[str], b: Sequence[str], score: Sequence[float],
            cfg: ClusterConfig = ClusterConfig()) -> Clusters:
    """Clusters of ``nodes`` given matched pairs ``(a[i], b[i])`` with ``score[i]``."""
    nodes = set(nodes) | set(a) | set(b)
    score = np.asarray(score, np.float64)
    edges = list(zip(a, b, score, strict=True))
    label = connected_components(nodes, ((x, y) for x, y, _ in edges))
    guard: dict[str, str | None] = dict.fromkeys(nodes)
    for t in cfg.strict_thresholds:
        sizes = _sizes(label)
        big = {c for c, s in sizes.items() if s > cfg.max_size}
        if not big:
            break
        members = [n for n in nodes if label[n] in big]
        inner = [(x, y) for x, y, s in edges if s >= t and label[x] in big and label[y] in big and label[x] == label[y]]
        sub = connected_components(members, inner)
        for n in members:
            label[n] = sub[n]
            guard[n] = f"strict:{t:g}"
    sizes = _sizes(label)
    for n in nodes:
        if sizes[label[n]] > cfg.max_size:
            guard[n] = "dissolved"
    for n in nodes:
        if guard[n] == "dissolved":
            label[n] = n
    return Clusters(label, guard)


def _sizes(label: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in label.values():
        out[c] = out.get(c, 0) + 1
    return out


def pairwise_prf(predicted: dict[str, str], truth: dict[str, str]) -> dict[str, float]:
    """Pairwise precision/recall/F1 of a clustering against true clusters over the same items: a pair of
    items counts as predicted when both share a predicted cluster, as true when both share a true one."""
    items = sorted(set(predicted) & set(truth))

    def pairs_in(groups: dict[str, list[str]]) -> int:
        return sum(len(g) * (len(g) - 1) // 2 for g in groups.values())

    by_pred: dict[str, list[str]] = {}
    by_true: dict[str, list[str]] = {}
    by_both: dict[tuple[str, str], list[str]] = {}
    for i in items:
        by_pred.setdefault(predicted[i], []).append(i)
        by_true.setdefault(truth[i], []).append(i)
        by_both.setdefault((predicted[i], truth[i]), []).append(i)
    tp, n_pred, n_true = pairs_in(by_both), pairs_in(by_pred), pairs_in(by_true)
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "true_pairs": float(n_true), "predicted_pairs": float(n_pred)}
