"""Helpers of the cluster test: a standalone Spark cluster from pyspark's own jars, an interpreter without the
project installed, and spark-submit of the ``make dist`` artifact.

Every process runs in its own process group (master, each worker, the submitted driver), so a test can SIGKILL
one worker with its executor and Python workers, as when a node dies, and clean up everything in a ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
SPARK_SUBMIT = SPARK_HOME / "bin" / "spark-submit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_python(folder: Path) -> Path:
    """A virtual environment whose ``site-packages`` sees this environment's third-party packages through a
    ``.pth`` path line, but not the project: the editable install's finder is itself a ``.pth`` file of this
    environment, and ``.pth`` files of a folder named in a path line are not run. Returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "deps.pth").write_text("".join(p + "\n" for p in sorted(ours)))
    return python


def clean_env(python: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the cluster's processes: no PYTHONPATH (so not this checkout), the bare python."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK", "SPARK_", "CATALOG_ENRICH_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": str(python), "PYSPARK_DRIVER_PYTHON": str(python),
                "PYTHONNOUSERSITE": "1", "SPARK_LOCAL_IP": "127.0.0.1", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "PATH": os.pathsep.join([str(python.parent), env.get("PATH", "")])})
    env.update(extra or {})
    return env


class Cluster:
    """A master and ``workers`` workers of one core each on 127.0.0.1, every one in its own process group."""

    def __init__(self, root: Path, env: dict[str, str], workers: int = 2, worker_memory: str = "2g"):
        self.root, self.env = root, env
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.ui = free_port()
        self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(self.port), "--webui-port", str(self.ui)])
        for i in range(workers):
            work = root / f"worker-{i}"
            work.mkdir(parents=True, exist_ok=True)
            self._start(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", self.url, "--cores", "1",
                                        "--memory", worker_memory, "--host", "127.0.0.1", "--port",
                                        str(free_port()), "--webui-port", str(free_port()), "--work-dir", str(work)])

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process group
        env = dict(self.env, SPARK_LOG_DIR=str(self.root), SPARK_LOCAL_DIRS=str(self.root / f"{name}-tmp"))
        self.procs[name] = subprocess.Popen([str(SPARK_CLASS), *args], cwd=self.root, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        """Until the master's status page (``/json``) lists ``n`` live workers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ui}/json/", timeout=5) as r:
                    status = json.load(r)
                if sum(w.get("state") == "ALIVE" for w in status.get("workers", [])) >= n:
                    return
            except (OSError, ValueError):
                pass   # not listening yet
            dead = [k for k, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited: {self.log(dead[0])[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"{n} workers did not register in {timeout} s:\n{self.log('master')[-3000:]}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, name: str) -> None:
        """SIGKILL a worker's process group: the worker JVM, its executor JVM and their Python workers."""
        kill_group(self.procs[name])

    def stop(self) -> None:
        for proc in self.procs.values():
            kill_group(proc)
        shutil.rmtree(self.root / "work", ignore_errors=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process group and wait until none of it is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
