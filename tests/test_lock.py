"""The lake lock across real processes: a holder refuses others; a SIGKILLed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from jobs.lake.lock import LakeBusyError, LakeLock
from tests.conftest import REPO

HOLD = "import sys, time; from jobs.lake.lock import LakeLock; LakeLock(sys.argv[1], 'holder').acquire(); " \
       "print('held', flush=True); time.sleep(600)"


@pytest.fixture()
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "lake")], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_held_lake_refuses_another_run_naming_the_holder(holder, tmp_path):
    with pytest.raises(LakeBusyError, match=rf"is locked by run holder \(pid {holder.pid} on .*run mine was not "
                                            r"started and wrote nothing"):
        LakeLock(tmp_path / "lake", "mine").acquire()


def test_a_killed_holder_leaves_no_stale_lock(holder, tmp_path):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process's last file descriptor
        try:
            with LakeLock(tmp_path / "lake", "mine") as lock:
                assert lock.holder()["run_id"] == "mine"
            break
        except LakeBusyError:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)
    assert LakeLock(tmp_path / "lake", "x").holder() == {}  # released: the file no longer names a holder


def test_the_enrich_job_is_refused_before_spark_starts(holder, tmp_path, capsys):
    from jobs import enrich

    t = time.perf_counter()
    assert enrich.main(["--lake", f"file://{tmp_path / 'lake'}", "--run-id", "second"]) == 3
    assert "is locked by run holder" in capsys.readouterr().err
    assert time.perf_counter() - t < 5
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == ["_locks"]
