"""One enrich run per lake at a time: an exclusive ``flock`` on ``<lake>/_locks/enrich.lock``.

Why a lock and not optimistic retries: an enrich run commits eight tables one after the other, and the
tables of two interleaved runs would each be consistent but disagree with one another (embeddings of one run,
categories of the other). So the second run is refused before it starts Spark or writes anything, and the
scheduler retries it later (exit status 3).

Why ``flock``: the kernel releases the lock when its holder dies, however it dies (SIGKILL, OOM killer, a
crashed machine's NFS lease running out), so there is no stale lock to detect or break by hand. The file
itself stays; it holds the holder's run id, pid, host and start time for the refusal message. Each Delta
commit is atomic on its own as well (``max_commit_retries=0`` in :mod:`jobs.lake.lakehouse`): even a writer that
ignores the lock cannot leave a half-written table, only a failed commit.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path

from models.core.errors import BlockedError
from models.core.io import local_path

__all__ = ["LakeBusyError", "LakeLock"]


class LakeBusyError(BlockedError, RuntimeError):
    """Another run holds the lake's lock."""


class LakeLock:
    """``with LakeLock(lake, run_id):`` holds the lake's enrich lock, or raises :class:`LakeBusyError` at once."""

    def __init__(self, lake: str | os.PathLike[str], run_id: str, name: str = "enrich"):
        self.path = Path(local_path(lake, "lake")).expanduser().resolve() / "_locks" / f"{name}.lock"
        self.run_id = run_id
        self._fd: int | None = None

    def holder(self) -> dict[str, object]:
        """What the holder wrote into the lock file (empty when unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            raise LakeBusyError(
                f"lake {self.path.parent.parent} is locked by run {h.get('run_id', '?')} (pid {h.get('pid', '?')} "
                f"on {h.get('host', '?')}, since {h.get('since', '?')}); run {self.run_id} was not started and "
                f"wrote nothing: retry it when that run has finished") from None
        info = {"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LakeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
