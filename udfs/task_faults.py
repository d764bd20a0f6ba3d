"""First-attempt task failures injected into pandas UDFs for the reliability tests (see :mod:`models.core.faults`)."""

from __future__ import annotations

import os
import time

from models.core.faults import TASK_FAULTS_ENV, TASK_HOLD_ENV, InjectedFault, count_hit, draw, log_injection

__all__ = ["maybe_fail"]


def maybe_fail(udf: str | tuple[str, ...], key: object = None) -> None:
    """Raise :class:`InjectedFault` on the first attempt of a task for a ``fraction`` of the UDF's batches.

    A batch is picked by a hash of (UDF, partition, batch number within the task), not by its rows, whose
    order after a shuffle varies: the same batches fail in every run. ``key`` only goes into the message.
    ``udf`` may name several UDFs that one pandas UDF runs (the enrich job's embed and heads): each is drawn
    for the batch on its own, so each fails on its own fraction of the batches, and one fault is raised.
    """
    if os.environ.get(TASK_HOLD_ENV):
        _maybe_hold(udf)
    spec = os.environ.get(TASK_FAULTS_ENV)
    if not spec:
        return
    names, _, fraction = spec.rpartition(":")
    wanted = [u for u in ((udf,) if isinstance(udf, str) else udf) if u in names.split(",")]
    if not wanted:
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return
    fired = []
    for name in wanted:
        batch = (name, ctx.stageId(), ctx.partitionId(), ctx.attemptNumber())
        n = count_hit(repr(batch))
        if ctx.attemptNumber() == 0 and draw(f"{name}:{ctx.partitionId()}:{n}") < float(fraction):
            log_injection("faults", f"{name} partition {ctx.partitionId()} batch {n} first row {key!r}")
            fired.append(f"{name} batch {n}")
    if fired:
        raise InjectedFault(f"injected fault in {', '.join(fired)} (first attempt of partition "
                            f"{ctx.partitionId()})")


def _maybe_hold(udf: str | tuple[str, ...]) -> None:
    """Sleep in the first batch of a task's first attempt when CATALOG_ENRICH_TASK_HOLD names the UDF."""
    names, _, seconds = os.environ[TASK_HOLD_ENV].rpartition(":")
    wanted = [u for u in ((udf,) if isinstance(udf, str) else udf) if u in names.split(",")]
    if not wanted:
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None or ctx.attemptNumber() != 0:
        return
    if count_hit(repr(("hold", ctx.stageId(), ctx.partitionId()))) != 1:
        return
    log_injection("holds", f"{wanted[0]} partition {ctx.partitionId()} pid {os.getpid()}")
    time.sleep(float(seconds))
