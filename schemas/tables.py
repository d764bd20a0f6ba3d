"""Every table the system reads or writes: Spark schema, key columns and partitioning, in one place.

Table creation (:mod:`jobs.lake.lakehouse`), validation and the tests all read these definitions. The column
comments are the table documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    FloatType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

__all__ = [
    "CATALOG", "CATALOG_ADDED", "CATALOG_REQUIRED", "ENRICHMENT_RUNS", "MODEL_RUNS", "PRODUCT_ADULT_FLAGS",
    "PRODUCT_ATTRIBUTES", "PRODUCT_CATEGORIES", "PRODUCT_CLUSTERS", "PRODUCT_EMBEDDINGS", "PRODUCT_MATCHES",
    "QUARANTINE", "TABLES", "TableSpec",
]


@dataclass(frozen=True)
class Column:
    name: str
    type: DataType
    doc: str
    nullable: bool = True


@dataclass(frozen=True)
class TableSpec:
    """An output table: its columns, the key an upsert matches on, and partition columns."""

    name: str
    columns: tuple[Column, ...]
    keys: tuple[str, ...]
    doc: str
    partition_by: tuple[str, ...] = field(default_factory=tuple)
    # An upsert replaces every existing row that shares these columns with a new row (default: ``keys``).
    # Tables with several rows per product (attributes) replace a product's rows as a whole.
    replace_by: tuple[str, ...] = field(default_factory=tuple)

    @property
    def match_keys(self) -> tuple[str, ...]:
        return self.replace_by or self.keys

    @property
    def schema(self) -> StructType:
        return StructType([StructField(c.name, c.type, c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


_VEC = ArrayType(FloatType(), containsNull=False)

# The input contract (PRODUCT.md). Only product_id and title are required; every other column is optional.
CATALOG = StructType([
    StructField("product_id", StringType()), StructField("title", StringType()),
    StructField("description", StringType()), StructField("image_uri", StringType()),
    StructField("brand", StringType()), StructField("category", StringType()),
    StructField("price", DoubleType()), StructField("currency", StringType()),
    StructField("language", StringType()), StructField("updated_at", TimestampType()),
    # The manufacturer's part or model number as the seller gives it (a shopping feed's ``mpn``): read by
    # matching only, where two listings with one title and different numbers are two products.
    StructField("mpn", StringType()),
])
CATALOG_REQUIRED = ("product_id", "title")
# Columns added to the contract after lakes were written: a row hashes (content_hash, row_id) as before when they
# are null, so adding one does not make every existing product new (jobs/stages/validate.py).
CATALOG_ADDED = ("mpn",)

PRODUCT_EMBEDDINGS = TableSpec(
    "product_embeddings",
    (
        Column("product_id", StringType(), "catalog product id (key)", nullable=False),
        Column("model_version", StringType(), "model that produced the embeddings"),
        Column("embedding", _VEC, "fused embedding: normalised sum of text and image (text alone without image)"),
        Column("text_embedding", _VEC, "title embedding from the text tower, L2-normalised"),
        Column("image_embedding", _VEC, "image embedding, L2-normalised; null when the product has no image"),
        Column("content_hash", StringType(), "sha256 over the product's content and image bytes"),
        Column("run_id", StringType(), "run that last wrote the row"),
        Column("updated_at", TimestampType(), "when the row was last written"),
    ),
    keys=("product_id",),
    doc="One row per enriched product: its embeddings and the content hash they were computed from.",
)

QUARANTINE = TableSpec(
    "quarantine",
    (
        Column("run_id", StringType(), "run that rejected the row", nullable=False),
        Column("row_id", StringType(), "sha256 of the whole input row: its identity within a run", nullable=False),
        Column("product_id", StringType(), "product id as given (may be null or empty)"),
        Column("reason_code", StringType(), "why the row was rejected (schemas.reasons)"),
        Column("detail", StringType(), "human-readable detail"),
        Column("raw_record", StringType(), "the input row as JSON; a text value over its cap (jobs.stages.validate) "
                                          "kept as its first 1,000 characters (fewer under a smaller cap) and "
                                          "'[... N characters cut]'"),
        Column("quarantined_at", TimestampType(), "when the row was rejected"),
    ),
    keys=("run_id", "row_id"),
    doc="Input rows rejected by validation or by image decoding, with the reason; one row per rejected row and run.",
)

_SCORED = ArrayType(StructType([StructField("label", StringType()), StructField("score", DoubleType())]),
                    containsNull=False)

PRODUCT_CATEGORIES = TableSpec(
    "product_categories",
    (
        Column("product_id", StringType(), "catalog product id (key)", nullable=False),
        Column("category", StringType(), "predicted category (top-1 label)"),
        Column("confidence", DoubleType(), "calibrated probability of the top-1 label, in [0, 1]"),
        Column("top_k", _SCORED, "the k most likely labels with their probabilities, best first"),
        Column("seller_category", StringType(), "the category the seller gave, for comparison"),
        Column("method", StringType(), "head:<head bundle version> or zero-shot:<label set> (no head fits)"),
        Column("model_version", StringType(), "encoder whose embeddings were classified"),
        Column("run_id", StringType(), "run that last wrote the row"),
        Column("updated_at", TimestampType(), "when the row was last written"),
    ),
    keys=("product_id",),
    doc="One row per enriched product: predicted category with a calibrated confidence and the top-k list.",
)

PRODUCT_ATTRIBUTES = TableSpec(
    "product_attributes",
    (
        Column("product_id", StringType(), "catalog product id", nullable=False),
        Column("attribute", StringType(), "attribute name, one vocabulary for every method: lower case "
                                          "(colour, gender, usage, brand, pack quantity, ...)",
               nullable=False),
        Column("value", StringType(), "attribute value as the text writes it (closed heads: their label)",
               nullable=False),
        Column("normalized_value", StringType(), "the value normalised (units, numbers, casing, names) where its "
                                                 "attribute has a rule; closed heads' labels as they are; else null"),
        Column("confidence", DoubleType(), "probability of the value, in [0, 1]"),
        Column("source", StringType(), "where the value comes from: title, description, image, title+image"),
        Column("method", StringType(), "closed:<head bundle version> (vocabulary heads) or open:<extractor version>"),
        Column("model_version", StringType(), "model that made the row: encoder (closed heads) or extractor (open)"),
        Column("run_id", StringType(), "run that last wrote the row"),
        Column("updated_at", TimestampType(), "when the row was last written"),
    ),
    keys=("product_id", "attribute", "value"),
    replace_by=("product_id",),
    doc="One row per product and attribute value; a re-enriched product's rows are replaced as a whole.",
)

PRODUCT_ADULT_FLAGS = TableSpec(
    "product_adult_flags",
    (
        Column("product_id", StringType(), "catalog product id (key)", nullable=False),
        Column("is_adult", BooleanType(), "true when any signal fired"),
        Column("score", DoubleType(), "strongest signal in [0, 1]: head probability, 1.0 for a term, category "
                                      "confidence for a mature category"),
        Column("reasons", ArrayType(StringType(), containsNull=False),
               "signals that fired: embedding:<p>, category:<label>, term:<group>:<term>"),
        Column("method", StringType(), "head bundle version of the embedding signal, or terms+category when none"),
        Column("model_version", StringType(), "encoder whose embeddings were scored"),
        Column("run_id", StringType(), "run that last wrote the row"),
        Column("updated_at", TimestampType(), "when the row was last written"),
    ),
    keys=("product_id",),
    doc="One row per enriched product: adult flag, score and the signals behind it.",
)

_COUNTS = MapType(StringType(), LongType(), valueContainsNull=False)
_TIMINGS = MapType(StringType(), DoubleType(), valueContainsNull=False)

ENRICHMENT_RUNS = TableSpec(
    "enrichment_runs",
    (
        Column("run_id", StringType(), "run id (key)", nullable=False),
        Column("status", StringType(), "running | succeeded | failed | empty (the catalog had no valid row) | "
                                       "abandoned (stopped without recording an end, e.g. killed: the next "
                                       "run marked it so and redid its products)"),
        Column("model_version", StringType(), "model used by the run"),
        Column("catalog", StringType(), "catalog path read"),
        Column("started_at", TimestampType(), "start time"),
        Column("finished_at", TimestampType(), "end time; null while running; for an abandoned run, when the "
                                               "next run found it interrupted"),
        Column("counts", _COUNTS, "read, valid, enriched, unchanged, quarantined"),
        Column("timings", _TIMINGS, "seconds per stage"),
        Column("message", StringType(), "summary or error message"),
    ),
    keys=("run_id",),
    doc="One row per enrich run: status, counts and timings. A product counts as unchanged only when its "
        "product_embeddings row was written by a succeeded run.",
)

_METRICS = MapType(StringType(), DoubleType(), valueContainsNull=False)

MODEL_RUNS = TableSpec(
    "model_runs",
    (
        Column("run_id", StringType(), "retrain run id (key)", nullable=False),
        Column("status", StringType(), "promoted | kept_champion | failed"),
        Column("candidate_version", StringType(), "store version id of the trained candidate (null if not saved)"),
        Column("champion_version", StringType(), "model the candidate was compared with (store version or builtin)"),
        Column("promoted", BooleanType(), "whether the candidate became the store's current version"),
        Column("selection_metric", StringType(), "name of the metric that decides promotion"),
        Column("candidate_score", DoubleType(), "selection metric of the candidate on the held-out split"),
        Column("champion_score", DoubleType(), "selection metric of the champion on the same split"),
        Column("candidate_metrics", _METRICS, "all evaluation metrics of the candidate"),
        Column("champion_metrics", _METRICS, "all evaluation metrics of the champion"),
        Column("training_data", StringType(), "catalog snapshot trained on (Delta version or file hash)"),
        Column("train_items", LongType(), "products trained on"),
        Column("valid_items", LongType(), "held-out products evaluated on"),
        Column("train_seconds", DoubleType(), "training wall time"),
        Column("samples_per_s", DoubleType(), "training throughput"),
        Column("model_store", StringType(), "store root"),
        Column("started_at", TimestampType(), "start time"),
        Column("finished_at", TimestampType(), "end time"),
        Column("message", StringType(), "summary or error message"),
    ),
    keys=("run_id",),
    doc="One row per retrain run.",
)

PRODUCT_MATCHES = TableSpec(
    "product_matches",
    (
        Column("product_id_a", StringType(), "the smaller product id of the pair (key)", nullable=False),
        Column("product_id_b", StringType(), "the larger product id of the pair (key); product_id_a < product_id_b",
               nullable=False),
        Column("score", DoubleType(), "calibrated probability that both listings are the same product; at least "
               "0.99 for the same listing twice (the same title words, brands and prices that do not differ) and "
               "for two listings with the same part number (mpn) whose brands do not differ"),
        Column("fused_cosine", FloatType(), "cosine of the fused embeddings"),
        Column("text_cosine", FloatType(), "cosine of the title embeddings"),
        Column("image_cosine", FloatType(), "cosine of the image embeddings; null unless both products have an image"),
        Column("token_jaccard", FloatType(), "Jaccard overlap of the lower-cased title words"),
        Column("model_number_match", BooleanType(),
               "true when the titles share a normalised model number, false when both carry model numbers and "
               "none is shared, null when either title has none"),
        Column("brand_match", BooleanType(), "whether the brands agree; null when either brand is unknown"),
        Column("price_ratio", DoubleType(), "smaller over larger price; null without both prices in one currency"),
        Column("blocking", StringType(),
               "how the pair became a candidate: ann, lexical, model_number, or several joined by +"),
        Column("model_version", StringType(), "encoder that produced the embeddings compared"),
        Column("scorer_version", StringType(), "pair scorers that produced the score (models/matching store) and the "
               "same-listing and same-part-number rules, joined by +"),
        Column("run_id", StringType(), "run that last wrote the row"),
        Column("updated_at", TimestampType(), "when the row was last written"),
    ),
    keys=("product_id_a", "product_id_b"),
    doc="One row per pair of listings judged to be the same product (score at or above the scorer's threshold).",
)

PRODUCT_CLUSTERS = TableSpec(
    "product_clusters",
    (
        Column("product_id", StringType(), "catalog product id (key)", nullable=False),
        Column("cluster_id", StringType(),
               "the smallest product id of the cluster: unchanged across runs while the membership is unchanged"),
        Column("cluster_size", LongType(), "number of products in the cluster (1: no duplicate found)"),
        Column("guard", StringType(),
               "null, or why an oversized component was cut: 'strict:<threshold>' (re-clustered on pairs scoring "
               "at least that) or 'dissolved' (still too large at the strictest threshold: left as singletons)"),
        Column("matched_hash", StringType(),
               "content hash and model version of the embeddings the product was last matched with; a product "
               "whose embeddings change is matched again"),
        Column("run_id", StringType(), "run that last wrote the row"),
        Column("updated_at", TimestampType(), "when the row was last written"),
    ),
    keys=("product_id",),
    doc="One row per matched product: its duplicate cluster (connected components of product_matches).",
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (
    PRODUCT_EMBEDDINGS, PRODUCT_CATEGORIES, PRODUCT_ATTRIBUTES, PRODUCT_ADULT_FLAGS, PRODUCT_MATCHES, PRODUCT_CLUSTERS,
    QUARANTINE, ENRICHMENT_RUNS, MODEL_RUNS)}
