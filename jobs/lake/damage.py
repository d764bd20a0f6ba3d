"""A damaged lake said in one line: which table, what is wrong, how to repair it (for the read-side commands).

A Delta table is damaged when the version a reader asks for cannot be read: a log entry is truncated or not
JSON, or a data file of that version is missing or not Parquet. The diagnosis runs only after a read failed,
so an intact lake pays nothing for it; it also finds the newest version that still reads in full (a few
versions back at most), because restoring that version is the repair.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from models.core.errors import DamagedError

__all__ = ["DamagedLakeError", "check_version", "diagnose", "last_good_version", "reading"]

_LOG_ENTRY = re.compile(r"^(\d{20})\.json$")
_LOOK_BACK = 20   # versions tried when looking for the last good one


class DamagedLakeError(DamagedError, RuntimeError):
    """A table (or the similarity index) of the lake cannot be read; ``repair`` says what to do."""

    def __init__(self, what: str, problem: str, repair: str):
        self.what, self.problem, self.repair = what, problem, repair
        super().__init__(f"{what} is damaged: {problem}; repair: {repair}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _local(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None   # object stores: the file checks are left to the reader


def check_version(path: str | Path, version: int | None = None) -> str | None:
    """What is wrong with ``version`` (default: the latest) of the Delta table at ``path``, or None when its
    log and every one of its data files read."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    try:
        dt = DeltaTable(str(path), version=version)
        uris = dt.file_uris()
    except Exception as e:  # deltalake raises its own errors, OSError and ValueError for a bad log
        return f"its Delta log cannot be read ({_first_line(e)})"
    for uri in uris:
        local = _local(uri)
        if local is None:
            continue
        if not local.exists():
            return f"data file {local.name} of v{dt.version()} is missing"
        try:
            pq.read_metadata(local)
        except Exception as e:  # truncated or overwritten: pyarrow says ArrowInvalid or OSError
            return f"data file {local.name} of v{dt.version()} is not readable Parquet ({_first_line(e)})"
    return None


def _log_versions(path: Path) -> list[int]:
    log = path / "_delta_log"
    if not log.is_dir():
        return []
    return sorted(int(m.group(1)) for p in log.iterdir() if (m := _LOG_ENTRY.match(p.name)))


def last_good_version(path: str | Path, below: int) -> int | None:
    """The newest version under ``below`` that reads in full, looking back at most 20 versions."""
    for v in range(below - 1, max(below - 1 - _LOOK_BACK, -1), -1):
        if check_version(path, v) is None:
            return v
    return None


def diagnose(path: str | Path, name: str, version: int | None = None) -> DamagedLakeError | None:
    """The damage of table ``name`` at ``path`` (at ``version``, default the latest), or None when it reads."""
    path = Path(path)
    problem = check_version(path, version)
    if problem is None:
        return None
    logged = _log_versions(path)
    top = version if version is not None else (logged[-1] if logged else 0)
    good = last_good_version(path, top)
    if good is None:
        return DamagedLakeError(f"table {name}", problem, f"no version of the last {_LOOK_BACK} reads in full: "
                                f"restore the folder {path} from a backup")
    if problem.startswith("its Delta log"):
        later = [f"_delta_log/{v:020d}.json" for v in logged if v > good]
        shown = ", ".join(later[:3]) + (f" and {len(later) - 3} more" if len(later) > 3 else "")
        return DamagedLakeError(f"table {name}", problem, f"v{good} is the last good version: move {shown} out of "
                                f"{path}/_delta_log (the table is then at v{good}) and rerun the enrich job")
    return DamagedLakeError(f"table {name}", problem, f"restore its last good version v{good} (a Delta RESTORE "
                            f"commit, e.g. deltalake's DeltaTable({str(path)!r}).restore({good}))")


@contextmanager
def reading(path: str | Path, name: str, version: int | None = None) -> Iterator[None]:
    """Reads of table ``name`` inside the block: an error they raise becomes a :class:`DamagedLakeError` when
    the table turns out to be damaged; any other error passes unchanged."""
    try:
        yield
    except DamagedLakeError:
        raise
    except Exception as e:
        damage = diagnose(path, name, version)
        if damage is None:
            raise
        raise damage from e
