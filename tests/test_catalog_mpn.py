"""The optional ``mpn`` column: read by matching, and added to the contract without changing any existing product's
hashes (real Spark, real Delta tables, the real enrich job with the fake encoder and the shipped pair scorers)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import enrich
from jobs.stages.matching import matching_title
from jobs.stages.validate import _KEEP_NULLS, read_catalog, validate
from models.matching.text import with_part_number
from udfs.images import ImagePolicy, make_inspect_udf

pytestmark = pytest.mark.spark

BEFORE = ("title", "description", "brand", "category", "price", "currency", "language", "image_sha256")
SCHEMA = pa.schema([("product_id", pa.string()), ("title", pa.string()), ("brand", pa.string()),
                    ("price", pa.float64()), ("mpn", pa.string())])


def _write(path, rows, schema=SCHEMA):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_a_row_without_a_part_number_hashes_as_before_the_column_existed(spark, tmp_path):
    from pyspark.sql import functions as F

    rows = [{"product_id": "a", "title": "Acme Kettle", "brand": "Acme", "price": 20.0, "mpn": None},
            {"product_id": "b", "title": "Acme Kettle", "brand": "Acme", "price": 20.0, "mpn": "AK-100"}]
    cat = read_catalog(spark, str(_write(tmp_path / "c.parquet", rows)))
    assert "mpn" in cat.columns
    got = validate(cat, make_inspect_udf(ImagePolicy())).withColumn(
        "before", F.sha2(F.to_json(F.struct(*[F.col(c) for c in BEFORE]), _KEEP_NULLS), 256))
    by_id = {r["product_id"]: r for r in got.collect()}
    assert by_id["a"]["content_hash"] == by_id["a"]["before"]          # an existing lake keeps its products
    assert by_id["b"]["content_hash"] != by_id["b"]["before"]          # a number is content: matched again
    assert by_id["a"]["row_id"] != by_id["b"]["row_id"]
    # a catalog written before the column existed reads the same as one with it empty
    old = _write(tmp_path / "old.parquet", [{k: v for k, v in rows[0].items() if k != "mpn"}],
                 pa.schema([f for f in SCHEMA if f.name != "mpn"]))
    again = validate(read_catalog(spark, str(old)), make_inspect_udf(ImagePolicy())).first()
    assert (again["content_hash"], again["row_id"]) == (by_id["a"]["content_hash"], by_id["a"]["row_id"])


def test_the_matching_title_gains_the_number_only_where_it_lacks_it(spark):
    from pyspark.sql import functions as F

    cases = [("Energizer Lithium Batteries", "EA91BP-4", "Energizer Lithium Batteries EA91BP-4"),
             ("Energizer EA91BP4 Lithium", " ea91bp-4 ", "Energizer EA91BP4 Lithium"),   # already there
             ("Acme Kettle", None, "Acme Kettle"), ("Acme Kettle", "  ", "Acme Kettle"),
             ("Acme Kettle", "--", "Acme Kettle"),                                      # nothing to read
             ("Sony Bravia 55\"", "KD-55X80K", "Sony Bravia 55\" KD-55X80K")]
    df = spark.createDataFrame([(t, m) for t, m, _ in cases], "title string, mpn string")
    got = [r[0] for r in df.select(matching_title(F.col("title"), F.col("mpn"))).collect()]
    assert got == [want for _, _, want in cases]
    # the same rule in Python, for the labelled pairs that carry part numbers (models.matching.data.load_pairs)
    assert [with_part_number(t, m) for t, m, _ in cases] == [want for _, _, want in cases]
    assert with_part_number("Acme Kettle", float("nan")) == "Acme Kettle"


def test_listings_with_one_title_and_different_part_numbers_are_not_matched(spark, tmp_path):
    """Two pairs of listings whose titles are equal word for word: one pair with different part numbers (two
    products of one line), one without numbers (the same listing twice, a match by the job's rule). And two
    listings written differently with one part number (a match by the job's rule, score 0.99 or more), against
    two of other brands with one number between them (not matched by that rule)."""
    title = "Energizer Advanced Lithium Batteries 4 pack"
    rows = [{"product_id": "line-1", "title": title, "brand": "Energizer", "price": 9.99, "mpn": "EA91BP-4"},
            {"product_id": "line-2", "title": title, "brand": "Energizer", "price": 9.99, "mpn": "EA92BP-4"},
            {"product_id": "twice-1", "title": "Acme Steel Kettle 1.7 l", "brand": "Acme", "price": 20.0,
             "mpn": None},
            {"product_id": "twice-2", "title": "Acme Steel Kettle 1.7 l", "brand": "Acme", "price": 20.0,
             "mpn": None},
            {"product_id": "number-1", "title": "Canon CLI-226 Black Ink Tank in Retail Packaging", "brand": "Canon",
             "price": 14.0, "mpn": "4546B001"},
            {"product_id": "number-2", "title": "CLI 226 ink, black (genuine)", "brand": "Canon", "price": 17.5,
             "mpn": "4546-b001"},
            {"product_id": "brands-1", "title": "HDMI to DVI Video Cable 2 m", "brand": "Cables To Go",
             "price": 12.0, "mpn": "40320"},
            {"product_id": "brands-2", "title": "Matte White Manual Projection Screen", "brand": "Da-Lite",
             "price": 120.0, "mpn": "40320"}]
    catalog, lake = _write(tmp_path / "catalog.parquet", rows), tmp_path / "lake"
    assert enrich.main(["--catalog", str(catalog), "--lake", str(lake), "--run-id", "r1",
                        "--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:",
                        "--attributes", "none", "--heads", "none"]) == 0
    pairs = {(a, b) for a, b in DeltaTable(str(lake / "product_matches")).to_pandas()[
        ["product_id_a", "product_id_b"]].itertuples(index=False)}
    assert ("twice-1", "twice-2") in pairs
    assert ("line-1", "line-2") not in pairs
    scores = {(a, b): x for a, b, x in DeltaTable(str(lake / "product_matches")).to_pandas()[
        ["product_id_a", "product_id_b", "score"]].itertuples(index=False)}
    assert scores.get(("number-1", "number-2"), 0.0) >= 0.99
    assert ("brands-1", "brands-2") not in pairs
