"""Load each model once per Python worker process.

Spark reuses Python workers between tasks (``spark.python.worker.reuse``), so a module-level cache keeps
the model across every batch and task that worker runs. The lock makes concurrent first calls (threads
inside one worker) load once. In a worker, a load also freezes what is loaded out of the garbage collector
(:func:`_settle_worker`).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["cached", "clear", "import_object"]

_lock = threading.Lock()
_cache: dict[Hashable, Any] = {}


def import_object(path: str) -> Callable[..., Any]:
    """``"package.module:attr"`` -> the object; how UDFs name their loader without pickling it."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"expected 'module:attribute', got {path!r}")
    return getattr(importlib.import_module(module), attr)


def cached(key: Hashable, load: Callable[[], Any]) -> Any:
    """The value for ``key``, calling ``load()`` only the first time in this process."""
    try:
        return _cache[key]
    except KeyError:
        pass
    with _lock:
        if key not in _cache:
            _cache[key] = load()
            _settle_worker()
        return _cache[key]


def _settle_worker() -> None:
    """In a Spark Python worker, after a model load: leave what is loaded and imported by now out of every later
    garbage collection (``gc.freeze``), and take Spark's jars off the path. pyspark's daemon collects garbage in
    a reused worker after every task, and each task makes the path's zip importers read their archives again: in
    a worker that imported torch itself (one forked from pyspark's own daemon, as on a cluster) that cost a task
    hundreds of milliseconds of CPU (``python bench/worker_tasks.py``). The models live as long as the worker."""
    import gc
    import os

    try:
        from pyspark import TaskContext
    except ImportError:
        return
    if TaskContext.get() is None:   # the driver, a test, a plain loop: nothing is collected after tasks there
        return
    from udfs.daemon import TUNING_ENV, drop_java_archives

    if os.environ.get(TUNING_ENV, "all") == "none":
        return

    drop_java_archives()
    gc.freeze()


def clear() -> None:
    with _lock:
        _cache.clear()
