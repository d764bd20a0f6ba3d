"""The Python side of the matching job: functions Spark runs per partition or per k-means cell.

* :func:`make_cells_fn` (``mapInPandas``): each product's home cell, plus its other probe cells when it is
  a query;
* :func:`make_search_fn` (``groupBy(cell).applyInPandas``): exact top-k search of the cell's queries
  against the products indexed in it, with text and image cosines of every hit;
* :func:`make_lexical_fn` (``mapInPandas``): lexical title vectors for the second blocking pass;
* :func:`make_codes_udf` (scalar pandas UDF): normalised model numbers of a title;
* :func:`make_score_fn` (``mapInPandas``): pair features and the calibrated score. The scorer travels as
  JSON in the closure (verified by the driver) and is parsed once per Python worker;
* :func:`make_linkage_fn` (``groupBy(component).applyInPandas``): one component's average-linkage split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd  # at module level: the UDF type hints are resolved in this module's namespace

from models.core.arrays import stack_rows
from udfs.model_cache import cached
from udfs.task_faults import maybe_fail

__all__ = ["CELL_SCHEMA", "HIT_SCHEMA", "LINKAGE_SCHEMA", "SCORE_SCHEMA", "VECTOR_SCHEMA", "CrossSpec", "MaxParam",
           "make_cells_fn", "make_codes_udf", "make_lexical_fn", "make_linkage_fn", "make_score_fn", "make_search_fn"]

CELL_SCHEMA = ("cell int, product_id string, is_index boolean, is_query boolean, embedding array<float>, "
               "text_embedding array<float>, image_embedding array<float>")
HIT_SCHEMA = "a string, b string, fused_cosine float, text_cosine float, image_cosine float"
SCORE_SCHEMA = ("product_id_a string, product_id_b string, score double, fused_cosine float, text_cosine float, "
                "image_cosine float, token_jaccard float, model_number_match boolean, brand_match boolean, "
                "price_ratio double, blocking string")

LINKAGE_SCHEMA = "node string, part string"
VECTOR_SCHEMA = ("product_id string, in_query boolean, embedding array<float>, text_embedding array<float>, "
                 "image_embedding array<float>")


class MaxParam:
    """Accumulator parameter of a maximum (the largest cell searched); here so Python workers can import it."""

    def zero(self, value: int) -> int:
        return 0

    def addInPlace(self, a: int, b: int) -> int:  # noqa: N802 - the name PySpark calls
        return max(a, b)


def make_cells_fn(centroids: np.ndarray, probes: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Rows ``product_id, in_query, <embeddings>`` -> :data:`CELL_SCHEMA` rows: one for the home cell
    (``is_index``; ``is_query`` when a query) and, for queries, one per further probe cell."""
    from models.matching.blocking import assign

    cents = np.asarray(centroids, np.float32)

    def cells(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if pdf.empty:
                continue
            top = assign(stack_rows(pdf["embedding"]), cents, probes)
            # Without an image the text embedding is the fused one (schemas.tables): do not ship it twice.
            pdf = pdf.assign(text_embedding=pdf["text_embedding"].where(pdf["image_embedding"].notna(), None))
            home = pdf.assign(cell=top[:, 0], is_index=True, is_query=pdf["in_query"].astype(bool))
            parts = [home]
            q = pdf["in_query"].to_numpy(bool)
            for r in range(1, top.shape[1]):
                parts.append(pdf[q].assign(cell=top[q, r], is_index=False, is_query=True))
            out = pd.concat(parts, ignore_index=True)
            yield out[["cell", "product_id", "is_index", "is_query", "embedding", "text_embedding",
                       "image_embedding"]].astype({"cell": "int32"})

    return cells


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.shape[1] == 0:
        return np.full(len(x), np.nan, np.float32)
    return (x * y).sum(axis=1).astype(np.float32)  # NaN when either row is null (no image)


def _text(pdf: pd.DataFrame) -> np.ndarray:
    """Text embeddings, taking the fused one where it was left out (products without an image)."""
    fused = stack_rows(pdf["embedding"])
    text = stack_rows(pdf["text_embedding"], fused.shape[1])
    missing = np.isnan(text).any(axis=1)
    text[missing] = fused[missing]
    return text


def make_search_fn(neighbours: int, min_cosine: float, largest=None, searched=None
                   ) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """One cell's rows -> :data:`HIT_SCHEMA` hits, ``a < b``, for every query against the cell's index.
    ``largest``/``searched``: optional accumulators of the largest cell and the number of cells searched."""
    from models.matching.blocking import block_search

    def search(pdf: pd.DataFrame) -> pd.DataFrame:
        maybe_fail("match", pdf["product_id"].min() if len(pdf) else None)  # tests only: see models.core.faults
        # A fixed row order (a shuffle delivers them in any): cosines from batched float32 products then repeat
        # to the last bit when a run is repeated.
        pdf = pdf.sort_values(["product_id", "is_index", "is_query"], kind="stable")
        idx, qry = pdf[pdf["is_index"]], pdf[pdf["is_query"]]
        if largest is not None:
            largest.add(len(idx))
        if searched is not None:
            searched.add(1)
        if idx.empty or qry.empty:
            return pd.DataFrame({c: [] for c in ("a", "b", "fused_cosine", "text_cosine", "image_cosine")})
        qi, ji, cos = block_search(qry["product_id"].to_numpy(), stack_rows(qry["embedding"]),
                                   idx["product_id"].to_numpy(), stack_rows(idx["embedding"]), neighbours, min_cosine)
        qids, iids = qry["product_id"].to_numpy()[qi], idx["product_id"].to_numpy()[ji]
        text = _dot(_text(qry)[qi], _text(idx)[ji])
        img = _dot(stack_rows(qry["image_embedding"])[qi], stack_rows(idx["image_embedding"])[ji]) \
            if qry["image_embedding"].notna().any() and idx["image_embedding"].notna().any() \
            else np.full(len(qi), np.nan, np.float32)
        swap = qids > iids
        return pd.DataFrame({"a": np.where(swap, iids, qids), "b": np.where(swap, qids, iids), "fused_cosine": cos,
                             "text_cosine": text, "image_cosine": img})

    return search


def make_lexical_fn(space) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Rows ``product_id, in_query, title`` -> :data:`VECTOR_SCHEMA` rows whose ``embedding`` is the title's
    lexical vector (:class:`models.matching.lexical.LexicalSpace`, travelling in the closure)."""

    def vectors(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if pdf.empty:
                continue
            y = space.embed(pdf["title"].tolist())
            yield pd.DataFrame({"product_id": pdf["product_id"], "in_query": pdf["in_query"],
                                "embedding": list(y), "text_embedding": None, "image_embedding": None})

    return vectors


def make_codes_udf():
    """Scalar pandas UDF: title -> sorted normalised model numbers."""
    from pyspark.sql.functions import pandas_udf

    from models.matching.text import model_numbers

    @pandas_udf("array<string>")
    def codes(titles: pd.Series) -> pd.Series:
        return titles.map(lambda t: sorted(model_numbers(t)) if t is not None else [])

    return codes


@dataclass(frozen=True)
class CrossSpec:
    """How the score step runs the cross-encoder (:mod:`models.matching.cross`): its verified version folder,
    the feature score a pair needs to be read by it, torch threads per Python worker, pairs per forward pass and
    the precision (auto, fp32, bf16: :mod:`models.precision`)."""

    path: str
    prefilter: float = 0.02
    threads: int | None = None
    batch_size: int = 64
    precision: str = "fp32"


def _cross(spec: CrossSpec):
    def load():
        from models.matching.cross import load_cross

        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        model = load_cross(spec.path, precision=spec.precision)
        model.batch_size = spec.batch_size
        return model

    return cached(("pair-cross", spec), load)


def _serialised(pdf: pd.DataFrame, side: str) -> list[str]:
    from models.matching.cross import serialize

    return [serialize({"title": t, "brand": b, "price": p})
            for t, b, p in pdf[[f"title_{side}", f"brand_{side}", f"price_{side}"]].itertuples(index=False)]


def _scorer(version: str, text: str):
    from models.matching.features import FEATURES
    from models.matching.scorer import PairScorer

    return cached(("pair-scorer", version), lambda: PairScorer.from_json(text, version, expected_features=FEATURES))


# The prepared listings (models.matching.features.prepare) of this Python worker, by what prepare reads of them
# (record_key). A listing is a candidate about 20 times over, and Spark spreads the candidate pairs over its
# partitions at random: kept per partition, the listings of a 20,000-product catalog were prepared about 19 times
# each (about 8 CPU-s of its match stage). Kept per worker, each is prepared about once. Bounded: about 6 KB a
# listing (300 MB at most, also in a long-lived driver that scores without the cross-encoder), emptied when full.
_PREPARED: dict[tuple, object] = {}
# The same listings by their fields as the batch holds them: equal fields give an equal record_key, so a listing
# seen before skips record_key's normalising too (it took half the time of the pair features: 0.9 of 1.8 s per
# 100,000 pairs). A NaN price never equals itself and takes the record_key path each time, which is still right.
_RAW: dict[tuple, object] = {}
PREPARED_MEMO_ROWS = 50_000


def _prepared(pdf: pd.DataFrame, side: str) -> list:
    """The prepared listings of one side of a batch of candidate pairs, through the worker's memo. (A module
    function: cloudpickle ships a nested function's globals by value, so a memo a nested function named would be
    a fresh empty copy in every task.)"""
    from models.matching.features import prepare_key, record_key

    out = []
    fields = [f"title_{side}", f"brand_{side}", f"price_{side}", f"currency_{side}"]
    if f"mpn_{side}" in pdf.columns:   # the catalog's optional part number (a frame without it: none)
        fields.append(f"mpn_{side}")
    for raw in pdf[fields].itertuples(index=False, name=None):
        rec = _RAW.get(raw)
        if rec is None:
            key = record_key(*raw)
            rec = _PREPARED.get(key)
            if rec is None:
                if len(_PREPARED) >= PREPARED_MEMO_ROWS:
                    _PREPARED.clear()
                rec = _PREPARED[key] = prepare_key(key)
            if len(_RAW) >= PREPARED_MEMO_ROWS:
                _RAW.clear()
            _RAW[raw] = rec
        out.append(rec)
    return out


# The cross-encoder reads the pairs that pass the feature scorer's prefilter: about 60 of each 2,048-row Arrow
# batch. Scored batch by batch, each pass was padded to the longest of a few dozen pairs of any length; pooled
# over up to this many batches (a 20,000-pair partition is ten) and sorted by length once, the same pairs took
# 19% less of the cross-encoder's time (bench: 13,430 pairs of a 20,000-product catalog, bf16, one thread).
POOL_BATCHES = 16


def _features(pdf: pd.DataFrame, scorer) -> tuple[pd.DataFrame, np.ndarray]:
    from models.matching.features import pair_features

    f = pair_features(_prepared(pdf, "a"), _prepared(pdf, "b"), pdf["text_cosine"].to_numpy(np.float64),
                      pdf["image_cosine"].to_numpy(np.float64), pdf["fused_cosine"].to_numpy(np.float64))
    return f, scorer.score(f)


def _cross_pass(held: list[tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]], model) -> None:
    """One cross-encoder pass over the prefiltered pairs of the ``held`` batches ``(pdf, features, scores,
    read)``: each batch's ``scores[read]`` becomes the calibrated probability."""
    reads = [(pdf.iloc[read], f.iloc[read]) for pdf, f, _, read in held if len(read)]
    if not reads:
        return
    sub = pd.concat([r[0] for r in reads], ignore_index=True)
    feats = pd.concat([r[1] for r in reads], ignore_index=True)
    probs = model.score(_serialised(sub, "a"), _serialised(sub, "b"), feats)
    at = 0
    for _, _, s, read in held:
        s[read] = probs[at:at + len(read)]
        at += len(read)


def _score_rows(pdf: pd.DataFrame, f: pd.DataFrame, s: np.ndarray, keep: np.ndarray) -> pd.DataFrame:
    f, pdf = f[keep], pdf[keep]
    return pd.DataFrame({
        "product_id_a": pdf["a"].to_numpy(), "product_id_b": pdf["b"].to_numpy(), "score": s[keep],
        "fused_cosine": pdf["fused_cosine"].to_numpy(np.float32),
        "text_cosine": pdf["text_cosine"].to_numpy(np.float32),
        "image_cosine": pdf["image_cosine"].to_numpy(np.float32),
        "token_jaccard": f["token_jaccard"].to_numpy(np.float32),
        "model_number_match": f["model_number_match"].to_numpy(object),
        "brand_match": f["brand_match"].to_numpy(object),
        "price_ratio": f["price_ratio"].to_numpy(np.float64), "blocking": pdf["blocking"].to_numpy(),
    })


def make_score_fn(scorer_version: str, scorer_json: str, keep_all: bool = False, cross: CrossSpec | None = None,
                  read_counter=None, spelling=None) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Candidate rows (``a, b``, cosines, ``blocking`` and ``title/brand/price/currency``, and optionally ``mpn``,
    of both sides as ``<field>_a``/``<field>_b``) -> :data:`SCORE_SCHEMA` rows of the matches (every pair with
    ``keep_all``).

    With ``cross``, the feature scorer is a first pass: a pair whose feature score reaches ``cross.prefilter``
    is read by the cross-encoder, whose probability becomes its score and whose threshold decides the match; a
    pair below the prefilter keeps its feature score (below any threshold worth using) and is not read. Either
    way the same listing twice, or two listings with the same part number, are a match
    (:func:`models.matching.features.same_listing_floor`). The
    cross-encoder reads the pairs of up to :data:`POOL_BATCHES` batches in one pass; the rows come out in the
    order of the batches either way. ``read_counter`` (a Spark accumulator, or anything with ``add``) gets the
    number of pairs the cross-encoder reads: what the match stage's time goes to. ``spelling`` (a
    :class:`models.matching.spelling.CatalogSpelling`): both titles are read as the catalog spells them first, by
    both scorers and the decision rules."""

    def flush(held: list, scorer, model) -> Iterator[pd.DataFrame]:
        from models.matching.features import match_decisions

        if model is not None:
            _cross_pass(held, model)
        for pdf, f, s, read in held:
            s, matched = match_decisions(s, f, read, scorer, model)
            keep = np.ones(len(s), bool) if keep_all else matched
            if keep.any():
                yield _score_rows(pdf, f, s, keep)
        held.clear()

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = _scorer(scorer_version, scorer_json)
        model = _cross(cross) if cross is not None else None
        held: list = []
        for pdf in batches:
            if pdf.empty:
                continue
            reading = None
            if spelling is not None:   # the leading words are read below, for the pairs the cross-encoder reads
                reading = spelling.read_pairs(pdf["title_a"].tolist(), pdf["title_b"].tolist(), np.zeros(0, np.int64))
                pdf = pdf.assign(title_a=reading.left, title_b=reading.right)
            f, s = _features(pdf, scorer)
            read = np.flatnonzero(s >= cross.prefilter) if cross is not None else np.zeros(0, np.int64)
            if reading is not None:
                from models.matching.features import mark_catalog_reading

                mark_catalog_reading(f, spelling.read_leads(reading, read))
            if read_counter is not None and len(read):
                read_counter.add(len(read))
            held.append((pdf, f, s, read))
            if model is None or len(held) >= POOL_BATCHES:
                yield from flush(held, scorer, model)
        yield from flush(held, scorer, model)

    return score


def make_linkage_fn(threshold: float, complete_groups: bool = False) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """One component's edges (``src, dst, score``) -> :data:`LINKAGE_SCHEMA` rows: each member and the smallest
    id of its part after :func:`models.matching.cluster.average_linkage`."""
    from models.matching.cluster import average_linkage

    def split(pdf: pd.DataFrame) -> pd.DataFrame:
        src, dst = pdf["src"].tolist(), pdf["dst"].tolist()
        label = average_linkage(sorted(set(src) | set(dst)), src, dst, pdf["score"].tolist(), threshold,
                                complete_groups)
        return pd.DataFrame({"node": list(label), "part": list(label.values())})

    return split
