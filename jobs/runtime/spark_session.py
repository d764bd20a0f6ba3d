"""The one place a SparkSession is built.

Local runs get ``local[*,4]`` (every core; a failed task is tried up to 4 times, as a cluster does) and
settings sized for one machine; under ``spark-submit`` the cluster's settings win: a default below is applied
only where the submitter left the key unset.
"""

from __future__ import annotations

import os
import sys

from jobs.runtime.machine import FEW_CORES, FEW_CORES_DEFAULTS
from jobs.runtime.machine import cores as _cores
from models.core.errors import CatalogEnrichError

__all__ = ["DEFAULTS", "FEW_CORES", "FEW_CORES_DEFAULTS", "LOCAL_DEFAULTS", "SparkSetupError", "build_session",
           "check_java", "quiet_library_loggers", "start_python_workers"]


class SparkSetupError(CatalogEnrichError, RuntimeError):
    """Spark cannot start here (no Java, wrong Python)."""


# Each default says why it is there.
DEFAULTS: dict[str, str] = {
    # Pandas UDFs exchange data with Python workers as Arrow batches instead of pickled rows.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Keep Python workers alive between tasks so each loads the model once (udfs.model_cache).
    "spark.python.worker.reuse": "true",
    # Spark keeps one daemon (and pool of workers) per distinct worker environment, and its pandas UDFs set
    # SPARK_SIMPLIFIED_TRACEBACK there while mapInPandas does not: the match stage's mapInPandas started a second
    # daemon and imported torch again. Full Python tracebacks in a failed task are the price of one pool.
    "spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled": "false",
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
    # Rows per batch of a persisted frame (Spark's default 10,000). The embeddings' rows carry three float arrays
    # (about 4.6 KB): a batch of 10,000 is 46 MB a column, built by doubling its buffer and read back from disk
    # whole, two tasks at a time. With Spark's default 1 GiB driver (a plain `spark-submit --master local[2]`) the
    # first run of 50,000 products ran out of heap in its commit stage on such batches; 1,000 rows cost nothing
    # measurable on narrow frames.
    "spark.sql.inMemoryColumnarStorage.batchSize": "1000",
}


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

# Plain ``local[*]`` never retries a task: one Python worker lost to a transient fault (killed under memory
# pressure on a busy machine) failed a whole run that a cluster, with its 4 attempts per task, would finish.
LOCAL_MASTER = "local[*,4]"


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
    if submitted:
        # Connect to spark-submit's JVM first: a SparkConf made before that reads nothing from it, and every
        # default below would override the submitter's --conf and spark-defaults.conf.
        from pyspark import SparkContext

        SparkContext._ensure_initialized()
    existing = SparkConf()  # under spark-submit this holds --master, --conf and spark-defaults.conf
    wanted = dict(DEFAULTS)
    local = not submitted or existing.get("spark.master", "local").startswith("local")
    if local:
        wanted.update(LOCAL_DEFAULTS)
        daemon = "spark.python.daemon.module"
        if not existing.contains(daemon) and daemon not in (conf or {}) and _workers_import_the_project():
            # The workers are forked from a daemon that has imported torch and open_clip: 6-7 s paid once per
            # executor instead of once per worker (udfs/daemon.py). Only where the workers' Python imports the
            # project by itself: the daemon starts before --py-files reach sys.path (on a cluster it failed).
            wanted[daemon] = "udfs.daemon"
            _start_early_daemon(wanted)
        if _cores() <= FEW_CORES:
            wanted.update(FEW_CORES_DEFAULTS)
    wanted.update(conf or {})
    # Started here (not by spark-submit) on options nobody else set: the JVM may map the class archive.
    launch_env = (_class_archive(wanted) if local and not submitted
                  and not existing.contains("spark.driver.extraJavaOptions") else {})
    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        builder = builder.master(os.environ.get("SPARK_MASTER", LOCAL_MASTER))
    for key, value in wanted.items():
        if not existing.contains(key):
            builder = builder.config(key, value)
    saved = {k: os.environ.get(k) for k in launch_env}
    os.environ.update(launch_env)   # read by the JVM launcher only: restored once the JVM is up
    try:
        session = builder.getOrCreate()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
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


_EARLY: list = []   # the early worker daemon of this process's session, if one was started


def _stop_early() -> None:
    while _EARLY:
        _EARLY.pop().stop()


def _start_early_daemon(wanted: dict[str, str]) -> None:
    """Start the workers' daemon now, before the JVM starts the first Python task (udfs/daemon.py: its imports of
    torch and open_clip run beside the SparkContext's start-up), and give its socket to the workers' environment.
    Any earlier one of this process goes first; a failure only logs: the daemon Spark launches imports by itself."""
    import atexit
    import logging

    from udfs.daemon import EARLY_ENV, EARLY_SWITCH, early_supported, preload_enabled, start_early

    if os.environ.get(EARLY_SWITCH, "1") == "0" or not preload_enabled() or not early_supported():
        return
    _stop_early()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env["PYTHONHASHSEED"] = os.environ.get("PYTHONHASHSEED", "0")   # fixed at start: as pyspark gives its workers
    try:
        early = start_early(env, os.environ.get("PYSPARK_PYTHON") or sys.executable)
    except OSError as e:
        logging.getLogger(__name__).debug("the early worker daemon did not start: %s", e)
        return
    atexit.unregister(_stop_early)   # registered once
    atexit.register(_stop_early)
    _EARLY.append(early)
    wanted[f"spark.executorEnv.{EARLY_ENV}"] = early.path


def _workers_import_the_project() -> bool:
    """Whether the Python workers' interpreter finds ``udfs.daemon`` with no path of ours (an installed or
    editable project), checked once in a subprocess as the workers start: no PYTHONPATH, another folder."""
    import subprocess

    python = os.environ.get("PYSPARK_PYTHON") or sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        return subprocess.run([python, "-c", "import importlib.util as u, sys; "
                               "sys.exit(u.find_spec('udfs.daemon') is None)"], env=env, cwd="/",
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _class_archive(wanted: dict[str, str]) -> dict[str, str]:
    """Start the driver JVM on the class-data-sharing archive where one was built (jobs/runtime/jvm_cache.py):
    adds its JVM options to ``wanted`` and returns the environment the launcher needs ({} when not used)."""
    import logging

    from jobs.runtime.jvm_cache import enabled, launch

    if not enabled():
        return {}

    how = launch(wanted.get("spark.driver.extraJavaOptions", ""))
    if not how.usable:
        logging.getLogger(__name__).debug("JVM class archive not used: %s", how.problem)
        return {}
    wanted["spark.driver.extraJavaOptions"] = how.java_options
    return how.env


def start_python_workers(spark):
    """Start the executors' Python worker daemon now, in a background job, and return its thread.

    The daemon imports torch and open_clip before it forks a worker (udfs/daemon.py: 6-7 s on 2 cores). Started
    here, while the driver verifies models, reads the lake and plans the first query, that import runs beside
    the driver's work instead of after it; the first pandas UDF then finds the daemon up, or waits for the one
    already starting. Where the session started the daemon's imports earlier still (:func:`_start_early_daemon`),
    this job has Spark launch the daemon, which takes over the early one's imports. A failure here is only logged
    (and kept as the thread's ``error``): the UDF that needs a worker starts the daemon itself.
    """
    import logging
    import threading

    def warm() -> None:
        from pyspark.sql import functions as F

        try:
            # One task: it waits for the daemon's imports in one task slot and leaves the others to the validate
            # stage's first jobs (two tasks held both slots of a 2-core run for the 4.3 s of the imports).
            spark.range(0, 1, 1, numPartitions=1).select(_noop_udf()(F.col("id"))).collect()
        except Exception as e:  # noqa: BLE001 - the stage that needs the workers will report a real failure
            thread.error = e   # type: ignore[attr-defined]
            logging.getLogger(__name__).debug("warming the Python workers failed: %s", e)

    thread = threading.Thread(target=warm, name="catalog-enrich-worker-warmup", daemon=True)
    thread.error = None   # type: ignore[attr-defined]
    thread.start()
    return thread


def _noop_udf():
    # A pandas UDF, not an RDD function: Spark pools its workers per worker environment, and only SQL UDFs
    # share the environment (and so the daemon) of the job's own UDFs.
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")
    def noop(ids):
        return ids

    return noop
