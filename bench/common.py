"""Helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import threading

__all__ = ["PeakRss", "median"]


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class PeakRss:
    """Peak resident memory of this process and all its descendants, sampled every ``every`` seconds.

    ``peak`` is the largest sum over the whole tree; ``by_kind`` the largest single process of each kind:
    ``driver`` (this Python process), ``jvm`` (Spark's driver JVM, which runs the executors in local mode)
    and ``workers`` (one Spark Python worker).
    """

    def __init__(self, every: float = 0.5):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self.by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    kind = "driver" if p.pid == self.proc.pid else "jvm" if "java" in p.name() else "workers"
                except psutil.Error:
                    continue
                total += rss
                self.by_kind[kind] = max(self.by_kind.get(kind, 0), rss)
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def gib(self) -> dict[str, float]:
        return {"all": round(self.peak / 2**30, 2), **{k: round(v / 2**30, 2) for k, v in self.by_kind.items()}}
