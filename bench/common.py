"""Helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import tempfile
import threading
from pathlib import Path

__all__ = ["PROJECT_PACKAGES", "PeakRss", "compile_project", "median", "scratch"]


def scratch(workdir: str | None) -> tempfile.TemporaryDirectory:
    """A temporary folder for a benchmark's data, inside ``workdir`` (created if missing) or the system's."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=workdir)


# The packages a run imports from this checkout (the installed libraries were compiled when pip installed them).
PROJECT_PACKAGES = ("jobs", "models", "udfs", "schemas")


def compile_project() -> int:
    """Write the bytecode of this checkout's packages where it is missing or stale; returns how many modules were
    compiled. A cold run in a fresh process times what a nightly run pays, and a nightly run finds the bytecode
    its first run wrote. Where ``PYTHONDONTWRITEBYTECODE`` is set (some containers set it) none is ever written,
    and every process of every run, the driver and each Python worker, compiled the project's modules from
    source: about 65 in the driver alone. ``compileall`` writes it regardless of that setting."""
    import compileall
    import io
    from contextlib import redirect_stdout

    root = Path(__file__).resolve().parents[1]
    out = io.StringIO()
    with redirect_stdout(out):
        for package in PROJECT_PACKAGES:
            compileall.compile_dir(root / package, quiet=0)
    return out.getvalue().count("Compiling ")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class PeakRss:
    """Peak resident memory of a process (this one, or ``pid``) and all its descendants, sampled every ``every``
    seconds.

    ``peak`` is the largest sum over the whole tree; ``by_kind`` the largest single process of each kind:
    ``driver`` (the Python driver: the root process, or one whose command line holds ``driver_marker``),
    ``jvm`` (Spark's driver JVM, which runs the executors in local mode) and ``workers`` (one Spark Python
    worker). Under ``spark-submit`` the root is the JVM and the Python driver its child: pass the script's name
    as ``driver_marker``.
    """

    def __init__(self, every: float = 0.5, pid: int | None = None, driver_marker: str | None = None):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self.driver_marker = driver_marker
        self.by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                tree = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:   # the root has ended
                tree = []
            for p in tree:
                try:
                    rss = p.memory_info().rss
                    kind = self._kind(p)
                except psutil.Error:
                    continue
                total += rss
                self.by_kind[kind] = max(self.by_kind.get(kind, 0), rss)
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def _kind(self, p) -> str:
        if "java" in p.name():
            return "jvm"
        if p.pid == self.proc.pid:
            return "driver"
        if self.driver_marker and any(self.driver_marker in a for a in p.cmdline()):
            return "driver"
        return "workers"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def gib(self) -> dict[str, float]:
        return {"all": round(self.peak / 2**30, 2), **{k: round(v / 2**30, 2) for k, v in self.by_kind.items()}}
