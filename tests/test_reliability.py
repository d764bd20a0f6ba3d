"""Crashes, task retries and concurrent runs, done for real: the enrich job as a subprocess on a real lake,
killed with SIGKILL at named points (models.core.faults), failing UDF batches on their first attempt under
``local[2,4]``, and a second run started while the first holds the lake.

Each repeat of a killed run runs under ``local[2,4]`` with task faults injected, so the default run (one kill
point, without the match stage, to stay within the CI budget) covers crashes, retries and the lock with three
job runs.
``CATALOG_ENRICH_RELIABILITY=full`` tries every one of :data:`tests.reliability.KILL_POINTS`
(``CATALOG_ENRICH_KILL_POINTS=a,b`` picks some) and a faulty run from scratch. Each test compares the lake
with the one an uninterrupted run wrote (the reference), row for row.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import reliability as rel

pytestmark = pytest.mark.spark

LIGHT_KILL_POINTS = ("committed:product_embeddings",)   # the point that lost rows before repeats redid products
# The nightly path (each run a new id), in the default run: one lake killed at each of these in turn, then
# finished by a fourth run (four job runs, about 100 s on an idle machine). The first lost every later table's
# rows before runs checked what earlier runs completed; the second leaves some of a product's tables behind;
# the third every table but not the run's record. The full run tries every point, each on its own lake.
NEW_ID_CHAIN = ("committed:product_embeddings", "committed:product_categories", "tables_committed")
TASK_FAULTS = "inspect,embed,heads,match:0.5"


def _kill_points() -> tuple[str, ...]:
    chosen = os.environ.get("CATALOG_ENRICH_KILL_POINTS")
    if chosen:
        return tuple(p for p in chosen.split(",") if p)
    if rel.chain_mode():
        return ()
    return rel.KILL_POINTS if rel.full_mode() else LIGHT_KILL_POINTS


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return rel.make_slice(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="module")
def reference(catalog, tmp_path_factory):
    """An uninterrupted run: its lake is what every crashed-and-repeated run must end with.

    While it runs, a second run on the same lake is started (another run id): the lake lock must refuse it
    at once, before it writes anything. ``test_concurrent_run_is_refused`` checks that part.
    """
    lake = tmp_path_factory.mktemp("reference") / "lake"
    t = time.perf_counter()
    first = rel.start_job(rel.enrich_args(catalog, lake), rel.job_env())
    lock = lake / "_locks" / "enrich.lock"
    deadline = time.monotonic() + 120
    while rel.RUN_ID not in (lock.read_text() if lock.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    second = rel.run_job(rel.enrich_args(catalog, lake, "rel-2"), rel.job_env(), timeout=120)
    tables_while_refused = rel.tables(lake)
    result = rel.finish_job(first, started=t)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"lake": lake, "state": rel.lake_state(lake), "result": result, "second": second,
            "tables_while_refused": tables_while_refused}


def test_reference_run_accounts_for_every_row(reference, catalog):
    counts = rel.check_accounted(reference["lake"], catalog)
    assert counts["enriched"] == 30 and counts["quarantined"] > 10
    assert rel.check_readable(reference["lake"]) == dict.fromkeys(reference["state"], 0)  # no leftovers at all


def test_concurrent_run_is_refused(reference, catalog):
    """Two runs at once: the second is refused with exit status 3 and a message naming the holder, writes
    nothing, and the first commits normally; once the first is done, the second runs."""
    second = reference["second"]
    assert second.returncode == 3, second.stderr[-2000:]
    assert f"is locked by run {rel.RUN_ID}" in second.stderr and "run rel-2 was not started" in second.stderr
    assert second.seconds < 60  # refused before Spark starts
    from jobs.lake.runlog import run_rows

    assert run_rows(reference["lake"], "enrichment_runs", ["rel-2"]) == []
    assert all(row[0] != ("run_id", "rel-2") for rows in reference["state"].values() for row in rows)
    if rel.full_mode():  # the refused run, repeated later, succeeds (nothing changed: all unchanged)
        import shutil

        lake = reference["lake"].parent / "after"
        shutil.copytree(reference["lake"], lake)
        again = rel.run_job(rel.enrich_args(catalog, lake, "rel-2"), rel.job_env())
        assert again.returncode == 0, again.stderr[-4000:]
        c = rel.check_accounted(lake, catalog, "rel-2")
        assert c["enriched"] == 0 and c["unchanged"] == 30


def _skip_unreachable(point: str, reference) -> None:
    """Skip a table's commit point when the uninterrupted run commits no row to that table on this slice (the
    fake encoder extracts no attribute and finds no match): the job commits nothing there, so no kill can land."""
    from deltalake import DeltaTable

    kind, _, table = point.partition(":")
    path = reference["lake"] / table.split("/")[0]
    if kind == "committed" and DeltaTable(str(path)).to_pyarrow_dataset().count_rows() == 0:
        pytest.skip(f"{point}: the uninterrupted run commits no row to {path.name} on this slice")


@pytest.mark.parametrize("point", _kill_points())
def test_killed_run_repeated_ends_like_an_uninterrupted_one(point, reference, catalog, tmp_path):
    _skip_unreachable(point, reference)
    lake = tmp_path / "lake"
    faults = tmp_path / "faults"
    faults.mkdir()
    killed = rel.run_job(rel.enrich_args(catalog, lake), rel.job_env({
        "CATALOG_ENRICH_KILL_AT": point, "CATALOG_ENRICH_FAULT_LOG": str(faults)}))
    assert killed.returncode == -9, f"kill point {point} was not reached (exit {killed.returncode})"
    assert [p.read_text().split()[0] for p in faults.glob("kills-*")] == [point]
    rel.check_readable(lake)  # right after the crash: whatever is visible is whole

    again = rel.run_job(rel.enrich_args(catalog, lake), rel.job_env({
        "CATALOG_ENRICH_TASK_FAULTS": TASK_FAULTS, "CATALOG_ENRICH_FAULT_LOG": str(faults)}, master="local[2,4]"))
    assert again.returncode == 0, again.stderr[-4000:]
    if point not in ("committed:enrichment_runs/2", "run_recorded"):  # else the repeat has nothing left to do
        assert _injected(faults)  # the repeat also survived task failures
    rel.check_readable(lake)
    rel.check_accounted(lake, catalog)
    state = rel.lake_state(lake)
    assert state.keys() == reference["state"].keys()
    for name, rows in reference["state"].items():
        assert state[name] == rows, f"{name} differs from the uninterrupted run after a kill at {point}"


def _new_id_kill_points() -> tuple[str, ...]:
    chosen = os.environ.get("CATALOG_ENRICH_KILL_POINTS")
    if chosen:
        return tuple(p for p in chosen.split(",") if p)
    return rel.KILL_POINTS if rel.full_mode() else ()


def _killed(catalog: Path, lake: Path, point: str, faults: Path) -> set[str]:
    """Run the job without --run-id, killed at ``point``; the ids it recorded in enrichment_runs (none when
    killed before its first record)."""
    before = set(rel.run_records(lake)) if (lake / "enrichment_runs").is_dir() else set()
    faults.mkdir()
    killed = rel.run_job(rel.enrich_args(catalog, lake, run_id=None), rel.job_env({
        "CATALOG_ENRICH_KILL_AT": point, "CATALOG_ENRICH_FAULT_LOG": str(faults)}))
    assert killed.returncode == -9, f"kill point {point} was not reached (exit {killed.returncode})"
    # A point inside a Spark task (inspect_batch, embed_batch) may be reached by both tasks at once.
    assert {p.read_text().split()[0] for p in faults.glob("kills-*")} == {point}
    rel.check_readable(lake)
    return (set(rel.run_records(lake)) if (lake / "enrichment_runs").is_dir() else set()) - before


def _finish_with_a_new_id(catalog: Path, lake: Path, reference, interrupted: set[str]) -> None:
    """The next nightly run (a new id) exits 0 and leaves every table as the uninterrupted run did."""
    again = rel.run_job(rel.enrich_args(catalog, lake, run_id=None), rel.job_env())
    assert again.returncode == 0, again.stderr[-4000:]
    finished = again.stdout.split()[2]   # "catalog-enrich run <id> succeeded in ..."
    assert finished not in interrupted
    rel.check_readable(lake)
    rel.check_accounted(lake, catalog, finished)
    rel.check_resumed_runs(lake, reference["lake"], interrupted, finished)
    want = rel.output_state(reference["lake"], rel.RUN_ID)
    got = rel.output_state(lake, finished)
    assert got.keys() == want.keys()
    for name, rows in want.items():
        assert got[name] == rows, f"{name} differs from the uninterrupted run's after {sorted(interrupted)}"


@pytest.mark.parametrize("point", _new_id_kill_points())
def test_killed_run_completed_by_the_next_run_with_a_new_id(point, reference, catalog, tmp_path):
    """Killed at ``point``, then the next run with a new run id (the nightly path): every table ends as the
    uninterrupted run's, and the killed run is marked abandoned (or succeeded, killed after recording so)."""
    _skip_unreachable(point, reference)
    lake = tmp_path / "lake"
    interrupted = _killed(catalog, lake, point, tmp_path / "faults")
    _finish_with_a_new_id(catalog, lake, reference, interrupted)


@pytest.mark.skipif(bool(_new_id_kill_points()), reason="the full run tries every point with a new id one by one")
def test_runs_killed_in_turn_completed_by_a_run_with_a_new_id(reference, catalog, tmp_path):
    """Nightly runs (each a new id) killed at :data:`NEW_ID_CHAIN` in turn, each on what the one before left
    (and marking it abandoned); the next run completes the work of all three."""
    lake = tmp_path / "lake"
    interrupted: set[str] = set()
    for i, point in enumerate(NEW_ID_CHAIN):
        ids = _killed(catalog, lake, point, tmp_path / f"faults-{i}")
        assert len(ids) == 1   # each recorded itself as running before it died
        interrupted |= ids
        runs = rel.run_records(lake)
        assert [r for r in runs.values() if r["status"] == "running"] == [runs[next(iter(ids))]]
    _finish_with_a_new_id(catalog, lake, reference, interrupted)


def _committed_already(lake: Path, point: str) -> bool:
    """True for a table commit point (``written:T``, ``committed:T/2``) whose commit the lake's log holds already.

    A run's table commits go side by side (``jobs.enrich.side_by_side``): when a run is killed at one table's
    commit, another table's may have finished, and the repeat skips it (the log has it), so that point cannot be
    reached from this lake any more."""
    from deltalake import DeltaTable

    from jobs.lake.lakehouse import app_id_for

    kind, _, rest = point.partition(":")
    table, _, step = rest.partition("/")
    if kind not in ("written", "committed") or not (lake / table / "_delta_log").is_dir():
        return False
    done = DeltaTable(str(lake / table)).transaction_version(app_id_for(table, rel.RUN_ID))
    return done is not None and done >= int(step or 1)


@pytest.mark.skipif(not rel.chain_mode(), reason="CATALOG_ENRICH_RELIABILITY=chain runs it")
def test_one_lake_killed_at_every_point_in_turn(reference, catalog, tmp_path):
    """Run k dies at point k, having redone what runs 1..k-1 left; the run after the last point finishes.
    Each point is reached from a lake that earlier crashes left behind, not from an empty one."""
    lake = tmp_path / "lake"
    # Not run_recorded: once a run's record is committed, its repeat does no work and never gets there (the
    # default and full runs reach it from a fresh lake).
    points = ([p for p in os.environ.get("CATALOG_ENRICH_KILL_POINTS", "").split(",") if p]
              or [p for p in rel.KILL_POINTS if p != "run_recorded"])
    for point in points:
        if _committed_already(lake, point):
            print(f"skipped {point}: an earlier killed run's side-by-side commit already made it", flush=True)
            continue
        faults = tmp_path / f"faults-{point.replace('/', '_')}"
        faults.mkdir()
        killed = rel.run_job(rel.enrich_args(catalog, lake), rel.job_env({
            "CATALOG_ENRICH_KILL_AT": point, "CATALOG_ENRICH_FAULT_LOG": str(faults)}))
        assert killed.returncode == -9, f"kill point {point} was not reached (exit {killed.returncode})"
        rel.check_readable(lake)
        print(f"killed at {point} after {killed.seconds:.0f} s", flush=True)
    again = rel.run_job(rel.enrich_args(catalog, lake), rel.job_env())
    assert again.returncode == 0, again.stderr[-4000:]
    rel.check_readable(lake)
    rel.check_accounted(lake, catalog)
    assert rel.lake_state(lake) == reference["state"]
    print(f"kill points tried in a chain: {len(points)}", flush=True)


def _injected(faults: Path) -> list[str]:
    lines = [line for p in faults.glob("faults-*") for line in p.read_text().splitlines()]
    return lines


@pytest.mark.skipif(not rel.full_mode(), reason="the default run retries faults in the repeat of a killed run; "
                                                 "CATALOG_ENRICH_RELIABILITY=full runs this one too")
def test_task_failures_are_retried_and_change_nothing(reference, catalog, tmp_path):
    """Half of the inspect, embed, heads and match UDF batches fail on their task's first attempt; under
    ``local[2,4]`` Spark retries them and the lake equals the reference."""
    faults = tmp_path / "faults"
    faults.mkdir()
    lake = tmp_path / "lake"
    result = rel.run_job(rel.enrich_args(catalog, lake), rel.job_env({
        "CATALOG_ENRICH_TASK_FAULTS": TASK_FAULTS, "CATALOG_ENRICH_FAULT_LOG": str(faults)}, master="local[2,4]"))
    assert result.returncode == 0, result.stderr[-4000:]
    injected = _injected(faults)
    assert {line.split()[0] for line in injected} == {"inspect", "embed", "heads", "match"}
    print(f"task faults injected: {len(injected)}", flush=True)
    rel.check_readable(lake)
    rel.check_accounted(lake, catalog)
    assert rel.lake_state(lake) == reference["state"]


def test_kill_points_cover_every_checkpoint_of_the_job():
    """:data:`tests.reliability.KILL_POINTS` (every point the full run kills at) names each checkpoint in the
    job's code and both commit points of every table a run commits, so a new checkpoint or table cannot go
    untested."""
    import re

    from schemas.tables import MODEL_RUNS, TABLES

    named = {m for src in ("jobs", "udfs") for path in (rel.REPO / src).glob("*.py")
             for m in re.findall(r'\bcheckpoint\("([a-z_]+)"\)', path.read_text())}
    assert {"start", "run_started", "tables_committed", "run_recorded", "embed_batch"} <= named  # the scan works
    commits = {f"{kind}:{t}" for t in [*(n for n in TABLES if n != MODEL_RUNS.name), "enrichment_runs/2"]
               for kind in ("written", "committed")}
    assert sorted((named | commits) - set(rel.KILL_POINTS)) == []
    assert len(set(rel.KILL_POINTS)) == len(rel.KILL_POINTS)
