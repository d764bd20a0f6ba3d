"""Pure DataFrame -> DataFrame steps of the enrich job: read the catalog, validate rows, hash content.

Validation adds ``reason_code`` (null for a good row) and ``detail`` to every row; nothing is filtered
away here, so the job can account for every input row (enriched + unchanged + quarantined = read).
"""

from __future__ import annotations

from pathlib import Path

from schemas import reasons
from schemas.tables import CATALOG, CATALOG_REQUIRED

__all__ = ["CatalogError", "changed_products", "quarantine_rows", "read_catalog", "validate"]

# The content a product's embeddings depend on. The image counts by its bytes, not its URI: a moved
# photo is the same content, a re-shot photo at the same URI is not.
CONTENT_COLUMNS = ("title", "description", "brand", "category", "price", "currency", "language", "image_sha256")


# JSON of a row keeps its null fields: the raw record shows every column, and hashes see explicit nulls.
_KEEP_NULLS = {"ignoreNullFields": "false"}


class CatalogError(ValueError):
    """The catalog as a whole is unusable (missing, or without the required columns)."""


def read_catalog(spark, path: str):
    """Read a Parquet or Delta catalog and conform it to the input contract's columns and types."""
    from pyspark.sql import functions as F

    p = Path(path)
    if not p.exists():
        raise CatalogError(f"catalog not found: {path}")
    if (p / "_delta_log").is_dir():
        from deltalake import DeltaTable

        files = DeltaTable(str(p)).file_uris()
        df = spark.read.parquet(*files) if files else None
        if df is None:
            raise CatalogError(f"catalog {path} is an empty Delta table")
    else:
        df = spark.read.parquet(str(p))
    missing = [c for c in CATALOG_REQUIRED if c not in df.columns]
    if missing:
        raise CatalogError(f"catalog {path} lacks the required column(s) {', '.join(missing)}; "
                           f"it has: {', '.join(df.columns)}")
    cols = []
    for field in CATALOG.fields:
        if field.name in df.columns:
            cols.append(F.col(field.name).cast(field.dataType).alias(field.name))
        else:
            cols.append(F.lit(None).cast(field.dataType).alias(field.name))
    return df.select(*cols)


def validate(catalog, inspect_udf):
    """Add ``reason_code``/``detail`` (first failing rule wins), image checks, ``content_hash``, ``row_id``.

    Rules, in order: missing id; duplicate id (the row with the latest ``updated_at`` wins, ties broken by
    content so the choice is deterministic); empty title; image URI not allowed, unreadable or not an image.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    raw = F.to_json(F.struct(*[F.col(f.name) for f in CATALOG.fields]), _KEEP_NULLS)
    df = catalog.withColumn("raw_record", raw)
    pid_blank = F.col("product_id").isNull() | (F.trim(F.col("product_id")) == "")
    title_blank = F.col("title").isNull() | (F.trim(F.col("title")) == "")

    by_id = Window.partitionBy("product_id").orderBy(F.col("updated_at").desc_nulls_last(), F.col("raw_record"))
    df = df.withColumn("_rank", F.when(pid_blank, F.lit(1)).otherwise(F.row_number().over(by_id)))
    # Identical raw rows still need distinct row ids.
    df = df.withColumn("_copy", F.row_number().over(Window.partitionBy("raw_record").orderBy("raw_record")))
    df = df.withColumn("row_id", F.sha2(F.concat_ws("#", "raw_record", F.col("_copy").cast("string")), 256))

    image = inspect_udf(F.col("image_uri"))
    df = df.withColumn("_img", F.when(~pid_blank & ~title_blank & (F.col("_rank") == 1), image))
    reason = (F.when(pid_blank, F.lit(reasons.MISSING_ID))
              .when(F.col("_rank") > 1, F.lit(reasons.DUPLICATE_ID))
              .when(title_blank, F.lit(reasons.EMPTY_TITLE))
              .otherwise(F.col("_img.image_reason")))
    detail = (F.when(pid_blank, F.lit("product_id is null or blank"))
              .when(F.col("_rank") > 1, F.lit("a later row of the snapshot has this product_id"))
              .when(title_blank, F.lit("title is null or blank"))
              .otherwise(F.col("_img.image_detail")))
    df = (df.withColumn("reason_code", reason).withColumn("detail", detail)
          .withColumn("image_path", F.col("_img.image_path"))
          .withColumn("image_sha256", F.col("_img.image_sha256")))
    content = F.to_json(F.struct(*[F.col(c) for c in CONTENT_COLUMNS]), _KEEP_NULLS)
    df = df.withColumn("content_hash", F.sha2(content, 256))
    return df.drop("_rank", "_copy", "_img")


def quarantine_rows(rejected, run_id: str, now):
    """Rows for the ``quarantine`` table from validated rows with a ``reason_code``."""
    from pyspark.sql import functions as F

    return rejected.select(
        F.lit(run_id).alias("run_id"), "row_id", "product_id", "reason_code", "detail", "raw_record",
        F.lit(now).cast("timestamp").alias("quarantined_at"))


def changed_products(valid, existing, model_version: str, this_run: str | None = None):
    """Valid rows whose (content hash, model version) differ from what the embeddings table holds.

    Rows written by ``this_run`` do not count as current: when a run is repeated after a crash, the products
    it had already embedded are selected again, so the tables it had not committed yet get their rows.
    """
    from pyspark.sql import functions as F

    current = existing.where(F.col("model_version") == model_version)
    if this_run is not None:
        current = current.where(F.col("run_id") != this_run)
    current = current.select("product_id", "content_hash")
    return valid.join(current, ["product_id", "content_hash"], "left_anti")
