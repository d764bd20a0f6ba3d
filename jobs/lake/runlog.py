"""Read the run logs (``enrichment_runs``, ``model_runs``) without Spark: the DAGs and the gates ask them
small questions (this run's counts, whether a retrain promoted its candidate).

Only the ``deltalake`` package is used, with a filter on ``run_id``, so an Airflow worker can call these in
a few milliseconds without a JVM.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from models.core.errors import CatalogEnrichError

__all__ = ["RETRY_SEPARATOR", "RUN_ID_PATTERN", "InvalidRunId", "check_run_id", "latest_attempt",
           "retrain_outcome", "run_counts", "run_rows", "runs_with_status"]

# A run id names files (``<lake>/_reports/<run_id>.json``, ``<lake>/_reports/<run_id>/``) and transaction ids:
# letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 128 characters, no ``..``.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidRunId(CatalogEnrichError, ValueError):
    """A run id outside :data:`RUN_ID_PATTERN` (it would name a path outside the lake, or no file at all)."""

# Retrain attempts after the first get their own run id, ``<base>.try<N>``: a model_runs row is appended
# once per run id, so a retried attempt must not share the id of the attempt that failed.
RETRY_SEPARATOR = ".try"


def _plain(value: Any) -> Any:
    # deltalake hands a map column back as a list of (key, value) pairs.
    if isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return dict(value)
    return value


def check_run_id(run_id: object) -> str:
    """``run_id`` when it is a safe run id, else :class:`InvalidRunId` with a one-line reason.

    The one check every entry point applies (the enrich job, the gates and publish via
    :func:`jobs.lake.publish.report_dir`, the report command) before it writes anything."""
    if not isinstance(run_id, str):
        raise InvalidRunId(f"invalid run id {run_id!r}: expected a string")
    if RUN_ID_PATTERN.fullmatch(run_id) is None or ".." in run_id:
        raise InvalidRunId(f"invalid run id {run_id[:200]!r}: use 1-128 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit, without '..'")
    return run_id


def _rows_where(lake: str | Path, table: str, column: str, values: list[str]) -> list[dict[str, Any]]:
    """The rows of ``<lake>/<table>`` whose ``column`` is one of ``values`` (empty if the table does not exist)."""
    from deltalake import DeltaTable

    path = Path(lake) / table
    if not values or not DeltaTable.is_deltatable(str(path)):
        return []
    rows = DeltaTable(str(path)).to_pyarrow_table(filters=[(column, "in", list(values))]).to_pylist()
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def run_rows(lake: str | Path, table: str, run_ids: list[str]) -> list[dict[str, Any]]:
    """The rows of ``<lake>/<table>`` whose run_id is one of ``run_ids`` (empty if the table does not exist)."""
    return _rows_where(lake, table, "run_id", run_ids)


def runs_with_status(lake: str | Path, table: str, statuses: list[str]) -> list[dict[str, Any]]:
    """The rows of ``<lake>/<table>`` whose status is one of ``statuses`` (empty if the table does not exist)."""
    return _rows_where(lake, table, "status", statuses)


def run_counts(lake: str | Path, run_id: str) -> dict[str, int] | None:
    """``counts`` of a run's ``enrichment_runs`` row (read, enriched, unchanged, quarantined), or None."""
    rows = run_rows(lake, "enrichment_runs", [run_id])  # keyed by run_id: at most one row
    return dict(rows[0]["counts"] or {}) if rows else None


def latest_attempt(base_run_id: str, try_number: int) -> str:
    """The retrain run id of an Airflow attempt: the base id for the first, ``<base>.try<N>`` after."""
    return base_run_id if try_number <= 1 else f"{base_run_id}{RETRY_SEPARATOR}{try_number}"


def retrain_outcome(lake: str | Path, base_run_id: str, max_tries: int = 20) -> dict[str, Any] | None:
    """The ``model_runs`` row of the last finished attempt of a retrain run, or None if none finished.

    A row with status ``failed`` is returned only when no attempt succeeded.
    """
    ids = [latest_attempt(base_run_id, n) for n in range(1, max_tries + 1)]
    rows = run_rows(lake, "model_runs", ids)
    if not rows:
        return None
    done = [r for r in rows if r.get("status") in ("promoted", "kept_champion")] or rows
    return max(done, key=lambda r: (r.get("finished_at") is not None, r.get("finished_at") or 0))
