"""The one place a SparkSession is built.

Local runs get ``local[*,4]`` (every core; a failed task is tried up to 4 times, as a cluster does) and
settings sized for one machine; under ``spark-submit`` the cluster's settings win: a default below is applied
only where the submitter left the key unset.
"""

from __future__ import annotations

import os
import sys

from models.core.errors import CatalogEnrichError

__all__ = ["DEFAULTS", "FEW_CORES_DEFAULTS", "LOCAL_DEFAULTS", "SparkSetupError", "build_session", "check_java",
           "quiet_library_loggers"]


class SparkSetupError(CatalogEnrichError, RuntimeError):
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
    # Tungsten's memory page. Spark sizes it from the heap (64 MB on a 2-3 GB driver), and every broadcast join
    # builds its hash table on the driver in at least one whole page, held until the cleaner drops the broadcast:
    # the sample's run left 421 MB of such pages on the heap, 47 MB with 2 MB pages. One run among many in a
    # long-lived session (the test suite's, 2 GB) likely spent minutes collecting garbage and failed there.
    # Small pages cost nothing measurable here (the sample's run took 66-68 s with either).
    "spark.buffer.pageSize": "4m",
}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))   # the cores this process may use (a container's share)
    except AttributeError:
        return os.cpu_count() or 1


# Only for local mode: a shuffle of one partition a core (a pandas UDF task costs about 0.1 s however few its
# rows: with 8 partitions on 2 cores the image check of an incremental run took 2.4 s, with 2 it took 1.9 s)
# and no UI port to fight over.
_PARTITIONS = str(max(2, _cores()))
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": _PARTITIONS,
    "spark.default.parallelism": _PARTITIONS,
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "3g",
}

# Only for local mode on a few cores, where the JVM shares them with the Python workers' torch threads: the JIT's
# optimising compiler (C2) and a parallel garbage collector cost the JVM 45 s of CPU in a 100 s run of 20k
# products on 2 cores; the quick compiler alone (C1) and a serial collector, 24 s, and the run went from 108 to
# 94 s (bench/enrich_e2e.py). The JVM moves rows here; the models do the heavy work in Python. A spark-submit
# driver JVM is started before this code runs: pass them there as --driver-java-options. With C1 alone the JVM
# reserves only 48 MB for compiled code, which a 3,000-product run of the whole job in one process filled ("CodeCache
# is full. Compiler has been disabled": the JVM then interprets what it loads next); 240 MB is the size the default
# tiered JVM reserves.
FEW_CORES = 4
# Plain ``local[*]`` never retries a task: one Python worker lost to a transient fault (killed under memory
# pressure on a busy machine) failed a whole run that a cluster, with its 4 attempts per task, would finish.
LOCAL_MASTER = "local[*,4]"
FEW_CORES_DEFAULTS: dict[str, str] = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=240m",
}


def check_java() -> None:
    """Fail with one sentence, not a Py4J stack trace, when Spark cannot start here."""
    from jobs.runtime.preflight import java_problem, python_problem

    problem = python_problem() or java_problem()
    if problem:
        raise SparkSetupError(problem)


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
        # Python workers must run this interpreter (and its packages), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    existing = SparkConf()  # under spark-submit this holds --master, --conf and spark-defaults.conf
    wanted = dict(DEFAULTS)
    local = not submitted or existing.get("spark.master", "local").startswith("local")
    if local:
        wanted.update(LOCAL_DEFAULTS)
        if _cores() <= FEW_CORES:
            wanted.update(FEW_CORES_DEFAULTS)
    wanted.update(conf or {})
    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        builder = builder.master(os.environ.get("SPARK_MASTER", LOCAL_MASTER))
    for key, value in wanted.items():
        if not existing.contains(key):
            builder = builder.config(key, value)
    session = builder.getOrCreate()
    # Spark's INFO chatter buries the job's own progress lines; CATALOG_ENRICH_SPARK_LOG=INFO brings it back.
    level = os.environ.get("CATALOG_ENRICH_SPARK_LOG", "WARN")
    session.sparkContext.setLogLevel(level)
    quiet_library_loggers(level)
    return session


# Python-side libraries that log routine events at INFO, which the job's INFO console would show: py4j's
# "Closing down clientserver connection" whenever a callback connection closes, faiss's loader trying each CPU
# build in turn.
QUIET_LOGGERS = ("py4j", "faiss.loader")


def quiet_library_loggers(spark_level: str = "WARN") -> None:
    """Raise the chatty libraries' Python loggers to WARNING, unless Spark's own log is asked for at INFO."""
    import logging

    verbose = spark_level.upper() in ("ALL", "TRACE", "DEBUG", "INFO")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
