"""The workers' daemon started early by the driver (udfs/daemon.py): a launcher, started as Spark starts its daemon
(``python -m udfs.daemon pyspark.worker`` with the JVM's environment, the JVM reading the port from its stdout and
writing to its stdin), hands its pipes to the early daemon's new manager; without one it serves by itself."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from udfs.daemon import EARLY_ENV, early_supported, start_early

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or not early_supported(), reason="needs Linux")


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _launcher(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "udfs.daemon", "pyspark.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)


def _port(launcher: subprocess.Popen) -> int:
    data = launcher.stdout.read(4)   # type: ignore[union-attr]
    assert len(data) == 4, "the daemon wrote no port"
    return struct.unpack("!i", data)[0]


def _fork_a_worker(port: int, secret: str) -> tuple[int, bytes]:
    """Connect as the JVM does: the manager forks a worker, which sends its pid and checks the factory's secret."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rwb")
        pid = struct.unpack("!i", f.read(4))[0]
        token = secret.encode()
        f.write(struct.pack("!i", len(token)) + token)
        f.flush()
        size = struct.unpack("!i", f.read(4))[0]
        return pid, f.read(size)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != EARLY_ENV}
    env.update(PYTHON_WORKER_FACTORY_SECRET="the-jvm-secret", SPARK_REUSE_WORKER="1", **extra)
    return env


def test_a_launcher_hands_its_pipes_to_the_early_daemon_and_lives_as_long_as_its_manager():
    early = start_early(_env(CATALOG_ENRICH_WORKER_PRELOAD_LOG=""))
    try:
        launcher = _launcher(_env(**{EARLY_ENV: early.path}))
        port = _port(launcher)   # written by the manager, through the launcher's stdout
        worker, answer = _fork_a_worker(port, "the-jvm-secret")
        # The secret is the launcher's environment, not the early daemon's: the manager runs with the JVM's.
        assert answer == b"ok"
        manager = _parent(worker)
        assert manager != launcher.pid and _parent(manager) == early.process.pid
        assert launcher.poll() is None   # alive while its manager serves
        launcher.stdin.close()   # type: ignore[union-attr]   # as the JVM stops its daemon
        assert launcher.wait(timeout=60) == 0
        assert not Path(f"/proc/{manager}").exists() or "zombie" in Path(f"/proc/{manager}/status").read_text()
        # A second launcher gets a manager of its own from the same early daemon.
        again = _launcher(_env(**{EARLY_ENV: early.path}))
        worker2, answer2 = _fork_a_worker(_port(again), "the-jvm-secret")
        assert answer2 == b"ok" and _parent(_parent(worker2)) == early.process.pid
        again.terminate()   # the JVM's destroy(): the launcher passes it on to its manager
        assert again.wait(timeout=60) == 0
    finally:
        early.stop()
    assert early.process.returncode == 0 and not Path(early.folder).exists()


def test_a_launcher_serves_by_itself_where_the_early_daemon_cannot(tmp_path):
    not_a_socket = tmp_path / "daemon.sock"
    not_a_socket.write_text("")
    launcher = _launcher(_env(**{EARLY_ENV: str(not_a_socket), "CATALOG_ENRICH_WORKER_PRELOAD": "0"}))
    worker, answer = _fork_a_worker(_port(launcher), "the-jvm-secret")
    assert answer == b"ok" and _parent(worker) == launcher.pid   # forked by the launcher itself
    launcher.stdin.close()   # type: ignore[union-attr]
    launcher.wait(timeout=60)   # pyspark's own loop ends (its exit status is 1 on a closed stdin)


def test_the_early_daemon_refuses_a_launcher_of_another_python(tmp_path):
    """Its modules are its interpreter's: a worker Python configured apart from the driver's serves itself."""
    early = start_early(_env(CATALOG_ENRICH_WORKER_PRELOAD="0"))
    try:
        code = ("import sys, runpy; sys.version = sys.version + ' (another)'; sys.argv = ['x', 'pyspark.worker']; "
                "runpy.run_module('udfs.daemon', run_name='__main__')")
        launcher = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    env=_env(**{EARLY_ENV: early.path, "CATALOG_ENRICH_WORKER_PRELOAD": "0"}))
        worker, answer = _fork_a_worker(_port(launcher), "the-jvm-secret")
        assert answer == b"ok" and _parent(worker) == launcher.pid
        launcher.stdin.close()   # type: ignore[union-attr]
        launcher.wait(timeout=60)
    finally:
        early.stop()


def test_the_early_daemon_ends_and_cleans_up_when_the_driver_dies():
    """A driver killed outright never calls stop(): its pipe closes, and the daemon removes its socket and folder."""
    code = ("import os, sys, time; from udfs.daemon import start_early; "
            "e = start_early(dict(os.environ, CATALOG_ENRICH_WORKER_PRELOAD='0')); "
            "print(e.process.pid, e.folder, flush=True); time.sleep(600)")
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid, folder = driver.stdout.readline().split()   # type: ignore[union-attr]
    import time

    deadline = time.monotonic() + 60
    while not Path(folder, "daemon.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(folder, "daemon.sock").exists()
    driver.kill()
    driver.wait()
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(folder).exists()

