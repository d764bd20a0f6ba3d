"""The enrich job end to end: real SparkSession, real Delta tables, the shipped sample catalog."""

from __future__ import annotations

import csv
import json
import shutil

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import enrich
from tests.conftest import SAMPLE

pytestmark = pytest.mark.spark

# The fast fake encoder; the open attribute extractor (a MiniLM tagger) runs in test_default_model_end_to_end.
FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:", "--attributes", "none",
        "--matching", "none"]


@pytest.fixture()
def sample(tmp_path):
    """A private copy of the sample catalog (tests modify it)."""
    dst = tmp_path / "catalog"
    shutil.copytree(SAMPLE, dst)
    return dst


def run_job(spark, sample, lake, run_id, *extra) -> int:
    return enrich.main(["--catalog", str(sample / "catalog.parquet"), "--lake", str(lake), "--run-id", run_id,
                        *FAKE, *extra])


def table(lake, name):
    return DeltaTable(str(lake / name))


def expected_rejections(sample):
    with open(sample / "broken.csv") as f:
        return sorted((r["title"], r["expected_reason"]) for r in csv.DictReader(f))


def test_sample_run_accounts_for_every_row(spark, sample, tmp_path, capsys):
    lake = tmp_path / "lake"
    assert run_job(spark, sample, lake, "r1") == 0
    out = capsys.readouterr().out
    n_read = pq.read_metadata(sample / "catalog.parquet").num_rows
    emb = table(lake, "product_embeddings").to_pandas()
    quarantine = table(lake, "quarantine").to_pandas()
    assert len(emb) + len(quarantine) == n_read
    assert emb["product_id"].is_unique
    assert f"read                {n_read} rows = enriched {len(emb)} + unchanged 0 + quarantined {len(quarantine)}" \
        in out
    # Every broken row is quarantined with the reason the generator planted, and nothing else is.
    got = sorted(zip(quarantine["raw_record"].map(lambda r: json.loads(r)["title"] or ""),
                     quarantine["reason_code"], strict=True))
    assert got == expected_rejections(sample)
    runs = table(lake, "enrichment_runs").to_pandas()
    assert runs.loc[0, "status"] == "succeeded" and dict(runs.loc[0, "counts"])["read"] == n_read
    # Products without an image have no image embedding; the others do.
    catalog = pq.read_table(sample / "catalog.parquet").to_pandas().drop_duplicates("product_id")
    no_image = set(catalog.loc[catalog["image_uri"].isna(), "product_id"])
    assert set(emb.loc[emb["image_embedding"].isna(), "product_id"]) == no_image & set(emb["product_id"])


def test_rerun_recomputes_nothing_and_one_changed_title_recomputes_one_product(spark, sample, tmp_path, capsys):
    lake = tmp_path / "lake"
    assert run_job(spark, sample, lake, "r1") == 0
    first = table(lake, "product_embeddings")
    v1, rows1 = first.version(), first.to_pandas().sort_values("product_id").reset_index(drop=True)

    assert run_job(spark, sample, lake, "r2") == 0
    assert "enriched 0 + unchanged" in capsys.readouterr().out
    assert table(lake, "product_embeddings").version() == v1  # no commit at all

    catalog = pq.read_table(sample / "catalog.parquet")
    df = catalog.to_pandas()
    target = rows1.loc[0, "product_id"]
    df.loc[df["product_id"] == target, "title"] = "A completely new title"
    pq.write_table(catalog.from_pandas(df, schema=catalog.schema, preserve_index=False), sample / "catalog.parquet")
    assert run_job(spark, sample, lake, "r3") == 0
    assert "enriched 1 + unchanged" in capsys.readouterr().out
    rows3 = table(lake, "product_embeddings").to_pandas().sort_values("product_id").reset_index(drop=True)
    assert len(rows3) == len(rows1)
    changed = rows3.loc[rows3["run_id"] == "r3", "product_id"].tolist()
    assert changed == [target]
    assert rows3.loc[0, "content_hash"] != rows1.loc[0, "content_hash"]
    assert list(rows3.loc[0, "text_embedding"]) != list(rows1.loc[0, "text_embedding"])


def test_repeating_a_run_id_changes_no_table(spark, sample, tmp_path):
    lake = tmp_path / "lake"
    assert run_job(spark, sample, lake, "same") == 0
    versions = {n: table(lake, n).version() for n in ("product_embeddings", "quarantine", "enrichment_runs")}
    assert run_job(spark, sample, lake, "same") == 0
    assert {n: table(lake, n).version() for n in versions} == versions


def test_catalog_without_required_columns_is_a_clear_error(spark, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    spark.createDataFrame([("x", "y")], "id string, name string").toPandas().to_parquet(bad)
    code = enrich.main(["--catalog", str(bad), "--lake", str(tmp_path / "lake"), *FAKE])
    assert code == 2
    assert "lacks the required column(s) product_id, title; it has: id, name" in capsys.readouterr().err


def test_unknown_attribute_extractor_is_a_clear_error_before_any_work(spark, sample, tmp_path, capsys):
    lake = tmp_path / "lake"
    code = enrich.main(["--catalog", str(sample / "catalog.parquet"), "--lake", str(lake),
                        "--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:",
                        "--attributes", "store:no-such-version"])
    assert code == 2
    assert "--attributes store:no-such-version" in capsys.readouterr().err
    assert not (lake / "product_embeddings").exists()


def test_delta_catalog_input(spark, sample, tmp_path):
    from deltalake import write_deltalake

    delta_catalog = tmp_path / "delta_catalog"
    write_deltalake(str(delta_catalog), pq.read_table(sample / "catalog.parquet"))
    lake = tmp_path / "lake"
    code = enrich.main(["--catalog", str(delta_catalog), "--image-root", str(sample), "--lake", str(lake),
                        "--run-id", "d1", *FAKE])
    assert code == 0
    n_read = pq.read_metadata(sample / "catalog.parquet").num_rows
    assert len(table(lake, "product_embeddings").to_pandas()) + len(table(lake, "quarantine").to_pandas()) == n_read


@pytest.mark.slow
def test_default_model_end_to_end(default_sample_run):
    """The real default (shipped, trained) encoder, heads, attribute extractor and pair scorer on the sample."""
    import numpy as np

    from models.attributes.extractor import load_extractor, resolve_version
    from models.attributes.vocabulary import canonical_name
    from models.refs import parse_model_ref

    lake, catalog = default_sample_run / "lake", default_sample_run / "catalog" / "catalog.parquet"
    emb = table(lake, "product_embeddings").to_pandas()
    assert len(emb) == 332 and (emb["model_version"] == parse_model_ref("default").version).all()
    vectors = np.stack(emb["embedding"].values)
    assert vectors.shape[1] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    with_image = emb["image_embedding"].notna()
    assert with_image.any()
    text = np.stack(emb.loc[with_image, "text_embedding"].values)
    image = np.stack(emb.loc[with_image, "image_embedding"].values)
    assert np.allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(text, image)

    # The shipped heads and the shipped open attribute extractor ran beside the encoder.
    attrs = table(lake, "product_attributes").to_pandas()
    opened = attrs[attrs["method"].str.startswith("open:")]
    assert (opened["method"] == f"open:{resolve_version('default').name}").all()
    assert opened["product_id"].nunique() > 200                   # the sample's titles name a brand or colour
    assert set(opened["source"]) <= {"title", "description"} and opened["confidence"].between(0, 1).all()
    texts = pq.read_table(catalog, columns=["product_id", "title", "description"]).to_pandas().set_index("product_id")
    for row in opened.itertuples():                               # every value is a span of the text it names
        assert row.value.lower() in str(texts.loc[row.product_id, row.source]).lower()
    assert attrs.groupby(["product_id", "attribute", "value"]).size().max() == 1
    assert attrs["method"].str.startswith("closed:").any()        # the closed colour/usage/gender heads too
    # One vocabulary: every method's rows name attributes alike (no "Color" beside "colour").
    assert (attrs["attribute"] == attrs["attribute"].map(canonical_name)).all()
    closed = attrs[attrs["method"].str.startswith("closed:")]
    assert (closed["normalized_value"] == closed["value"]).all()
    # The seller category picks the attributes kept: each open row's attribute is in its category's schema.
    extractor = load_extractor("default", device="cpu")
    assert extractor.schema is not None and extractor.normaliser is not None
    seller = table(lake, "product_categories").to_pandas().set_index("product_id")["seller_category"]
    for row in opened.itertuples():
        asked = {canonical_name(a) for a in extractor.schema.attributes_for(seller[row.product_id])}
        assert row.attribute in asked, (row.product_id, row.attribute)
    cats = table(lake, "product_categories").to_pandas()
    assert set(cats["product_id"]) == set(emb["product_id"]) and cats["confidence"].between(0, 1).all()
    # The match stage read the category head's product types: its rows name the type rule by their digest.
    from models.heads.bundle import find_heads, load_heads
    from models.matching.spelling import type_rule_version
    from models.store import DEFAULT_STORE

    types = load_heads(find_heads(DEFAULT_STORE, parse_model_ref("default").version)).category.classes
    matches = table(lake, "product_matches").to_pandas()
    assert len(types) > 100 and len(matches) > 0
    assert matches["scorer_version"].str.contains("+" + type_rule_version(types) + "+", regex=False).all()


def test_unchanged_images_are_not_read_again_and_a_replaced_photo_is(spark, sample, tmp_path, capsys):
    """The image stat cache: a rerun hashes no image; a photo replaced at the same URI is read, and its
    product re-embedded; --rehash-images reads them all."""
    import time

    lake = tmp_path / "lake"
    time.sleep(2.1)  # files hashed within RACY_NS of their last change are read again next time, by design
    assert run_job(spark, sample, lake, "r1") == 0
    first = capsys.readouterr().out
    n_images = int(first.split("images")[1].split("checked")[0])
    assert f"{n_images} checked: {n_images} read and hashed" in first and n_images > 100

    assert run_job(spark, sample, lake, "r2") == 0
    assert f"{n_images} checked: 0 read and hashed" in capsys.readouterr().out

    catalog = pq.read_table(sample / "catalog.parquet").to_pandas()
    emb = table(lake, "product_embeddings").to_pandas()
    row = catalog[catalog["product_id"].isin(emb["product_id"]) & catalog["image_uri"].notna()].iloc[0]
    other = catalog[catalog["image_uri"].notna() & (catalog["image_uri"] != row["image_uri"])].iloc[0]
    photo = sample / row["image_uri"]
    shutil.copyfile(sample / other["image_uri"], photo)  # a re-shot photo at the same URI
    assert run_job(spark, sample, lake, "r3") == 0
    out = capsys.readouterr().out
    assert f"{n_images} checked: 1 read and hashed" in out
    rewritten = table(lake, "product_embeddings").to_pandas().set_index("product_id")
    assert rewritten.loc[row["product_id"], "run_id"] == "r3"
    same_photo = set(catalog.loc[catalog["image_uri"] == row["image_uri"], "product_id"]) & set(emb["product_id"])
    assert set(rewritten.index[rewritten["run_id"] == "r3"]) == same_photo

    assert run_job(spark, sample, lake, "r4", "--rehash-images") == 0
    assert f"{n_images} checked: {n_images} read and hashed" in capsys.readouterr().out


def test_the_driver_collects_a_commits_embeddings_only_up_to_what_its_heap_holds(spark):
    """Spark's default 1 GiB driver (a plain spark-submit) ran out of heap collecting the embeddings of a first run
    of 20,000 products with photos; 10,000 passed, and the job's own 3 GiB sessions collect 20,000. (At 50,000 it
    ran out collecting the attribute rows too: the heads' tables and the quarantine keep to the same limit.)"""
    gib = 2 ** 30
    assert enrich.driver_commit_limit(None) == enrich.DRIVER_COMMIT_PRODUCTS
    assert 10_000 <= enrich.driver_commit_limit(1 * gib) < 20_000
    assert 20_000 <= enrich.driver_commit_limit(3 * gib) <= enrich.DRIVER_COMMIT_PRODUCTS
    assert enrich.driver_commit_limit(64 * gib) == enrich.DRIVER_COMMIT_PRODUCTS
    assert enrich.driver_commit_limit(0) == 0
    heap = enrich._driver_heap_bytes(spark)   # read from the session's JVM
    assert heap is not None and 256 * 2 ** 20 <= heap <= 64 * gib


def test_the_embed_stage_caches_on_disk_only_what_the_local_heap_cannot_hold(spark, monkeypatch):
    """At 100,000 products Spark's default 1 GiB driver ran out of heap caching the embeddings in memory."""
    from pyspark import StorageLevel

    limit = enrich.driver_commit_limit(enrich._driver_heap_bytes(spark))
    assert spark.sparkContext.master.startswith("local") and limit > 0
    assert enrich.wide_rows_storage(spark, limit) == StorageLevel.MEMORY_AND_DISK
    assert enrich.wide_rows_storage(spark, limit + 1) == StorageLevel.DISK_ONLY
    monkeypatch.setattr(enrich, "_driver_heap_bytes", lambda session: 2 ** 30)
    assert enrich.wide_rows_storage(spark, 50_000) == StorageLevel.DISK_ONLY
    assert enrich.wide_rows_storage(spark, 5_000) == StorageLevel.MEMORY_AND_DISK


def test_a_driver_too_small_to_collect_commits_every_table_through_spark_with_the_same_rows(spark, sample, tmp_path,
                                                                                             monkeypatch, caplog):
    """Where the driver's heap holds none of the run (the limit is 0), the embeddings, the heads' tables and the
    quarantine are committed by Spark jobs (from the embed stage's rows cached on disk only), and hold what the
    driver's commits write."""
    import logging

    names = ("product_embeddings", "product_categories", "product_attributes", "product_adult_flags", "quarantine")

    def rows(lake, name):
        got = table(lake, name).to_pyarrow_table().to_pylist()   # arrays as lists, maps as lists of pairs
        return sorted(json.dumps({k: v for k, v in r.items() if k not in ("updated_at", "quarantined_at")},
                                 sort_keys=True, default=str) for r in got)

    on_driver = tmp_path / "on_driver"
    assert run_job(spark, sample, on_driver, "r1") == 0
    monkeypatch.setattr(enrich, "_driver_heap_bytes", lambda session: 0)
    through_spark = tmp_path / "through_spark"
    with caplog.at_level(logging.INFO, logger="jobs.enrich"):
        assert run_job(spark, sample, through_spark, "r1") == 0
    assert "through Spark, not the driver: a driver heap of 0.0 GiB collects at most 0" in caplog.text
    for name in names:
        got, want = rows(through_spark, name), rows(on_driver, name)
        assert got == want, name
        if name in ("product_embeddings", "product_categories", "quarantine"):
            assert len(want) > 0, name
