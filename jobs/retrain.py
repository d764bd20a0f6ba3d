"""Retrain job: train a candidate on the catalog, compare it with the champion, promote only if it is better.

    spark-submit jobs/retrain.py --catalog PATH --lake DIR [--image-root DIR] [--model-store DIR]
                                 [--epochs N] [--steps N] [--batch N] [--double-at E,E] [--run-id ID]
                                 [--from-champion] [--category-weight W] [--unlock-text-layers N]

Spark reads the catalog snapshot (Parquet or Delta) and the duplicate clusters (``<lake>/product_clusters``
when present); only the training columns are collected to the driver, which trains on them. The candidate and
the champion (the store's ``current``; the untrained builtin when the store has none) are evaluated on the same
held-out split (a hash of product_id). The candidate is always saved as a store version with its card; it
becomes ``current`` only if its selection metric beats the champion's. Either way a row goes to ``model_runs``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # spark-submit runs the file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from udfs.daemon import prefer_installed_pyspark  # pyspark from its package, not spark-submit's zips

    prefer_installed_pyspark()

__all__ = ["RetrainConfig", "main", "parse_args", "read_catalog", "record_run", "training_frame"]

log = logging.getLogger("jobs.retrain")


@dataclass(frozen=True)
class RetrainConfig:
    catalog: str
    lake: str
    image_root: str | None = None
    model_store: str | None = None
    run_id: str = ""
    epochs: int = 1
    steps: int | None = None
    batch: int = 128
    double_at: tuple[int, ...] = ()
    valid_percent: int = 10
    gallery_size: int = 1000
    probe_train: int = 5000
    min_improvement: float = 0.0       # the candidate must beat the champion by more than this
    arch_config: str | None = None     # JSON model_cfg replacing the default candidate architecture
    seed: int = 0
    matching_data: str | None = None   # labelled pairs (shared/data/matching): retrain the pair scorer too
    scorer_store: str | None = None    # pair scorer store (default: the shipped models/store/scorers)
    from_champion: bool = False        # continue from the champion's architecture and weights (the shipped recipe)
    category_weight: float | None = None  # ZhichunRoad multitask: seller-category loss beside the contrastive one
                                          # (None: the recipe's, 0 for a contrastive run, 1.0 for --image-tower)
    unlock_text_layers: int = 0        # fine-tune the text tower's top N layers (0: locked, projection only)
    image_tower: str | None = None     # a new image tower (timm architecture) against the champion's text tower
    image_hw: tuple[int, int] = (80, 60)  # its (H, W) box: the whole photo fitted, no square crop
    lr: float | None = None            # learning rate (default: the recipe's)
    bf16: bool = False                 # with --image-tower: train under bf16 autocast (CPUs with AMX, GPUs)


def parse_args(argv: list[str] | None) -> RetrainConfig:
    p = argparse.ArgumentParser(prog="retrain.py", description=__doc__.split("\n")[0])
    p.add_argument("--catalog", required=True, help="catalog snapshot: Parquet file/folder or Delta table")
    p.add_argument("--lake", required=True, help="lake root: model_runs is written here, product_clusters read")
    p.add_argument("--image-root", default=None,
                   help="folder relative image URIs resolve against; images are read only from under it "
                        "(default: the catalog's folder)")
    p.add_argument("--model-store", default=None, help="model store root (default: the project's store)")
    p.add_argument("--run-id", default="")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--double-at", default="", help="epochs at which the batch size doubles, e.g. 2,4")
    p.add_argument("--valid-percent", type=int, default=10)
    p.add_argument("--gallery-size", type=int, default=1000)
    p.add_argument("--probe-train", type=int, default=5000)
    p.add_argument("--min-improvement", type=float, default=0.0)
    p.add_argument("--arch-config", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--matching-data", default=None, help="labelled product pairs: also retrain the pair scorer "
                                                         "on them with the champion's embeddings")
    p.add_argument("--scorer-store", default=None, help="pair scorer store (default: models/store/scorers)")
    p.add_argument("--from-champion", action="store_true",
                   help="continue from the champion's architecture and weights instead of a fresh image tower "
                        "(how the shipped model was trained; ignored when the store has no champion)")
    p.add_argument("--category-weight", type=float, default=None,
                   help="weight of a seller-category loss beside the contrastive loss (0 = contrastive only; "
                        "default 0, or 1.0 with --image-tower)")
    p.add_argument("--unlock-text-layers", type=int, default=0,
                   help="fine-tune the text tower's top N transformer layers (0 = locked, projection only)")
    p.add_argument("--image-tower", default=None, metavar="ARCH",
                   help="train a new image tower (any timm architecture, e.g. regnetx_002; random init) against "
                        "the champion's locked text tower: e-CLIP contrastive + category loss (how the shipped "
                        "default was made); needs a champion in the store")
    p.add_argument("--image-hw", default="80x60", help="with --image-tower: the HxW box photos are fitted into")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--bf16", action="store_true",
                   help="with --image-tower: train under bf16 autocast (about 1.4x faster on a CPU with AMX)")
    a = p.parse_args(argv)
    if not 1 <= a.valid_percent <= 50:
        p.error("--valid-percent must be between 1 and 50")
    if (a.category_weight is not None and a.category_weight < 0) or a.unlock_text_layers < 0:
        p.error("--category-weight and --unlock-text-layers must be >= 0")
    if a.from_champion and a.arch_config:
        p.error("--from-champion takes the champion's architecture: leave out --arch-config")
    if a.image_tower and (a.from_champion or a.arch_config):
        p.error("--image-tower builds its own architecture: leave out --from-champion and --arch-config")
    try:
        image_hw = tuple(int(v) for v in a.image_hw.lower().split("x"))
    except ValueError:
        image_hw = ()
    if len(image_hw) != 2 or min(image_hw) < 16:
        p.error(f"--image-hw must be HxW with both sides >= 16, got {a.image_hw!r}")
    double_at = tuple(int(x) for x in a.double_at.split(",") if x.strip())
    return RetrainConfig(a.catalog, a.lake, a.image_root, a.model_store, a.run_id or f"retrain-{uuid.uuid4().hex[:12]}",
                         a.epochs, a.steps, a.batch, double_at, a.valid_percent, a.gallery_size, a.probe_train,
                         a.min_improvement, a.arch_config, a.seed, a.matching_data, a.scorer_store,
                         a.from_champion, a.category_weight, a.unlock_text_layers, a.image_tower,
                         image_hw, a.lr, a.bf16)


def read_catalog(spark: Any, path: str) -> tuple[Any, str]:
    """The catalog (read and conformed by the enrich job's reader) plus a snapshot id for the model manifest:
    ``delta:PATH@vN`` or ``parquet:PATH sha256:...``."""
    from jobs.stages.validate import read_catalog as read_conformed

    catalog = read_conformed(spark, path)
    root = Path(path)
    if (root / "_delta_log").is_dir():
        from deltalake import DeltaTable

        return catalog, f"delta:{root.resolve()}@v{DeltaTable(str(root)).version()}"
    from models.digest import sha256_files

    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    return catalog, f"parquet:{root.resolve()} sha256:{sha256_files(files)}"


def read_clusters(spark: Any, lake: str) -> Any | None:
    path = Path(lake) / "product_clusters"
    if not (path / "_delta_log").is_dir():
        return None
    from deltalake import DeltaTable

    uris = DeltaTable(str(path)).file_uris()
    return spark.read.parquet(*uris).select("product_id", "cluster_id") if uris else None


def training_frame(catalog: Any, clusters: Any | None) -> Any:
    """Rows usable for contrastive training: a product id, a non-empty title and an image."""
    from pyspark.sql import functions as F

    cols = ["product_id", "title", "image_uri"] + (["category"] if "category" in catalog.columns else [])
    df = catalog.select(*cols).where(
        F.col("product_id").isNotNull() & (F.length(F.trim(F.col("title"))) > 0)
        & F.col("image_uri").isNotNull() & (F.length(F.col("image_uri")) > 0))
    df = df.dropDuplicates(["product_id"])
    if clusters is not None:
        df = df.join(clusters.dropDuplicates(["product_id"]), "product_id", "left")
    return df


def record_run(spark: Any, lake: str, row: dict[str, Any]) -> None:
    """Append one row to ``<lake>/model_runs`` (through the project's table layer)."""
    from jobs.lake.lakehouse import Lake
    from schemas.model_runs import MODEL_RUNS

    df = spark.createDataFrame([tuple(row.get(c) for c in MODEL_RUNS.column_names)], schema=MODEL_RUNS.schema)
    Lake(spark, lake).append(MODEL_RUNS, df, row["run_id"])


def resolve_images(pdf: Any, catalog: str, image_root: str | None) -> tuple[Any, list[Path]]:
    """Keep the rows whose image URI passes the enrich job's image policy; their resolved paths.

    The same rules as enrichment (:mod:`udfs.images`): relative URIs resolve against ``--image-root`` (default:
    the catalog's folder), and nothing outside the allowed roots or over another scheme is read.
    """
    from udfs.images import ImagePolicy, PathMemo, resolve_image_uri

    root = Path(image_root) if image_root else Path(catalog).resolve().parent
    policy = ImagePolicy(image_root=str(root.resolve()))
    memo = PathMemo(policy)   # the roots and each folder resolved once, as the enrich job's inspect UDF does
    resolved = [resolve_image_uri(str(u), policy, memo).path for u in pdf["image_uri"]]
    keep = [p is not None for p in resolved]
    if not all(keep):
        log.warning("%d image URIs are outside the allowed roots or schemes; those rows are not trained on",
                    keep.count(False))
    return pdf[keep].reset_index(drop=True), [Path(p) for p in resolved if p is not None]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    from jobs.runtime.spark_session import build_session

    spark = build_session("catalog-enrich-retrain")
    started = datetime.now(timezone.utc)
    row: dict[str, Any] = {"run_id": cfg.run_id, "status": "failed", "promoted": False, "started_at": started}
    try:
        code = _run(spark, cfg, row)
    except Exception as e:
        log.exception("retrain run %s failed", cfg.run_id)
        row["message"] = f"{type(e).__name__}: {e}"
        code = 1
    row["finished_at"] = datetime.now(timezone.utc)
    record_run(spark, cfg.lake, row)
    log.info("retrain run %s: %s (%s)", cfg.run_id, row["status"], row.get("message", ""))
    return code


def _run(spark: Any, cfg: RetrainConfig, row: dict[str, Any]) -> int:
    from jobs.stages.retrain_steps import train_and_compare

    catalog, snapshot = read_catalog(spark, cfg.catalog)
    pdf = training_frame(catalog, read_clusters(spark, cfg.lake)).toPandas()  # training columns only
    row["training_data"] = snapshot
    pdf, paths = resolve_images(pdf, cfg.catalog, cfg.image_root)
    code = train_and_compare(cfg, pdf, paths, snapshot, row)
    if cfg.matching_data and code == 0:
        from jobs.stages.retrain_steps import retrain_pair_scorer

        row["message"] = f"{row.get('message', '')}; {retrain_pair_scorer(cfg)}"
    return code


if __name__ == "__main__":
    raise SystemExit(main())

