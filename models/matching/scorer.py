"""The pair scorer: gradient-boosted trees on the pair features, calibrated to a probability.

Everything the scorer needs at inference is plain data (tree arrays, isotonic calibration points, the
decision threshold), so it is stored as JSON and evaluated with NumPy: no pickle, no scikit-learn at
inference. :mod:`models.matching.train` fits it with scikit-learn and converts it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FORMAT", "PairScorer", "Trees"]

FORMAT = "catalog-enrich/pair-scorer/1"

# Trees up to this depth are evaluated as complete trees (:meth:`Trees._raw_heap`), rows in chunks of this many.
HEAP_MAX_DEPTH = 4
HEAP_CHUNK = 1024


def _leaf_of(left: np.ndarray, depth: int) -> np.ndarray:
    """``(rows, trees)`` leaf index (0 .. 2**depth - 1, left to right) of complete trees whose tests gave
    ``left`` (``(rows, trees, 2**depth - 1)`` bool in heap order, True: go left)."""
    def pick(slot: int, level: int) -> np.ndarray:
        # (leaf index within the subtree at heap slot ``slot``, of ``depth - level`` levels)
        go = left[..., slot]
        if level == depth - 1:
            return (~go).astype(np.intp)
        below_left, below_right = pick(2 * slot + 1, level + 1), pick(2 * slot + 2, level + 1)
        return np.where(go, below_left, below_right + 2 ** (depth - level - 1))

    return pick(0, 0)


@dataclass(frozen=True)
class Trees:
    """Regression trees summed into log-odds: ``raw = bias + rate * sum(leaf values)``.

    Nodes of all trees sit in flat arrays; ``roots[t]`` is tree t's first node; ``left < 0`` marks a leaf.
    A sample goes left when ``x[feature] <= threshold`` (scikit-learn's rule, on float32 inputs).
    """

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    rate: float
    bias: float = 0.0

    def raw(self, x: np.ndarray) -> np.ndarray:
        # scikit-learn compares float32 features with float64 thresholds. ``_walk`` holds each threshold as the
        # largest float32 at or under it, which splits every float32 input the same way, in half the bytes.
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros(0)
        heap = self._heap
        if heap is not None:
            return self._raw_heap(x, heap)
        child, feature, threshold, depth = self._walk
        n, width = x.shape
        nodes = np.broadcast_to(self.roots.astype(np.int32), (n, len(self.roots))).copy()
        at = (np.arange(n, dtype=np.int64) * width)[:, None]
        flat = x.ravel()
        for _ in range(depth):   # a leaf is its own child on both sides: trees shallower than ``depth`` wait there
            goes_left = flat[at + feature[nodes]] <= threshold[nodes]   # NaN goes right, as scikit-learn's
            nodes = child[2 * nodes + goes_left]
        return self.bias + self.rate * self.value[nodes].sum(axis=1)

    def _raw_heap(self, x: np.ndarray, heap: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> np.ndarray:
        """:meth:`raw` through :attr:`_heap`: every test of every tree compared at once, a chunk of rows at a time
        (a chunk's comparisons stay in the cache), then each tree's path picked level by level. The same leaves
        and the same sum, in the same order, as the node-by-node walk: bit for bit the same log-odds, about 2.8x
        faster (the 458,000 candidate pairs of a 20,000-product catalog: 1.6 s against 4.6 s, one thread)."""
        feature, threshold, value, depth = heap
        trees, inner = len(self.roots), 2 ** depth - 1
        offsets = (np.arange(trees, dtype=np.intp) * 2 ** depth)[None, :]
        out = np.empty(len(x))
        for start in range(0, len(x), HEAP_CHUNK):
            part = x[start:start + HEAP_CHUNK]
            left = (part[:, feature] <= threshold).reshape(len(part), trees, inner)   # NaN goes right
            leaf = np.ascontiguousarray(_leaf_of(left, depth))   # C order: the sum adds in the walk's order
            out[start:start + HEAP_CHUNK] = value[offsets + leaf].sum(axis=1)
        return self.bias + self.rate * out

    @cached_property
    def _heap(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """Each tree as a complete binary tree of :attr:`_walk`'s depth in heap order (node k's children at 2k+1
        and 2k+2): ``(feature, float32 threshold)`` of its ``2**depth - 1`` tests and the values of its
        ``2**depth`` leaves, all trees in flat arrays. A leaf above the last level fills every leaf slot under
        it, so the tests in between decide nothing. None for trees deeper than :data:`HEAP_MAX_DEPTH` (the
        tests grow as ``2**depth``): :meth:`raw` walks those node by node."""
        _, feature, threshold, depth = self._walk
        if not 1 <= depth <= HEAP_MAX_DEPTH:
            return None
        inner, leaves = 2 ** depth - 1, 2 ** depth
        feat = np.zeros((len(self.roots), inner), np.intp)
        thr = np.full((len(self.roots), inner), np.inf, np.float32)
        val = np.zeros((len(self.roots), leaves), np.float64)
        for t, root in enumerate(self.roots):
            todo = [(int(root), 0, 0)]   # (node, heap slot, level)
            while todo:
                node, slot, level = todo.pop()
                if self.left[node] < 0:
                    first = (slot + 1) * 2 ** (depth - level) - 1 - inner   # its leftmost leaf slot
                    val[t, first:first + 2 ** (depth - level)] = self.value[node]
                    continue
                feat[t, slot], thr[t, slot] = feature[node], threshold[node]
                todo += [(int(self.left[node]), 2 * slot + 1, level + 1),
                         (int(self.right[node]), 2 * slot + 2, level + 1)]
        return feat.ravel(), thr.ravel(), val.ravel(), depth

    @cached_property
    def _walk(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(children, feature, float32 threshold, depth) for :meth:`raw`: ``children[2 * node + goes_left]``
        is the next node (a leaf's own index on both sides), leaves test feature 0 against +inf."""
        leaf = self.left < 0
        own = np.arange(len(self.left))
        child = np.empty(2 * len(self.left), np.int32)
        child[0::2] = np.where(leaf, own, self.right)
        child[1::2] = np.where(leaf, own, self.left)
        t32 = self.threshold.astype(np.float32)
        t32 = np.where(t32.astype(np.float64) > self.threshold, np.nextafter(t32, np.float32(-np.inf)), t32)
        threshold = np.where(leaf, np.float32(np.inf), t32).astype(np.float32)
        feature = np.where(leaf, 0, self.feature).astype(np.int32)
        depth, level = 0, self.roots
        while True:
            inner = level[self.left[level] >= 0]
            if not len(inner):
                return child, feature, threshold, depth
            depth += 1
            if depth > len(self.left):
                raise ValueError("pair scorer trees: a node links back to its own path (the trees have a cycle)")
            level = np.concatenate([self.left[inner], self.right[inner]])

    def to_dict(self) -> dict[str, Any]:
        return {"roots": self.roots.tolist(), "feature": self.feature.tolist(), "threshold": self.threshold.tolist(),
                "left": self.left.tolist(), "right": self.right.tolist(), "value": self.value.tolist(),
                "rate": self.rate, "bias": self.bias}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trees:
        t = cls(np.asarray(d["roots"], np.int64), np.asarray(d["feature"], np.int64),
                np.asarray(d["threshold"], np.float64), np.asarray(d["left"], np.int64),
                np.asarray(d["right"], np.int64), np.asarray(d["value"], np.float64), float(d["rate"]),
                float(d.get("bias", 0.0)))
        n = len(t.feature)
        if not (len(t.threshold) == len(t.left) == len(t.right) == len(t.value) == n):
            raise ValueError("pair scorer trees: node arrays differ in length")
        links = np.concatenate([t.roots, t.left[t.left >= 0], t.right[t.left >= 0]])
        if len(links) and (links.min() < 0 or links.max() >= n):
            raise ValueError("pair scorer trees: a node index points outside the node arrays")
        return t


@dataclass(frozen=True)
class PairScorer:
    """Calibrated probability that a pair is a match; ``score >= threshold`` is a match."""

    features: tuple[str, ...]
    trees: Trees
    calib_x: np.ndarray        # isotonic calibration: raw log-odds -> probability, linear in between
    calib_y: np.ndarray
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)   # training data, metrics, encoder used for features
    version: str = "unsaved"

    def raw(self, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self.trees.raw(self._matrix(x))

    def score(self, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        return np.clip(np.interp(self.raw(x), self.calib_x, self.calib_y), 0.0, 1.0)

    def is_match(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def _matrix(self, x: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(x, pd.DataFrame):
            missing = [f for f in self.features if f not in x.columns]
            if missing:
                raise ValueError(f"pair scorer {self.version}: feature columns missing: {missing}")
            x = x[list(self.features)].to_numpy(dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"pair scorer {self.version}: expected (n, {len(self.features)}) features, got {x.shape}")
        return x

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "features": list(self.features), "trees": self.trees.to_dict(),
            "calibration": {"kind": "isotonic", "x": self.calib_x.tolist(), "y": self.calib_y.tolist()},
            "threshold": self.threshold, "meta": self.meta,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, version: str = "unsaved", expected_features: Sequence[str] | None = None
                  ) -> PairScorer:
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"not a pair scorer of format {FORMAT!r}: format is {d.get('format')!r}")
        features = tuple(d["features"])
        if expected_features is not None and features != tuple(expected_features):
            raise ValueError(f"pair scorer {version} uses features {features}, this code computes "
                             f"{tuple(expected_features)}: retrain it")
        cal = d["calibration"]
        x, y = np.asarray(cal["x"], np.float64), np.asarray(cal["y"], np.float64)
        if cal.get("kind") != "isotonic" or len(x) != len(y) or len(x) == 0 or np.any(np.diff(x) < 0):
            raise ValueError("pair scorer calibration must be isotonic points with increasing x")
        trees = Trees.from_dict(d["trees"])
        if len(trees.feature) and trees.feature[trees.left >= 0].max(initial=0) >= len(features):
            raise ValueError("pair scorer trees use a feature index beyond the feature list")
        return cls(features, trees, x, y, float(d["threshold"]), dict(d.get("meta", {})), version)
