"""What a Spark task costs the Python workers as Spark starts them, with the daemon's path trimmed, and with the
preloaded libraries frozen out of the garbage collector too (udfs/daemon.py), side by side.

    python bench/worker_tasks.py --tasks 48 --rounds 5

Each setting (``CATALOG_ENRICH_WORKER_TUNING`` = none, path, all) runs in a fresh process with its own local
session (the job's defaults, so the workers fork from ``udfs.daemon``, which preloads torch): one warm-up job
starts the daemon and its workers, then ``--rounds`` jobs of ``--tasks`` tasks of a pandas UDF that does
nothing. Two more settings fork the workers from pyspark's own daemon, as on a cluster, and their UDF imports
torch and open_clip through the model cache, as a model's loader does there (none, all). Printed: per setting
the median seconds of a job and the workers' CPU per task over the timed jobs, and the ratios to the untuned
settings. The settings alternate over ``--repeats`` processes each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _load_libraries():
    import open_clip  # noqa: F401 - what a model task's worker imports
    import torch  # noqa: F401

    return True


def one(tasks: int, rounds: int, pyspark_daemon: bool) -> dict:
    """In this process: the timed jobs; the median job seconds and the Python workers' CPU seconds.
    ``pyspark_daemon``: the workers fork from pyspark's own daemon (as on a cluster) and import torch and open_clip
    in the task, through the model cache (as a model's loader does)."""
    import time

    import psutil
    from pyspark.sql.functions import pandas_udf

    from jobs.runtime.spark_session import build_session

    conf = {"spark.python.daemon.module": "pyspark.daemon"} if pyspark_daemon else None
    spark = build_session("worker-tasks", conf=conf)

    @pandas_udf("long")
    def noop(ids: pd.Series) -> pd.Series:
        if pyspark_daemon:
            from udfs.model_cache import cached

            cached("worker-tasks-libraries", _load_libraries)
        return ids

    def job() -> None:
        spark.range(0, tasks * 100, 1, tasks).select(noop("id").alias("x")).agg({"x": "sum"}).collect()

    def workers_cpu() -> float:
        total = 0.0
        for p in psutil.Process().children(recursive=True):
            try:
                if "python" in p.name():
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                continue
        return total

    job()   # the daemon and its workers start
    before, seconds = workers_cpu(), []
    for _ in range(rounds):
        t = time.perf_counter()
        job()
        seconds.append(time.perf_counter() - t)
    cpu = workers_cpu() - before
    spark.stop()
    return {"job_s": median(seconds), "workers_cpu_s": round(cpu, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pyspark-daemon", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(one(a.tasks, a.rounds, a.pyspark_daemon)))
        return 0
    from udfs.daemon import TUNING_ENV

    # (name, the tuning env, workers forked from pyspark's own daemon)
    settings = [("none", "none", False), ("path", "path", False), ("all", "all", False),
                ("pyspark daemon, none", "none", True), ("pyspark daemon, all", "all", True)]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
    for _ in range(a.repeats):
        for name, tuning, plain in settings:
            env = dict(os.environ, PYTHONPATH=str(REPO), **{TUNING_ENV: tuning})
            cmd = [sys.executable, __file__, "--child", "--tasks", str(a.tasks), "--rounds", str(a.rounds),
                   *(["--pyspark-daemon"] if plain else [])]
            out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    job = {n: median([r["job_s"] for r in runs]) for n, runs in results.items()}
    cpu = {n: median([r["workers_cpu_s"] for r in runs]) for n, runs in results.items()}
    for name, _, _ in settings:
        print(f"{name:21s}: job of {a.tasks} tasks {job[name]:.2f} s (median), workers' CPU per task "
              f"{cpu[name] / (a.rounds * a.tasks) * 1000:.0f} ms (runs: "
              f"{', '.join(str(r['workers_cpu_s']) for r in results[name])} s over {a.rounds} jobs)")
    for name, base in (("path", "none"), ("all", "none"), ("pyspark daemon, all", "pyspark daemon, none")):
        print(f"{name} / {base}: job seconds {job[name] / job[base]:.2f}, workers' CPU {cpu[name] / cpu[base]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
