import json
import shutil

import pandas as pd
import pytest

from jobs.make_sample_catalog import generate
from models import store
from models.training.pipeline import candidate_config

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    out = tmp_path_factory.mktemp("catalog")
    generate(out, n_products=60)
    return out


@pytest.fixture()
def tiny_arch(tmp_path):
    cfg = candidate_config()
    cfg["vision_cfg"] = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "mlp_ratio": 2.0,
                         "patch_size": 8}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


def _args(catalog, lake, st, *extra):
    return ["--catalog", str(catalog / "catalog.parquet"), "--image-root", str(catalog), "--lake", str(lake),
            "--model-store", str(st), "--valid-percent", "30", "--probe-train", "100", "--batch", "16", *extra]


def _runs(lake):
    from deltalake import DeltaTable

    return DeltaTable(str(lake / "model_runs")).to_pandas()


def test_retrain_trains_saves_promotes_and_records(spark, catalog, tiny_arch, tmp_path):
    from jobs.retrain import main

    lake, st = tmp_path / "lake", tmp_path / "store"
    code = main(_args(catalog, lake, st, "--arch-config", str(tiny_arch), "--steps", "2", "--run-id", "r1",
                      "--min-improvement", "-1"))
    assert code == 0
    runs = _runs(lake)
    assert runs["run_id"].tolist() == ["r1"] and runs["status"].tolist() == ["promoted"]
    version = store.current_version(st)
    assert runs["candidate_version"].iloc[0] == f"store:{version}"
    assert runs["champion_version"].iloc[0] == "builtin:catalog-tiny-minilm"
    manifest = store.verify_version(st / version)
    assert manifest["training_data"].startswith("parquet:") and "sha256:" in manifest["training_data"]
    assert "English" in (st / version / "MODEL_CARD.md").read_text()
    # A category head for the candidate, from the sample's seller categories, verified on load.
    from models.heads.bundle import find_heads, load_heads

    bundle = load_heads(find_heads(st, version))
    assert bundle.encoder_version == version
    seller = set(pd.read_parquet(catalog / "catalog.parquet").dropna(subset=["category"])["category"])
    assert len(bundle.category.classes) >= 2 and set(bundle.category.classes) <= seller
    assert "category head heads-catalog-" in runs["message"].iloc[0]


def test_tampered_candidate_is_refused_and_champion_stays(spark, catalog, tiny_arch, tmp_path, monkeypatch):
    from jobs import retrain_steps
    from jobs.retrain import main

    lake, st = tmp_path / "lake", tmp_path / "store"
    assert main(_args(catalog, lake, st, "--arch-config", str(tiny_arch), "--steps", "1", "--run-id", "r1",
                      "--min-improvement", "-1")) == 0
    champion = store.current_version(st)
    real_save = retrain_steps.save_candidate

    def save_then_flip_a_byte(root, *a, **k):
        version = real_save(root, *a, **k)
        weights = root / version / store.WEIGHTS_FILE
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        return version

    monkeypatch.setattr(retrain_steps, "save_candidate", save_then_flip_a_byte)
    code = main(_args(catalog, lake, st, "--arch-config", str(tiny_arch), "--steps", "1", "--run-id", "r2",
                      "--min-improvement", "-1"))
    assert code == 1
    assert store.current_version(st) == champion
    row = _runs(lake).set_index("run_id").loc["r2"]
    assert row["status"] == "failed" and not row["promoted"]
    assert "model.safetensors: sha256 does not match" in row["message"]


def test_promotion_refused_when_candidate_is_worse(spark, catalog, tmp_path):
    from jobs.retrain import main

    shipped = store.current_version(store.DEFAULT_STORE)
    if shipped is None:
        pytest.skip("no shipped model in models/store yet")
    st, lake = tmp_path / "store", tmp_path / "lake"
    st.mkdir()
    shutil.copytree(store.DEFAULT_STORE / shipped, st / shipped)
    store.promote(st, shipped)
    assert main(_args(catalog, lake, st, "--steps", "0", "--run-id", "worse")) == 0
    row = _runs(lake).iloc[0]
    assert row["status"] == "kept_champion" and not row["promoted"]
    assert row["champion_version"] == f"store:{shipped}"
    assert row["candidate_score"] < row["champion_score"]
    assert store.current_version(st) == shipped
