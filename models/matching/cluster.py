"""Duplicate clusters from matched pairs, in memory: connected components with a guard against giant ones.

The Spark job computes the same clusters at catalog scale (:mod:`jobs.stages.graph`); this version serves the
evaluation and small inputs. Rules, shared by both:

* only **coherent** matches link products: pairs scoring at least ``min_score`` that are, for both products,
  within ``margin`` of their best match (mutual best match within a margin: a near-identical neighbour, one
  model digit apart, scores below the true duplicate and is left out);
* a cluster is a connected component of those links; its id is its smallest product id, so it does not
  change while the membership does not;
* a component larger than ``max_size`` is re-clustered on its pairs scoring at least each of the
  ``strict_thresholds`` in turn, until every part fits (members are marked ``strict:<threshold>``);
  parts still too large after the strictest threshold are dissolved into singletons (``dissolved``);
* each component is then split by average linkage (``linkage``): two parts merge only while the mean score
  over all their cross pairs (a pair that did not match counts 0) reaches ``linkage``, so a chain a-b-c
  whose ends do not match each other does not become one cluster. With ``complete_groups``, a merge that
  grows a group of two or more also needs every cross pair to be a match: two single products still pair at
  ``linkage``, best pair first (a greedy one-to-one matching, what most catalogs' duplicates are: one listing
  per shop), and a third listing joins only when it matches every member.

The guard bounds the components, so the split costs at most ``max_size`` cubed per component: linear in
the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClusterConfig", "Clusters", "average_linkage", "cluster", "coherent_edges", "connected_components",
           "pairwise_prf"]


@dataclass(frozen=True)
class ClusterConfig:
    max_size: int = 50
    strict_thresholds: tuple[float, ...] = (0.9, 0.97, 0.99)
    # The settings below were chosen on the dev parts of whole catalogs with the shipped cross-encoder's stored
    # matches (jobs.catalog_eval, EVALUATION.md), among those that keep the sample catalog's planted groups of
    # three whole and still split chains of neighbours: a margin under 0.4 split those groups with the previous
    # cross-encoder. complete_groups raised the mean dev F1 of four catalogs from 0.471 to 0.495; a stricter rule
    # (a mean of 0.8 for a growing group) scored 0.503 but splits a planted group whose pairs score 0.97, 0.64 and
    # 0.58. The linkage was put under the cross-encoder's threshold (0.31 on 2026-12-04) so that two single
    # listings that match can always pair; complete_groups keeps chains out of groups. The cross-encoder shipped
    # later that day has a threshold of 0.20: a linkage of 0.2, 0.3 or 0.4 on its dev matches gave the same
    # mean dev F1 (0.6134, 0.6134, 0.6137), so the linkage stayed 0.3 (a match under 0.3 does not pair alone).
    min_score: float = 0.0              # matches scoring less link nothing (0: every stored match)
    margin: float | None = 0.4          # mutual best match within this margin (None: every match links)
    linkage: float | None = 0.3         # average-linkage split of each component (None: components as they are)
    complete_groups: bool = True        # a merge growing a group of 2+ needs every cross pair matched

    def __post_init__(self):
        if self.max_size < 2:
            raise ValueError(f"ClusterConfig.max_size must be at least 2, got {self.max_size}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"ClusterConfig.min_score must lie in [0, 1], got {self.min_score}")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"ClusterConfig.margin must be None or >= 0, got {self.margin}")
        if self.linkage is not None and not 0.0 < self.linkage <= 1.0:
            raise ValueError(f"ClusterConfig.linkage must be None or in (0, 1], got {self.linkage}")
        if list(self.strict_thresholds) != sorted(self.strict_thresholds):
            raise ValueError(f"ClusterConfig.strict_thresholds must increase: {self.strict_thresholds}")


@dataclass(frozen=True)
class Clusters:
    cluster_id: dict[str, str]      # product -> smallest member id
    guard: dict[str, str | None]    # product -> None, "strict:<t>" or "dissolved"
    # product -> its component of the coherent matches, before the guard and the split; only the products with
    # a coherent match (what the Spark components hold)
    linked: dict[str, str] = field(default_factory=dict)

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


def coherent_edges(a: Sequence[str], b: Sequence[str], score: Sequence[float], min_score: float = 0.0,
                   margin: float | None = None) -> np.ndarray:
    """Which pairs link products: ``score >= min_score`` and, with a ``margin``, ``score`` within ``margin`` of
    the best linking score of both ``a`` and ``b``."""
    score = np.asarray(score, np.float64)
    keep = score >= min_score
    if margin is None or not keep.any():
        return keep
    best: dict[str, float] = {}
    for x, y, s in zip(np.asarray(a)[keep], np.asarray(b)[keep], score[keep], strict=True):
        best[x] = max(best.get(x, -1.0), s)
        best[y] = max(best.get(y, -1.0), s)
    # The same tolerance as the Spark job's float comparison: scores are probabilities, ties are exact.
    lo_a = np.asarray([best.get(x, 2.0) for x in a]) - margin
    lo_b = np.asarray([best.get(y, 2.0) for y in b]) - margin
    return keep & (score >= lo_a) & (score >= lo_b)


def average_linkage(nodes: Sequence[str], a: Sequence[str], b: Sequence[str], score: Sequence[float],
                    threshold: float, complete_groups: bool = False) -> dict[str, str]:
    """Agglomerative clustering of one component: repeatedly merge the two parts with the highest mean score
    over all their cross pairs (missing pairs count 0) while it is at least ``threshold``; with
    ``complete_groups`` a merge where either part already holds two or more products also needs every cross
    pair to be a match. Node -> smallest member of its part. Deterministic: ties go to the parts of the smallest
    ids."""
    order = sorted(set(nodes) | set(a) | set(b))
    pos = {n: i for i, n in enumerate(order)}
    w = np.zeros((len(order), len(order)))
    for x, y, s in zip(a, b, score, strict=True):
        if x != y:
            w[pos[x], pos[y]] = w[pos[y], pos[x]] = max(w[pos[x], pos[y]], float(s))
    linked = w > 0   # parts whose every cross pair is a match
    size = np.ones(len(order))
    members = [[n] for n in order]
    alive = list(range(len(order)))
    while len(alive) > 1:
        pair_size = np.outer(size[alive], size[alive])
        sub = w[np.ix_(alive, alive)] / pair_size
        np.fill_diagonal(sub, -1.0)
        if complete_groups:   # a group grows only by listings that match every member
            sub[(pair_size > 1) & ~linked[np.ix_(alive, alive)]] = -1.0
        i, j = np.unravel_index(int(np.argmax(sub)), sub.shape)
        if sub[i, j] < threshold:
            break
        p, q = sorted((alive[i], alive[j]))
        w[p] += w[q]
        w[:, p] += w[:, q]
        linked[p] &= linked[q]
        linked[:, p] &= linked[:, q]
        size[p] += size[q]
        members[p] += members[q]
        alive.remove(q)
    return {n: min(members[k]) for k in alive for n in members[k]}


def cluster(nodes: Iterable[str], a: Sequence[str], b: Sequence[str], score: Sequence[float],
            cfg: ClusterConfig = ClusterConfig()) -> Clusters:
    """Clusters of ``nodes`` given matched pairs ``(a[i], b[i])`` with ``score[i]``."""
    nodes = set(nodes) | set(a) | set(b)
    score = np.asarray(score, np.float64)
    keep = coherent_edges(a, b, score, cfg.min_score, cfg.margin)
    edges = [e for e, k in zip(zip(a, b, score, strict=True), keep, strict=True) if k]
    label = connected_components(nodes, ((x, y) for x, y, _ in edges))
    linked = {n: label[n] for x, y, _ in edges for n in (x, y)}
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
    if cfg.linkage is not None:
        label = _split(label, edges, cfg.linkage, cfg.complete_groups)
    return Clusters(label, guard, linked)


def _split(label: dict[str, str], edges: list[tuple[str, str, float]], threshold: float,
           complete_groups: bool = False) -> dict[str, str]:
    """Each component split by :func:`average_linkage` on its own links."""
    inner: dict[str, list[tuple[str, str, float]]] = {}
    for x, y, s in edges:
        if label[x] == label[y]:
            inner.setdefault(label[x], []).append((x, y, s))
    out = dict(label)
    for es in inner.values():
        xs, ys, ss = zip(*es, strict=True)
        out.update(average_linkage(sorted(set(xs) | set(ys)), xs, ys, ss, threshold, complete_groups))
    return out


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
