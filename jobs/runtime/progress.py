"""Progress of the enrich job's stages in its log: counts and rates when a stage ends, a heartbeat while it runs.

A nightly run over millions of products spends many minutes in one stage (embedding); an operator reading
the log (or Airflow's task log) should see that it moves and how fast, without opening the Spark UI. The
heartbeat reads Spark's status tracker (task counts of the active Spark stages) every
``CATALOG_ENRICH_PROGRESS_SECONDS`` seconds (default 30; 0 turns it off), and, for a stage whose
:class:`StageProgress` watches a row counter, the rows done out of the stage's total and the rate.

The row counter is a Spark accumulator the model UDF adds each Arrow batch's rows to. Spark sends a Python
worker's accumulator updates to the driver when its task ends (not batch by batch, and a failed task's updates
never), so the count moves in steps of one task's rows: a stage of a few big tasks shows 0 for a while.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

__all__ = ["StageProgress", "heartbeat"]

log = logging.getLogger(__name__)


class StageProgress:
    """What a stage processed; the stage timer turns it into ``N unit, R unit/s`` on its last log line."""

    def __init__(self, name: str):
        self.name = name
        self.items: int | None = None
        self.unit = "rows"
        self._counter = None
        self._total = 0
        self._since = 0.0

    def count(self, n: int, unit: str = "rows") -> None:
        self.items, self.unit = int(n), unit

    def watch(self, counter, total: int, unit: str = "products") -> None:
        """Show ``counter.value`` (a Spark accumulator of rows done) out of ``total`` in the heartbeat."""
        self._counter, self._total, self.unit, self._since = counter, int(total), unit, time.perf_counter()

    def live(self) -> str:
        """``, 1,234/8,785 products (41.2/s)`` while a counter is watched, else ``""``."""
        if self._counter is None:
            return ""
        # A task repeated after its executor was lost (its output with it) adds its rows again: the count can
        # pass the total, which is all there is to do.
        done = min(int(self._counter.value), self._total)
        rate = done / max(time.perf_counter() - self._since, 1e-9)
        return f", {done:,}/{self._total:,} {self.unit} ({rate:.1f}/s)"

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
def heartbeat(spark, name: str, interval: float | None = None, progress: StageProgress | None = None):
    """Log ``stage NAME: running for S s[, N/T products (R/s)], Spark tasks D/T done, R running`` every
    ``interval`` seconds; the row count comes from ``progress`` when it watches a counter."""
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
                rows = progress.live() if progress is not None else ""
            except Exception:  # the session is stopping; progress is best effort
                return
            detail = rows + (f", Spark tasks {tasks[0]}/{tasks[2]} done, {tasks[1]} running" if tasks
                             else ", no Spark stage active at the moment")
            log.info("stage %s: running for %.0f s%s", name, time.perf_counter() - t0, detail)

    thread = threading.Thread(target=beat, name=f"progress-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
