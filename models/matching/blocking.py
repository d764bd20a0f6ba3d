"""Candidate generation (blocking) in NumPy: the pieces the Spark job runs per partition, and a driver-side
version of the whole thing for evaluation.

Embedding blocking is an inverted-file index: spherical k-means centroids fitted on a sample split the
catalog into cells of about ``block_size`` products; each product is indexed in its nearest cell and each
query searches its ``probes`` nearest cells exactly, keeping its ``neighbours`` most similar products at or
above ``min_cosine``. The work is ``n * probes * block_size`` dot products: linear in the catalog for a fixed
cell size, where all pairs would be quadratic. Lexical blocking adds pairs sharing a normalised model number
(a key shared by more than ``max_key_group`` products says little and is skipped).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.matching.text import model_numbers

__all__ = ["BLOCKING_PASSES", "BlockingConfig", "assign", "block_search", "blocking_label", "candidate_pairs",
           "code_pairs", "kmeans", "n_cells"]


@dataclass(frozen=True)
class BlockingConfig:
    block_size: int = 1000        # products per k-means cell (on average)
    probes: int = 2               # cells each query searches
    neighbours: int = 10          # nearest products kept per query and cell
    min_cosine: float = 0.5       # candidates below this embedding cosine are dropped
    sample_per_cell: int = 40     # k-means sample size per centroid
    kmeans_iters: int = 12
    max_key_group: int = 50       # model-number keys shared by more products are skipped
    seed: int = 0
    # A second search over lexical title vectors (models.matching.lexical) in their own k-means cells:
    lexical_neighbours: int = 5   # nearest products kept per query and cell (0: no lexical pass)
    lexical_min_cosine: float = 0.3
    lexical_sample: int = 20_000  # titles the IDF weights are fitted on

    def __post_init__(self):
        if self.block_size < 2 or self.probes < 1 or self.neighbours < 1:
            raise ValueError(f"BlockingConfig: block_size >= 2, probes >= 1 and neighbours >= 1 expected: {self}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"BlockingConfig.min_cosine must lie in [-1, 1], got {self.min_cosine}")


# The blocking passes in the order ``product_matches.blocking`` names them ("ann+lexical+model_number").
BLOCKING_PASSES = ("ann", "lexical", "model_number")


def blocking_label(found: Iterable[str]) -> str:
    """``product_matches.blocking`` of a pair: the passes that found it, in :data:`BLOCKING_PASSES` order."""
    hit = set(found)
    return "+".join(p for p in BLOCKING_PASSES if p in hit)


def n_cells(n_items: int, cfg: BlockingConfig) -> int:
    return max(1, math.ceil(n_items / cfg.block_size))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans(sample: np.ndarray, k: int, iters: int = 12, seed: int = 0) -> np.ndarray:
    """Spherical k-means (cosine) centroids, ``(min(k, n), d)``, deterministic for a seed and sample order."""
    x = _unit(sample)
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), size=k, replace=False)].copy()
    for _ in range(iters):
        label = np.argmax(x @ c.T, axis=1)
        sums = np.zeros_like(c)
        np.add.at(sums, label, x)
        counts = np.bincount(label, minlength=k)
        empty = counts == 0
        # Re-seed empty cells with the points worst served by their centroid, so every cell stays in use.
        if empty.any():
            worst = np.argsort((x * c[label]).sum(axis=1))[: int(empty.sum())]
            sums[empty] = x[worst]
        c = _unit(sums)
    return c


def assign(emb: np.ndarray, centroids: np.ndarray, n: int = 1) -> np.ndarray:
    """The ``n`` nearest centroids of each row, nearest first: ``(len(emb), n)`` int32."""
    n = min(n, len(centroids))
    sims = np.asarray(emb, np.float32) @ centroids.T
    if n == 1:
        return np.argmax(sims, axis=1).astype(np.int32)[:, None]
    top = np.argpartition(-sims, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int32)


def block_search(q_ids: Sequence, q_emb: np.ndarray, i_ids: Sequence, i_emb: np.ndarray, k: int,
                 min_cosine: float, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search of queries against one cell. Returns ``(query row, index row,
    cosine)`` arrays for hits at or above ``min_cosine``, never pairing an id with itself."""
    q_ids, i_ids = np.asarray(q_ids), np.asarray(i_ids)
    i_emb = np.asarray(i_emb, np.float32)
    kk = min(k + 1, len(i_ids))  # one extra: the query itself may be in the cell
    qs, js, cs = [], [], []
    if kk == 0 or len(q_ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    for start in range(0, len(q_ids), chunk):
        sims = np.asarray(q_emb[start:start + chunk], np.float32) @ i_emb.T
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < sims.shape[1] else \
            np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        val = np.take_along_axis(sims, top, axis=1)
        rows = np.broadcast_to(np.arange(start, start + len(sims))[:, None], top.shape)
        keep = (val >= min_cosine) & (i_ids[top] != q_ids[rows])
        # The extra slot is for the query itself: among the rest, keep at most k per query.
        rank = np.argsort(np.argsort(-np.where(keep, val, -np.inf), axis=1, kind="stable"), axis=1)
        keep &= rank < k
        qs.append(rows[keep])
        js.append(top[keep])
        cs.append(val[keep])
    return np.concatenate(qs), np.concatenate(js), np.concatenate(cs).astype(np.float32)


def code_pairs(ids: Sequence[str], titles: Iterable[str], max_group: int,
               queries: set[str] | None = None) -> set[tuple[str, str]]:
    """Pairs ``(a, b)``, ``a < b``, of products sharing a model number (with at least one in ``queries``
    when given), from keys shared by at most ``max_group`` products."""
    groups: dict[str, list[str]] = defaultdict(list)
    for pid, title in zip(ids, titles, strict=True):
        for code in model_numbers(title):
            groups[code].append(pid)
    out: set[tuple[str, str]] = set()
    for members in groups.values():
        members = sorted(set(members))
        if not 2 <= len(members) <= max_group:
            continue
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if queries is None or a in queries or b in queries:
                    out.add((a, b))
    return out


def _cell_pass(ids: np.ndarray, emb: np.ndarray, cfg: BlockingConfig, neighbours: int, min_cosine: float
               ) -> dict[tuple[str, str], float]:
    """Best cosine of each pair the k-means cells of ``emb`` find (the Spark job's search on one machine)."""
    emb = _unit(emb)
    rng = np.random.default_rng(cfg.seed)
    k = n_cells(len(ids), cfg)
    sample = emb[np.sort(rng.choice(len(ids), size=min(len(ids), k * cfg.sample_per_cell), replace=False))]
    cents = kmeans(sample, k, cfg.kmeans_iters, cfg.seed)
    home = assign(emb, cents, 1)[:, 0]
    probe = assign(emb, cents, cfg.probes)
    best: dict[tuple[str, str], float] = {}
    for cell in range(len(cents)):
        idx = np.flatnonzero(home == cell)
        qry = np.flatnonzero((probe == cell).any(axis=1))
        qi, ji, cos = block_search(ids[qry], emb[qry], ids[idx], emb[idx], neighbours, min_cosine)
        for a, b, c in zip(ids[qry][qi], ids[idx][ji], cos, strict=True):
            key = (a, b) if a < b else (b, a)
            best[key] = max(best.get(key, -2.0), float(c))
    return best


def candidate_pairs(ids: Sequence[str], emb: np.ndarray, titles: Sequence[str], cfg: BlockingConfig | None = None
                    ) -> pd.DataFrame:
    """All candidate pairs of an in-memory catalog (the Spark job's algorithm on one machine):
    ``a < b``, ``cosine`` (the embedding cosine; NaN for pairs the embedding cells did not find) and ``blocking``
    (``ann``, ``lexical``, ``model_number``, or several joined by ``+``)."""
    from models.matching.lexical import LexicalSpace

    cfg = cfg or BlockingConfig()
    ids = np.asarray([str(i) for i in ids])
    titles = list(titles)
    best = _cell_pass(ids, emb, cfg, cfg.neighbours, cfg.min_cosine)
    words: set[tuple[str, str]] = set()
    if cfg.lexical_neighbours > 0 and len(ids) > 1:
        rng = np.random.default_rng(cfg.seed)
        sample = rng.choice(len(ids), size=min(len(ids), cfg.lexical_sample), replace=False)
        space = LexicalSpace.fit([titles[i] for i in np.sort(sample)], seed=cfg.seed)
        words = set(_cell_pass(ids, space.embed(titles), cfg, cfg.lexical_neighbours, cfg.lexical_min_cosine))
    codes = code_pairs(ids, titles, cfg.max_key_group)
    keys = sorted(set(best) | words | codes)

    def how(p: tuple[str, str]) -> str:
        hits = {"ann": p in best, "lexical": p in words, "model_number": p in codes}
        return blocking_label(n for n, hit in hits.items() if hit)

    return pd.DataFrame({
        "a": [p[0] for p in keys], "b": [p[1] for p in keys],
        "cosine": np.asarray([best.get(p, np.nan) for p in keys], np.float32),
        "blocking": [how(p) for p in keys],
    })
