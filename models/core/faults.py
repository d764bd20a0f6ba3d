"""Fault injection for the reliability tests: named kill points and first-attempt task failures.

Both are switched off unless an environment variable names them, and then cost one dictionary lookup.

``CATALOG_ENRICH_KILL_AT=name[:n]``
    the process that reaches :func:`checkpoint` ``name`` for the ``n``-th time (default 1) is killed with
    SIGKILL: no ``finally`` block, no ``atexit`` handler and no Spark shutdown runs, exactly as when the driver's
    machine dies. A checkpoint reached inside a Spark task (a pandas UDF on a Python worker) kills the driver
    instead, whose pid the driver publishes in ``CATALOG_ENRICH_DRIVER_PID`` before Spark starts: a dead
    worker would only fail a task, which is what the retry faults below test.
``CATALOG_ENRICH_TASK_FAULTS=udf[,udf...]:fraction``
    a ``fraction`` of the named UDFs' batches raise :class:`InjectedFault` on their task's first attempt
    (``TaskContext.attemptNumber() == 0``); a retry of the task succeeds. Run Spark with task retries
    (``local[N,F]``) to see the job survive them.
``CATALOG_ENRICH_TASK_HOLD=udf[,udf...]:seconds``
    the first batch of each task's first attempt of the named UDFs sleeps ``seconds`` after logging
    ``NAME partition P pid PID`` (under ``holds``): the cluster test waits for that line and kills the worker that
    runs the task, so the kill lands while a task is running, however fast the machine.
``CATALOG_ENRICH_FAULT_LOG=DIR``
    every kill and fault appends a line to a file in ``DIR``, so the tests can count what was injected.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections import Counter

__all__ = ["InjectedFault", "KILL_ENV", "TASK_FAULTS_ENV", "TASK_HOLD_ENV", "checkpoint", "count_hit", "draw",
           "log_injection", "publish_driver_pid"]

KILL_ENV = "CATALOG_ENRICH_KILL_AT"
TASK_FAULTS_ENV = "CATALOG_ENRICH_TASK_FAULTS"
TASK_HOLD_ENV = "CATALOG_ENRICH_TASK_HOLD"
LOG_ENV = "CATALOG_ENRICH_FAULT_LOG"
DRIVER_PID_ENV = "CATALOG_ENRICH_DRIVER_PID"

_hits: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """A failure injected on purpose (never raised unless CATALOG_ENRICH_TASK_FAULTS is set)."""


def count_hit(key: str) -> int:
    """How many times this process has reached ``key`` (a checkpoint, a UDF batch), this time included."""
    _hits[key] += 1
    return _hits[key]


def log_injection(kind: str, line: str) -> None:
    """Append ``line`` to this process's ``kind`` log under CATALOG_ENRICH_FAULT_LOG (when set): the tests read
    back which kills and faults fired."""
    folder = os.environ.get(LOG_ENV)
    if folder:
        with open(os.path.join(folder, f"{kind}-{os.getpid()}.log"), "a") as f:
            f.write(line + "\n")


def publish_driver_pid() -> None:
    """Called by the driver before Spark starts, so that Python workers (children of the JVM) inherit it."""
    if os.environ.get(KILL_ENV):
        os.environ[DRIVER_PID_ENV] = str(os.getpid())


def checkpoint(name: str) -> None:
    """A named point where the job may be killed (see the module doc); does nothing unless asked to."""
    target = os.environ.get(KILL_ENV)
    if not target:
        return
    want, _, nth = target.rpartition(":")
    if not nth.isdigit():  # names hold colons (written:quarantine): a count is a trailing number only
        want, nth = target, "1"
    if want != name:
        return
    n = count_hit(name)
    if n != int(nth):
        return
    log_injection("kills", f"{name} {n}")
    victim = int(os.environ.get(DRIVER_PID_ENV) or os.getpid())
    os.kill(victim, signal.SIGKILL)
    if victim != os.getpid():  # a worker: do not let this task finish while the driver dies
        os.kill(os.getpid(), signal.SIGKILL)


def draw(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: the same batches are picked in every run."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2.0**64
