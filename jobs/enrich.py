"""Enrich a product catalog: validate, embed what changed, upsert Delta tables.

    spark-submit jobs/enrich.py [--catalog PATH] [--lake DIR] [--image-root DIR] [--model REF] [--run-id ID]

With no arguments it enriches the sample catalog shipped in ``jobs/sample_catalog`` into ``./lake``.
Every input row is accounted for: enriched, unchanged since the last run (same content hash and model
version), or quarantined with a reason. Re-running a run id changes nothing.

A product is unchanged only when its ``product_embeddings`` row (same content hash and model version) was
written by a run that ``enrichment_runs`` records as ``succeeded``: such a run committed every per-product
table before it recorded its success, so the product has its rows in all of them (also where it has no
attribute row at all). A run that stopped without recording an end (killed, machine lost) is marked
``abandoned`` by the next run, which redoes the products it wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as a script (spark-submit jobs/enrich.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    # spark-submit puts pyspark's and py4j's zips first on the path; imported from them, pyspark's modules are
    # compiled from source in every run (0.8 s of the driver's CPU). Where they copy the installed package, it
    # imports instead (as in the workers: udfs/daemon.py).
    from udfs.daemon import prefer_installed_pyspark

    prefer_installed_pyspark()

from jobs.lake.runlog import check_run_id  # noqa: E402
from jobs.make_sample_catalog import DEFAULT_SAMPLE_DIR  # noqa: E402
from jobs.runtime.exits import fail  # noqa: E402
from jobs.stages.heads import HeadsConfig  # noqa: E402
from models.core.errors import EXIT_FAILED, EXIT_OK, EXIT_UNUSABLE, CatalogEnrichError, exit_code  # noqa: E402
from models.core.faults import checkpoint, publish_driver_pid  # noqa: E402

__all__ = ["EnrichConfig", "RunContext", "RunSummary", "main", "parse_args", "run"]

log = logging.getLogger("jobs.enrich")   # the module name, also when spark-submit runs the file as __main__

DEFAULT_CATALOG = DEFAULT_SAMPLE_DIR / "catalog.parquet"
ROWS_PER_PARTITION = 20_000
MIN_ROWS_PER_TASK = 64
# An update of at most this many products is committed from the driver (pyarrow), without the Spark jobs of a
# distributed rewrite: the commits of a 1% run over 20k products went from 9.5 s to 3.8 s (bench/enrich_e2e.py).
DRIVER_COMMIT_PRODUCTS = 50_000
# ... and at most one product per this many bytes of the driver JVM's heap: the commit collects the embeddings into
# the driver JVM first (three float arrays a product). `spark-submit jobs/enrich.py` with Spark's default 1 GiB
# driver and its default collector ran out of heap there on the first run of 20,000 products with photos (10,000
# passed); the job's own sessions start the driver with 3 GiB (jobs.runtime.spark_session). The same limit holds
# for the heads' tables and the quarantine, which the commit stage collects at the same time: with the embeddings
# committed through Spark, a 1 GiB driver still ran out of heap collecting the attribute rows of 50,000 products
# (196,000 open values beside the heads' rows) while the embeddings were written.
DRIVER_COMMIT_HEAP_BYTES_PER_PRODUCT = 96 * 1024


def driver_commit_limit(heap_bytes: int | None) -> int:
    """How many products' rows (embeddings, heads' tables, quarantine) the commit stage may collect on the driver,
    for a driver JVM of ``heap_bytes`` (None: unknown, the plain limit)."""
    if heap_bytes is None:
        return DRIVER_COMMIT_PRODUCTS
    return max(0, min(DRIVER_COMMIT_PRODUCTS, heap_bytes // DRIVER_COMMIT_HEAP_BYTES_PER_PRODUCT))


def wide_rows_storage(spark, n_rows: int):
    """The storage level for the embed stage's persisted rows (three float arrays a product, about 5 KB): memory
    first, spilling to disk; but disk only where the tasks run in the driver JVM (local mode) and the run holds
    more products than :func:`driver_commit_limit` allows that heap. With Spark's default 1 GiB driver a first
    run of 100,000 products with photos ran out of heap caching them (500 MB of rows beside a 434 MB storage pool,
    in chunks of 4 MB that the default collector must place whole); read back from the local disk, they cost the
    later stages little."""
    from pyspark import StorageLevel

    local = spark.sparkContext.master.startswith("local")
    if local and n_rows > driver_commit_limit(_driver_heap_bytes(spark)):
        return StorageLevel.DISK_ONLY
    return StorageLevel.MEMORY_AND_DISK


def _driver_heap_bytes(spark) -> int | None:
    """The driver JVM's maximum heap (``Runtime.maxMemory``), or None when it cannot be read."""
    try:
        return int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
    except Exception:   # noqa: BLE001 - a gateway without the call: fall back to the plain limit
        return None


T = TypeVar("T")


@dataclass(frozen=True)
class EnrichConfig:
    catalog: str = str(DEFAULT_CATALOG)
    lake: str = "lake"
    image_root: str | None = None          # default: the folder holding the catalog
    allowed_image_roots: tuple[str, ...] = ()
    model: str = "default"
    run_id: str = ""
    batch_size: int = 64
    device: str | None = None
    decode_threads: int = 2
    encoder_loader: str = "models.encoders:load_encoder"
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    attributes: str = "auto"               # open attribute extractor: auto, none, or a reference
    attribute_schema: str | None = None    # a user's per-category attribute schema (JSON) for the extractor
    precision: str = "auto"                # auto | fp32 | bf16: the models measured to hold it run in bf16
    matching: str = "auto"                 # pair scorer for duplicate matching: auto, none, or a reference
    pair_model: str = "auto"               # cross-encoder over the scorer's likely pairs: auto, none, or a reference
    rehash_images: bool = False            # read and hash every image, ignoring the lake's image stat cache

    def resolved_image_root(self) -> str:
        return str(Path(self.image_root or Path(self.catalog).resolve().parent).resolve())


@dataclass
class RunSummary:
    run_id: str
    status: str
    model_version: str
    model_description: str
    lake: str
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    message: str = ""
    images: dict[str, int] = field(default_factory=dict)   # checked / read by this process (not recorded)

    def accounted(self) -> bool:
        c = self.counts
        return c.get("read", -1) == c.get("enriched", 0) + c.get("unchanged", 0) + c.get("quarantined", 0)


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def parse_args(argv: list[str] | None = None) -> EnrichConfig:
    p = argparse.ArgumentParser(prog="spark-submit jobs/enrich.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default=str(DEFAULT_CATALOG), help="catalog snapshot: Parquet file/folder or Delta")
    p.add_argument("--lake", default="lake", help="folder of the output Delta tables (default: ./lake)")
    p.add_argument("--image-root", help="folder that relative image URIs resolve against (default: the "
                                        "catalog's folder); images are read only from under it")
    p.add_argument("--allowed-image-root", action="append", default=[], dest="allowed_image_roots",
                   help="another folder absolute image paths may point into (repeatable)")
    p.add_argument("--model", default="default", help="model reference: default, builtin:NAME, "
                                                      "open_clip:ARCH/TAG, hf-hub:ORG/REPO or a model folder")
    p.add_argument("--run-id", default="", help="idempotency key of the run (default: a new time-based id)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per model forward pass (default: 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--decode-threads", type=int, default=2, help="image decode threads per worker")
    p.add_argument("--heads", default="auto", help="head bundle: auto (the store's bundle for the encoder), none, "
                                                  "or a bundle folder")
    p.add_argument("--categories", default="auto", choices=("auto", "head", "zero-shot", "none"),
                   help="category source: auto = the head when its labels fit the catalog, else zero-shot")
    p.add_argument("--taxonomy", default=None, help="category names for zero-shot: a taxonomy Parquet "
                                                    "(path_<lang> columns) or a text file, one name per line "
                                                    "(default: the catalog's own seller categories)")
    p.add_argument("--taxonomy-language", default="en", help="language column of a Parquet taxonomy")
    p.add_argument("--adult-terms", default=None, help="adult term list JSON (default: the shipped list)")
    p.add_argument("--top-k", type=int, default=5, help="labels kept in product_categories.top_k")
    p.add_argument("--attributes", default="auto",
                   help="open attribute extractor: auto (the store's current one, skipped when the store has "
                        "none), none, store:VERSION or a version folder")
    p.add_argument("--attribute-schema", default=None,
                   help="JSON file {\"categories\": {seller category: {attribute: question text}}} naming the "
                        "attributes to ask per category (\"*\": any other category); default: the schema the "
                        "extractor learnt from its train data")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="inference precision: auto (bf16 where the CPU has AVX-512 BF16/AMX or the GPU supports it, "
                        "else fp32), fp32 or bf16; applies to the models measured to hold their outputs in bf16 "
                        "(the attribute extractor, the pair cross-encoder and the encoder's text tower); the image "
                        "tower runs fp32 on a CPU")
    p.add_argument("--matching", default="auto",
                   help="duplicate matching's pair scorer: auto (the store's current one, skipped when the store "
                        "has none), none, a scorer version folder or a scorer store")
    p.add_argument("--pair-model", default="auto",
                   help="cross-encoder that reads both listings of each likely pair: auto (the store's current "
                        "one; features alone when the store has none), none, store:VERSION or a version folder")
    p.add_argument("--rehash-images", action="store_true",
                   help="read and hash every image again, ignoring the stat cache that lets an unchanged image "
                        "file (same size, times and inode) keep its hash unread")
    p.add_argument("--encoder-loader", default=EnrichConfig.encoder_loader, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if a.top_k < 1:
        p.error("--top-k must be at least 1")
    return EnrichConfig(
        catalog=a.catalog, lake=a.lake, image_root=a.image_root, allowed_image_roots=tuple(a.allowed_image_roots),
        model=a.model, run_id=a.run_id or new_run_id(), batch_size=a.batch_size, device=a.device,
        decode_threads=a.decode_threads, encoder_loader=a.encoder_loader,
        heads=HeadsConfig(heads=a.heads, categories=a.categories, taxonomy=a.taxonomy,
                          taxonomy_language=a.taxonomy_language, adult_terms=a.adult_terms, top_k=a.top_k),
        attributes=a.attributes, attribute_schema=a.attribute_schema, matching=a.matching, pair_model=a.pair_model,
        rehash_images=a.rehash_images, precision=a.precision)


def describe_model(cfg: EnrichConfig) -> tuple[str, str]:
    """(version, description) of the model, without loading weights for the real loader."""
    if cfg.encoder_loader == EnrichConfig.encoder_loader:
        from models.refs import parse_model_ref

        ref = parse_model_ref(cfg.model)
        return ref.version, ref.description
    from udfs.model_cache import import_object

    enc = import_object(cfg.encoder_loader)(cfg.model, "cpu")
    return enc.version, enc.version


class _Stages:
    """Times each stage, logs progress, and names the Spark jobs so the Spark UI says what runs."""

    def __init__(self, spark):
        self.spark = spark
        self.timings: dict[str, float] = {}
        self._progress = None

    def count(self, n: int, unit: str = "rows") -> None:
        """What the open stage processed: its last log line gives the count and the rate."""
        if self._progress is not None:
            self._progress.count(n, unit)

    def watch(self, counter, total: int, unit: str = "products") -> None:
        """Rows done so far (a Spark accumulator) out of ``total``, for the open stage's heartbeat."""
        if self._progress is not None:
            self._progress.watch(counter, total, unit)

    @contextlib.contextmanager
    def __call__(self, name: str):
        from jobs.runtime.progress import StageProgress, heartbeat

        t = time.perf_counter()
        self.spark.sparkContext.setJobDescription(f"catalog-enrich: {name}")
        log.info("stage %s ...", name)
        self._progress = progress = StageProgress(name)
        try:
            with heartbeat(self.spark, name, progress=progress):
                yield
        finally:
            self.timings[name] = round(time.perf_counter() - t, 3)
            log.info("stage %s done in %.1f s%s", name, self.timings[name], progress.describe(self.timings[name]))
            self._progress = None
            self.spark.sparkContext.setJobDescription(None)


def _driver_encoder(cfg: EnrichConfig):
    """The encoder on the driver (only to embed zero-shot category names, once per run)."""
    from udfs.model_cache import cached, import_object

    return cached(("driver-encoder", cfg.encoder_loader, cfg.model),
                  lambda: import_object(cfg.encoder_loader)(cfg.model, "cpu"))


def embed_partitions(n_rows: int, parallelism: int) -> int:
    """Tasks for the model stages: every core busy on a large catalog, but no more tasks than rows to share (a
    task of a pandas UDF has a fixed cost of about 0.1 s, which 8 tasks for the 30 products of a small
    incremental run paid for nothing)."""
    return max(1, min(parallelism, math.ceil(n_rows / MIN_ROWS_PER_TASK)), math.ceil(n_rows / ROWS_PER_PARTITION))


def side_by_side(spark, stage_name: str, calls: dict[str, Callable[[], T]]) -> dict[str, T]:
    """Run independent table commits concurrently, from driver threads, and return their results by name.

    A commit is mostly waiting (Spark job scheduling, small writes, the Delta log), so several of them overlap
    well even on two cores: the commit stage of a small incremental run took 10.7 s one after another. The
    first error is raised after every commit has finished; each commit is idempotent, so a rerun repeats none
    that reached the log.
    """
    from concurrent.futures import ThreadPoolExecutor

    def labelled(name: str, call: Callable[[], T]) -> Callable[[], T]:
        def go() -> T:
            spark.sparkContext.setJobDescription(f"catalog-enrich: {stage_name}: {name}")
            try:
                return call()
            finally:
                spark.sparkContext.setJobDescription(None)
        return go

    with ThreadPoolExecutor(max_workers=max(1, len(calls)), thread_name_prefix=stage_name) as pool:
        futures = {name: pool.submit(labelled(name, call)) for name, call in calls.items()}
        return {name: f.result() for name, f in futures.items()}


def _run_row(summary: RunSummary, cfg: EnrichConfig, started: dt.datetime, finished: dt.datetime | None) -> dict:
    """The run's enrichment_runs row (written by :meth:`jobs.lake.lakehouse.Lake.upsert_rows`, without Spark)."""
    return {"run_id": summary.run_id, "status": summary.status, "model_version": summary.model_version,
            "catalog": cfg.catalog, "started_at": started, "finished_at": finished,
            "counts": [(k, int(v)) for k, v in summary.counts.items()],
            "timings": [(k, float(v)) for k, v in summary.timings.items()], "message": summary.message}


@dataclass(frozen=True)
class RunContext:
    """What every stage of a run reads: the session, the configuration, the lake, the stage timer, the model
    version, and the torch threads a model task may use."""

    spark: Any
    cfg: EnrichConfig
    lake: Any          # jobs.lake.lakehouse.Lake (imported with Spark, inside the run)
    stage: _Stages
    version: str
    task_cpus: int


@dataclass(frozen=True)
class _Validated:
    validated: Any     # every row with its reason_code (persisted until the run ends)
    valid: Any
    rejected: Any
    n_read: int
    n_rejected: int
    images: int        # rows with an image hash
    images_read: int   # of them, images read and hashed by this run


@dataclass(frozen=True)
class _Embedded:
    embedded: Any      # the changed products with the model UDF's struct ``_e`` (persisted until matching ends)
    plan: Any          # the heads' plan (jobs.stages.heads.plan_heads)
    heads_note: str
    n_failed: int
    n_adult: int


def run(spark, cfg: EnrichConfig) -> RunSummary:
    """Enrich ``cfg.catalog`` into ``cfg.lake``; returns the run summary (also written to enrichment_runs).

    The stages, in order, each with a kill point after it (tests/reliability.py names them): validate, select
    changed, embed (the heads run in the encoder's pass), heads, attributes, commit, match, index, record."""
    from jobs.lake.lakehouse import Lake
    from jobs.runtime.spark_session import start_python_workers
    from jobs.stages.heads import resolve_extractor
    from jobs.stages.matching import resolve_matching, resolve_pair_model
    from schemas.tables import ENRICHMENT_RUNS

    check_run_id(cfg.run_id)   # it names report files: nothing is written under an unsafe one
    start_python_workers(spark)   # their daemon imports torch while the driver reads the lake
    started, t_start = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    version, description = describe_model(cfg)
    extractor = resolve_extractor(cfg.attributes)   # a bad reference fails here, before any work
    schema_json = _attribute_schema(cfg.attribute_schema)   # and so does a bad schema file
    scorer = resolve_matching(cfg.matching)
    cross = resolve_pair_model(cfg.pair_model) if scorer is not None else None
    lake = Lake(spark, cfg.lake)
    done = _finished_run(lake, cfg, description)
    if done is not None:  # a repeat of a run that succeeded (it crashed after its last commit, or a retry)
        log.info("run %s already succeeded; nothing to do", cfg.run_id)
        _write_report(lake.root, done)
        return done
    abandoned = _abandon_interrupted(lake, cfg)
    summary = RunSummary(cfg.run_id, "running", version, description, str(lake.root))
    ctx = RunContext(spark, cfg, lake, _Stages(spark), version, int(spark.conf.get("spark.task.cpus", "1")))
    lake.upsert_rows(ENRICHMENT_RUNS, [_run_row(summary, cfg, started, None)], cfg.run_id, step=1)
    checkpoint("run_started")

    v = _validate(ctx)
    checkpoint("validated")
    todo, n_todo = _select_changed(ctx, v)
    checkpoint("selected")
    now = dt.datetime.now(dt.timezone.utc)
    e = _embed(ctx, v, todo, n_todo)
    checkpoint("embedded")
    scored, head_frames = _score_heads(ctx, e, n_todo, now)
    checkpoint("heads_scored")
    opened = _extract_attributes(ctx, extractor, scored, n_todo - e.n_failed, head_frames, now, schema_json)
    heads_note = e.heads_note + f"; open attributes: {extractor[1] if extractor else 'none'}"
    emb, qua = _commit_tables(ctx, v, e, scored, head_frames, n_todo, now)
    if opened is not None:
        opened.unpersist()
    checkpoint("tables_committed")
    matched = _match(ctx, scorer, cross, v.valid, e.plan.types)
    e.embedded.unpersist()
    checkpoint("matched")
    v.validated.unpersist()
    index_note = _refresh_index(ctx)

    _finish_summary(summary, ctx, v, e, n_todo, matched, list(head_frames), scorer, t_start)
    summary.message = (f"{summary.message}embeddings v{emb.version if emb.version is not None else '-'}, "
                       f"quarantine v{qua.version if qua.version is not None else '-'}; {heads_note}; "
                       f"matching: {Path(scorer).name if scorer else 'none'}"
                       + (f" + {Path(cross).name}" if cross else "") + f"; {index_note}"
                       + (f"; completed abandoned run {', '.join(abandoned)}" if abandoned else ""))
    finished = dt.datetime.now(dt.timezone.utc)
    lake.upsert_rows(ENRICHMENT_RUNS, [_run_row(summary, cfg, started, finished)], cfg.run_id, step=2)
    checkpoint("run_recorded")
    _write_report(lake.root, summary)
    from jobs.read.report import write_run_report

    write_run_report(lake.root, summary.run_id, image_root=cfg.resolved_image_root())
    return summary


def _validate(ctx: RunContext) -> _Validated:
    """Read the catalog, check every row and its image (hashing only images changed since the stat cache)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from jobs.lake.image_stats import ImageStats
    from jobs.stages.validate import read_catalog, validate
    from udfs.images import ImagePolicy, make_inspect_udf

    cfg, stage = ctx.cfg, ctx.stage
    policy = ImagePolicy(image_root=cfg.resolved_image_root(), allowed_roots=cfg.allowed_image_roots)
    with stage("validate"):
        catalog = read_catalog(ctx.spark, cfg.catalog, flag_problems=True)
        image_stats = ImageStats(ctx.lake.root)
        known = None if cfg.rehash_images else image_stats.read(ctx.spark)
        validated = validate(catalog, make_inspect_udf(policy), known=known).persist(StorageLevel.MEMORY_AND_DISK)
        tally = validated.agg(F.count(F.lit(1)).alias("read"),
                              F.count("reason_code").alias("rejected"),
                              F.count(F.when(F.col("_image_stat.image_read")
                                             & F.col("_image_stat.image_checked_ns").isNotNull(), 1)
                                      ).alias("images_read"),
                              F.count("image_sha256").alias("images")).first()
        n_read, n_rejected = tally["read"], tally["rejected"]
        rejected = validated.where(F.col("reason_code").isNotNull())
        valid = validated.where(F.col("reason_code").isNull())
        log.info("read %d rows: %d valid, %d rejected by validation; %d of %d images read, the others unchanged "
                 "since they were hashed", n_read, n_read - n_rejected, n_rejected, tally["images_read"],
                 tally["images"])
        if tally["images_read"]:
            image_stats.write(validated)
        stage.count(n_read, "rows")
    return _Validated(validated, valid, rejected, n_read, n_rejected, tally["images"], tally["images_read"])


def _select_changed(ctx: RunContext, v: _Validated):
    """The valid products new or changed since the last succeeded run (persisted: the embed stage reads them)."""
    from pyspark import StorageLevel

    from jobs.stages.validate import changed_products

    with ctx.stage("select changed"):
        # Only rows of succeeded runs count as done (see the module doc): a repeat of a crashed run, or the
        # next run after an abandoned one, redoes their products instead of calling them unchanged and
        # leaving the tables committed after product_embeddings without them.
        todo = changed_products(v.valid, _completed_embeddings(ctx.lake), ctx.version, this_run=ctx.cfg.run_id
                                ).persist(StorageLevel.MEMORY_AND_DISK)   # the embed stage reads it again
        n_todo = todo.count()
        log.info("%d products new or changed, %d unchanged", n_todo, v.n_read - v.n_rejected - n_todo)
        ctx.stage.count(v.n_read - v.n_rejected, "products")
    return todo, n_todo


def _embed(ctx: RunContext, v: _Validated, todo, n_todo: int) -> _Embedded:
    """One pass of the models: the heads run in the encoder's UDF, on the embeddings it just made."""
    from pyspark.sql import functions as F

    from jobs.stages.heads import plan_heads
    from udfs.embed import EmbedConfig
    from udfs.heads import make_embed_heads_udf

    cfg, spark, stage = ctx.cfg, ctx.spark, ctx.stage
    with stage("embed"):
        counts = {r["category"]: int(r["count"]) for r in
                  v.valid.where(F.col("category").isNotNull()).groupBy("category").count().collect()}
        plan, heads_note = plan_heads(cfg.heads, ctx.version, counts, lambda: _driver_encoder(cfg).embed_texts)
        parallelism = spark.sparkContext.defaultParallelism
        embed_cfg = EmbedConfig(
            model_ref=cfg.model, batch_size=cfg.batch_size, device=cfg.device, decode_threads=cfg.decode_threads,
            torch_threads=ctx.task_cpus, loader=cfg.encoder_loader, precision=cfg.precision)
        parts = embed_partitions(n_todo, parallelism)
        done = spark.sparkContext.accumulator(0)   # products the model UDF finished, for the heartbeat
        stage.watch(done, n_todo, "products")
        # Sorted within partitions: the order rows arrive from a shuffle varies from run to run, and batched
        # float32 matrix products give a row last-bit different results in different company. Fixed batches
        # make a repeated (crashed, retried) run write exactly the numbers an uninterrupted one would.
        embedded = (todo.repartition(parts, "product_id").sortWithinPartitions("product_id")
                    .withColumn("_e", make_embed_heads_udf(embed_cfg, plan, done)(F.col("title"), F.col("image_path"),
                                                                            F.col("description")))
                    .persist(wide_rows_storage(spark, n_todo)))
        t = time.perf_counter()
        tally_e = embedded.agg(F.count(F.when(F.col("_e.error").isNotNull(), 1)).alias("failed"),
                               F.count(F.when(F.col("_e.is_adult"), 1)).alias("adult")).first()
        n_failed, n_adult = tally_e["failed"], tally_e["adult"]
        todo.unpersist()
        rate = n_todo / max(time.perf_counter() - t, 1e-9)
        log.info("embedded %d products (%.1f products/s), %d failed image decoding; heads applied: %d flagged "
                 "adult", n_todo - n_failed, rate, n_failed, n_adult)
        stage.count(n_todo, "products")
    return _Embedded(embedded, plan, heads_note, n_failed, n_adult)


def _score_heads(ctx: RunContext, e: _Embedded, n_todo: int, now: dt.datetime):
    """What the heads said (in the embed pass) as the rows of their three tables: (scored products, frames)."""
    from pyspark.sql import functions as F

    from jobs.stages.heads import heads_tables

    with ctx.stage("heads"):
        scored = e.embedded.where(F.col("_e.error").isNull()).withColumn("_h", F.col("_e"))
        head_frames = heads_tables(scored, e.plan, ctx.version, ctx.cfg.run_id, now)
        ctx.stage.count(n_todo - e.n_failed, "products")
    return scored, head_frames


def _one_row_per_value(rows):
    """One row per (product, attribute, value), the table's key: where a closed head and the open extractor give
    the same value (both name it ``colour`` now), the more confident row stays."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("product_id", "attribute", "value").orderBy(F.col("confidence").desc_nulls_last(),
                                                                         F.col("method"))
    return rows.withColumn("_r", F.row_number().over(w)).where("_r = 1").drop("_r")


def _attribute_schema(path: str | None) -> str | None:
    """A user's attribute schema file, read and checked on the driver; its JSON text goes to the workers."""
    if not path:
        return None
    from models.attributes.schema import AttributeSchema
    from models.refs import ModelRefError

    try:
        schema = AttributeSchema.load(path)
    except ValueError as e:
        raise ModelRefError(f"--attribute-schema: {e}") from None
    return json.dumps(schema.to_json(), sort_keys=True)


def _extract_attributes(ctx: RunContext, extractor, scored, n_scored: int, head_frames: dict, now: dt.datetime,
                        schema_json: str | None = None):
    """The open attribute extractor's values, added to ``head_frames["product_attributes"]``; the persisted
    frame (None without an extractor), to unpersist once committed."""
    from pyspark import StorageLevel

    from jobs.stages.heads import open_attributes

    cfg = ctx.cfg
    with ctx.stage("attributes"):
        opened = None
        if extractor is not None:
            # Beside the closed heads' rows; the table's key keeps one row per (product, attribute, value).
            t = time.perf_counter()
            opened = open_attributes(scored, extractor, cfg.batch_size, cfg.device, ctx.task_cpus, cfg.run_id, now,
                                     schema_json, cfg.precision).persist(StorageLevel.MEMORY_AND_DISK)
            n_values = opened.count()
            log.info("open attributes: %d values from %d products (%.1f products/s)", n_values, n_scored,
                     n_scored / max(time.perf_counter() - t, 1e-9))
            head_frames["product_attributes"] = _one_row_per_value(
                head_frames["product_attributes"].unionByName(opened))
            ctx.stage.count(n_scored, "products")
    return opened


def _commit_tables(ctx: RunContext, v: _Validated, e: _Embedded, scored, head_frames: dict, n_todo: int,
                   now: dt.datetime):
    """Commit the embeddings, the quarantine and the heads' tables side by side; the (embeddings, quarantine)
    commit results."""
    from pyspark.sql import functions as F

    from jobs.stages.validate import quarantine_rows
    from schemas.tables import PRODUCT_EMBEDDINGS, QUARANTINE, TABLES

    cfg, lake, embedded = ctx.cfg, ctx.lake, e.embedded
    with ctx.stage("commit"):
        ok = embedded.where(F.col("_e.error").isNull()).select(
            "product_id", F.lit(ctx.version).alias("model_version"), "_e.embedding", "_e.text_embedding",
            "_e.image_embedding", "content_hash", F.lit(cfg.run_id).alias("run_id"),
            F.lit(now).cast("timestamp").alias("updated_at"))
        failed = (embedded.where(F.col("_e.error").isNotNull())
                  .withColumn("reason_code", F.col("_e.error")).withColumn("detail", F.col("_e.error_detail")))
        bad = quarantine_rows(v.rejected, cfg.run_id, now).unionByName(quarantine_rows(failed, cfg.run_id, now))
        # Every scored product's old rows go, also where it now has none (no attribute above the threshold).
        scored_ids = scored.select("product_id")
        heap = _driver_heap_bytes(ctx.spark)
        limit = driver_commit_limit(heap)
        small = n_todo <= limit
        if DRIVER_COMMIT_PRODUCTS >= n_todo > limit:
            log.info("committing the tables of %d products through Spark, not the driver: a driver heap of %.1f "
                     "GiB collects at most %d (spark-submit --driver-memory 3g raises it)", n_todo,
                     (heap or 0) / 2 ** 30, limit)
        # ``ok`` is a projection of the persisted ``embedded``: not cached a second time (cache=False).
        commits = {PRODUCT_EMBEDDINGS.name: lambda: lake.upsert(PRODUCT_EMBEDDINGS, ok, cfg.run_id, step=1,
                                                                on_driver=small, cache=False),
                   QUARANTINE.name: lambda: lake.upsert(QUARANTINE, bad, cfg.run_id, step=1,
                                                        on_driver=v.n_rejected + e.n_failed <= limit)}
        for name, frame in head_frames.items():
            commits[name] = (lambda name=name, frame=frame:
                             lake.upsert(TABLES[name], frame, cfg.run_id, step=1, replaced=scored_ids,
                                         on_driver=small))
        results = side_by_side(ctx.spark, "commit", commits)
        ctx.stage.count(n_todo + v.n_rejected, "rows")
    return results[PRODUCT_EMBEDDINGS.name], results[QUARANTINE.name]


def _match(ctx: RunContext, scorer, cross, valid, types: tuple[str, ...]) -> dict:
    """Duplicate matching and clusters (skipped without a pair scorer); ``types``: the category head's product types
    (the heads' plan), for the type rule."""
    from jobs.stages.matching import MatchConfig, match_and_cluster

    if scorer is None:
        return {"matches_written": 0, "clusters": 0}
    with ctx.stage("match"):
        cfg = MatchConfig(scorer=scorer, cross=cross, torch_threads=ctx.task_cpus, precision=ctx.cfg.precision,
                          types=types)
        matched = match_and_cluster(ctx.spark, ctx.lake, valid, ctx.cfg.run_id, ctx.version, cfg)
        ctx.stage.count(matched["queries"], "products")
    return matched


def _refresh_index(ctx: RunContext) -> str:
    """Bring the similarity index up to the embeddings table; what it did, for the run message."""
    from jobs.read.index import refresh_index

    with ctx.stage("index"):
        return refresh_index(ctx.lake.root, ctx.version, ctx.stage.count)


def _finish_summary(summary: RunSummary, ctx: RunContext, v: _Validated, e: _Embedded, n_todo: int,
                    matched: dict, head_tables: list[str], scorer, t_start: float) -> None:
    """The run's counts, timings, status and tables into ``summary``; its message starts with the empty-catalog
    note, if any (the caller appends the commits' details)."""
    from schemas.tables import (
        ENRICHMENT_RUNS,
        PRODUCT_CLUSTERS,
        PRODUCT_EMBEDDINGS,
        PRODUCT_MATCHES,
        QUARANTINE,
        TABLES,
    )

    n_read, n_rejected = v.n_read, v.n_rejected
    summary.counts = {
        "read": n_read, "valid": n_read - n_rejected, "enriched": n_todo - e.n_failed,
        "unchanged": n_read - n_rejected - n_todo, "quarantined": n_rejected + e.n_failed, "adult_flagged": e.n_adult,
        "matches_written": matched["matches_written"], "duplicate_clusters": matched["clusters"],
    }
    # Not in the run record: a repeat of a crashed run finds the images hashed already, yet must leave the
    # tables exactly as an uninterrupted run would.
    summary.images = {"checked": v.images, "read": v.images_read}
    summary.timings = dict(ctx.stage.timings, total=round(time.perf_counter() - t_start, 3))
    summary.status = "succeeded"
    empty = _empty_note(n_read, n_rejected)
    if empty:
        log.warning("run %s: %s", ctx.cfg.run_id, empty)
        summary.status = "empty"
    lake = ctx.lake
    summary.tables = {s.name: str(lake.path(s)) for s in (PRODUCT_EMBEDDINGS, *(TABLES[n] for n in head_tables),
                                                          *((PRODUCT_MATCHES, PRODUCT_CLUSTERS) if scorer else ()),
                                                          QUARANTINE, ENRICHMENT_RUNS)}
    summary.message = f"{empty}; " if empty else ""


def _empty_note(n_read: int, n_rejected: int) -> str | None:
    """What to say of a run that had no valid row to enrich (None when it had one)."""
    if n_read == 0:
        return "catalog has no rows: nothing was enriched"
    if n_read == n_rejected:
        return f"catalog has no valid rows: all {n_read} were quarantined, nothing was enriched"
    return None


def _completed_embeddings(lake):
    """The ``product_embeddings`` rows written by runs that ``enrichment_runs`` records as succeeded."""
    from pyspark.sql import functions as F

    from schemas.tables import ENRICHMENT_RUNS, PRODUCT_EMBEDDINGS

    succeeded = lake.read(ENRICHMENT_RUNS).where(F.col("status") == "succeeded").select("run_id")
    return lake.read(PRODUCT_EMBEDDINGS).join(F.broadcast(succeeded), "run_id", "left_semi")


def _abandon_interrupted(lake, cfg: EnrichConfig) -> list[str]:
    """Mark every other run that ``enrichment_runs`` still records as running ``abandoned`` (with the time and
    a message), and return their ids. Only while the lake's lock is free or held by this process: then none
    of them is live (``main`` holds the lock; a caller of :func:`run` without it takes it here for a moment)."""
    from jobs.lake.lock import LakeBusyError, LakeLock
    from jobs.lake.runlog import runs_with_status
    from schemas.tables import ENRICHMENT_RUNS

    lock = LakeLock(lake.root, cfg.run_id)
    holder = lock.holder()
    ours = holder.get("run_id") == cfg.run_id and holder.get("pid") == os.getpid()
    if not ours:
        try:
            lock.acquire()
        except LakeBusyError as e:
            log.warning("not looking for abandoned runs: %s", e)
            return []
    try:
        stale = [r for r in runs_with_status(lake.root, ENRICHMENT_RUNS.name, ["running"])
                 if r["run_id"] != cfg.run_id]
        if not stale:
            return []
        now = dt.datetime.now(dt.timezone.utc)
        rows = [dict(r, status="abandoned", finished_at=now,
                     counts=list((r["counts"] or {}).items()), timings=list((r["timings"] or {}).items()),
                     message=f"abandoned: still running when run {cfg.run_id} started with the lake lock free "
                             f"(the process was killed or its machine lost); run {cfg.run_id} redoes its products")
                for r in stale]
        lake.upsert_rows(ENRICHMENT_RUNS, rows, f"{cfg.run_id}/abandon/{uuid.uuid4().hex[:8]}", step=1)
        ids = sorted(r["run_id"] for r in stale)
        log.warning("marked interrupted run(s) %s abandoned; this run completes their work", ", ".join(ids))
        return ids
    finally:
        if not ours:
            lock.release()


def _finished_run(lake, cfg: EnrichConfig, description: str) -> RunSummary | None:
    """The summary of this run id when enrichment_runs records it as succeeded, else None."""
    from jobs.lake.runlog import run_rows
    from schemas.tables import ENRICHMENT_RUNS

    if not lake.exists(ENRICHMENT_RUNS):
        return None
    rows = [r for r in run_rows(lake.root, ENRICHMENT_RUNS.name, [cfg.run_id]) if r["status"] == "succeeded"]
    if not rows:
        return None
    r = rows[0]
    tables = {name: str(lake.root / name) for name in sorted(p.name for p in lake.root.iterdir()
                                                               if (p / "_delta_log").is_dir())}
    return RunSummary(cfg.run_id, "succeeded", r["model_version"], description, str(lake.root),
                      counts=dict(r["counts"] or {}), timings=dict(r["timings"] or {}), tables=tables,
                      message=r["message"] or "")


def _write_report(root: Path, summary: RunSummary) -> Path:
    reports = root / "_reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / f"{summary.run_id}.json"
    path.write_text(json.dumps(asdict(summary), indent=2, sort_keys=True))
    return path


def record_failure(spark, cfg: EnrichConfig, error: BaseException) -> None:
    """Best effort: mark the run failed in enrichment_runs (under its own transaction id)."""
    from jobs.lake.lakehouse import Lake
    from schemas.tables import ENRICHMENT_RUNS

    try:
        now = dt.datetime.now(dt.timezone.utc)
        summary = RunSummary(cfg.run_id, "failed", "", "", cfg.lake, message=f"{type(error).__name__}: {error}"[:2000])
        Lake(spark, cfg.lake).upsert_rows(ENRICHMENT_RUNS, [_run_row(summary, cfg, now, now)],
                                     f"{cfg.run_id}/failed/{uuid.uuid4().hex[:8]}", step=1)
    except Exception:  # the original error matters more than this one
        log.exception("could not record the failure of run %s", cfg.run_id)


def print_summary(s: RunSummary, out=None) -> None:
    out = out or sys.stdout
    c = s.counts
    print(f"catalog-enrich run {s.run_id} {s.status} in {s.timings.get('total', 0):.1f} s", file=out)
    print(f"  model               {s.model_description}", file=out)
    print(f"  read                {c['read']} rows = enriched {c['enriched']} + unchanged {c['unchanged']} "
          f"+ quarantined {c['quarantined']}", file=out)
    if s.status == "empty":
        print(f"  empty catalog       {s.message.split(';', 1)[0]}", file=out)
    if s.images:
        print(f"  images              {s.images['checked']} checked: {s.images['read']} read and hashed, "
              f"{s.images['checked'] - s.images['read']} unchanged since an earlier run", file=out)
    for name, path in s.tables.items():
        print(f"  {name:<20}{path}", file=out)
    print(f"  run report          {Path(s.lake) / '_reports' / (s.run_id + '.html')}", file=out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CATALOG_ENRICH_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from jobs.lake.lock import LakeLock

    cfg = parse_args(argv)
    try:
        check_run_id(cfg.run_id)   # before the lock file or anything else is written
        # One run per lake at a time, taken before Spark starts: a refused run costs nothing and writes nothing.
        lock = LakeLock(cfg.lake, cfg.run_id)
        lock.acquire()
    except CatalogEnrichError as e:   # a bad run id (2), a lake that is not local (2), another run's lock (3)
        return fail(e)
    try:
        return _locked_main(cfg)
    finally:
        lock.release()


def _locked_main(cfg: EnrichConfig) -> int:
    from jobs.runtime.spark_session import build_session
    from jobs.stages.model_check import verify_run_models

    publish_driver_pid()
    checkpoint("start")
    try:
        verify_run_models(cfg)   # before Spark: a damaged or tampered model costs a second and one line
        spark = build_session("catalog-enrich")
    except CatalogEnrichError as e:
        return fail(e)
    log.info("run %s: catalog %s -> lake %s", cfg.run_id, cfg.catalog, cfg.lake)
    try:
        summary = run(spark, cfg)
    except Exception as e:
        if exit_code(e) == EXIT_FAILED:   # not an error the project raises for its input: say where it broke
            log.exception("run %s failed", cfg.run_id)
        record_failure(spark, cfg, e)
        if exit_code(e) == EXIT_FAILED:
            print(f"error: run {cfg.run_id} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return EXIT_FAILED
        return fail(e)
    print_summary(summary)
    if summary.status == "empty":  # most likely a broken export upstream: fail the nightly task, loudly
        print(f"error: run {cfg.run_id}: {summary.message.split(';', 1)[0]} (recorded as status 'empty')",
              file=sys.stderr)
        return EXIT_UNUSABLE
    return EXIT_OK if summary.accounted() else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
