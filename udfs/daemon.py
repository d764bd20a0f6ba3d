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
"""

from __future__ import annotations

import importlib
import os
import sys
import time

__all__ = ["PRELOAD", "main", "preload"]

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


def main() -> None:
    if os.environ.get("CATALOG_ENRICH_WORKER_PRELOAD", "1") != "0":
        # stdout carries the daemon's port to the JVM: nothing else may be written there.
        took = preload()
        if os.environ.get("CATALOG_ENRICH_WORKER_PRELOAD_LOG"):
            sys.stderr.write(f"catalog-enrich worker daemon {os.getpid()}: imported {took}\n")
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
