"""The heads stage of the enrich job: product_categories, product_attributes, product_adult_flags.

Real Spark, real Delta tables; the fake encoder (8-dim embeddings) with a head bundle trained in the test on its
embeddings, so that both the head path and the zero-shot fallback run end to end in a minute.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs import enrich
from jobs.stages.heads import leaf
from models.heads.bundle import HeadBundle, save_heads
from models.heads.train import HeadTrainConfig, fit_head
from models.testing import FakeEncoder
from tests.conftest import SAMPLE

pytestmark = pytest.mark.spark

FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:", "--attributes", "none",
        "--matching", "none"]
ADULT_TITLE = "Silicone Dildo Deluxe 18cm"
LINGERIE_TITLE = "Amante Women Black Lace Lingerie Set"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """The sample catalog plus one adult product and one lingerie set (which must not be flagged)."""
    dst = tmp_path_factory.mktemp("heads") / "catalog"
    shutil.copytree(SAMPLE, dst)
    df = pd.read_parquet(dst / "catalog.parquet")
    extra = df.iloc[[0, 1]].copy()
    extra["product_id"] = ["adult-1", "lingerie-1"]
    extra["title"] = [ADULT_TITLE, LINGERIE_TITLE]
    extra["category"] = ["Apparel > Topwear > Tshirts", "Apparel > Topwear > Tshirts"]
    pd.concat([df, extra]).to_parquet(dst / "catalog.parquet", index=False)
    return dst


def _frame(lake, name) -> pd.DataFrame:
    return DeltaTable(str(lake / name)).to_pandas()


def _embeddings(lake) -> pd.DataFrame:
    return _frame(lake, "product_embeddings").set_index("product_id")


def _bundle(catalog, store) -> str:
    """A head bundle for the fake encoder: category head on the sample's leaf categories, a colour head."""
    df = pd.read_parquet(catalog / "catalog.parquet").dropna(subset=["category"])
    enc = FakeEncoder(None)
    x = np.concatenate([enc.embed_texts(df["title"].astype(str).tolist()), np.zeros((len(df), 8), np.float32)],
                       axis=1)
    leaves = sorted({leaf(c) for c in df["category"]})
    y = np.array([leaves.index(leaf(c)) for c in df["category"]])
    cfg = HeadTrainConfig(epochs=20, hidden=32)
    cat = fit_head(x, y, leaves, cfg, name="category", inputs="text+image", image_slice=slice(8, 16))
    colours = ["Black", "Blue", "Red"]
    yc = np.array([i % 3 for i in range(len(df))])
    col = fit_head(x[:, :8], yc, colours, cfg, name="colour", inputs="text")
    bundle = HeadBundle("fake-1", cat, {"colour": col}, None, 0.5, attribute_threshold=0.0)
    return save_heads(store, "heads-test", bundle, training_data="sample", metrics={})


@pytest.fixture(scope="module")
def head_run(spark, catalog, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    version = _bundle(catalog, store)
    lake = tmp_path_factory.mktemp("lake-head")
    code = enrich.main(["--catalog", str(catalog / "catalog.parquet"), "--lake", str(lake), "--run-id", "h1",
                        "--heads", str(store / "heads" / version), *FAKE])
    assert code == 0
    return lake, version


def test_head_run_writes_one_category_and_adult_row_per_enriched_product(head_run):
    lake, version = head_run
    enriched = set(_embeddings(lake).index)
    cats = _frame(lake, "product_categories")
    adult = _frame(lake, "product_adult_flags")
    assert set(cats["product_id"]) == enriched and len(cats) == len(enriched)
    assert set(adult["product_id"]) == enriched and len(adult) == len(enriched)
    assert (cats["method"] == f"head:{version}").all()
    assert cats["confidence"].between(0, 1).all()
    for row in cats.itertuples():
        scores = [s["score"] for s in row.top_k]
        assert 1 <= len(scores) <= 5
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= s <= 1 for s in scores)
        assert row.top_k[0]["label"] == row.category and row.top_k[0]["score"] == pytest.approx(row.confidence)
    assert (cats["model_version"] == "fake-1").all() and (cats["run_id"] == "h1").all()


def test_head_run_writes_closed_attributes_with_their_source(head_run):
    lake, version = head_run
    attrs = _frame(lake, "product_attributes")
    assert set(attrs["product_id"]) == set(_embeddings(lake).index)   # threshold 0: every product has a colour
    assert set(attrs["attribute"]) == {"colour"}
    assert set(attrs["value"]) <= {"Black", "Blue", "Red"}
    assert attrs["confidence"].between(0, 1).all()
    assert set(attrs["source"]) == {"title"}                          # the colour head reads the text only
    assert (attrs["method"] == f"closed:{version}").all()


def test_adult_flags_fire_on_terms_and_leave_lingerie_alone(head_run):
    lake, _ = head_run
    adult = _frame(lake, "product_adult_flags").set_index("product_id")
    assert adult.loc["adult-1", "is_adult"]
    assert "term:erotic:dildo" in list(adult.loc["adult-1", "reasons"])
    assert adult.loc["adult-1", "score"] == 1.0
    assert not adult.loc["lingerie-1", "is_adult"] and len(adult.loc["lingerie-1", "reasons"]) == 0
    assert adult["score"].between(0, 1).all()
    assert int(adult["is_adult"].sum()) == 1


def test_rerun_rewrites_only_changed_products(spark, head_run, catalog, tmp_path):
    lake, version = head_run
    lake2 = tmp_path / "lake"
    shutil.copytree(lake, lake2)
    cat2 = tmp_path / "catalog"
    shutil.copytree(catalog, cat2)
    df = pd.read_parquet(cat2 / "catalog.parquet")
    df.loc[df["product_id"] == "lingerie-1", "title"] = "Vibrator for couples"
    df.to_parquet(cat2 / "catalog.parquet", index=False)
    code = enrich.main(["--catalog", str(cat2 / "catalog.parquet"), "--lake", str(lake2), "--run-id", "h2",
                        *FAKE, "--heads", "none", "--categories", "none"])
    assert code == 0
    adult = _frame(lake2, "product_adult_flags").set_index("product_id")
    assert adult.loc["lingerie-1", "is_adult"] and adult.loc["lingerie-1", "run_id"] == "h2"
    assert (adult.drop(index="lingerie-1")["run_id"] == "h1").all()
    # The re-enriched product's old category and attributes go (--categories none, no bundle: nothing new);
    # every other product keeps the rows of the first run.
    cats = _frame(lake2, "product_categories")
    assert "lingerie-1" not in set(cats["product_id"]) and (cats["run_id"] == "h1").all()
    assert len(cats) == len(_frame(lake, "product_categories")) - 1
    attrs = _frame(lake2, "product_attributes")
    old = _frame(lake, "product_attributes")
    assert set(attrs["product_id"]) == set(old["product_id"]) - {"lingerie-1"}
    assert len(attrs) == len(old) - int((old["product_id"] == "lingerie-1").sum())


def test_zero_shot_fallback_with_a_taxonomy_file(spark, catalog, tmp_path):
    names = tmp_path / "taxonomy.txt"
    names.write_text("# test taxonomy\nHome > Kitchen > Mugs\nApparel > Topwear > Tshirts\nMature > Erotic\n")
    lake = tmp_path / "lake"
    code = enrich.main(["--catalog", str(catalog / "catalog.parquet"), "--lake", str(lake), "--run-id", "z1",
                        "--taxonomy", str(names), *FAKE])
    assert code == 0
    cats = _frame(lake, "product_categories")
    assert len(cats) == len(_embeddings(lake))
    assert set(cats["category"]) <= {"Home > Kitchen > Mugs", "Apparel > Topwear > Tshirts", "Mature > Erotic"}
    assert (cats["method"] == "zero-shot:taxonomy.txt").all()
    assert all(len(t) == 3 for t in cats["top_k"])                 # k is capped by the number of labels
    adult = _frame(lake, "product_adult_flags").set_index("product_id")
    # A product zero-shot-classified into the mature category is flagged with that reason, and vice versa.
    mature = set(cats.loc[cats["category"] == "Mature > Erotic", "product_id"])
    flagged_by_category = {p for p, r in adult["reasons"].items() if any(x.startswith("category:") for x in r)}
    assert flagged_by_category == mature
    assert _frame(lake, "product_attributes").empty               # no bundle: no closed attributes
