"""Load each model once per Python worker process.

Spark reuses Python workers between tasks (``spark.python.worker.reuse``), so a module-level cache keeps
the model across every batch and task that worker runs. The lock makes concurrent first calls (threads
inside one worker) load once.
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
        return _cache[key]


def clear() -> None:
    with _lock:
        _cache.clear()
