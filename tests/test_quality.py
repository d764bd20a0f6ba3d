"""The quality gates and write-audit-publish on real Delta tables: a good run passes and is published, a run
with a NaN embedding is blocked, discarded, and readers keep the previous published state."""

from __future__ import annotations

import datetime as dt
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from jobs.lake import publish as pub
from jobs.lake.lakehouse import Lake
from jobs.quality import GateConfig, run_input_gate, run_output_gate
from schemas.tables import ENRICHMENT_RUNS, PRODUCT_EMBEDDINGS, QUARANTINE
from tests.conftest import SAMPLE

pytestmark = pytest.mark.spark

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _unit(seed: int, dim: int = 4) -> list[float]:
    v = np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


def write_run(spark, root, run_id, vectors: dict[str, list[float]], counts: dict[str, int], n_quarantined=0):
    """Commit a run's rows the way the enrich job does: embeddings, quarantine, its enrichment_runs row."""
    lake = Lake(spark, root)
    emb = [(pid, "m1", v, v, None, f"h-{pid}", run_id, NOW) for pid, v in vectors.items()]
    lake.upsert(PRODUCT_EMBEDDINGS, spark.createDataFrame(emb, PRODUCT_EMBEDDINGS.schema), run_id)
    bad = [(run_id, f"{run_id}-row{i}", None, "missing_id", "no id", "{}", NOW) for i in range(n_quarantined)]
    lake.upsert(QUARANTINE, spark.createDataFrame(bad, QUARANTINE.schema), run_id)
    row = [(run_id, "succeeded", "m1", "catalog", NOW, NOW, counts, {"total": 1.0}, "")]
    lake.upsert(ENRICHMENT_RUNS, spark.createDataFrame(row, ENRICHMENT_RUNS.schema), run_id, step=2)


def gate(lake, run_id, suite="output", catalog=None):
    return run_output_gate if suite == "output" else run_input_gate, GateConfig(suite, str(lake), run_id, catalog)


def failed_whys(verdict, table):
    return {f["why"] for c in verdict.tables[table]["checks"] for f in c["failed"]}


@pytest.fixture(scope="module")
def published(spark, tmp_path_factory):
    """A lake whose run r1 (12 rows read: 4 enriched, 7 unchanged, 1 quarantined) passed the gate and was published."""
    root = tmp_path_factory.mktemp("published") / "lake"
    write_run(spark, root, "r1", {f"p{i}": _unit(i) for i in range(4)},
              {"read": 12, "valid": 11, "enriched": 4, "unchanged": 7, "quarantined": 1}, n_quarantined=1)
    verdict = run_output_gate(spark, GateConfig("output", str(root), "r1"))
    return root, verdict, pub.finalize(root, "r1")


@pytest.fixture()
def lake(published, tmp_path):
    """A private copy of the published lake (Delta tables hold relative paths: a copy is a valid lake)."""
    dst = tmp_path / "lake"
    shutil.copytree(published[0], dst)
    return dst


def test_good_run_passes_and_is_published(published):
    root, verdict, publication = published
    assert verdict.success, verdict.tables
    assert verdict.tables["product_embeddings"]["status"] == "passed"
    assert verdict.tables["product_categories"] == {"publish": True, "status": "skipped",
                                                    "note": "table does not exist (yet)"}
    assert pub.read_pointer(root)["run_id"] == "r1"
    assert publication["tables"] == {"product_embeddings": DeltaTable(str(root / "product_embeddings")).version(),
                                     "quarantine": DeltaTable(str(root / "quarantine")).version()}
    assert len(pub.open_published(root, "product_embeddings").to_pandas()) == 4
    # HTML data docs next to the run report, one page per validated table.
    docs = root / "_reports" / "r1" / "data_docs" / "output"
    pages = {p.name for p in docs.rglob("*.html")}
    assert "index.html" in pages and any("product_embeddings" in p for p in pages)
    assert pub.publish(root, "r1") == pub.read_pointer(root)  # publishing twice is a no-op


def test_nan_embedding_blocks_the_run_and_nothing_is_published(spark, lake):
    before = pub.read_pointer(lake)
    nan = _unit(9)
    nan[1] = math.nan
    write_run(spark, lake, "r2", {"p1": [2.0, 0.0, 0.0, 0.0], "p9": nan},  # p1 not normalised, p9 NaN
              {"read": 5, "valid": 2, "enriched": 2, "unchanged": 0, "quarantined": 3}, n_quarantined=3)
    verdict = run_output_gate(spark, GateConfig("output", str(lake), "r2"))
    assert not verdict.success
    assert {"no NaN or infinite value in any embedding", "embedding norm is 1 (L2-normalised)"} \
        <= failed_whys(verdict, "product_embeddings")
    assert failed_whys(verdict, "enrichment_runs") == {"the share of quarantined input rows is under the threshold"}

    with pytest.raises(pub.GateBlocked, match="run r2 blocked by the output gate"):
        pub.finalize(lake, "r2")
    assert pub.read_pointer(lake) == before                       # the published state did not move
    readers_see = pub.open_published(lake, "product_embeddings").to_pandas()
    assert sorted(readers_see["product_id"]) == ["p0", "p1", "p2", "p3"]
    assert all(np.isfinite(np.stack(readers_see["embedding"])).ravel())
    # The latest state is restored too, so the next run starts from published data, not from r2's rows.
    latest = DeltaTable(str(lake / "product_embeddings")).to_pandas()
    assert sorted(latest["product_id"]) == ["p0", "p1", "p2", "p3"]
    assert np.allclose(np.linalg.norm(np.stack(latest["embedding"]), axis=1), 1.0, atol=1e-5)
    # A blocked run stays blocked: its verdict is kept, it cannot be published, a retried write is skipped.
    again = run_output_gate(spark, GateConfig("output", str(lake), "r2"))
    assert not again.success and again.validated_at == verdict.validated_at
    with pytest.raises(pub.GateBlocked, match="discarded"):
        pub.publish(lake, "r2")
    version = DeltaTable(str(lake / "product_embeddings")).version()
    write_run(spark, lake, "r2", {"p9": nan}, {"read": 1, "enriched": 1, "unchanged": 0, "quarantined": 0})
    assert DeltaTable(str(lake / "product_embeddings")).version() == version


def test_a_new_tables_expectations_apply_once_it_exists(spark, lake):
    # product_matches is written by a later part of the system; here, a row that breaks both its checks.
    write_deltalake(str(lake / "product_matches"), pd.DataFrame(
        {"product_id_a": ["p3", "p0"], "product_id_b": ["p1", "p2"], "score": [1.5, 0.9], "run_id": ["r1", "r1"]}))
    verdict = run_output_gate(spark, GateConfig("output", str(lake), "r1-again"))
    assert verdict.tables["product_matches"]["status"] == "failed"
    assert failed_whys(verdict, "product_matches") == {"score is a probability",
                                                       "each pair is stored once, smaller id first"}
    assert not verdict.success


def test_input_gate_passes_the_sample_and_stops_a_broken_snapshot(spark, lake, tmp_path):
    good = run_input_gate(spark, GateConfig("input", str(tmp_path / "fresh"), "i1", str(SAMPLE / "catalog.parquet")))
    assert good.success, good.tables
    assert good.notes == ["no published run to compare with: the row-count band is not checked"]

    # The published run read 12 rows; this snapshot has 30, a third of them without a title or id.
    rows = pd.DataFrame({"product_id": [f"x{i}" if i % 4 else None for i in range(30)],
                         "title": ["Blue Shoe" if i % 3 else "  " for i in range(30)],
                         "image_uri": ["images/a.png"] * 27 + ["http://example.com/a.png"] * 3})
    path = tmp_path / "broken.parquet"
    rows.to_parquet(path)
    bad = run_input_gate(spark, GateConfig("input", str(lake), "i2", str(path)))
    assert not bad.success
    assert (bad.params["row_count_min"], bad.params["row_count_max"]) == (6, 24)
    assert failed_whys(bad, "catalog") == {
        "the row count is within the band around the last published run's count", "product_id is present",
        "title is non-empty after trimming", "image_uri is a plain path or a file:// URI (absent is fine)"}


def test_nan_and_infinite_scores_fail_the_gate(spark, lake):
    """Stored NaN, infinite and missing scores: the range check alone let NaN and NULL through."""
    import pyarrow as pa

    nan, inf = math.nan, math.inf
    write_deltalake(str(lake / "product_categories"), pa.table({
        "product_id": ["p0", "p1", "p2"], "category": ["Shoes", "Bags", "Hats"],
        "confidence": pa.array([nan, None, 0.8], pa.float64()),
        "top_k": pa.array([[{"label": "Shoes", "score": 0.9}], [{"label": "Bags", "score": None}],
                           [{"label": "Hats", "score": inf}]],
                          pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())])))}))
    write_deltalake(str(lake / "product_attributes"), pa.table({
        "product_id": ["p0", "p1"], "attribute": ["colour", "colour"], "value": ["red", "blue"],
        "confidence": pa.array([-inf, 0.7], pa.float64()), "source": ["title", "title"]}))
    write_deltalake(str(lake / "product_adult_flags"), pa.table({
        "product_id": ["p0", "p1"], "is_adult": [False, True], "score": pa.array([nan, 1.0], pa.float64())}))
    write_deltalake(str(lake / "product_matches"), pa.table({
        "product_id_a": ["p0"], "product_id_b": ["p1"], "score": pa.array([nan], pa.float64())}))
    verdict = run_output_gate(spark, GateConfig("output", str(lake), "r1-scores"))
    assert not verdict.success
    assert {"confidence is present and finite (not NaN or infinite)",
            "every top_k score is a probability: present, finite, in [0, 1]"} \
        <= failed_whys(verdict, "product_categories")
    assert "confidence is present and finite (not NaN or infinite)" in failed_whys(verdict, "product_attributes")
    assert "score is present and finite (not NaN or infinite)" in failed_whys(verdict, "product_adult_flags")
    assert "score is present and finite (not NaN or infinite)" in failed_whys(verdict, "product_matches")


def test_a_run_with_a_nan_encoder_fails_the_output_gate_and_is_not_published(spark, tmp_path, capsys):
    """The enrich job end to end with a model that emits NaN (as tampered weights did): its embeddings, category
    confidences and top_k scores fail the gate, the gate exits 3 with a clear line, publishing is refused."""
    from jobs import enrich, quality
    from tests.reliability import make_slice

    catalog = make_slice(tmp_path / "catalog", good=60)
    lake = tmp_path / "nan-lake"
    assert enrich.main(["--catalog", str(catalog), "--image-root", str(SAMPLE), "--lake", str(lake),
                        "--run-id", "n1", "--encoder-loader", "models.testing:load_nan_encoder", "--model", "fake:",
                        "--attributes", "none", "--matching", "none"]) == 0
    capsys.readouterr()
    assert quality.main(["output", "--lake", str(lake), "--run-id", "n1"]) == quality.EXIT_FAILED
    assert "output gate of run n1: FAILED" in capsys.readouterr().out
    verdict = pub.read_verdict(lake, "n1")   # what the gate wrote
    whys = {name: {f["why"] for c in t.get("checks", []) for f in c["failed"]} for name, t in verdict["tables"].items()}
    assert "no NaN or infinite value in any embedding" in whys["product_embeddings"]
    assert {"confidence is present and finite (not NaN or infinite)",
            "every top_k score is a probability: present, finite, in [0, 1]"} <= whys["product_categories"]
    assert pub.main(["publish", "--lake", str(lake), "--run-id", "n1"]) == 3
    assert "blocked: run n1 failed its output gate" in capsys.readouterr().err
    assert pub.read_pointer(lake) is None
