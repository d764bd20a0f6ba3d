"""Write, audit, publish: which Delta version of each output table readers should see.

The enrich job commits its writes to the tables as usual (write). The output gate validates the versions it
finds and records them in ``<lake>/_reports/<run_id>/gate-output.json`` (audit). Publishing then moves one
pointer file, ``<lake>/_published.json``, to exactly those versions (publish)::

    {"run_id": "...", "published_at": "...", "tables": {"product_embeddings": 7, "quarantine": 5}, ...}

Readers open the published version (:func:`open_published`, :func:`read_published`, or any Delta reader with
time travel: ``DeltaTable(path, version=v)``, ``polars.read_delta(path, version=v)``), so a run that is
written but not yet audited, or audited and blocked, is never what they see. The pointer is replaced
atomically (write a temporary file, ``os.replace``): a reader gets the old or the new pointer, never half.

A blocked run is discarded: each table it wrote is restored (a Delta ``RESTORE`` commit) to its published
version, so the next run starts from published data instead of building on rows that failed the audit.
The blocked versions stay in the log for inspection (time travel) until a vacuum removes their files; run
vacuum with a retention longer than the time between publications. Every step is idempotent per run id.

This module imports neither Spark nor Great Expectations: the Airflow tasks call it directly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from models.core.errors import BlockedError, CatalogEnrichError
from models.core.io import atomic_write

__all__ = [
    "GateBlocked", "POINTER", "PublishError", "discard", "finalize", "main", "open_published", "published_version",
    "read_pointer", "read_published", "read_verdict", "report_dir", "rollback", "publish", "write_json",
]

log = logging.getLogger(__name__)

POINTER = "_published.json"
DISCARDED = "discarded.json"
PUBLICATION = "publication.json"
_DISCARD_KEY = "catalog_enrich.discarded_run"
_ROLLBACK_KEY = "catalog_enrich.rollback_to_run"


class PublishError(CatalogEnrichError, RuntimeError):
    """The pointer cannot be moved as asked."""


class GateBlocked(PublishError, BlockedError):
    """The run's output suite failed: it was not published (and its writes were discarded)."""


def report_dir(lake: str | Path, run_id: str) -> Path:
    """``<lake>/_reports/<run_id>``; :class:`jobs.lake.runlog.InvalidRunId` (a ``ValueError``) for an unsafe run id."""
    from jobs.lake.runlog import check_run_id

    return Path(lake) / "_reports" / check_run_id(run_id)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True))


def read_pointer(lake: str | Path) -> dict[str, Any] | None:
    """The published state, or None before the first publication."""
    return _read_json(Path(lake) / POINTER)


def published_version(lake: str | Path, table: str) -> int | None:
    pointer = read_pointer(lake)
    return None if pointer is None else pointer["tables"].get(table)


def open_published(lake: str | Path, table: str):
    """The published version of ``table`` as a ``deltalake.DeltaTable``."""
    from deltalake import DeltaTable

    version = published_version(lake, table)
    if version is None:
        raise PublishError(f"{table} has no published version in {lake} (no run has passed the output gate)")
    return DeltaTable(str(Path(lake) / table), version=version)


def read_published(spark, lake: str | Path, spec):
    """The published version of the table ``spec`` as a Spark DataFrame (exactly the files of that version)."""
    files = open_published(lake, spec.name).file_uris()
    return spark.read.schema(spec.schema).parquet(*files) if files else spark.createDataFrame([], spec.schema)


def read_verdict(lake: str | Path, run_id: str, suite: str = "output") -> dict[str, Any] | None:
    return _read_json(report_dir(lake, run_id) / f"gate-{suite}.json")


def _audited_tables(verdict: dict[str, Any]) -> dict[str, int]:
    return {name: t["version"] for name, t in verdict["tables"].items()
            if t.get("publish") and t.get("version") is not None}


def publish(lake: str | Path, run_id: str) -> dict[str, Any]:
    """Point readers at the versions the run's output gate passed. A no-op for a run already published."""
    lake = Path(lake)
    rdir = report_dir(lake, run_id)
    pointer = read_pointer(lake)
    if pointer is not None and pointer["run_id"] == run_id:
        log.info("run %s is already the published state", run_id)
        return pointer
    done = _read_json(rdir / PUBLICATION)
    if done is not None:  # published once, since superseded by a later run: never move the pointer back
        log.info("run %s was published at %s and has been superseded; nothing to do", run_id, done["published_at"])
        return done
    if (rdir / DISCARDED).exists():
        raise GateBlocked(f"run {run_id} was blocked by its output gate and discarded; it cannot be published")
    verdict = read_verdict(lake, run_id)
    if verdict is None:
        raise PublishError(f"run {run_id} has no output verdict ({rdir / 'gate-output.json'}): run the output "
                           "gate first (python -m jobs.quality output ...)")
    if not verdict["success"]:
        raise GateBlocked(f"run {run_id} failed its output gate; see {verdict.get('data_docs') or rdir}")
    tables = _audited_tables(verdict)
    before = pointer["tables"] if pointer else {}
    stale = {t: (v, before[t]) for t, v in tables.items() if t in before and v < before[t]}
    if stale:
        raise PublishError(f"run {run_id} audited older versions than the published ones {stale}: "
                           "its verdict is stale; run the gate again")
    publication = {"run_id": run_id, "published_at": _now(), "tables": tables,
                   "previous_run_id": pointer["run_id"] if pointer else None,
                   "verdict": str(rdir / "gate-output.json")}
    write_json(rdir / PUBLICATION, publication)
    write_json(lake / POINTER, publication)
    log.info("published run %s: %s", run_id, tables)
    return publication


def _run_first_version(table, app_id: str) -> int | None:
    versions = [h["version"] for h in table.history() if h.get("catalog_enrich.app_id") == app_id]
    return min(versions) if versions else None


def discard(lake: str | Path, run_id: str) -> dict[str, Any]:
    """Restore every table the run's output gate audited to its published version (see the module doc)."""
    from deltalake import CommitProperties, DeltaTable

    from jobs.lake.lakehouse import app_id_for

    lake = Path(lake)
    rdir = report_dir(lake, run_id)
    done = _read_json(rdir / DISCARDED)
    if done is not None:
        return done
    verdict = read_verdict(lake, run_id)
    if verdict is None:
        raise PublishError(f"run {run_id} has no output verdict; nothing says what it wrote")
    pointer = read_pointer(lake)
    restored: dict[str, dict[str, int]] = {}
    for name, audited in _audited_tables(verdict).items():
        table = DeltaTable(str(lake / name))
        current = table.version()
        last = table.history(1)[0]
        if last.get(_DISCARD_KEY) == run_id:
            continue  # restored by an earlier attempt of this discard
        if current != audited:
            raise PublishError(f"{name} moved from the audited version {audited} to {current}: another writer; "
                               "not restoring over it")
        target = (pointer or {}).get("tables", {}).get(name)
        if target is None:  # never published: undo this run's commits only
            first = _run_first_version(table, app_id_for(name, run_id))
            target = None if first is None else first - 1
        if target is None or target == current:
            continue
        props = CommitProperties(custom_metadata={_DISCARD_KEY: run_id})
        if target < 0:  # the run created the table with its first commit: empty it (there is no version -1)
            table.delete(commit_properties=props)
        else:
            table.restore(target, commit_properties=props)
        restored[name] = {"from": current, "to": target}
    record = {"run_id": run_id, "discarded_at": _now(), "restored": restored,
              "data_docs": verdict.get("data_docs"), "failed_tables": sorted(
                  n for n, t in verdict["tables"].items() if t.get("status") == "failed")}
    write_json(rdir / DISCARDED, record)
    log.warning("run %s discarded: restored %s", run_id, restored or "nothing")
    return record


def finalize(lake: str | Path, run_id: str) -> dict[str, Any]:
    """Publish the run if its output gate passed; otherwise discard it and raise :class:`GateBlocked`."""
    verdict = read_verdict(lake, run_id)
    if verdict is not None and not verdict["success"]:
        record = discard(lake, run_id)
        raise GateBlocked(f"run {run_id} blocked by the output gate (failed: {', '.join(record['failed_tables'])}); "
                          f"published state unchanged; data docs: {record['data_docs']}")
    return publish(lake, run_id)


def rollback(lake: str | Path, to_run_id: str) -> dict[str, Any]:
    """Publish an earlier run's versions again, and restore the tables' latest state to them."""
    from deltalake import CommitProperties, DeltaTable

    lake = Path(lake)
    target = _read_json(report_dir(lake, to_run_id) / PUBLICATION)
    if target is None:
        raise PublishError(f"run {to_run_id} was never published; published runs have "
                           f"{PUBLICATION} under {lake / '_reports'}")
    current = read_pointer(lake)
    for name, version in target["tables"].items():
        table = DeltaTable(str(lake / name))
        if table.version() != version:
            table.restore(version, commit_properties=CommitProperties(custom_metadata={_ROLLBACK_KEY: to_run_id}))
    pointer = dict(target, rolled_back_at=_now(), rolled_back_from=current["run_id"] if current else None)
    write_json(lake / POINTER, pointer)
    log.warning("rolled back the published state to run %s", to_run_id)
    return pointer


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="catalog-enrich publish", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("status", "publish", "discard", "finalize", "rollback"))
    p.add_argument("--lake", default="lake")
    p.add_argument("--run-id", help="the run to publish, discard or finalize; for rollback, the run to go back to")
    a = p.parse_args(argv)
    if a.action != "status" and not a.run_id:
        p.error(f"{a.action} needs --run-id")
    from jobs.lake.runlog import check_run_id
    from jobs.runtime.exits import fail

    try:
        if a.run_id is not None:
            check_run_id(a.run_id)
        if a.action == "status":
            out = read_pointer(a.lake) or {"published": None, "note": "nothing published yet"}
        else:
            out = {"publish": publish, "discard": discard, "finalize": finalize, "rollback": rollback}[a.action](
                a.lake, a.run_id)
    except GateBlocked as e:
        return fail(e, "blocked")
    except CatalogEnrichError as e:
        return fail(e)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
