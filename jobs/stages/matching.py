"""Duplicate listings across the catalog: blocking, pair scoring and clustering in Spark.

:func:`match_and_cluster` is the enrich job's ``match`` stage. It reads ``product_embeddings`` (the current
model version) with the valid catalog rows and

1. picks the **queries**: products never matched, or whose embeddings changed since they were last matched
   (``product_clusters.matched_hash``), or every product when the scorer changed or ``full`` is set;
2. **blocks**: spherical k-means centroids from a sample split the catalog into cells of about
   ``block_size`` products; every product is indexed in its nearest cell, every query searches its
   ``probes`` nearest cells exactly (``groupBy(cell).applyInPandas``). A second pass does the same with
   lexical title vectors (hashed character-3-gram TF-IDF, :mod:`models.matching.lexical`) in their own cells,
   and products sharing a specific model number are paired too. Work grows as
   ``queries * probes * block_size``: linear, not quadratic;
3. **scores** every candidate with the calibrated pair scorer (``mapInPandas``) and keeps those at or above
   its threshold;
4. **writes** ``product_matches``: the queries' new pairs, replacing (deleting) their old pairs in the same
   commit;
5. **clusters** the whole match graph: only coherent matches link products (mutual best within a margin),
   their components (large-star/small-star in :mod:`jobs.stages.graph`, with the giant-component guard) are split by
   average linkage (:mod:`models.matching.cluster` states the rules), and the ``product_clusters`` rows that
   changed are upserted. A cluster's id is its smallest product id.

An unchanged catalog therefore queries nothing and commits nothing.

Steps 2-3 and the clustering of step 5 run on the driver when the work is small (``MatchConfig``:
``driver_products``, ``driver_queries``, ``driver_cluster_edges``; the pairs are still scored by Spark tasks, on
every core): the rows are collected once and go through the same per-cell and per-batch functions the Spark
tasks call, with the centroids of the same samples (drawn by
a hash of the product id, so the driver draws them without Spark), so both ways write the same rows (tested).
Each Spark step costs its jobs' scheduling and shuffles, and a fresh Python worker the cross-encoder's load,
whatever the rows: a 15-product increment of a 1,500-product lake spent 47 s in the Spark match stage and 21 s on
the driver.

The centroids and the lexical space a full run fits are kept in the lake (:mod:`jobs.lake.blocking_cache`);
incremental runs of the same model and number of cells read them instead of fitting again.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from models.matching.blocking import BLOCKING_PASSES, BlockingConfig, blocking_label, n_cells
from models.matching.cluster import ClusterConfig
from models.matching.features import DIFFERENT_PRODUCTS_RULE, SAME_LISTING_RULE, SAME_PART_NUMBER_RULE
from models.matching.spelling import LEAD_RULE, SPELLING_RULE, type_rule_version

__all__ = ["MatchConfig", "MatchStats", "match_and_cluster", "matching_title"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchConfig:
    blocking: BlockingConfig = field(default_factory=BlockingConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    scorer: str | None = None            # scorer reference (models.matching.artifact.resolve_scorer); None: shipped
    cross: str | None = None             # cross-encoder version folder (resolve_pair_model); None: features only
    cross_prefilter: float = 0.02        # feature score a candidate needs to be read by the cross-encoder
    torch_threads: int | None = None     # torch threads per Python worker for the cross-encoder
    precision: str = "fp32"              # the cross-encoder's: auto, fp32 or bf16 (models.precision)
    types: tuple[str, ...] = ()          # product types (the category head's classes): two titles naming different
                                         # ones never match (models.matching.spelling.TYPE_RULE); none: no such rule
    full: bool = False                   # match every product, not only new and changed ones
    rows_per_partition: int = 20_000
    max_rounds: int = 100                # connected-components rounds before giving up
    checkpoint_every: int = 2            # rounds between lineage cuts
    driver_commit_rows: int = 50_000     # match and cluster rows (written + removed) committed on the driver by
                                         # pyarrow up to this many (Lake.upsert on_driver): the Spark rewrite of a
                                         # few changed rows cost tens of seconds a table in an incremental run
    driver_products: int = 100_000       # a catalog of at most this many products, with at most driver_queries
    driver_queries: int = 100_000        # new or changed, is blocked on the driver (_match_pairs_on_driver: the
                                         # same functions, cells and samples, without a dozen small Spark jobs)
                                         # and scored by the Spark tasks on every core: a 15-product increment of
                                         # a 1,500-product lake spent 36 s in Spark's blocking and scoring; a full
                                         # run of 20,000 products 65 s in the match stage against 108 s; 100,000
                                         # (bench/matching_scale.py, feature scorer) 45.6 s against 178.0 s, the
                                         # same candidates, 2.3 GiB of driver memory (the whole run's peak 4.9 GiB
                                         # against 10.0 with Spark's blocking)
    driver_cluster_edges: int = 200_000  # match graphs of at most this many edges are clustered on the driver
                                         # (models.matching.cluster, the same rules): Spark's connected
                                         # components took 7-19 s for a graph of a few dozen edges


@dataclass(frozen=True)
class CellCounters:
    """What blocking counted: its cells, the seconds the centroids took, and the search's two accumulators
    (the largest cell searched, the cells searched). Read :attr:`largest_cell` and :attr:`searched_cells` only
    after an action over the candidates ran the search; task retries may inflate them."""

    cells: int
    centroid_seconds: float
    largest: Any      # pyspark Accumulator[int] with udfs.matching.MaxParam
    searched: Any     # pyspark Accumulator[int]

    @property
    def largest_cell(self) -> int:
        return int(self.largest.value)

    @property
    def searched_cells(self) -> int:
        return int(self.searched.value)


@dataclass(frozen=True)
class PairStats:
    """The pair stage's numbers; the blocking and timing fields are None when no query was searched."""

    candidates: int = 0
    matches_written: int = 0
    matches_removed: int = 0
    cells: int | None = None
    centroid_seconds: float | None = None
    largest_cell: int | None = None
    searched_cells: int | None = None
    blocking_seconds: float | None = None
    scoring_seconds: float | None = None
    cross_pairs: int | None = None   # candidates the cross-encoder read (None: no cross-encoder, or no query searched)


@dataclass(frozen=True)
class ClusterStats:
    """The cluster stage's numbers; the guard's counts are None when the clusters were left as they were."""

    cc_rounds: int
    cluster_rows_written: int
    clusters: int
    clustered_products: int
    largest_cluster: int
    oversized_components: int | None = None
    guarded_products: int | None = None
    dissolved_products: int | None = None


# The run summary's keys, in the order it has always listed them.
_SUMMARY_KEYS = ("mode", "products", "queries", "scorer_version", "threshold", "prepare_seconds", "cells",
                 "centroid_seconds", "candidates", "largest_cell", "searched_cells", "blocking_seconds",
                 "matches_written", "scoring_seconds", "cross_pairs", "matches_removed", "cc_rounds",
                 "oversized_components", "guarded_products", "dissolved_products", "cluster_rows_written", "clusters",
                 "clustered_products", "largest_cluster", "clustering_seconds", "seconds")


@dataclass(frozen=True)
class MatchStats:
    """What :func:`match_and_cluster` did: counts and timings of the run, its pair stage and its cluster stage."""

    mode: str                  # full or incremental
    products: int
    queries: int
    scorer_version: str
    threshold: float
    prepare_seconds: float
    pairs: PairStats
    clustering: ClusterStats
    clustering_seconds: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The flat dict of the run summary; a stage's fields that are None (not measured) are left out."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("pairs", "clustering")}
        for part in (self.pairs, self.clustering):
            flat.update((f.name, getattr(part, f.name)) for f in fields(part))
        return {k: flat[k] for k in _SUMMARY_KEYS if flat[k] is not None}


EMBEDDING_COLUMNS = ("embedding", "text_embedding", "image_embedding")


def _universe(lake, products, model_version: str):
    """Valid catalog rows that have current embeddings, and the hash they are matched under (the embeddings
    themselves are joined in by :func:`_with_embeddings` on the Spark path, read by pyarrow on the driver's)."""
    from pyspark.sql import functions as F

    emb = _current_embeddings(lake, model_version, "content_hash")
    has_mpn = "mpn" in products.columns
    title = matching_title(F.col("title"), F.col("mpn")) if has_mpn else F.col("title")
    mpn = F.col("mpn") if has_mpn else F.lit(None).cast("string")
    attrs = products.select("product_id", title.alias("title"), "brand", "price", "currency", mpn.alias("mpn")
                            ).dropDuplicates(["product_id"])
    return (attrs.join(emb, "product_id")
            .withColumn("matched_hash", F.concat_ws(":", F.lit(model_version), F.col("content_hash")))
            .drop("content_hash"))


def _letters_digits(c):
    """A Spark string column's lower-cased letters and digits: how ``models.matching.text.title_key`` keys a title
    (case, spacing and punctuation aside)."""
    from pyspark.sql import functions as F

    return F.regexp_replace(F.lower(c), "[^\\p{L}\\p{N}]", "")


def matching_title(title, mpn):
    """The title matching reads (Spark columns): the seller's part number ``mpn`` written after the title when the
    title does not already hold it (letters and digits compared, case and punctuation aside). Listings of one
    product line often share a title word for word and differ only in that number ("Energizer Advanced Lithium
    Batteries", EA91BP-4 and EA92BP-4); written into the title, the scorers' model-number evidence and the
    cross-encoder read it. The shops' model numbers written into the titles of the Walmart-Amazon valid pairs
    raised their pair F1 from 67.6 to 78.1 with the same models (EVALUATION.md)."""
    from pyspark.sql import functions as F

    number = F.trim(mpn)
    add = (number.isNotNull() & (_letters_digits(number) != "")
           & ~F.coalesce(F.instr(_letters_digits(title), _letters_digits(number)) > 0, F.lit(False)))
    return F.when(add, F.concat_ws(" ", title, number)).otherwise(title)


def _current_embeddings(lake, model_version: str, *columns: str):
    """``product_id`` and ``columns`` of the ``product_embeddings`` rows of ``model_version`` (Spark)."""
    from pyspark.sql import functions as F

    from schemas.tables import PRODUCT_EMBEDDINGS

    return (lake.read(PRODUCT_EMBEDDINGS).where(F.col("model_version") == model_version)
            .select("product_id", *columns))


def _with_embeddings(lake, flagged, model_version: str):
    """``flagged`` with the three embeddings of its products (the Spark path's blocking and cosines)."""
    return flagged.join(_current_embeddings(lake, model_version, *EMBEDDING_COLUMNS), "product_id")


def _driver_embeddings(lake, model_version: str):
    """``product_id`` and the three embeddings of every product of ``model_version``, read by pyarrow on the
    driver (pandas, one numpy array a cell, as Spark's ``toPandas`` gives them). Collected through Spark, the
    array columns of a 20,000-product catalog took 1.3 s of a 10 s incremental match stage."""
    import pyarrow.dataset as ds

    from schemas.tables import PRODUCT_EMBEDDINGS

    table = lake.read_arrow(PRODUCT_EMBEDDINGS, ["product_id", *EMBEDDING_COLUMNS],
                            where=ds.field("model_version") == model_version)
    return table.to_pandas()


def _queries(lake, universe, scorer_version: str, cfg: MatchConfig, changed_ids):
    """(universe with an ``in_query`` flag, full mode?)."""
    from pyspark.sql import functions as F

    from schemas.tables import PRODUCT_CLUSTERS, PRODUCT_MATCHES

    stale = lake.read(PRODUCT_MATCHES).where(F.col("scorer_version") != scorer_version).limit(1).count() > 0
    full = cfg.full or stale
    if stale:
        log.info("matches of another scorer version exist: matching every product with %s", scorer_version)
    if full:
        return universe.withColumn("in_query", F.lit(True)), True
    done = lake.read(PRODUCT_CLUSTERS).select("product_id", F.col("matched_hash").alias("_done"))
    flagged = universe.join(done, "product_id", "left").withColumn(
        "in_query", F.col("_done").isNull() | (F.col("_done") != F.col("matched_hash"))).drop("_done")
    if changed_ids is not None:
        hint = changed_ids.select("product_id").distinct().withColumn("_hint", F.lit(True))
        flagged = (flagged.join(hint, "product_id", "left")
                   .withColumn("in_query", F.col("in_query") | F.coalesce(F.col("_hint"), F.lit(False)))
                   .drop("_hint"))
    return flagged, False


def _sample_bound(n: int, want: int) -> int | None:
    """The CRC-32 bound below which a product is in a sample of about ``1.2 * want`` of ``n`` (None: take all)."""
    return None if want >= n else int(min(1.0, 1.2 * want / n) * 2**32)


def _sampled(df, bound: int | None, seed: int):
    """The rows of ``df`` in the sample: CRC-32 of ``"<seed>:<product_id>"`` below ``bound``. A function of the
    id alone, so the sample is the same whatever the partitions and row order, and :func:`_sampled_ids` draws it
    on the driver without a Spark job."""
    from pyspark.sql import functions as F

    if bound is None:
        return df
    return df.where(F.crc32(F.concat(F.lit(f"{seed}:"), F.col("product_id")).cast("binary")) < F.lit(bound))


def _sampled_ids(ids, bound: int | None, seed: int):
    """:func:`_sampled` for ``ids`` on the driver: a boolean mask."""
    import zlib

    import numpy as np

    if bound is None:
        return np.ones(len(ids), bool)
    return np.fromiter((zlib.crc32(f"{seed}:{p}".encode()) < bound for p in ids), bool, len(ids))


def _kmeans_sample(pdf, n: int, cfg: BlockingConfig):
    """k-means centroids of the sampled rows of ``pdf`` (``product_id, embedding``), taken in id order."""
    import numpy as np

    from models.matching.blocking import kmeans

    k = n_cells(n, cfg)
    pdf = pdf.sort_values("product_id", kind="stable")  # a fixed order: the same sample gives the same centroids
    pdf = pdf[_sampled_ids(pdf["product_id"].tolist(), _sample_bound(n, k * cfg.sample_per_cell), cfg.seed)]
    return kmeans(np.stack(pdf["embedding"].to_numpy()).astype(np.float32), k, cfg.kmeans_iters, cfg.seed)


def _centroids(universe, n: int, cfg: BlockingConfig):
    """k-means centroids of a sample of ``universe`` (``product_id, embedding``): :func:`_kmeans_sample` of the
    rows :func:`_sampled` keeps, collected."""
    bound = _sample_bound(n, n_cells(n, cfg) * cfg.sample_per_cell)
    return _kmeans_sample(_sampled(universe.select("product_id", "embedding"), bound, cfg.seed).toPandas(), n, cfg)


def _dot(a: str, b: str):
    from pyspark.sql import functions as F

    return F.aggregate(F.zip_with(F.col(a), F.col(b), lambda x, y: x * y), F.lit(0.0).cast("float"),
                       lambda acc, v: acc + v)


class _Blocks:
    """The centroids and the lexical space one blocking uses: an incremental run reads them from the lake's
    :class:`~jobs.lake.blocking_cache.BlockingCache` when it holds them for this model, these settings and this
    number of cells; otherwise (and in every full run) they are fitted, and :meth:`save` keeps them there."""

    def __init__(self, lake, model_version: str, n: int, full: bool, cfg: BlockingConfig):
        from jobs.lake.blocking_cache import BlockingCache

        self.cache = BlockingCache(lake.root, model_version, cfg, n_cells(n, cfg))
        self.arrays: dict[str, Any] = {} if full else self.cache.read()
        self.fitted = False
        self.seed = cfg.seed
        if self.arrays:
            log.info("blocking: centroids and lexical space of the last fit for %d cells (cache %s)",
                     n_cells(n, cfg), self.cache.key)

    def get(self, name: str, fit):
        """The array ``name`` (``centroids``, ``lexical_centroids``), from the cache or ``fit()``."""
        if name not in self.arrays:
            import numpy as np

            self.arrays[name] = np.asarray(fit(), np.float32)
            self.fitted = True
        return self.arrays[name]

    def lexical_space(self, fit):
        """The lexical space (:func:`_lexical_space`, or its IDF weights from the cache)."""
        from models.matching.lexical import LexicalSpace

        if "lexical_idf" in self.arrays:
            return LexicalSpace(self.arrays["lexical_idf"], seed=self.seed)
        space = fit()
        self.arrays["lexical_idf"], self.fitted = space.idf, True
        return space

    def save(self) -> None:
        if self.fitted:
            self.cache.write(self.arrays)


def _cell_hits(spark, vectors, n: int, full: bool, cfg: BlockingConfig, neighbours: int, min_cosine: float,
               counters: dict[str, Any], blocks: _Blocks, name: str):
    """Search ``vectors`` (``product_id, in_query, embedding, text_embedding, image_embedding``) in k-means
    cells of their ``embedding`` (the centroids ``blocks`` holds under ``name``): hits ``a < b`` with their
    cosines (lazy; ``counters`` gets the cells, the centroid seconds and the search's accumulators)."""
    from pyspark.sql import functions as F

    from udfs.matching import CELL_SCHEMA, HIT_SCHEMA, make_cells_fn, make_search_fn

    t = time.perf_counter()
    cents = blocks.get(name, lambda: _centroids(vectors, n, cfg))
    counters["cells"] += len(cents)
    counters["centroid_seconds"] += time.perf_counter() - t
    cells = vectors.mapInPandas(make_cells_fn(cents, cfg.probes), CELL_SCHEMA)
    if not full:  # only the cells some query probes are searched (found from the queries alone: few rows)
        probed = (vectors.where("in_query").mapInPandas(make_cells_fn(cents, cfg.probes), CELL_SCHEMA)
                  .select("cell").distinct())
        cells = cells.join(F.broadcast(probed), "cell", "left_semi")
    # Not persisted: the cells hold every vector once more (and twice for queries); the shuffle of the
    # search spills them to disk instead of keeping them in the executors' memory.
    return cells.groupBy("cell").applyInPandas(
        make_search_fn(neighbours, min_cosine, counters["largest"], counters["searched"]), HIT_SCHEMA)


def _lexical_space(flagged, n: int, cfg: BlockingConfig):
    """The lexical title space (:mod:`models.matching.lexical`), IDF fitted on a sample of ``flagged``'s titles."""
    from models.matching.lexical import LexicalSpace

    titles = _sampled(flagged.select("product_id", "title"), _sample_bound(n, cfg.lexical_sample), cfg.seed)
    sample = titles.toPandas().sort_values("product_id")["title"].tolist()   # a fixed order, as for centroids
    return LexicalSpace.fit(sample, seed=cfg.seed)


def _lexical_vectors(flagged, n: int, cfg: BlockingConfig, space=None):
    """``flagged``'s titles as lexical vectors in ``space`` (default: fitted by :func:`_lexical_space`), in the
    column layout :func:`_cell_hits` searches."""
    from udfs.matching import VECTOR_SCHEMA, make_lexical_fn

    space = space or _lexical_space(flagged, n, cfg)
    return flagged.select("product_id", "in_query", "title").mapInPandas(make_lexical_fn(space), VECTOR_SCHEMA)


def _candidates(spark, flagged, n: int, full: bool, cfg: BlockingConfig, blocks: _Blocks):
    """(candidate pairs ``a < b`` with their cosines and how they were found, the persisted pairs they are
    selected from (the caller unpersists them), the blocking's :class:`CellCounters`)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from udfs.matching import MaxParam, make_codes_udf

    counters: dict[str, Any] = {"cells": 0, "centroid_seconds": 0.0,
                                "largest": spark.sparkContext.accumulator(0, MaxParam()),
                                "searched": spark.sparkContext.accumulator(0)}
    cols = ("product_id", "in_query", "embedding", "text_embedding", "image_embedding")
    hits = (_cell_hits(spark, flagged.select(*cols), n, full, cfg, cfg.neighbours, cfg.min_cosine, counters,
                       blocks, "centroids")
            .groupBy("a", "b").agg(F.max("fused_cosine").alias("fused_cosine"),
                                   F.first("text_cosine").alias("text_cosine"),
                                   F.first("image_cosine").alias("image_cosine"))
            .withColumn("ann", F.lit(True)))

    codes = (flagged.select("product_id", "in_query", F.explode(make_codes_udf()(F.col("title"))).alias("code")))
    specific = codes.groupBy("code").count().where(F.col("count").between(2, cfg.max_key_group)).select("code")
    keyed = codes.join(specific, "code", "left_semi")
    lex = (keyed.alias("x").join(keyed.alias("y"), "code")
           .where((F.col("x.product_id") < F.col("y.product_id")) & (F.col("x.in_query") | F.col("y.in_query")))
           .select(F.col("x.product_id").alias("a"), F.col("y.product_id").alias("b")).distinct()
           .withColumn("lex", F.lit(True)))
    both = hits.join(lex, ["a", "b"], "full_outer")
    if cfg.lexical_neighbours > 0:
        space = blocks.lexical_space(lambda: _lexical_space(flagged, n, cfg))
        words = (_cell_hits(spark, _lexical_vectors(flagged, n, cfg, space), n, full, cfg, cfg.lexical_neighbours,
                            cfg.lexical_min_cosine, counters, blocks, "lexical_centroids")
                 .select("a", "b").distinct().withColumn("words", F.lit(True)))
        both = both.join(words, ["a", "b"], "full_outer")
    else:
        both = both.withColumn("words", F.lit(None).cast("boolean"))
    # Both branches below read these pairs: persist them (scalars only), or the search would run twice.
    both = both.persist(StorageLevel.MEMORY_AND_DISK)
    found = both.where(F.col("ann").isNotNull())
    # Pairs found by model number or lexical vectors alone have no cosines yet: compute them from the embeddings.
    emb = flagged.select("product_id", "embedding", "text_embedding", "image_embedding")
    lex_only = (both.where(F.col("ann").isNull()).select("a", "b", "lex", "words")
                .join(emb.toDF("a", "ea", "ta", "ia"), "a").join(emb.toDF("b", "eb", "tb", "ib"), "b")
                .select("a", "b", _dot("ea", "eb").alias("fused_cosine"), _dot("ta", "tb").alias("text_cosine"),
                        F.when(F.col("ia").isNotNull() & F.col("ib").isNotNull(), _dot("ia", "ib"))
                        .alias("image_cosine"), F.lit(None).cast("boolean").alias("ann"), "lex", "words"))
    column = {"ann": "ann", "lexical": "words", "model_number": "lex"}   # the flag each pass left on ``both``
    label = F.concat_ws("+", *(F.when(F.col(column[p]).isNotNull(), p) for p in BLOCKING_PASSES))
    cols = ["a", "b", "fused_cosine", "text_cosine", "image_cosine"]
    cell_counters = CellCounters(counters["cells"], round(counters["centroid_seconds"], 3), counters["largest"],
                                 counters["searched"])
    return found.select(*cols, label.alias("blocking")).unionByName(
        lex_only.select(*cols, label.alias("blocking"))), both, cell_counters


def _score_fn(scorer, cfg: MatchConfig, read_counter=None, spelling=None):
    """The Spark tasks' score function for ``cfg`` (the feature scorer, then the cross-encoder when there is one),
    reading the titles as ``spelling`` (:func:`_spelling`) has them."""
    from udfs.matching import CrossSpec, make_score_fn

    cross = CrossSpec(cfg.cross, cfg.cross_prefilter, cfg.torch_threads, precision=cfg.precision) if cfg.cross else None
    return make_score_fn(scorer.version, scorer.to_json(), cross=cross, read_counter=read_counter, spelling=spelling)


def _spelling(flagged=None, titles=None, types: tuple[str, ...] = ()):
    """The catalog's spelling (:class:`models.matching.spelling.CatalogSpelling`) from every product's matching
    title, knowing the product ``types``: counted by pandas from ``titles`` on the driver's path, by a Spark job over
    ``flagged`` otherwise (the same runs of letters, lower-cased, four or more; the same title keys, letters and
    digits; the same leading words)."""
    from models.matching.spelling import MIN_COUNT, MIN_LETTERS, SHARED_TITLE_MIN, CatalogSpelling, lead_words

    if titles is not None:
        return CatalogSpelling.from_titles(titles, types)
    from pyspark.sql import functions as F

    words = (flagged.select(F.explode(F.split(F.lower(F.col("title")), "[^\\p{L}]+")).alias("w"))
             .where(F.length("w") >= MIN_LETTERS).groupBy("w").count().where(F.col("count") >= MIN_COUNT))
    keys = (flagged.select(_letters_digits(F.col("title")).alias("k")).where(F.length("k") > 0)
            .groupBy("k").count().where(F.col("count") >= SHARED_TITLE_MIN))
    # the first word (up to the first space), counted here and read as lead_word reads it (letters and digits,
    # accents off) on the driver: one row per distinct first word
    firsts = (flagged.select(F.regexp_extract(F.lower(F.col("title")), "^\\s*(\\S+)", 1).alias("f"))
              .where(F.length("f") > 0).groupBy("f").count().collect())
    return CatalogSpelling.of({r["w"]: int(r["count"]) for r in words.collect()}, [r["k"] for r in keys.collect()],
                              types, lead_words([r["f"] for r in firsts], [int(r["count"]) for r in firsts]))


def _score(cand, flagged, scorer, parts: int, cfg: MatchConfig, read_counter=None, spelling=None):
    from pyspark.sql import functions as F

    from udfs.matching import SCORE_SCHEMA

    attrs = flagged.select("product_id", "title", "brand", F.col("price").cast("double").alias("price"), "currency",
                           "mpn")
    side = {s: attrs.toDF(s, f"title_{s}", f"brand_{s}", f"price_{s}", f"currency_{s}", f"mpn_{s}")
            for s in ("a", "b")}
    joined = cand.join(side["a"], "a").join(side["b"], "b").repartition(parts)
    return joined.mapInPandas(_score_fn(scorer, cfg, read_counter, spelling), SCORE_SCHEMA)


def _read_counter(spark, cfg: MatchConfig):
    """An accumulator of the pairs the cross-encoder reads (None without one). Spark adds a task's count when it
    ends: a task run again after a lost executor counts twice."""
    return spark.sparkContext.accumulator(0) if cfg.cross else None


def _count(counter) -> int | None:
    return int(counter.value) if counter is not None else None


def _driver_components(spark, edges, cc: ClusterConfig):
    """:func:`jobs.stages.graph.guarded_components` and :func:`~jobs.stages.graph.split_components` of a small
    match graph (pandas ``src, dst, score``), computed on the driver by :func:`models.matching.cluster.cluster`,
    which applies the same rules: ``(DataFrame(node, component, guard), report)`` for the linked products."""
    rows, report = _driver_clusters(edges, cc)
    return spark.createDataFrame(rows, "node string, component string, guard string"), report


def _driver_clusters(edges, cc: ClusterConfig):
    """:func:`_driver_components` as pandas: ``(node, component, guard)`` rows of the linked products and the
    report."""
    from collections import Counter

    import pandas as pd

    from models.matching.cluster import cluster

    a, b = edges["src"].astype(str).tolist(), edges["dst"].astype(str).tolist()
    score = edges["score"].to_numpy("float64")
    found = cluster(set(a) | set(b), a, b, score, cc)
    sizes = Counter(found.linked.values())
    # Products without a coherent edge stay out, as they are out of the Spark components.
    nodes = sorted(found.linked)
    rows = pd.DataFrame({"node": nodes, "component": [found.cluster_id[n] for n in nodes],
                         "guard": pd.Series([found.guard[n] for n in nodes], dtype=object)})
    report = {"rounds": 0, "oversized_components": sum(1 for v in sizes.values() if v > cc.max_size),
              "guarded_products": sum(1 for n in nodes if found.guard[n] is not None),
              "dissolved_products": sum(1 for n in nodes if found.guard[n] == "dissolved")}
    log.info("clustered %d match edges over %d products on the driver", len(a), len(nodes))
    return rows, report


_CLUSTER_COLUMNS = ["product_id", "cluster_id", "cluster_size", "guard", "matched_hash"]


def _write_clusters_on_driver(lake, ids, run_id: str, now, cfg: MatchConfig) -> ClusterStats | None:
    """:func:`_write_clusters` for a catalog held on the driver (``ids``: pandas ``product_id, matched_hash``):
    the match graph and the stored clusters read by pyarrow, the changed rows committed by pyarrow; the same
    rows as the Spark path writes. None (nothing written) when the graph has more than ``driver_cluster_edges``
    edges or the table is too large to rewrite on the driver. Through Spark, the dozen jobs of this step took
    1.6 s of a 200-product increment."""
    import pandas as pd

    from schemas.tables import PRODUCT_CLUSTERS, PRODUCT_MATCHES

    known = set(ids["product_id"])
    m = lake.read_arrow(PRODUCT_MATCHES, ["product_id_a", "product_id_b", "score"]).to_pandas()
    edges = m.loc[m["product_id_a"].isin(known) & m["product_id_b"].isin(known)].rename(
        columns={"product_id_a": "src", "product_id_b": "dst"})
    if len(edges) > cfg.driver_cluster_edges or not lake.rewritable_on_driver(PRODUCT_CLUSTERS):
        return None
    comp, report = _driver_clusters(edges, cfg.clusters)
    rows = ids.merge(comp.rename(columns={"node": "product_id"}), on="product_id", how="left")
    rows["cluster_id"] = rows["component"].where(rows["component"].notna(), rows["product_id"])
    rows["guard"] = rows["guard"].astype(object).where(rows["guard"].notna(), None)
    rows["cluster_size"] = rows.groupby("cluster_id")["product_id"].transform("size").astype("int64")
    rows = rows[_CLUSTER_COLUMNS]
    old = lake.read_arrow(PRODUCT_CLUSTERS, _CLUSTER_COLUMNS).to_pandas()
    # pandas joins null keys to null keys: the null-safe equality the Spark path's anti-join uses
    same = rows.merge(old.drop_duplicates(), on=_CLUSTER_COLUMNS, how="left", indicator=True)["_merge"] == "both"
    changed = rows.loc[~same.to_numpy()].assign(run_id=run_id,
                                                updated_at=pd.Timestamp(now).tz_convert("UTC").tz_localize(None))
    lake.upsert_arrow(PRODUCT_CLUSTERS, _arrow(lake, PRODUCT_CLUSTERS, changed), run_id, step=1)
    linked = rows[rows["cluster_size"] > 1]
    return ClusterStats(cc_rounds=report["rounds"], cluster_rows_written=len(changed),
                        clusters=int(linked["cluster_id"].nunique()), clustered_products=len(linked),
                        largest_cluster=int(rows["cluster_size"].max()) if len(rows) else 1,
                        oversized_components=report["oversized_components"],
                        guarded_products=report["guarded_products"], dissolved_products=report["dissolved_products"])


def _write_clusters(spark, lake, universe, run_id: str, now, cfg: MatchConfig) -> ClusterStats:
    """Cluster the match graph of ``universe`` and upsert the ``product_clusters`` rows that changed."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.stages.graph import coherent_edges, guarded_components, split_components
    from schemas.tables import PRODUCT_CLUSTERS, PRODUCT_MATCHES

    ids = universe.select("product_id", "matched_hash")
    cc = cfg.clusters
    edges = (lake.read(PRODUCT_MATCHES).select(F.col("product_id_a").alias("src"),
                                               F.col("product_id_b").alias("dst"), "score")
             .join(ids.select(F.col("product_id").alias("src")), "src", "left_semi")
             .join(ids.select(F.col("product_id").alias("dst")), "dst", "left_semi"))
    small = edges.limit(cfg.driver_cluster_edges + 1).toPandas() if cfg.driver_cluster_edges > 0 else None
    if small is not None and len(small) <= cfg.driver_cluster_edges:
        comp, report = _driver_components(spark, small, cc)
        edges = None
    else:
        # Only coherent matches link products (mutual best within a margin); read by the components, the guard
        # and the split: persisted once.
        edges = coherent_edges(edges, cc.min_score, cc.margin).persist(StorageLevel.MEMORY_AND_DISK)
        comp, report = guarded_components(edges, cc.max_size, cc.strict_thresholds, cfg.max_rounds,
                                          cfg.checkpoint_every)
        if cc.linkage is not None:
            comp = split_components(comp, edges, cc.linkage, cc.complete_groups)
    rows = (ids.join(comp.withColumnRenamed("node", "product_id"), "product_id", "left")
            .select("product_id", F.coalesce("component", "product_id").alias("cluster_id"), "guard", "matched_hash")
            .withColumn("cluster_size", F.count("*").over(Window.partitionBy("cluster_id"))))
    old = lake.read(PRODUCT_CLUSTERS).select(*_CLUSTER_COLUMNS)
    same = [rows[c].eqNullSafe(old[c]) for c in _CLUSTER_COLUMNS]
    cond = same[0]
    for c in same[1:]:
        cond = cond & c
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
    changed = (rows.join(old, cond, "left_anti")
               .withColumn("run_id", F.lit(run_id)).withColumn("updated_at", F.lit(now).cast("timestamp"))
               .persist(StorageLevel.MEMORY_AND_DISK))
    n_written = changed.count()
    lake.upsert(PRODUCT_CLUSTERS, changed, run_id, step=1, on_driver=n_written <= cfg.driver_commit_rows)
    sizes = rows.where("cluster_size > 1").agg(F.countDistinct("cluster_id").alias("n"), F.count("*").alias("p"),
                                               F.max("cluster_size").alias("m")).first()
    changed.unpersist()
    rows.unpersist()
    if edges is not None:
        edges.unpersist()
    return ClusterStats(cc_rounds=report["rounds"], cluster_rows_written=n_written, clusters=int(sizes["n"]),
                        clustered_products=int(sizes["p"] or 0), largest_cluster=int(sizes["m"] or 1),
                        oversized_components=report["oversized_components"],
                        guarded_products=report["guarded_products"], dissolved_products=report["dissolved_products"])


def resolve_matching(ref: str) -> str | None:
    """The pair scorer's version folder for the enrich job's ``--matching``, or None to skip the match stage.

    ``auto`` takes the shipped scorer store's current version and skips (with a log line) when there is none,
    as when the project runs from the ``--py-files`` zip without the model store; any other reference must
    resolve and verify, so a bad one fails the run before any work."""
    from models.matching.artifact import load_scorer, resolve_scorer
    from models.refs import ModelRefError
    from models.store import ModelIntegrityError

    if ref == "none":
        return None
    if ref == "auto":
        try:
            vdir = resolve_scorer(None)
        except (ModelIntegrityError, OSError) as e:
            log.info("no pair scorer (%s): the match stage is skipped", e)
            return None
        load_scorer(vdir)   # verify the shipped scorer now: a tampered one fails the run
        return str(vdir)
    try:
        vdir = resolve_scorer(ref)
        load_scorer(vdir)
    except ModelIntegrityError as e:
        raise ModelRefError(f"--matching {ref}: {e}") from None
    return str(vdir)


def resolve_pair_model(ref: str) -> str | None:
    """The cross-encoder's version folder for the enrich job's ``--pair-model``, or None to score with the
    features alone. ``auto`` takes the shipped store's current version and falls back (with a log line) when
    there is none; any other reference must resolve and verify, so a bad one fails the run before any work."""
    from models.matching.cross import resolve_cross
    from models.refs import ModelRefError
    from models.store import ModelIntegrityError, verify_version

    if ref == "none":
        return None
    try:
        vdir = resolve_cross(None if ref == "auto" else ref)
    except (ModelIntegrityError, OSError) as e:
        if ref == "auto":
            log.info("no pair cross-encoder (%s): pairs are scored on their features alone", e)
            return None
        raise ModelRefError(f"--pair-model {ref}: {e}") from None
    try:
        verify_version(vdir)   # a tampered shipped model fails the run too
    except ModelIntegrityError as e:
        raise ModelRefError(f"--pair-model {ref}: {e}") from None
    return str(vdir)


def _touched_pairs(lake, queries):
    """The stored ``product_matches`` keys with a product of ``queries`` (``product_id``) on either side: the
    pairs a run that matches those queries again replaces or removes."""
    from schemas.tables import PRODUCT_MATCHES

    old = lake.read(PRODUCT_MATCHES).select("product_id_a", "product_id_b")
    return (old.join(queries.withColumnRenamed("product_id", "product_id_a"), "product_id_a", "left_semi")
            .unionByName(old.join(queries.withColumnRenamed("product_id", "product_id_b"), "product_id_b",
                                  "left_semi")).distinct())


def _driver_touched_pairs(lake, queries):
    """:func:`_touched_pairs` on the driver: the stored ``product_matches`` keys (pandas) with a product id of
    ``queries`` (an iterable of ids) on either side, read by pyarrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from schemas.tables import PRODUCT_MATCHES

    table = lake.read_arrow(PRODUCT_MATCHES, ["product_id_a", "product_id_b"])
    wanted = pa.array(sorted(set(queries)), pa.string())
    hit = pc.or_(pc.is_in(table["product_id_a"], wanted), pc.is_in(table["product_id_b"], wanted))
    return table.filter(hit).to_pandas().drop_duplicates().reset_index(drop=True)


def _arrow(lake, spec, frame):
    """``frame`` (pandas, the spec's columns; times naive UTC, as Spark's ``createDataFrame`` takes them) as a
    pyarrow Table of the table's Delta schema."""
    import pyarrow as pa

    schema = lake.arrow_schema(spec)
    frame = frame.reindex(columns=list(spec.column_names))
    for f in schema:
        if pa.types.is_timestamp(f.type) and f.type.tz is not None and frame[f.name].dt.tz is None:
            frame[f.name] = frame[f.name].dt.tz_localize("UTC")
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def _match_pairs(spark, lake, flagged, n: int, full: bool, scorer, version: str, run_id: str, model_version: str,
                 now, cfg: MatchConfig) -> PairStats:
    """Block, score and write ``product_matches`` for the queries of ``flagged``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from schemas.tables import PRODUCT_MATCHES

    t0 = time.perf_counter()
    blocks = _Blocks(lake, model_version, n, full, cfg.blocking)
    cand, pairs, counters = _candidates(spark, flagged, n, full, cfg.blocking, blocks)
    blocks.save()
    cand = cand.persist(StorageLevel.MEMORY_AND_DISK)
    n_cand = cand.count()   # runs the search: the cell counters hold their values from here on
    pairs.unpersist()
    blocking_seconds = round(time.perf_counter() - t0, 3)
    parts = max(spark.sparkContext.defaultParallelism, math.ceil(n_cand / cfg.rows_per_partition))
    t1 = time.perf_counter()
    read = _read_counter(spark, cfg)
    new = (_score(cand, flagged, scorer, parts, cfg, read, _spelling(flagged, types=cfg.types))
           .withColumn("model_version", F.lit(model_version)).withColumn("scorer_version", F.lit(version))
           .withColumn("run_id", F.lit(run_id)).withColumn("updated_at", F.lit(now).cast("timestamp"))
           .persist(StorageLevel.MEMORY_AND_DISK))
    n_written = new.count()
    scoring_seconds = round(time.perf_counter() - t1, 3)
    touched = _touched_pairs(lake, flagged.where("in_query").select("product_id"))
    gone = touched.join(new.select("product_id_a", "product_id_b"), ["product_id_a", "product_id_b"],
                        "left_anti").persist(StorageLevel.MEMORY_AND_DISK)
    n_removed = gone.count()
    lake.upsert(PRODUCT_MATCHES, new, run_id, step=1, delete=gone,
                on_driver=n_written + n_removed <= cfg.driver_commit_rows)
    new.unpersist()
    gone.unpersist()
    cand.unpersist()
    return PairStats(candidates=n_cand, matches_written=n_written, matches_removed=n_removed, cells=counters.cells,
                     centroid_seconds=counters.centroid_seconds, largest_cell=counters.largest_cell,
                     searched_cells=counters.searched_cells, blocking_seconds=blocking_seconds,
                     scoring_seconds=scoring_seconds, cross_pairs=_count(read))


def _driver_cell_hits(pdf, cents, full: bool, probes: int, neighbours: int, min_cosine: float):
    """:func:`_cell_hits` on the driver: the same cell assignment (:func:`udfs.matching.make_cells_fn`) and the
    same per-cell search (:func:`udfs.matching.make_search_fn`) over ``pdf`` (``product_id, in_query`` and the
    three embeddings). ``(hits a, b, fused_cosine, text_cosine, image_cosine; largest cell; cells searched)``."""
    import pandas as pd

    from udfs.matching import make_cells_fn, make_search_fn

    empty = pd.DataFrame({c: [] for c in ("a", "b", "fused_cosine", "text_cosine", "image_cosine")})
    cells = list(make_cells_fn(cents, probes)(iter([pdf])))
    if not cells:
        return empty, 0, 0
    cells = cells[0]
    if not full:   # only the cells some query probes
        cells = cells[cells["cell"].isin(set(cells.loc[cells["is_query"], "cell"]))]
    search = make_search_fn(neighbours, min_cosine)
    parts, largest = [], 0
    for _, group in cells.groupby("cell", sort=True):
        largest = max(largest, int(group["is_index"].sum()))
        parts.append(search(group))
    hits = pd.concat(parts, ignore_index=True) if parts else empty
    return hits, largest, len(parts)


def _sequential_dot(x, y):
    """Row dot products summed left to right in float32, as Spark's ``aggregate`` in :func:`_dot` sums them."""
    import numpy as np

    prod = np.asarray(x, np.float32) * np.asarray(y, np.float32)
    return np.cumsum(prod, axis=1, dtype=np.float32)[:, -1] if prod.shape[1] else np.zeros(len(prod), np.float32)


def _pair_cosines(pdf, ia, ib, chunk: int = 16384) -> dict:
    """The fused, text and image cosines of the row pairs ``(ia[k], ib[k])`` of ``pdf``, as the Spark path's
    :func:`_dot` computes them for pairs the embedding cells did not find; NaN where either side has none.

    Each column becomes one matrix and the pairs' rows are gathered from it a slice at a time: stacking each
    pair's two arrays took 10 s of the 20 s of blocking in a 20,000-product run (about 160,000 pairs found by
    model number or lexical vectors alone)."""
    import numpy as np

    from models.core.arrays import stack_rows

    out = {}
    for col, name in (("embedding", "fused_cosine"), ("text_embedding", "text_cosine"),
                      ("image_embedding", "image_cosine")):
        has = np.fromiter((v is not None for v in pdf[col]), bool, count=len(pdf))
        dots = np.full(len(ia), np.nan, np.float32)
        both = np.flatnonzero(has[ia] & has[ib]) if len(ia) else np.zeros(0, np.int64)
        if len(both):
            m = stack_rows(pdf[col])
            for s in range(0, len(both), chunk):
                k = both[s:s + chunk]
                dots[k] = _sequential_dot(m[ia[k]], m[ib[k]])
        out[name] = dots
    return out


def _labelled_pairs(found):
    """The distinct pairs of ``found`` (``a, b, _pass``: one row per pass that found a pair), sorted by ``(a, b)``,
    each with its ``blocking`` label (:func:`models.matching.blocking.blocking_label`). Grouped by pandas: a
    Python set of passes per pair took 1.5 s of a 20,000-product run's blocking (459,000 pairs)."""

    bit = {p: 1 << i for i, p in enumerate(BLOCKING_PASSES)}
    masks = (found.assign(_bit=found["_pass"].map(bit)).drop_duplicates(["a", "b", "_bit"])
             .groupby(["a", "b"], sort=True)["_bit"].sum())
    labels = {m: blocking_label(p for p, b in bit.items() if m & b) for m in range(1 << len(bit))}
    cand = masks.reset_index()
    return cand.assign(blocking=cand["_bit"].map(labels)).drop(columns="_bit")


def _driver_candidates(pdf, pos: dict, n: int, full: bool, cfg: BlockingConfig, blocks: _Blocks):
    """:func:`_candidates` on the driver for the rows of ``pdf`` (``flagged`` collected, sorted by id; ``pos``: a
    product id's row), without a
    Spark job: the same centroids (the samples are functions of the ids), cells, searches, model-number keys and
    lexical pass.
    ``(candidates a, b, fused_cosine, text_cosine, image_cosine, blocking; cells; centroid seconds; largest cell;
    cells searched)``."""
    import pandas as pd

    from models.matching.blocking import code_pairs
    from models.matching.lexical import LexicalSpace
    from udfs.matching import make_lexical_fn

    cols = ["product_id", "in_query", "embedding", "text_embedding", "image_embedding"]
    t = time.perf_counter()
    cents = blocks.get("centroids", lambda: _kmeans_sample(pdf[["product_id", "embedding"]], n, cfg))
    seconds = time.perf_counter() - t
    hits, largest, searched = _driver_cell_hits(pdf[cols], cents, full, cfg.probes, cfg.neighbours, cfg.min_cosine)
    cell_count = len(cents)
    ann = (hits.groupby(["a", "b"], sort=False)
           .agg(fused_cosine=("fused_cosine", "max"), text_cosine=("text_cosine", "first"),
                image_cosine=("image_cosine", "first")).reset_index())
    ids = pdf["product_id"].tolist()
    queries = set(pdf.loc[pdf["in_query"].astype(bool), "product_id"])
    titles = [t if isinstance(t, str) else "" for t in pdf["title"]]
    found = [ann[["a", "b"]].assign(_pass="ann"),
             pd.DataFrame(list(code_pairs(ids, titles, cfg.max_key_group, queries)), columns=["a", "b"], dtype=object
                          ).assign(_pass="model_number")]
    if cfg.lexical_neighbours > 0:
        t = time.perf_counter()
        in_sample = _sampled_ids(ids, _sample_bound(n, cfg.lexical_sample), cfg.seed)   # ids are in id order
        space = blocks.lexical_space(lambda: LexicalSpace.fit(pdf.loc[in_sample, "title"].tolist(), seed=cfg.seed))
        vectors = next(iter(make_lexical_fn(space)(iter([pdf[["product_id", "in_query", "title"]]]))))
        lex_cents = blocks.get("lexical_centroids", lambda: _kmeans_sample(vectors[["product_id", "embedding"]], n,
                                                                           cfg))
        seconds += time.perf_counter() - t
        cell_count += len(lex_cents)
        words, w_largest, w_searched = _driver_cell_hits(vectors, lex_cents, full, cfg.probes,
                                                         cfg.lexical_neighbours, cfg.lexical_min_cosine)
        largest, searched = max(largest, w_largest), searched + w_searched
        found.append(words[["a", "b"]].assign(_pass="lexical"))
    cand = _labelled_pairs(pd.concat(found, ignore_index=True)).merge(ann, on=["a", "b"], how="left")
    rest = cand["fused_cosine"].isna().to_numpy()   # found by model number or lexical vectors alone
    if rest.any():
        for out, dots in _pair_cosines(pdf, cand.loc[rest, "a"].map(pos).to_numpy(),
                                       cand.loc[rest, "b"].map(pos).to_numpy()).items():
            cand.loc[rest, out] = dots
    cand = cand.astype({"fused_cosine": "float32", "text_cosine": "float32", "image_cosine": "float32"})
    return cand, cell_count, seconds, largest, searched


# The candidate rows the score function reads, as the driver path builds them (both sides' fields).
_CAND_SCHEMA = "a string, b string, fused_cosine float, text_cosine float, image_cosine float, blocking string"
_FRAME_SCHEMA = (_CAND_SCHEMA + ", "
                 + ", ".join(f"title_{s} string, brand_{s} string, price_{s} double, currency_{s} string, "
                             f"mpn_{s} string" for s in ("a", "b")))


def _match_pairs_on_driver(spark, lake, flagged, n: int, full: bool, scorer, version: str, run_id: str,
                           model_version: str, now, cfg: MatchConfig) -> PairStats:
    """:func:`_match_pairs` for a catalog that fits on the driver: the rows collected once and blocked there by
    the same functions as the Spark tasks run, the candidates scored as the Spark path scores them (:func:`_score`,
    in the warm Python workers; the feature scorer alone runs on the driver), the matches committed by pyarrow.
    The Spark path's blocking runs a dozen small jobs, each with its own scheduling and shuffles."""
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import functions as F

    from schemas.tables import PRODUCT_MATCHES
    from udfs.matching import SCORE_SCHEMA, make_score_fn

    t0 = time.perf_counter()
    listings = flagged.select("product_id", "in_query", "title", "brand",
                              F.col("price").cast("double").alias("price"), "currency", "mpn").toPandas()
    pdf = (listings.merge(_driver_embeddings(lake, model_version).drop_duplicates("product_id"), on="product_id")
           .sort_values("product_id", kind="stable").reset_index(drop=True))
    pos = {p: i for i, p in enumerate(pdf["product_id"])}
    blocks = _Blocks(lake, model_version, n, full, cfg.blocking)
    cand, cells, centroid_seconds, largest, searched = _driver_candidates(pdf, pos, n, full, cfg.blocking, blocks)
    blocks.save()
    blocking_seconds = round(time.perf_counter() - t0, 3)
    t1 = time.perf_counter()
    read = _read_counter(spark, cfg)
    spelling = _spelling(titles=pdf["title"], types=cfg.types)
    cols = ["a", "b", "fused_cosine", "text_cosine", "image_cosine", "blocking"]
    if cfg.cross and len(cand) > cfg.rows_per_partition:
        # The cross-encoder reads the pairs in the Python workers, on every core: they imported torch and loaded
        # models for the embed and attribute stages, so the driver never imports torch (5-10 s of a cold run).
        # Many pairs go as Spark's own path sends them (_score: the listings joined in, one task per
        # ``rows_per_partition`` pairs). Sent from the driver with the listings attached, in one slice a core,
        # the 459,000 candidates of a 20,000-product run took 75-79 s to score against 48 s.
        rows = spark.createDataFrame(cand[cols], _CAND_SCHEMA)
        parts = max(spark.sparkContext.defaultParallelism, math.ceil(len(cand) / cfg.rows_per_partition))
        new = _score(rows, flagged, scorer, parts, cfg, read, spelling).toPandas()
        new = new if len(new) else None
    else:
        frame = cand[cols].copy()
        for side in ("a", "b"):
            idx = frame[side].map(pos).to_numpy()
            for f in ("title", "brand", "price", "currency", "mpn"):
                frame[f"{f}_{side}"] = pdf[f].to_numpy()[idx]
        if cfg.cross and len(frame):   # few pairs (an increment): sent with their listings, no Spark join
            new = (spark.createDataFrame(frame, _FRAME_SCHEMA)
                   .mapInPandas(_score_fn(scorer, cfg, read, spelling), SCORE_SCHEMA).toPandas())
            new = new if len(new) else None
        else:   # the feature scorer alone: numpy on the driver, in the Arrow batches a Spark task would get
            score = make_score_fn(scorer.version, scorer.to_json(), spelling=spelling)
            chunk = 2048
            parts = list(score(frame.iloc[s:s + chunk] for s in range(0, len(frame), chunk)))
            new = pd.concat(parts, ignore_index=True) if parts else None
    scoring_seconds = round(time.perf_counter() - t1, 3)
    touched = _driver_touched_pairs(lake, pdf.loc[pdf["in_query"].astype(bool), "product_id"])
    kept = set() if new is None else set(zip(new["product_id_a"], new["product_id_b"], strict=True))
    gone = touched[[(a, b) not in kept for a, b in zip(touched["product_id_a"], touched["product_id_b"],
                                                        strict=True)]]
    n_written, n_removed = (0 if new is None else len(new)), len(gone)
    if n_written or n_removed:
        if new is None:
            new = pd.DataFrame({c: [] for c in ("product_id_a", "product_id_b")})
        new = new.assign(model_version=model_version, scorer_version=version, run_id=run_id,
                         updated_at=pd.Timestamp(now).tz_convert("UTC").tz_localize(None))
        new = new.reindex(columns=list(PRODUCT_MATCHES.column_names))
        if n_written + n_removed <= cfg.driver_commit_rows and lake.rewritable_on_driver(PRODUCT_MATCHES):
            # Arrow from pandas, committed by pyarrow: no Spark job (they took 1.3 s of a 200-product increment)
            keys = pd.concat([new[["product_id_a", "product_id_b"]], gone], ignore_index=True).drop_duplicates()
            lake.upsert_arrow(PRODUCT_MATCHES, _arrow(lake, PRODUCT_MATCHES, new), run_id, step=1,
                              replaced=pa.Table.from_pandas(keys, preserve_index=False))
        else:
            rows = (spark.createDataFrame(new, PRODUCT_MATCHES.schema) if len(new)
                    else spark.createDataFrame([], PRODUCT_MATCHES.schema))
            drop = spark.createDataFrame(list(gone.itertuples(index=False, name=None)),
                                         "product_id_a string, product_id_b string")
            lake.upsert(PRODUCT_MATCHES, rows, run_id, step=1, delete=drop)
    return PairStats(candidates=len(cand), matches_written=n_written, matches_removed=n_removed, cells=cells,
                     centroid_seconds=round(centroid_seconds, 3), largest_cell=largest, searched_cells=searched,
                     blocking_seconds=blocking_seconds, scoring_seconds=scoring_seconds, cross_pairs=_count(read))


def _recluster(spark, lake, flagged, n: int, n_q: int, run_id: str, now, cfg: MatchConfig) -> ClusterStats:
    """Recluster the catalog, or, on a quiet night, count the clusters the last run left."""
    from pyspark.sql import functions as F

    from schemas.tables import PRODUCT_CLUSTERS

    clusters = lake.read(PRODUCT_CLUSTERS)
    if n_q == 0 and clusters.count() == n:
        # Nothing new or changed, and every clustered product is still in the catalog: the matches and the
        # components are what the last run left (a quiet night costs a count, not a connected-components run).
        sizes = clusters.where("cluster_size > 1").agg(
            F.countDistinct("cluster_id").alias("n"), F.count("*").alias("p"), F.max("cluster_size").alias("m")).first()
        log.info("matching: nothing new to match; clusters unchanged")
        return ClusterStats(cc_rounds=0, cluster_rows_written=0, clusters=int(sizes["n"]),
                            clustered_products=int(sizes["p"] or 0), largest_cluster=int(sizes["m"] or 1))
    if n <= cfg.driver_products and cfg.driver_cluster_edges > 0:
        done = _write_clusters_on_driver(lake, flagged.select("product_id", "matched_hash").toPandas(), run_id, now,
                                         cfg)
        if done is not None:
            return done
    return _write_clusters(spark, lake, flagged, run_id, now, cfg)


def same_text_tower(a: str, b: str, root: Path | None = None) -> bool:
    """Whether the encoder versions ``a`` and ``b`` (``store:VERSION``, as the tables name them) embed titles with
    the same text tower: one carries the other's, or both another's (``models.store.text_tower_origin``; the
    versions looked up in ``root``, by default the shipped store). False when either is not found there."""
    from models.store import DEFAULT_STORE, text_tower_origin

    if not (a.startswith("store:") and b.startswith("store:")):
        return False
    origins = {text_tower_origin(root or DEFAULT_STORE, v.split(":", 1)[1]) for v in (a, b)}
    return len(origins) == 1 and None not in origins


def match_and_cluster(spark, lake, products, run_id: str, model_version: str, cfg: MatchConfig | None = None,
                      changed_ids=None) -> dict[str, Any]:
    """Match the new and changed products of ``products`` (valid catalog rows: ``product_id, title, brand,
    price, currency``) against the catalog, then recluster; writes ``product_matches`` and
    ``product_clusters`` under ``lake``. ``changed_ids`` (a DataFrame with ``product_id``) adds queries.
    Returns counts and timings for the run summary (:meth:`MatchStats.as_dict`)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from models.matching.artifact import load_scorer
    from schemas.tables import PRODUCT_CLUSTERS, PRODUCT_MATCHES

    t_start = time.perf_counter()
    cfg = cfg or MatchConfig()
    scorer = load_scorer(cfg.scorer)
    trained_with = scorer.meta.get("encoder_version")
    if trained_with not in (None, model_version):
        if same_text_tower(trained_with, model_version):
            log.info("pair scorer %s was trained with %s title embeddings; the catalog's encoder %s carries that "
                     "encoder's text tower, so its title embeddings are the same", scorer.version, trained_with,
                     model_version)
        else:
            log.info("pair scorer %s was trained with %s title embeddings; the catalog's are %s (another text "
                     "tower: the text cosine it reads may be scaled differently)", scorer.version, trained_with,
                     model_version)
    now = dt.datetime.now(dt.timezone.utc)
    lake.ensure(PRODUCT_MATCHES)
    lake.ensure(PRODUCT_CLUSTERS)
    universe = _universe(lake, products, model_version)
    version, threshold = scorer.version, scorer.threshold
    if cfg.cross:
        from models.matching.cross import cross_info

        cross_version, threshold = cross_info(cfg.cross)
        version = f"{scorer.version}+{cross_version}"
    # the decision rules too: a lake matched before them (or under other ones) is matched again
    version = (f"{version}+{SAME_LISTING_RULE}+{SAME_PART_NUMBER_RULE}+{SPELLING_RULE}+{DIFFERENT_PRODUCTS_RULE}"
               f"+{type_rule_version(cfg.types)}+{LEAD_RULE}")
    flagged, full = _queries(lake, universe, version, cfg, changed_ids)
    flagged = flagged.persist(StorageLevel.MEMORY_AND_DISK)
    counts = flagged.agg(F.count("*").alias("n"), F.sum(F.col("in_query").cast("long")).alias("q")).first()
    n, n_q = int(counts["n"]), int(counts["q"] or 0)
    mode = "full" if full else "incremental"
    log.info("matching: %d products, %d queries (%s)", n, n_q, mode)
    prepare_seconds = round(time.perf_counter() - t_start, 3)
    on_driver = n <= cfg.driver_products and n_q <= cfg.driver_queries
    pairs = PairStats()
    if n_q and n >= 2 and on_driver:
        pairs = _match_pairs_on_driver(spark, lake, flagged, n, full, scorer, version, run_id, model_version, now,
                                       cfg)
    elif n_q and n >= 2:
        vectors = _with_embeddings(lake, flagged, model_version).persist(StorageLevel.MEMORY_AND_DISK)
        pairs = _match_pairs(spark, lake, vectors, n, full, scorer, version, run_id, model_version, now, cfg)
        vectors.unpersist()
    t2 = time.perf_counter()
    clustering = _recluster(spark, lake, flagged, n, n_q, run_id, now, cfg)
    clustering_seconds = round(time.perf_counter() - t2, 3)
    flagged.unpersist()
    stats = MatchStats(mode=mode, products=n, queries=n_q, scorer_version=version, threshold=threshold,
                       prepare_seconds=prepare_seconds, pairs=pairs, clustering=clustering,
                       clustering_seconds=clustering_seconds, seconds=round(time.perf_counter() - t_start, 3))
    summary = stats.as_dict()
    log.info("matching done: %s", summary)
    return summary
