"""Pure DataFrame -> DataFrame steps of the enrich job: read the catalog, validate rows, hash content.

Validation adds ``reason_code`` (null for a good row) and ``detail`` to every row; nothing is filtered
away here, so the job can account for every input row (enriched + unchanged + quarantined = read).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql.types import StringType

from models.core.errors import CatalogEnrichError
from schemas import reasons
from schemas.tables import CATALOG, CATALOG_ADDED, CATALOG_REQUIRED
from udfs.images import STAT_FIELDS

__all__ = ["CatalogError", "changed_products", "quarantine_rows", "read_catalog", "validate"]

# The content a product's enrichment depends on (``mpn`` only its matching; a product whose number changes is
# enriched again, which is rare and cheap). The image counts by its bytes, not its URI: a moved photo is the same
# content, a re-shot photo at the same URI is not.
CONTENT_COLUMNS = ("title", "description", "brand", "category", "price", "currency", "language", "image_sha256",
                   "mpn")


# A title is a line of text; a longer one is junk (or an attack on the tokenizer and the Arrow batches).
MAX_TITLE_CHARS = 4096
# Caps of the other text columns, in characters. A row over one is quarantined (text_too_long, the column in
# the detail) rather than truncated: a cut description would be enriched as if it were the product's, and
# nobody would learn that the feed is broken. The caps are far above real values (a long product description
# is a few thousand characters) and far below what hurts: one 5 MB description cost 0.5 GB in the model stage.
MAX_TEXT_CHARS = {"product_id": 512, "description": 20_000, "brand": 256, "category": 1_024, "currency": 16,
                  "language": 35, "image_uri": 4_096, "mpn": 256}
# The quarantine's raw record keeps a text value over its cap (the title's included) only as its first
# characters (this many, or the cap when that is smaller) and the marker "[... N characters cut]": the record
# stays valid JSON, says what it lost, and a 5 MB description costs a kilobyte in the quarantine table.
RAW_PREFIX_CHARS = 1_000
# Characters that show nothing, besides separators (\p{Z}) and control/format characters (\p{C}): combining
# marks with no base (\p{M}, which holds the variation selectors), the Hangul fillers (U+115F, U+1160, U+3164,
# U+FFA0, letters by category), the blank Braille pattern U+2800 and the musical null notehead U+1D159.
_INVISIBLE = r"\p{Z}\p{C}\p{M}\x{115F}\x{1160}\x{3164}\x{FFA0}\x{2800}\x{1D159}"

# JSON of a row keeps its null fields: the raw record shows every column, and hashes see explicit nulls.
_KEEP_NULLS = {"ignoreNullFields": "false"}


def _hashed_json(columns):
    """JSON of ``columns`` (nulls kept) for a hash, where a column of :data:`schemas.tables.CATALOG_ADDED` counts
    only when it holds a value: a row without one gives the JSON it gave before the column existed, so its
    ``content_hash`` and ``row_id`` do not change when the contract grows (every product would be new)."""
    from pyspark.sql import functions as F

    names = [str(c) for c in columns]
    out = F.to_json(F.struct(*[F.col(c) for c in names if c not in CATALOG_ADDED]), _KEEP_NULLS)
    for c in (c for c in names if c in CATALOG_ADDED):
        out = F.when(F.col(c).isNull(), out).otherwise(
            F.concat(out, F.lit("\x1f"), F.to_json(F.struct(F.col(c)), _KEEP_NULLS)))
    return out


class CatalogError(CatalogEnrichError, ValueError):
    """The catalog as a whole is unusable (missing, or without the required columns)."""


def read_catalog(spark, path: str, flag_problems: bool = False):
    """Read a Parquet or Delta catalog and conform it to the input contract's columns and types.

    A value that cannot take the contract's type never fails the run: text that is not valid UTF-8 is
    repaired (U+FFFD), a price or time that does not convert becomes null. With ``flag_problems`` the rows
    where that happened say so in ``_problem_code``/``_problem_detail`` (for :func:`validate` to quarantine).
    Only a column that cannot be conformed at all (missing, or a struct, array or map where the contract has
    a scalar) makes the catalog unusable: :class:`CatalogError` names every such column.
    """
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
    _check_types(df, path)
    cols, problems = [], []
    for field in CATALOG.fields:
        if field.name not in df.columns:
            cols.append(F.lit(None).cast(field.dataType).alias(field.name))
            continue
        src = F.col(field.name)
        if field.dataType == StringType():
            text = src.cast("string")  # bytes are taken as they are: validity is checked next
            cols.append(F.make_valid_utf8(text).alias(field.name))
            problems.append((~F.is_valid_utf8(text), reasons.INVALID_TEXT, f"{field.name} is not valid UTF-8"))
        else:
            value = src.try_cast(field.dataType)  # spark.sql.ansi.enabled would fail the whole run on one 'n/a'
            cols.append(value.alias(field.name))
            code = reasons.INVALID_PRICE if field.name == "price" else reasons.INVALID_VALUE
            problems.append((src.isNotNull() & value.isNull(), code,
                             f"{field.name} is not a {field.dataType.simpleString()}"))
    if flag_problems:
        code, detail = F.lit(None).cast("string"), F.lit(None).cast("string")
        for cond, c, d in reversed(problems):  # the first problem, in column order, wins
            code, detail = F.when(cond, F.lit(c)).otherwise(code), F.when(cond, F.lit(d)).otherwise(detail)
        cols += [code.alias("_problem_code"), detail.alias("_problem_detail")]
    return df.select(*cols)


def _check_types(df, path: str) -> None:
    from pyspark.sql.types import ArrayType, MapType, StructType

    nested = (ArrayType, MapType, StructType)
    given = {f.name: f.dataType for f in df.schema.fields}
    wrong = [f"{f.name} ({given[f.name].simpleString()}, expected {f.dataType.simpleString()})"
             for f in CATALOG.fields if f.name in given and isinstance(given[f.name], nested)]
    if wrong:
        raise CatalogError(f"catalog {path} has column(s) of an unusable type: {', '.join(wrong)}")


def _blank(col):
    """Null, or nothing but separators and control/format characters (tabs, NBSP, zero-width spaces, ...):
    Spark's ``trim`` strips only ASCII spaces."""

    return col.isNull() | col.rlike(r"^[\p{Z}\p{C}]*\z")


def _invisible(col):
    """Null, or nothing a reader could see: :func:`_blank`, and also only :data:`_INVISIBLE` characters (a
    Java regex over Unicode classes: Spark-native, no Python UDF)."""

    return col.isNull() | col.rlike(f"^[{_INVISIBLE}]*\\z")


def _text_too_long():
    """``(condition, detail)``: the first text column (in contract order) over its cap in :data:`MAX_TEXT_CHARS`."""
    from pyspark.sql import functions as F

    cond, detail = F.lit(False), F.lit(None).cast("string")
    for name, cap in reversed(MAX_TEXT_CHARS.items()):
        over = F.coalesce(F.length(name) > cap, F.lit(False))
        cond = over | cond
        detail = F.when(over, F.format_string(f"{name} of %d characters (at most {cap:,})", F.length(name))
                        ).otherwise(detail)
    return cond, detail


def _raw_record():
    """The input row as JSON (nulls kept), each text value over its cap cut as :data:`RAW_PREFIX_CHARS` says."""
    from pyspark.sql import functions as F

    caps = {"title": MAX_TITLE_CHARS, **MAX_TEXT_CHARS}
    cols = []
    for f in CATALOG.fields:
        col = F.col(f.name)
        if f.name in caps:
            keep = min(caps[f.name], RAW_PREFIX_CHARS)
            cut = F.concat(F.substring(col, 1, keep),
                           F.format_string("[... %d characters cut]", F.length(col) - keep))
            col = F.when(F.length(col) > caps[f.name], cut).otherwise(col).alias(f.name)
        cols.append(col)
    return F.to_json(F.struct(*cols), _KEEP_NULLS)


def validate(catalog, inspect_udf, known=None):
    """Add ``reason_code``/``detail`` (first failing rule wins), image checks, ``content_hash``, ``row_id``.

    Rules, in order: missing id; duplicate id (the row with the latest ``updated_at`` wins, ties broken by
    content so the choice is deterministic); a value that did not conform (``_problem_code`` from
    :func:`read_catalog`, when present); empty title (nothing visible in it); title too long; another text
    column over its cap (:data:`MAX_TEXT_CHARS`); price not a finite non-negative number; image URI not
    allowed, unreadable, not an image or out of proportion.

    ``known``: the image stat cache (:meth:`jobs.lake.image_stats.ImageStats.read`), so an unchanged image file
    keeps its hash unread. What the check saw of each image is kept in the ``_image_stat`` struct column.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # The row's identity (duplicate ties, row_id) is the whole row; only the stored raw_record is cut.
    whole = _hashed_json(f.name for f in CATALOG.fields)
    df = catalog.withColumn("_whole", whole).withColumn("raw_record", _raw_record())
    if "_problem_code" not in df.columns:
        df = df.withColumn("_problem_code", F.lit(None).cast("string")).withColumn("_problem_detail",
                                                                                    F.lit(None).cast("string"))
    pid_blank = _blank(F.col("product_id"))
    title_blank = _invisible(F.col("title"))
    price = F.col("price")
    bad_price = price.isNotNull() & (F.isnan(price) | (price < 0) | (price == float("inf")))

    by_id = Window.partitionBy("product_id").orderBy(F.col("updated_at").desc_nulls_last(), F.col("_whole"))
    df = df.withColumn("_rank", F.when(pid_blank, F.lit(1)).otherwise(F.row_number().over(by_id)))
    # Identical raw rows still need distinct row ids. (They share a product_id, which the raw record holds:
    # partitioned by it as well, both windows run on one shuffle instead of two.)
    same_row = Window.partitionBy("product_id", "_whole").orderBy("_whole")
    df = df.withColumn("_copy", F.row_number().over(same_row))
    df = df.withColumn("row_id", F.sha2(F.concat_ws("#", "_whole", F.col("_copy").cast("string")), 256))

    too_long = F.length("title") > MAX_TITLE_CHARS
    text_too_long, text_detail = _text_too_long()
    rules = [
        (pid_blank, F.lit(reasons.MISSING_ID), F.lit("product_id is null or blank")),
        (F.col("_rank") > 1, F.lit(reasons.DUPLICATE_ID), F.lit("a later row of the snapshot has this product_id")),
        (F.col("_problem_code").isNotNull(), F.col("_problem_code"), F.col("_problem_detail")),
        (title_blank, F.lit(reasons.EMPTY_TITLE), F.lit("title is null, blank or made only of invisible characters")),
        (too_long, F.lit(reasons.TITLE_TOO_LONG),
         F.format_string(f"title of %d characters (at most {MAX_TITLE_CHARS})", F.length("title"))),
        (text_too_long, F.lit(reasons.TEXT_TOO_LONG), text_detail),
        (bad_price, F.lit(reasons.INVALID_PRICE), F.format_string("price %s is not a finite number >= 0", price)),
    ]
    reason, detail = F.lit(None).cast("string"), F.lit(None).cast("string")
    for cond, code, text in reversed(rules):
        reason, detail = F.when(cond, code).otherwise(reason), F.when(cond, text).otherwise(detail)
    df = df.withColumn("_pre", reason).withColumn("_pre_detail", detail)
    if known is not None:
        # As JSON: a pandas UDF would get the nanosecond times of a column with nulls as float64, inexact.
        known = known.select("image_uri", F.to_json(F.struct(*STAT_FIELDS)).alias("_known"))
        df = df.join(known.dropDuplicates(["image_uri"]), "image_uri", "left")
    else:
        df = df.withColumn("_known", F.lit(None).cast("string"))
    image = inspect_udf(F.col("image_uri"), F.col("_known"))
    df = df.withColumn("_img", F.when(F.col("_pre").isNull(), image))
    df = (df.withColumn("reason_code", F.coalesce("_pre", "_img.image_reason"))
          .withColumn("detail", F.when(F.col("_pre").isNotNull(), F.col("_pre_detail"))
                      .otherwise(F.col("_img.image_detail")))
          .withColumn("image_path", F.col("_img.image_path"))
          .withColumn("image_sha256", F.col("_img.image_sha256"))
          .withColumn("_image_stat", F.struct(*(F.col(f"_img.{f}").alias(f) for f in (*STAT_FIELDS, "image_read")))))
    df = df.withColumn("content_hash", F.sha2(_hashed_json(CONTENT_COLUMNS), 256))
    return df.drop("_rank", "_copy", "_img", "_known", "_pre", "_pre_detail", "_problem_code", "_problem_detail",
                   "_whole")


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
