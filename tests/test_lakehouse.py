"""The Delta table layer against a real SparkSession and real Delta logs in a temp dir."""

from __future__ import annotations

import datetime as dt

import pytest
from deltalake import DeltaTable
from pyspark.sql.types import StringType

from jobs.lake.lakehouse import Lake, LakeError
from schemas.tables import PRODUCT_EMBEDDINGS, Column, TableSpec

pytestmark = pytest.mark.spark

ITEMS = TableSpec(
    "items",
    (Column("product_id", StringType(), "key", nullable=False), Column("value", StringType(), "payload")),
    keys=("product_id",),
    doc="a test table",
)


def rows(spark, pairs, partitions=2):
    return spark.createDataFrame(pairs, ITEMS.schema).repartition(partitions)


def table_rows(lake, spec=ITEMS):
    return sorted(tuple(r) for r in lake.read(spec).collect())


def test_upsert_inserts_then_replaces_by_key(spark, lake):
    lake.upsert(ITEMS, rows(spark, [("a", "1"), ("b", "1"), ("c", "1")]), run_id="r1")
    result = lake.upsert(ITEMS, rows(spark, [("b", "2"), ("d", "2")], 1), run_id="r2")
    assert result.committed
    assert table_rows(lake) == [("a", "1"), ("b", "2"), ("c", "1"), ("d", "2")]


def test_upsert_twice_gives_the_same_table(spark, lake):
    data = [(f"p{i}", f"v{i}") for i in range(20)]
    lake.upsert(ITEMS, rows(spark, data), run_id="r1")
    first = table_rows(lake)
    lake.upsert(ITEMS, rows(spark, data), run_id="r2")
    assert table_rows(lake) == first
    assert len(first) == 20
    # Readers outside Spark see the same rows.
    pdf = DeltaTable(str(lake.path(ITEMS))).to_pandas()
    assert sorted(map(tuple, pdf[["product_id", "value"]].values.tolist())) == first


def test_upsert_rewrites_only_files_that_hold_updated_keys(spark, lake):
    lake.upsert(ITEMS, rows(spark, [("a", "1")], 1), run_id="r1")
    lake.upsert(ITEMS, rows(spark, [("b", "1")], 1), run_id="r2")
    before = set(lake.files(ITEMS))
    result = lake.upsert(ITEMS, rows(spark, [("b", "2")], 1), run_id="r3")
    after = set(lake.files(ITEMS))
    assert result.removed_files == 1
    assert len(before & after) == 1  # the file holding "a" was not touched
    assert table_rows(lake) == [("a", "1"), ("b", "2")]


def test_upsert_caches_its_rows_unless_told_they_are_cheap_to_read_again(spark, lake):
    from pyspark import StorageLevel

    lake.upsert(ITEMS, rows(spark, [("a", "1"), ("b", "1")]), run_id="r1")
    cached, uncached = rows(spark, [("b", "2")], 1), rows(spark, [("a", "3")], 1)
    lake.upsert(ITEMS, cached, run_id="r2")
    lake.upsert(ITEMS, uncached, run_id="r3", cache=False)
    try:
        assert cached.storageLevel != StorageLevel.NONE
        assert uncached.storageLevel == StorageLevel.NONE   # no second copy of a frame the caller persisted
        assert table_rows(lake) == [("a", "3"), ("b", "2")]  # and the same commit
    finally:
        cached.unpersist()


def test_repeated_upserts_keep_the_file_count_bounded(spark, lake):
    data = [(f"p{i:03d}", "0") for i in range(200)]
    lake.upsert(ITEMS, rows(spark, data, 4), run_id="r0")
    assert len(lake.files(ITEMS)) == 4
    for run in range(1, 5):  # each run changes rows spread over the files, as a nightly incremental run does
        before = len(lake.files(ITEMS))
        changed = [(f"p{i:03d}", str(run)) for i in range(0, 200, 20)]
        result = lake.upsert(ITEMS, rows(spark, changed, 3), run_id=f"r{run}")
        assert result.removed_files >= 1
        # The touched files and the new rows are compacted together: replacing rows never adds files.
        assert len(lake.files(ITEMS)) <= before
    assert len(lake.files(ITEMS)) == 1
    got = dict(table_rows(lake))
    assert len(got) == 200 and got["p020"] == "4" and got["p021"] == "0"


def test_repeated_commit_of_a_run_is_skipped(spark, lake):
    first = lake.upsert(ITEMS, rows(spark, [("a", "1")]), run_id="same-run", step=1)
    again = lake.upsert(ITEMS, rows(spark, [("a", "changed")]), run_id="same-run", step=1)
    assert first.committed and again.skipped
    assert again.version == first.version
    assert table_rows(lake) == [("a", "1")]
    # The next step of the same run is a new commit.
    assert lake.upsert(ITEMS, rows(spark, [("a", "2")]), run_id="same-run", step=2).committed
    assert table_rows(lake) == [("a", "2")]


def test_append_and_empty_writes(spark, lake):
    assert not lake.append(ITEMS, rows(spark, []), run_id="r0").committed
    assert table_rows(lake) == []
    lake.append(ITEMS, rows(spark, [("a", "1")]), run_id="r1")
    lake.append(ITEMS, rows(spark, [("a", "1")]), run_id="r2")
    assert table_rows(lake) == [("a", "1"), ("a", "1")]


def test_files_outside_the_log_are_invisible(spark, lake, tmp_path):
    lake.upsert(ITEMS, rows(spark, [("a", "1")]), run_id="r1")
    # A crashed writer's leftovers: a data file in the table folder that no commit references.
    stray = lake.path(ITEMS) / "run-crashed-1-deadbeef"
    rows(spark, [("zzz", "orphan")], 1).write.parquet(str(stray))
    assert table_rows(lake) == [("a", "1")]
    assert DeltaTable(str(lake.path(ITEMS))).to_pandas()["product_id"].tolist() == ["a"]


def test_read_arrow_reads_the_rows_spark_reads_and_only_those_in_the_log(spark, lake):
    """The driver's pyarrow read sees what ``read`` sees after replacing upserts (no removed file's old rows,
    no stray file outside the log), filtered and projected; an empty table reads as no rows with the columns."""
    import pyarrow.dataset as ds

    assert lake.read_arrow(ITEMS, ["product_id"]).num_rows == 0
    assert lake.read_arrow(ITEMS, ["product_id"]).column_names == ["product_id"]
    lake.upsert(ITEMS, rows(spark, [(f"p{i}", "old") for i in range(10)]), run_id="r1")
    lake.upsert(ITEMS, rows(spark, [("p3", "new"), ("p11", "new")], 1), run_id="r2")
    rows(spark, [("zzz", "orphan")], 1).write.parquet(str(lake.path(ITEMS) / "run-crashed-1-deadbeef"))
    got = lake.read_arrow(ITEMS)
    assert sorted(zip(*got.to_pydict().values(), strict=True)) == table_rows(lake)
    assert got.num_rows == 11 and "zzz" not in got.column("product_id").to_pylist()
    new = lake.read_arrow(ITEMS, ["product_id"], where=ds.field("value") == "new")
    assert sorted(new.column("product_id").to_pylist()) == ["p11", "p3"] and new.column_names == ["product_id"]


def test_commits_carry_the_run_transaction(spark, lake):
    lake.upsert(ITEMS, rows(spark, [("a", "1")]), run_id="run-42", step=3)
    table = DeltaTable(str(lake.path(ITEMS)))
    assert table.transaction_version("catalog-enrich:items:run-42") == 3
    assert table.history(1)[0]["catalog_enrich.app_id"] == "catalog-enrich:items:run-42"


def test_write_rejects_missing_columns(spark, lake):
    with pytest.raises(LakeError, match=r"lack the columns \['value'\]"):
        lake.append(ITEMS, spark.createDataFrame([("a",)], "product_id string"), run_id="r")


def test_embeddings_table_round_trips_arrays_and_timestamps(spark, lake):
    now = dt.datetime(2026, 11, 1, 12, 30, tzinfo=dt.timezone.utc)
    df = spark.createDataFrame(
        [("p1", "m1", [0.6, 0.8], [1.0, 0.0], None, "h1", "r1", now)], PRODUCT_EMBEDDINGS.schema)
    lake.upsert(PRODUCT_EMBEDDINGS, df, run_id="r1")
    got = lake.read(PRODUCT_EMBEDDINGS).collect()[0]
    assert got.embedding == pytest.approx([0.6, 0.8]) and got.image_embedding is None
    table = DeltaTable(str(lake.path(PRODUCT_EMBEDDINGS))).to_pyarrow_table()
    assert table.column("updated_at")[0].as_py() == now
    assert table.column("embedding")[0].as_py() == pytest.approx([0.6, 0.8])


def _delta_jars_present(spark) -> bool:
    try:
        spark._jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension")
        return True
    except Exception:
        return False


def test_spark_writes_bounded_row_groups_of_wide_rows(spark, lake):
    """The embeddings' rows are wide: a task's file is written in row groups of at most about ``ROW_GROUP_BYTES``,
    not held whole in the heap until the task ends (Parquet's default 128 MB a group)."""
    import numpy as np
    import pyarrow.parquet as pq

    from jobs.lake.lakehouse import ROW_GROUP_BYTES

    n, dim = 3000, 768   # 3,000 x 3 arrays of 768 floats: 27.6 MB in one task, incompressible
    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    vecs = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32).tolist()
    df = spark.createDataFrame([(f"p{i}", "m1", v, v, v, "h", "r1", now) for i, v in enumerate(vecs)],
                               PRODUCT_EMBEDDINGS.schema).coalesce(1)
    lake.upsert(PRODUCT_EMBEDDINGS, df, run_id="r1")
    files = list(lake.files(PRODUCT_EMBEDDINGS))
    assert len(files) == 1
    meta = pq.ParquetFile(lake.path(PRODUCT_EMBEDDINGS) / files[0]).metadata
    sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    assert len(sizes) >= 2 and max(sizes) <= 1.25 * ROW_GROUP_BYTES
    assert sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) == n
    assert lake.read(PRODUCT_EMBEDDINGS).count() == n


def test_tables_read_through_spark_delta_format_where_the_jars_exist(spark, lake):
    if not _delta_jars_present(spark):
        pytest.skip("the Delta Lake jars for Spark are not on the classpath (no Maven repository here)")
    lake.upsert(ITEMS, rows(spark, [("a", "1"), ("b", "2")]), run_id="r1")
    lake.upsert(ITEMS, rows(spark, [("b", "3")]), run_id="r2")
    got = sorted(tuple(r) for r in spark.read.format("delta").load(str(lake.path(ITEMS))).collect())
    assert got == [("a", "1"), ("b", "3")]


def test_lake_refuses_remote_uris(spark):
    with pytest.raises(LakeError, match="only local or mounted paths"):
        Lake(spark, "s3://bucket/lake")


def test_rewrite_file_count_follows_the_bytes():
    from jobs.lake.lakehouse import rewrite_files

    mib = 1024 * 1024
    assert rewrite_files(3_000, 8) == 1                 # a few rows: one file
    assert rewrite_files(10 * mib, 8) == 3              # at least 4 MiB a file
    assert rewrite_files(40 * mib, 8) == 8              # every core writes
    assert rewrite_files(4096 * mib, 8) == 64           # at most 64 MiB a file


def test_upsert_rows_without_spark_matches_what_spark_reads(spark, lake):
    from schemas.tables import ENRICHMENT_RUNS

    t0 = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)
    row = {"run_id": "r1", "status": "running", "model_version": "m", "catalog": "c", "started_at": t0,
           "finished_at": None, "counts": [], "timings": [], "message": ""}
    lake.upsert_rows(ENRICHMENT_RUNS, [row, {**row, "run_id": "r0", "status": "succeeded"}], "r1", step=1)
    done = {**row, "status": "succeeded", "finished_at": t0 + dt.timedelta(minutes=5),
            "counts": [("read", 345), ("enriched", 332)], "timings": [("embed", 12.5)]}
    result = lake.upsert_rows(ENRICHMENT_RUNS, [done], "r1", step=2)
    assert result.removed_files == 1 and result.added_files == 1
    assert lake.upsert_rows(ENRICHMENT_RUNS, [done], "r1", step=2).skipped       # a repeat changes nothing
    got = {r["run_id"]: r for r in lake.read(ENRICHMENT_RUNS).collect()}
    assert sorted(got) == ["r0", "r1"]
    assert got["r1"]["status"] == "succeeded" and got["r0"]["status"] == "succeeded"
    assert got["r1"]["counts"] == {"read": 345, "enriched": 332} and got["r1"]["timings"] == {"embed": 12.5}
    assert got["r1"]["finished_at"].replace(tzinfo=None) == dt.datetime(2026, 11, 21, 3, 5)


def test_driver_upsert_writes_what_the_spark_upsert_writes(spark, tmp_path):
    """``on_driver=True`` (pyarrow rewrite) and the Spark rewrite give the same table, on a table with a
    several-column key replaced by product, where a re-enriched product loses a row it had."""
    from schemas.tables import PRODUCT_ATTRIBUTES

    t0 = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)

    def attrs(items):
        return spark.createDataFrame(
            [(p, a, v, None, 0.9, "text", "m", "v1", run, t0) for p, a, v, run in items], PRODUCT_ATTRIBUTES.schema)

    first = [(f"p{i}", a, f"{a}{i}", "r1") for i in range(30) for a in ("colour", "size")]
    again = [("p3", "colour", "red", "r2"), ("p4", "size", "XL", "r2"), ("p40", "colour", "blue", "r2")]
    replaced = spark.createDataFrame([("p3",), ("p4",), ("p5",), ("p40",)], "product_id string")
    results, removed = {}, {}
    for on_driver in (False, True):
        lake = Lake(spark, tmp_path / f"lake-{on_driver}")
        lake.upsert(PRODUCT_ATTRIBUTES, attrs(first).repartition(3), "r1")
        result = lake.upsert(PRODUCT_ATTRIBUTES, attrs(again), "r2", replaced=replaced, on_driver=on_driver)
        assert result.committed and result.added_files == 1
        assert lake.upsert(PRODUCT_ATTRIBUTES, attrs(again), "r2", replaced=replaced, on_driver=on_driver).skipped
        results[on_driver] = sorted(tuple(r) for r in lake.read(PRODUCT_ATTRIBUTES).collect())
        removed[on_driver] = result.removed_files
    assert results[True] == results[False] and removed[True] == removed[False] >= 1
    got = {(r[0], r[1]): r[2] for r in results[True]}
    assert len(results[True]) == 60 - 6 + 3
    assert got[("p3", "colour")] == "red" and ("p3", "size") not in got and ("p5", "colour") not in got
    assert got[("p6", "size")] == "size6" and got[("p40", "colour")] == "blue"


def test_a_table_made_before_a_new_column_gets_it_on_the_next_write(spark, tmp_path):
    """product_attributes written by a release without ``normalized_value``: the next upsert adds the column to
    the Delta schema (one metadata commit), the old rows read it as null, and the new rows carry it."""
    import dataclasses

    from deltalake import DeltaTable

    from schemas.tables import PRODUCT_ATTRIBUTES

    t0 = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)
    old_spec = dataclasses.replace(PRODUCT_ATTRIBUTES, columns=tuple(
        c for c in PRODUCT_ATTRIBUTES.columns if c.name != "normalized_value"))
    lake = Lake(spark, tmp_path / "lake")
    lake.upsert(old_spec, spark.createDataFrame(
        [("p1", "colour", "red", 0.9, "title", "m", "v1", "r1", t0)], old_spec.schema), "r1")
    path = str(lake.path(PRODUCT_ATTRIBUTES))
    assert "normalized_value" not in {f.name for f in DeltaTable(path).schema().fields}

    new = spark.createDataFrame([("p2", "width", '14"', "35.6", 0.8, "title", "m", "v1", "r2", t0)],
                                PRODUCT_ATTRIBUTES.schema)
    assert lake.upsert(PRODUCT_ATTRIBUTES, new, "r2").committed
    assert "normalized_value" in {f.name for f in DeltaTable(path).schema().fields}
    rows = {r["product_id"]: r["normalized_value"] for r in lake.read(PRODUCT_ATTRIBUTES).collect()}
    assert rows == {"p1": None, "p2": "35.6"}
    arrow = DeltaTable(path).to_pyarrow_table()          # another engine reads the evolved table too
    assert sorted(arrow.column("normalized_value").to_pylist(), key=str) == ["35.6", None]


def test_driver_upsert_with_deleted_keys_writes_what_the_spark_upsert_writes(spark, tmp_path):
    """The match stage's commit: new pairs, rescored pairs and pairs that are no longer matches (``delete``)
    give the same ``product_matches`` table through pyarrow on the driver as through Spark."""
    from schemas.tables import PRODUCT_MATCHES

    t0 = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)

    def pairs(items, run):
        return spark.createDataFrame([(a, b, s, 0.9, 0.9, None, 0.5, True, True, 1.0, "ann", "m", "v", run, t0)
                                      for a, b, s in items],
                                     PRODUCT_MATCHES.schema)

    first = [(f"p{i:02d}", f"p{i + 1:02d}", 0.8) for i in range(0, 40, 2)]
    again = [("p00", "p01", 0.95), ("p50", "p51", 0.7)]                 # rescored, new
    gone = spark.createDataFrame([("p02", "p03"), ("p10", "p11")], "product_id_a string, product_id_b string")
    results = {}
    for on_driver in (False, True):
        lake = Lake(spark, tmp_path / f"lake-{on_driver}")
        lake.upsert(PRODUCT_MATCHES, pairs(first, "r1").repartition(3), "r1")
        arrow_commits = []
        by_arrow = lake.upsert_arrow
        lake.upsert_arrow = (lambda *a, _seen=arrow_commits, _commit=by_arrow, **k:   # type: ignore[method-assign]
                             _seen.append(1) or _commit(*a, **k))
        assert lake.upsert(PRODUCT_MATCHES, pairs(again, "r2"), "r2", delete=gone, on_driver=on_driver).committed
        assert len(arrow_commits) == int(on_driver)          # the deletions no longer send it back to Spark
        assert lake.upsert(PRODUCT_MATCHES, pairs(again, "r2"), "r2", delete=gone, on_driver=on_driver).skipped
        results[on_driver] = sorted((r["product_id_a"], r["product_id_b"], r["score"], r["run_id"])
                                    for r in lake.read(PRODUCT_MATCHES).collect())
    assert results[True] == results[False]
    got = {(a, b): (s, run) for a, b, s, run in results[True]}
    assert len(got) == 20 - 2 + 1
    assert got[("p00", "p01")] == (0.95, "r2") and got[("p50", "p51")] == (0.7, "r2")
    assert ("p02", "p03") not in got and ("p10", "p11") not in got and got[("p04", "p05")] == (0.8, "r1")
