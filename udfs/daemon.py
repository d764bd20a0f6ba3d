"""Spark's Python worker daemon, with the model libraries imported once before it forks the workers.

Spark starts one daemon per executor (``spark.python.daemon.module``) and forks every Python worker from it.
Each worker that runs a model stage imports torch and open_clip first: 6-7 s on this project's 2-core machine
(open_clip alone pulls torchvision, torch._dynamo and transformers), and a small incremental run, whose stages
each fit in one task, paid it once per worker, in stage after stage. Imported here, before the fork, it is paid
once per executor, and the forked workers share the modules' memory until they write to it.

Only imports: no model is loaded and no thread is started here (a fork copies only the forking thread, so a
thread pool started before it would be left without its threads in the workers). A library that is missing
or fails to import is skipped: the worker that needs it imports it again and reports the error in its task.
``CATALOG_ENRICH_WORKER_PRELOAD=0`` turns the preloading off.

Before anything imports pyspark, :func:`prefer_installed_pyspark` takes pyspark's own zip archives off the path
where they are copies of the pyspark package installed beside them (a pip-installed pyspark runs its workers with
``<site-packages>/pyspark/python/lib/pyspark.zip`` first on ``PYTHONPATH``), and the Java jar Spark puts there
too. Every task a worker runs calls ``importlib.invalidate_caches()``, which makes each zip importer (one per
package directory imported from an archive) read its archive's whole directory again, and imported from a zip,
pyspark's modules are compiled from source in every process. ``python bench/worker_tasks.py`` measures what
that cost a task. The installed package has the same files, compiled once.

Last, the daemon imports with the garbage collector off and freezes what it imported (``gc.freeze``) before it
forks: pyspark's daemon collects garbage in a reused worker after every task, and a full collection over the
preloaded libraries cost 0.15-0.2 s of CPU per task. ``CATALOG_ENRICH_WORKER_TUNING`` = ``none`` (neither),
``path`` (the path only) or ``all`` (the default) is for the benchmark.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

__all__ = ["PRELOAD", "TUNING_ENV", "drop_java_archives", "main", "prefer_installed_pyspark", "preload"]

TUNING_ENV = "CATALOG_ENRICH_WORKER_TUNING"

# What the enrich job's UDFs import (udfs.embed, udfs.heads, udfs.attributes, udfs.matching and their model
# loaders), heaviest first.
PRELOAD = ("torch", "open_clip", "pyarrow", "pandas", "udfs.embed", "udfs.heads", "udfs.attributes", "udfs.matching",
           "models.encoders", "models.attributes.extractor")


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import ``modules``; returns the seconds each took (a failed one: -1.0)."""
    took = {}
    for name in modules:
        t = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception:   # noqa: BLE001 - the worker that needs it will raise the real error in its task
            took[name] = -1.0
            continue
        took[name] = round(time.perf_counter() - t, 2)
    return took


def prefer_installed_pyspark() -> list[str]:
    """Take off ``sys.path`` the archives that Spark put there and that only cost: pyspark's and py4j's zips where
    they lie inside the pyspark package that the other path entries already provide (its own copies: the pip
    layout, where ``SPARK_HOME`` is that package) and py4j is installed at the archive's version, and Java jars that
    hold no Python module (Spark adds ``spark-core_*.jar``: 5,358 entries, read again on every task). Their
    importers go from ``sys.path_importer_cache`` too: ``python -m udfs.daemon`` made them while it looked for
    ``udfs``. Returns the entries removed. Call before pyspark is imported; a Spark distribution's archives
    (outside any installed package) stay, and pyspark's zips stay when pyspark is imported already."""
    drop = [] if "pyspark" in sys.modules else _pyspark_copies()
    return _take_off_path(drop) + drop_java_archives()


def drop_java_archives() -> list[str]:
    """Take off ``sys.path`` (with their cached importers) the Java jars that hold no Python module; safe at any
    time, also in a worker that was not forked from this daemon (:func:`udfs.model_cache.cached` calls it there).
    Returns the entries removed."""
    return _take_off_path([p for p in sys.path if isinstance(p, str) and p.endswith(".jar") and not _holds_python(p)])


def _take_off_path(drop: list[str]) -> list[str]:
    if drop:
        sys.path[:] = [p for p in sys.path if p not in drop]
        for key in list(sys.path_importer_cache):
            if isinstance(key, str) and any(key == d or key.startswith(d + os.sep) for d in drop):
                del sys.path_importer_cache[key]
    return drop


def _pyspark_copies() -> list[str]:
    import importlib.machinery

    zips = [p for p in sys.path if isinstance(p, str) and p.endswith(".zip")
            and os.path.basename(p).startswith(("pyspark", "py4j-"))]
    if not zips:
        return []
    others = [p for p in sys.path if p not in zips]
    found = importlib.machinery.PathFinder.find_spec("pyspark", others)
    if found is None or not found.origin:
        return []
    package = os.path.realpath(os.path.dirname(found.origin))
    py4j = importlib.machinery.PathFinder.find_spec("py4j", others)
    py4j_version = None
    if py4j is not None and py4j.origin:
        version_file = os.path.join(os.path.dirname(py4j.origin), "version.py")
        if os.path.isfile(version_file):
            with open(version_file) as f:
                py4j_version = next((line.split("=")[1].strip().strip("'\"") for line in f
                                     if line.startswith("__version__")), None)
    inside = [p for p in zips if os.path.realpath(p).startswith(package + os.sep)]
    return [p for p in inside if os.path.basename(p).startswith("pyspark")
            or (py4j_version is not None and os.path.basename(p) == f"py4j-{py4j_version}-src.zip")]


def _holds_python(archive: str) -> bool:
    """Whether a zip archive on the path could provide a Python module (one unreadable counts as one)."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as z:
            return any(n.endswith((".py", ".pyc", ".so", ".pyd")) for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return True


def main() -> None:
    import gc

    tuning = os.environ.get(TUNING_ENV, "all")   # none | path | all: what bench/worker_tasks.py compares
    if tuning in ("path", "all"):
        prefer_installed_pyspark()
    if tuning == "all":
        # No collection while the libraries import: they allocate about half a million objects that all live on,
        # and the passes the allocator triggers over them cost 0.7 s of CPU (of 4.9) on the run's critical path.
        gc.disable()
    if os.environ.get("CATALOG_ENRICH_WORKER_PRELOAD", "1") != "0":
        # stdout carries the daemon's port to the JVM: nothing else may be written there.
        took = preload()
        if os.environ.get("CATALOG_ENRICH_WORKER_PRELOAD_LOG"):
            sys.stderr.write(f"catalog-enrich worker daemon {os.getpid()}: imported {took}\n")
    from pyspark import daemon

    if tuning == "all":
        # pyspark's daemon runs gc.collect() in a reused worker after every task: with the preloaded libraries
        # that is a full pass over about half a million objects, 0.15-0.2 s of CPU a task, which also writes to
        # every page the fork shared. Frozen here, before the first fork, they are left out of every collection;
        # the workers collect their own objects as usual.
        gc.freeze()
        gc.enable()
    daemon.manager()


if __name__ == "__main__":
    main()
