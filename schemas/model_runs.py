"""The ``model_runs`` table: one row per retrain run (candidate vs champion, and the promotion decision)."""

from __future__ import annotations

from pyspark.sql.types import BooleanType, DoubleType, LongType, MapType, StringType, TimestampType

from schemas.tables import Column, TableSpec

__all__ = ["MODEL_RUNS"]

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
