"""The enrich job on a real standalone Spark cluster: a master and two one-core workers from pyspark's own jars on
127.0.0.1, the ``make dist`` artifact submitted from an interpreter that does not have the project installed,
one worker SIGKILLed (with its executor and Python workers) while the embed stage runs. The job must succeed on
the remaining worker, and every table must equal a local run's over the same catalog slice."""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

from jobs.package import ARCHIVE, LAUNCHER, build_zip
from jobs.runtime.preflight import java_problem
from tests.reliability import FAKE, SAMPLE, job_env, lake_state, make_slice, run_job
from tests.standalone import SPARK_SUBMIT, Cluster, bare_python, clean_env, kill_group

pytestmark = [pytest.mark.spark, pytest.mark.cluster, pytest.mark.slow]

# 130 products: two embed tasks of about 65 each, one per executor.
GOOD = 130
# The first attempt of each embed task holds its first batch this long (models.core.faults), logging its pid
# first: the test kills the worker whose Python worker holds a task, so the kill lands on a running task however
# fast the machine (on a fast one the whole stage took under a second, between two heartbeats).
HOLD_SECONDS = 6
HOLD_LINE = re.compile(r"^embed partition \d+ pid (\d+)$", re.M)


def _args(catalog, lake) -> list[str]:
    return ["enrich", "--catalog", str(catalog), "--image-root", str(SAMPLE), "--lake", str(lake),
            "--run-id", "cluster-1", *FAKE, "--matching", "none"]


@pytest.fixture(scope="module")
def java():
    problem = java_problem()
    if problem:
        pytest.skip(f"no standalone cluster without Java: {problem}")


def test_bare_python_cannot_import_the_project(tmp_path, java):
    python = bare_python(tmp_path / "py")
    env = clean_env(python)
    out = subprocess.run([str(python), "-c", "import jobs"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "No module named 'jobs'" in out.stderr
    out = subprocess.run([str(python), "-c", "import pyspark, torch, deltalake"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def _submit(cluster: Cluster, python, dist, catalog, lake, tmp, faults) -> subprocess.Popen:
    env = clean_env(python, {"CATALOG_ENRICH_LOG": "INFO", "CATALOG_ENRICH_PROGRESS_SECONDS": "0.5",
                             "CATALOG_ENRICH_SPARK_LOG": "WARN"})
    cmd = [str(SPARK_SUBMIT), "--master", cluster.url, "--py-files", str(dist / ARCHIVE),
           "--conf", f"spark.executorEnv.CATALOG_ENRICH_TASK_HOLD=embed:{HOLD_SECONDS}",
           "--conf", f"spark.executorEnv.CATALOG_ENRICH_FAULT_LOG={faults}",
           "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.default.parallelism=2",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.executor.memory=1g", "--driver-memory", "1g",
           "--conf", f"spark.local.dir={tmp}", str(dist / LAUNCHER), *_args(catalog, lake)]
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _watch(proc: subprocess.Popen) -> tuple[list[str], threading.Thread]:
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def _ancestors(pid: int) -> list[int]:
    """``pid``, its parent, ... up to init, from /proc (the Python worker's daemon, the executor JVM, its worker
    JVM or the launcher script that started it)."""
    chain: list[int] = []
    while pid > 1 and len(chain) < 32:
        chain.append(pid)
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            break
        pid = int(stat.rpartition(")")[2].split()[1])
    return chain


def _kill_holding_worker(cluster: Cluster, faults, proc: subprocess.Popen, t0: float) -> list[tuple[str, float]]:
    """Wait for an embed task to log its hold, then SIGKILL the worker whose process group holds that Python
    worker; returns [(worker, seconds since submit)], empty if the job ended first."""
    groups = {p.pid: name for name, p in cluster.procs.items()}
    while proc.poll() is None and time.perf_counter() - t0 < 240:
        text = "".join(f.read_text() for f in sorted(faults.glob("holds-*.log")))
        for pid in HOLD_LINE.findall(text):
            name = next((groups[p] for p in _ancestors(int(pid)) if p in groups), None)
            if name is not None:
                cluster.kill(name)
                return [(name, time.perf_counter() - t0)]
        time.sleep(0.1)
    return []


def test_job_survives_a_lost_worker_and_equals_a_local_run(tmp_path, java):
    catalog = make_slice(tmp_path / "catalog", good=GOOD)
    t = time.perf_counter()
    local = run_job(_args(catalog, tmp_path / "local-lake"), job_env(), timeout=300)
    print(f"local run {time.perf_counter() - t:.1f} s")
    assert local.returncode == 0, local.stderr[-4000:]

    dist = tmp_path / "dist"
    build_zip(dist)
    python = bare_python(tmp_path / "py")
    work = tmp_path / "submit"
    work.mkdir()
    cluster = Cluster(tmp_path / "cluster", clean_env(python))
    proc = None
    killed: list[tuple[str, float]] = []
    faults = tmp_path / "faults"
    faults.mkdir()
    try:
        cluster.wait_for_workers(2)
        t0 = time.perf_counter()
        proc = _submit(cluster, python, dist, catalog, tmp_path / "cluster-lake", work, faults)
        lines, reader = _watch(proc)
        killed = _kill_holding_worker(cluster, faults, proc, t0)
        rc = proc.wait(timeout=240)
        print(f"cluster run {time.perf_counter() - t0:.1f} s, worker killed at {killed}")
        reader.join(timeout=10)
        log = "".join(lines)
    finally:
        if proc is not None:
            kill_group(proc)
        cluster.stop()
    assert killed, f"no embed task was seen running on a worker:\n{log[-4000:]}"
    assert rc == 0, log[-6000:]
    done = log.index("stage embed done")
    assert log.index("stage embed: running") < done   # the worker died while the stage ran
    assert re.search(r"(Lost executor|ExecutorLostFailure|Executor .* lost|Removed executor)", log), log[-4000:]
    state = lake_state(tmp_path / "cluster-lake")
    want = lake_state(tmp_path / "local-lake")
    assert set(state) == set(want) and len(want["product_embeddings"]) == GOOD
    for name in want:
        assert state[name] == want[name], name
