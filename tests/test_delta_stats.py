"""Delta column statistics: readers skip files with them, and the driver-side upsert reads only candidates."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql.types import StringType

from jobs.lake import delta_stats
from jobs.lake.lakehouse import Lake
from schemas.tables import Column, TableSpec

ITEMS = TableSpec(
    "items",
    (Column("product_id", StringType(), "key", nullable=False), Column("value", StringType(), "payload")),
    keys=("product_id",),
    doc="a test table",
)


def _ranged_table(spark, lake: Lake, n: int = 200, files: int = 4) -> dict[str, set[str]]:
    """``files`` data files holding disjoint product_id ranges; returns each file's ids (read from the file)."""
    df = spark.createDataFrame([(f"p{i:03d}", None if i % 7 == 0 else f"v{i}") for i in range(n)], ITEMS.schema)
    lake.upsert(ITEMS, df.repartitionByRange(files, "product_id"), run_id="r1")
    held = {rel: set(pq.read_table(lake.path(ITEMS) / rel, columns=["product_id"]).column(0).to_pylist())
            for rel in lake.files(ITEMS)}
    assert len(held) == files
    return held


def _spoil(lake: Lake, held: dict[str, set[str]], keep: str) -> None:
    """Overwrite every data file but the one holding ``keep``: a reader that opens one of them fails."""
    for rel, ids in held.items():
        if keep not in ids:
            (lake.path(ITEMS) / rel).write_bytes(b"not parquet" * 100)


@pytest.mark.spark
def test_point_query_on_product_id_skips_files_in_deltalake_and_duckdb(spark, lake):
    from jobs.read.query import connect

    held = _ranged_table(spark, lake)
    table = DeltaTable(str(lake.path(ITEMS)))
    assert len(table.file_uris()) == 4
    assert len(table.file_uris(file_pruning_predicate="product_id = 'p123'")) == 1
    fragments = list(table.to_pyarrow_dataset().get_fragments(filter=pds.field("product_id") == "p123"))
    assert [f.path for f in fragments] == [rel for rel, ids in held.items() if "p123" in ids]

    _spoil(lake, held, keep="p123")  # DuckDB (jobs.read.query) must not open the three other files
    con = connect(lake.root, latest=True)
    assert con.execute("SELECT value FROM items WHERE product_id = ?", ["p123"]).fetchall() == [("v123",)]
    with pytest.raises(Exception, match="(?i)parquet"):  # the files are read when they may hold the key
        con.execute("SELECT value FROM items WHERE product_id = ?", ["p001"]).fetchall()


@pytest.mark.spark
def test_filters_on_other_columns_still_see_every_file(spark, lake):
    """Statistics must not hide rows: a filter on a column without bounds in some file (all null) or on a
    column without statistics returns what a full scan returns."""
    _ranged_table(spark, lake)
    ds = DeltaTable(str(lake.path(ITEMS))).to_pyarrow_dataset()
    full = ds.to_table()
    for flt in (pds.field("value") == "v57", pds.field("value").is_null(), pds.field("product_id") >= "p150"):
        assert ds.to_table(filter=flt).num_rows == full.filter(flt).num_rows > 0


@pytest.mark.spark
def test_driver_upsert_reads_only_the_files_that_can_hold_a_changed_key(spark, lake, caplog):
    held = _ranged_table(spark, lake)
    target = next(rel for rel, ids in held.items() if "p060" in ids)
    _spoil(lake, held, keep="p060")
    update = pa.table({"product_id": ["p060", "p061"], "value": ["new", "new"]})
    with caplog.at_level(logging.DEBUG, logger="jobs.lake.lakehouse"):
        result = lake.upsert_arrow(ITEMS, update, run_id="r2")
    assert "items: 1 of 4 files may hold a changed key" in caplog.text
    assert result.removed_files == 1 and result.added_files == 1
    assert target not in lake.files(ITEMS)
    (added,) = set(lake.files(ITEMS)) - set(held)
    rows = dict(zip(*pq.read_table(lake.path(ITEMS) / added).to_pydict().values(), strict=True))
    assert rows == {**{i: (None if int(i[1:]) % 7 == 0 else f"v{int(i[1:])}") for i in held[target]},
                    "p060": "new", "p061": "new"}


@pytest.mark.spark
def test_driver_upsert_of_a_key_outside_every_range_reads_no_file(spark, lake):
    held = _ranged_table(spark, lake)
    _spoil(lake, held, keep="none")
    result = lake.upsert_arrow(ITEMS, pa.table({"product_id": ["q000"], "value": ["x"]}), run_id="r2")
    assert result.removed_files == 0 and result.added_files == 1


@pytest.mark.spark
def test_a_table_made_before_statistics_gets_them_named_and_keeps_reading(spark, lake):
    """Files committed without statistics (older runs) stay candidates and visible; new files get stats."""
    from deltalake import Schema
    from deltalake.transaction import AddAction

    path = lake.path(ITEMS)
    schema = lake.arrow_schema(ITEMS)
    old = DeltaTable.create(str(path), schema=Schema.from_arrow(schema))
    pq.write_table(pa.table({"product_id": ["a"], "value": ["1"]}, schema=schema), path / "old.parquet")
    old.create_write_transaction([AddAction(  # as the table layer committed files before statistics
        path="old.parquet", size=(path / "old.parquet").stat().st_size, partition_values={},
        modification_time=0, data_change=True, stats=json.dumps({"numRecords": 1}))],
        mode="append", schema=Schema.from_arrow(schema))
    lake.upsert(ITEMS, spark.createDataFrame([("c", "1")], ITEMS.schema), run_id="r1")
    assert DeltaTable(str(path)).metadata().configuration[delta_stats.STATS_COLUMNS_PROPERTY] == "product_id,value"
    result = lake.upsert_arrow(ITEMS, pa.table({"product_id": ["a", "b"], "value": ["2", "2"]}), run_id="r2")
    assert result.removed_files == 1
    table = DeltaTable(str(path))
    assert sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["product_id"]) == [
        {"product_id": "a", "value": "2"}, {"product_id": "b", "value": "2"}, {"product_id": "c", "value": "1"}]
    ds = table.to_pyarrow_dataset()
    assert ds.to_table(filter=pds.field("value") == "2").num_rows == 2
    assert ds.to_table(filter=pds.field("product_id") == "c").column("value").to_pylist() == ["1"]


def test_long_strings_are_truncated_to_bounds_that_still_hold(tmp_path):
    values = ["a" * 40 + "z", "a" * 40, "b" + "\U0010ffff" * 40, None]
    pq.write_table(pa.table({"s": values}), tmp_path / "f.parquet")
    stats = delta_stats.file_stats(tmp_path / "f.parquet", pq.read_metadata(tmp_path / "f.parquet"), ["s"])
    lo, hi = stats["minValues"]["s"], stats["maxValues"]["s"]
    assert len(lo) == 32 and len(hi) <= 32 and stats["nullCount"] == {"s": 1} and stats["numRecords"] == 4
    assert all(lo <= v <= hi for v in values if v is not None)
    # The same in UTF-8 byte order, which Parquet and Arrow compare by.
    assert all(lo.encode() <= v.encode() <= hi.encode() for v in values if v is not None)
    json.dumps(stats)  # JSON-serialisable


def test_timestamps_round_outwards_to_milliseconds(tmp_path):
    t = [dt.datetime(2026, 11, 21, 3, 0, 0, 1500, tzinfo=dt.timezone.utc),
         dt.datetime(2026, 11, 21, 4, 0, 0, 999_001, tzinfo=dt.timezone.utc)]
    pq.write_table(pa.table({"t": pa.array(t, pa.timestamp("us", tz="UTC"))}), tmp_path / "f.parquet")
    stats = delta_stats.file_stats(tmp_path / "f.parquet", pq.read_metadata(tmp_path / "f.parquet"), ["t"])
    assert stats["minValues"]["t"] == "2026-11-21T03:00:00.001Z"
    assert stats["maxValues"]["t"] == "2026-11-21T04:00:01.000Z"


def test_candidate_files_keep_unknown_bounds_and_drop_disjoint_ranges():
    bounds = {"a": ("p000", "p049"), "b": ("p050", "p099"), "c": None, "d": (None, "p010"), "e": ("p200", None)}
    assert delta_stats.candidate_files(bounds, ["p060", "p070"]) == ["b", "c"]
    assert delta_stats.candidate_files(bounds, ["p005", "p300"]) == ["a", "c", "d", "e"]
    assert delta_stats.candidate_files(bounds, []) == []
