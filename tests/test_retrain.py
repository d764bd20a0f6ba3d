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


@pytest.fixture()
def shipped_store(tmp_path):
    """(version, store, lake): a store whose champion is a copy of the shipped model, and an empty lake."""
    shipped = store.current_version(store.DEFAULT_STORE)
    if shipped is None:
        pytest.skip("no shipped model in models/store yet")
    st, lake = tmp_path / "store", tmp_path / "lake"
    st.mkdir()
    shutil.copytree(store.DEFAULT_STORE / shipped, st / shipped)
    store.promote(st, shipped)
    return shipped, st, lake


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
    from jobs.retrain import main
    from jobs.stages import retrain_steps

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


def test_promotion_refused_when_candidate_is_worse(spark, catalog, shipped_store):
    from jobs.retrain import main

    shipped, st, lake = shipped_store
    assert main(_args(catalog, lake, st, "--steps", "0", "--run-id", "worse")) == 0
    row = _runs(lake).iloc[0]
    assert row["status"] == "kept_champion" and not row["promoted"]
    assert row["champion_version"] == f"store:{shipped}"
    assert row["candidate_score"] < row["champion_score"]
    assert store.current_version(st) == shipped


def test_retrain_from_the_champion_keeps_its_architecture_and_fine_tunes_the_unlocked_layer(spark, catalog,
                                                                                              shipped_store):
    """The shipped recipe in the periodic job: continue from the champion's weights, with the top text layer
    unlocked and the seller-category loss beside the contrastive one."""
    from safetensors.torch import load_file

    from jobs.retrain import main

    shipped, st, lake = shipped_store
    assert main(_args(catalog, lake, st, "--from-champion", "--unlock-text-layers", "1", "--category-weight", "1.0",
                      "--steps", "2", "--batch", "8", "--run-id", "cont", "--min-improvement", "-1")) == 0
    row = _runs(lake).iloc[0]
    assert row["status"] == "promoted" and row["champion_version"] == f"store:{shipped}"
    version = store.current_version(st)
    assert version != shipped
    manifest = store.verify_version(st / version)
    assert manifest["train_config"]["category_weight"] == 1.0 and manifest["train_config"]["unlocked_text_layers"] == 1
    cand_cfg = json.loads((st / version / store.CONFIG_FILE).read_text())["model_cfg"]
    champ_cfg = json.loads((st / shipped / store.CONFIG_FILE).read_text())["model_cfg"]
    assert cand_cfg == champ_cfg                       # the champion's architecture, not the default candidate's
    assert "continued from" in (st / version / "MODEL_CARD.md").read_text()
    cand, champ = load_file(str(st / version / store.WEIGHTS_FILE)), load_file(str(st / shipped / store.WEIGHTS_FILE))
    top = [k for k in cand if k.startswith("text.transformer.encoder.layer.5.")]
    assert top and any(not (cand[k] == champ[k]).all() for k in top)          # the unlocked layer trained
    # Layer 4 stayed frozen at the champion's fine-tuned weights, and is stored so that loading gives them back.
    lower = [k for k in champ if k.startswith("text.transformer.encoder.layer.4.")]
    assert lower and all(k in cand and (cand[k] == champ[k]).all() for k in lower)
    # Loading the candidate gives the model it was evaluated as: the champion's layer 4, not the package's.
    from models.encoders import load_encoder

    served = dict(load_encoder(str(st / version), "cpu").model.state_dict())
    assert all(torch_equal(served[k], champ[k]) for k in lower)
    package = dict(load_encoder("builtin:catalog-tiny-minilm", "cpu").model.state_dict())
    assert any(not torch_equal(package[k], champ[k]) for k in lower)   # which is not what the package holds


def test_retrain_trains_a_new_image_tower_against_the_champions_text(spark, catalog, shipped_store):
    """``--image-tower``: a fresh convolutional tower on the whole photo fitted into an (H, W) box, trained
    against the champion's locked text tower; the candidate's text embeddings are the champion's."""
    import numpy as np

    from jobs.retrain import main
    from models.encoders import load_encoder

    shipped, st, lake = shipped_store
    assert main(_args(catalog, lake, st, "--image-tower", "regnetx_002", "--image-hw", "40x32", "--steps", "2",
                      "--batch", "8", "--run-id", "tower", "--min-improvement", "-1")) == 0
    row = _runs(lake).iloc[0]
    assert row["status"] == "promoted" and row["champion_version"] == f"store:{shipped}"
    version = store.current_version(st)
    manifest = store.verify_version(st / version)
    assert manifest["train_config"]["arch"] == "regnetx_002"
    cand, champ = load_encoder(str(st / version), "cpu"), load_encoder(str(st / shipped), "cpu")
    assert cand.pixel_geometry == (40, 32) and champ.pixel_geometry != cand.pixel_geometry
    titles = ["Nike Men Blue Running Shoes", "Lakme Women Red Lipstick"]
    assert np.allclose(cand.embed_texts(titles), champ.embed_texts(titles), atol=1e-6)
    assert "new regnetx_002 image tower" in (st / version / "MODEL_CARD.md").read_text()
    # The candidate's image tower was measured in bf16 on its held-out photos (what lets it run so on a CPU).
    measured = manifest["image_bf16_on_cpu"]
    # (Two steps leave a tower whose bf16 outputs need not hold: only the measurement's form is checked.)
    assert measured["photos"] == row["valid_items"] and -1 <= measured["cosine_min"] <= measured["cosine_median"] <= 1


def test_retrain_refuses_an_image_tower_with_a_bad_box():
    from jobs.retrain import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--catalog", "c", "--lake", "l", "--image-tower", "regnetx_002", "--image-hw", "80"])
    with pytest.raises(SystemExit):
        parse_args(["--catalog", "c", "--lake", "l", "--image-tower", "regnetx_002", "--from-champion"])
    assert parse_args(["--catalog", "c", "--lake", "l", "--image-tower", "regnetx_002"]).image_hw == (80, 60)


def test_the_image_tower_takes_the_recipes_category_weight_unless_one_is_given():
    from jobs.retrain import parse_args
    from jobs.stages.retrain_steps import image_tower_config

    base = ["--catalog", "c", "--lake", "l", "--image-tower", "regnetx_002"]
    assert image_tower_config(parse_args(base)).category_weight == 1.0
    assert image_tower_config(parse_args([*base, "--category-weight", "0"])).category_weight == 0.0  # off, not 1.0
    cfg = image_tower_config(parse_args([*base, "--category-weight", "2.5", "--lr", "0.01", "--epochs", "3"]))
    assert (cfg.category_weight, cfg.lr, cfg.epochs, cfg.image_hw) == (2.5, 0.01, 3, (80, 60))
    assert parse_args(["--catalog", "c", "--lake", "l"]).category_weight is None
    assert not cfg.bf16 and image_tower_config(parse_args([*base, "--bf16"])).bf16
    with pytest.raises(SystemExit):
        parse_args([*base, "--category-weight", "-1"])


def test_retrain_refuses_from_champion_with_an_architecture(tmp_path):
    from jobs.retrain import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--catalog", "c", "--lake", "l", "--from-champion", "--arch-config", "a.json"])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))
