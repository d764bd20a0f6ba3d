"""Progress of the enrich job's stages in its log: counts and rates when a stage ends, a heartbeat while it runs.

A nightly run over millions of products spends many minutes in one stage (embedding); an operator reading
the log (or Airflow's task log) should see that it moves and how fast, without opening the Spark UI. The
heartbeat reads Spark's status tracker (task counts of the active Spark stages) every
``CATALOG_ENRICH_PROGRESS_SECONDS`` seconds (default 30; 0 turns it off).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

__all__ = ["StageProgress", "heartbeat"]

log = logging.getLogger("catalog_enrich.progress")


class StageProgress:
    """What a stage processed; the stage timer turns it into ``N unit, R unit/s`` on its last log line."""

    def __init__(self, name: str):
        self.name = name
        self.items: int | None = None
        self.unit = "rows"

    def count(self, n: int, unit: str = "rows") -> None:
        self.items, self.unit = int(n), unit

    def describe(self, seconds: float) -> str:
        if self.items is None:
            return ""
        return f": {self.items} {self.unit}, {self.items / max(seconds, 1e-9):.1f} {self.unit}/s"


def _spark_tasks(sc) -> tuple[int, int, int] | None:
    """(done, running, total) tasks over the active Spark stages, or None when none is active."""
    tracker = sc.statusTracker()
    infos = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
    infos = [i for i in infos if i is not None]
    if not infos:
        return None
    return (sum(i.numCompletedTasks for i in infos), sum(i.numActiveTasks for i in infos),
            sum(i.numTasks for i in infos))


@contextlib.contextmanager
def heartbeat(spark, name: str, interval: float | None = None):
    """Log ``stage NAME: running for S s, Spark tasks D/T done, R running`` every ``interval`` seconds."""
    if interval is None:
        interval = float(os.environ.get("CATALOG_ENRICH_PROGRESS_SECONDS", "30"))
    if interval <= 0:
        yield
        return
    stop = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                tasks = _spark_tasks(spark.sparkContext)
            except Exception:  # the session is stopping; progress is best effort
                return
            detail = (f", Spark tasks {tasks[0]}/{tasks[2]} done, {tasks[1]} running" if tasks
                      else ", no Spark stage active at the moment")
            log.info("stage %s: running for %.0f s%s", name, time.perf_counter() - t0, detail)

    thread = threading.Thread(target=beat, name=f"progress-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
