"""The one place a SparkSession is built.

Local runs get ``local[*]`` and settings sized for one machine; under ``spark-submit`` the cluster's
settings win: a default below is applied only where the submitter left the key unset.
"""

from __future__ import annotations

import os
import shutil
import sys

__all__ = ["DEFAULTS", "SparkSetupError", "build_session", "check_java"]


class SparkSetupError(RuntimeError):
    """Spark cannot start here (no Java, wrong Python)."""


# Each default says why it is there.
DEFAULTS: dict[str, str] = {
    # Pandas UDFs exchange data with Python workers as Arrow batches instead of pickled rows.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Keep Python workers alive between tasks so each loads the model once (udfs.model_cache).
    "spark.python.worker.reuse": "true",
    # Delta stores timestamps as INT64 microseconds; Spark's default INT96 is not readable by every engine.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # Tables are committed by the driver through the Delta log; Spark's _SUCCESS markers are noise there.
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.session.timeZone": "UTC",
    # Arrow batches of a few thousand rows keep worker memory flat; the model batch size is set separately.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
}

# Only for local mode: a laptop-sized shuffle and no UI port to fight over.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.default.parallelism": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "3g",
}


def check_java() -> None:
    """Fail with one sentence, not a Py4J stack trace, when there is no Java for Spark."""
    if sys.version_info < (3, 10) or sys.version_info >= (3, 13):
        raise SparkSetupError(f"Python 3.10-3.12 is required; this is {sys.version.split()[0]} ({sys.executable}).")
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        where = f"JAVA_HOME={java_home} has no bin/java" if java_home else "no 'java' on PATH"
        raise SparkSetupError(f"Spark needs Java 17 or 21 ({where}): install a JDK (e.g. apt-get install "
                              "openjdk-17-jre-headless) or set JAVA_HOME.")


def _under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands its gateway to the Python driver.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(app_name: str = "catalog-enrich", conf: dict[str, str] | None = None):
    """Build (or get) the SparkSession. ``conf`` overrides the defaults but not spark-submit's settings."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    submitted = _under_spark_submit()
    if not submitted:
        check_java()
    existing = SparkConf()  # under spark-submit this holds --master, --conf and spark-defaults.conf
    wanted = dict(DEFAULTS)
    local = not submitted or existing.get("spark.master", "local").startswith("local")
    if local:
        wanted.update(LOCAL_DEFAULTS)
    wanted.update(conf or {})
    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        builder = builder.master(os.environ.get("SPARK_MASTER", "local[*]"))
    for key, value in wanted.items():
        if not existing.contains(key):
            builder = builder.config(key, value)
    return builder.getOrCreate()
