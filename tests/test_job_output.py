"""One real enrich run (fake encoder, duplicate matching on, the default log level) and what it leaves: a
console without library chatter, and data files whose Delta statistics bound their data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tests.reliability import FAKE, SAMPLE, job_env, make_slice, run_job, tables

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CHATTER = ("Closing down clientserver connection", "faiss.loader", "Asked to cache already cached data")


@pytest.fixture(scope="module")
def job_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("job-output")
    catalog = make_slice(root)
    env = job_env()
    env.pop("CATALOG_ENRICH_LOG")  # the level a user gets
    result = run_job(["enrich", "--catalog", str(catalog), "--image-root", str(SAMPLE), "--lake", str(root / "lake"),
                      "--run-id", "out-1", *FAKE], env)
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "lake", result


def test_console_has_the_jobs_progress_and_summary_and_no_library_chatter(job_run):
    _, result = job_run
    console = result.stdout + result.stderr
    assert [line for line in console.splitlines() if any(c in line for c in CHATTER)] == []
    for stage in ("validate", "embed", "commit", "match"):
        assert f"stage {stage} done in" in result.stderr
    assert "catalog-enrich run out-1 succeeded" in result.stdout


def _live_stats(table: Path) -> dict[str, dict]:
    live = {Path(u).relative_to(table).as_posix() for u in DeltaTable(str(table)).file_uris()}
    stats = {}
    for entry in sorted((table / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            add = json.loads(line).get("add")
            if add and add["path"] in live:
                stats[add["path"]] = json.loads(add["stats"])
    assert set(stats) == live
    return stats


def _as_stat(value, sample):
    """A statistic parsed back into the Python type of the column's values."""
    if isinstance(sample, dt.datetime):
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    if isinstance(sample, dt.date):
        return dt.date.fromisoformat(value)
    return value


def test_files_written_by_the_job_carry_statistics_that_bound_their_data(job_run):
    lake, _ = job_run
    checked = set()
    for name in tables(lake):
        for rel, stats in _live_stats(lake / name).items():
            data = pq.read_table(lake / name / rel)
            assert stats["numRecords"] == data.num_rows > 0
            assert "product_id" in stats["nullCount"] or name == "enrichment_runs"
            for col, nulls in stats["nullCount"].items():
                values = data.column(col)
                assert nulls == values.null_count, (name, col)
                if nulls == data.num_rows:
                    assert col not in stats["minValues"]
                    continue
                lo, hi = pc.min_max(values).as_py().values()
                if isinstance(lo, dt.datetime) and lo.tzinfo is None:
                    lo, hi = lo.replace(tzinfo=dt.timezone.utc), hi.replace(tzinfo=dt.timezone.utc)
                assert _as_stat(stats["minValues"][col], lo) <= lo, (name, col)
                assert _as_stat(stats["maxValues"][col], hi) >= hi, (name, col)
                checked.add((name, col, type(lo).__name__))
    names = {n for n, _, _ in checked}
    assert {"product_embeddings", "product_categories", "product_clusters"} <= names  # Spark and driver writes
    assert {"str", "datetime"} <= {t for _, _, t in checked}
