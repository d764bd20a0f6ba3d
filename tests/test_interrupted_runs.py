"""A run that stopped between its commits (killed, machine lost) and the next run, which has a new run id: the
next run marks it ``abandoned`` and redoes the products it wrote, so that no table stays without them.

The lake of such a run is made here from a finished run (``tests/test_reliability.py`` kills real runs at
every commit point): its ``enrichment_runs`` row set back to ``running`` and the tables committed after
``product_embeddings`` put back to their versions before it, which is what a kill right after the embeddings
commit leaves.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import enrich
from jobs.lake.lock import LakeLock
from tests.conftest import SAMPLE
from tests.reliability import make_slice

pytestmark = pytest.mark.spark

FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:", "--attributes", "none",
        "--matching", "none"]
AFTER_EMBEDDINGS = ("product_categories", "product_attributes", "product_adult_flags")
WALL_CLOCK = ("run_id", "updated_at")


@pytest.fixture()
def sample(tmp_path):
    """30 products of the sample catalog and its broken rows (images stay in the sample's folder)."""
    return make_slice(tmp_path / "catalog").parent


def _args(sample, lake, run_id):
    return ["--catalog", str(sample / "catalog.parquet"), "--image-root", str(SAMPLE), "--lake", str(lake),
            "--run-id", run_id, *FAKE]


def _rows(lake, name):
    df = DeltaTable(str(lake / name)).to_pandas()
    return df.drop(columns=list(WALL_CLOCK)).map(repr).sort_values(list(df.columns.drop(list(WALL_CLOCK))))


def _runs(lake):
    return {r["run_id"]: r for r in DeltaTable(str(lake / "enrichment_runs")).to_pyarrow_table().to_pylist()}


def _interrupt(spark, lake, run_id, versions):
    """Leave ``run_id`` as a kill after its product_embeddings commit would: tables after it at ``versions``
    (their state before the run), its record ``running`` without an end (as the run wrote it at its start)."""
    from jobs.lake.lakehouse import Lake
    from schemas.tables import ENRICHMENT_RUNS

    for name in AFTER_EMBEDDINGS:
        table = DeltaTable(str(lake / name))
        if table.version() != versions[name]:   # the run may have had nothing to change in a table
            table.restore(versions[name])
    row = dict(_runs(lake)[run_id], status="running", finished_at=None, counts=[], timings=[], message="")
    Lake(spark, lake).upsert_rows(ENRICHMENT_RUNS, [row], f"test/interrupt/{run_id}")


def test_next_run_completes_an_interrupted_run_and_marks_it_abandoned(spark, sample, tmp_path, capsys):
    lake = tmp_path / "lake"
    assert enrich.main(_args(sample, lake, "r1")) == 0
    before = {n: DeltaTable(str(lake / n)).version() for n in AFTER_EMBEDDINGS}
    unchanged_rows = {n: _rows(lake, n) for n in AFTER_EMBEDDINGS}
    # r2 enriches one changed product; it is then "killed" right after its product_embeddings commit.
    catalog = pq.read_table(sample / "catalog.parquet")
    df = catalog.to_pandas()
    target = DeltaTable(str(lake / "product_embeddings")).to_pandas()["product_id"].min()
    df.loc[df["product_id"] == target, "title"] = "A completely new title"
    pq.write_table(catalog.from_pandas(df, schema=catalog.schema, preserve_index=False), sample / "catalog.parquet")
    assert enrich.main(_args(sample, lake, "r2")) == 0
    complete = {n: _rows(lake, n) for n in AFTER_EMBEDDINGS}
    assert not complete["product_categories"].equals(unchanged_rows["product_categories"])  # r2 did change it
    _interrupt(spark, lake, "r2", before)
    capsys.readouterr()

    assert enrich.main(_args(sample, lake, "r3")) == 0
    assert "enriched 1 + unchanged" in capsys.readouterr().out   # r2's product, and only it, again
    for name in AFTER_EMBEDDINGS:
        got = _rows(lake, name)
        assert got.equals(complete[name]), f"{name} lacks what the interrupted run left undone"
    categories = DeltaTable(str(lake / "product_categories")).to_pandas()
    assert set(categories.loc[categories["run_id"] == "r3", "product_id"]) == {target}
    assert set(categories.loc[categories["product_id"] != target, "run_id"]) == {"r1"}  # the others untouched
    runs = _runs(lake)
    assert runs["r2"]["status"] == "abandoned" and runs["r2"]["finished_at"] is not None
    assert runs["r2"]["message"].startswith("abandoned: still running when run r3 started")
    assert runs["r3"]["status"] == "succeeded" and "completed abandoned run r2" in runs["r3"]["message"]
    assert [r["status"] for r in runs.values()].count("running") == 0


def test_a_running_run_is_not_abandoned_while_another_process_holds_the_lake(spark, sample, tmp_path):
    lake = tmp_path / "lake"
    assert enrich.main(_args(sample, lake, "r1")) == 0
    _interrupt(spark, lake, "r1", {n: DeltaTable(str(lake / n)).version() for n in AFTER_EMBEDDINGS})
    with LakeLock(lake, "live-elsewhere"):   # r1 may be alive: the lock is held
        summary = enrich.run(spark, enrich.parse_args(_args(sample, lake, "r2")))
    assert summary.status == "succeeded"
    assert _runs(lake)["r1"]["status"] == "running"
