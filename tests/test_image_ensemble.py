"""Several image towers stored and served as one encoder (models.ensemble, models.training.image_ensemble)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from models.arch import ENSEMBLE_KEY, build_clip, load_model
from models.ensemble import ImageEnsemble
from models.store import save_version, trained_state_dict
from models.training.image_ensemble import ensemble_state, main
from models.training.image_tower import ImageTowerConfig, build_candidate, tower_config
from models.training.pipeline import stored_state
from tests.test_image_tower import HW, _champion


def _member(tmp_path, champ_dir, seed: int) -> tuple:
    """A stored single-tower version: a seeded regnetx_002 against the champion's text tower (untrained: the
    seeds make the towers differ, which is all an ensemble needs to be told apart from either member)."""
    model, cfg = build_candidate(champ_dir, ImageTowerConfig(arch="regnetx_002", image_hw=HW, seed=seed))
    model.eval().requires_grad_(False)   # as training leaves it: the version stores the champion's text layers only
    with torch.no_grad():   # BatchNorm statistics that are not the init's, so the folding has work to do
        for m in model.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.visual.preprocess_cfg.items()}
    v = save_version(tmp_path / "store", "tiny-tower", cfg, pp, trained_state_dict(model), training_data="synthetic",
                     metrics={"valid": {"probe_image_acc": 0.1 * seed}}, extra={"text_tower_of": champ_dir.name})
    return tmp_path / "store" / v, model


@pytest.fixture()
def members(tmp_path):
    champ_dir, _ = _champion(tmp_path, locked_text=True)
    return [_member(tmp_path, champ_dir, s) for s in (1, 2)]


def _pixels(n=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3, *HW)).astype(np.float32))


def test_the_ensemble_embeds_the_mean_of_its_members_unit_embeddings(members):
    (da, ma), (db, mb) = members
    cfg, state = ensemble_state([stored_state(da), stored_state(db)], half=False)
    assert cfg[ENSEMBLE_KEY] == 2 and cfg["vision_cfg"] == stored_state(da)[0]["vision_cfg"]
    model = build_clip(cfg)
    assert isinstance(model.visual, ImageEnsemble) and len(model.visual.members) == 2
    model.load_state_dict(state, strict=False)
    model.eval()
    x = _pixels()
    with torch.no_grad():
        got = model.encode_image(x)
        a = torch.nn.functional.normalize(ma.encode_image(x), dim=-1)
        b = torch.nn.functional.normalize(mb.encode_image(x), dim=-1)
    assert torch.allclose(got, (a + b) / 2, atol=1e-5)
    assert (a * b).sum(-1).max() < 0.99                         # the members differ: the mean is neither
    # the text tower is the members' own, tensor for tensor
    sa = stored_state(da)[1]
    assert all(torch.equal(state[k], sa[k]) for k in sa if not k.startswith("visual."))


def test_half_precision_members_stay_within_rounding_and_load_back_as_fp32(members, tmp_path):
    (da, _), (db, _) = members
    cfg, full = ensemble_state([stored_state(da), stored_state(db)], half=False)
    _, half = ensemble_state([stored_state(da), stored_state(db)], half=True)
    assert half["visual.members.1.head.proj.weight"].dtype == torch.float16
    assert all(v.dtype == full[k].dtype for k, v in half.items() if not k.startswith("visual."))
    pp = json.loads((da / "open_clip_config.json").read_text())["preprocess_cfg"]
    v = save_version(tmp_path / "store", "tiny-x2", cfg, pp, half, training_data="synthetic", metrics={})
    model, _ = load_model(tmp_path / "store" / v)
    model.eval()
    assert model.visual.members[1].head.proj.weight.dtype == torch.float32
    exact = build_clip(cfg, pp)
    exact.load_state_dict(full, strict=False)
    exact.eval()
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model.encode_image(_pixels()), exact.encode_image(_pixels()))
    assert cos.min() > 0.999 and cos.min() < 1.0 + 1e-6


def test_the_job_serving_form_folds_every_members_batchnorms(members, tmp_path):
    from models.encoders import load_encoder, serving_form

    (da, _), (db, _) = members
    cfg, state = ensemble_state([stored_state(da), stored_state(db)])
    pp = json.loads((da / "open_clip_config.json").read_text())["preprocess_cfg"]
    v = save_version(tmp_path / "store", "tiny-x2", cfg, pp, state, training_data="synthetic", metrics={})
    stored = load_encoder(str(tmp_path / "store" / v), "cpu")
    single, _ = load_model(da)
    per_tower = serving_form(single.eval().visual)
    served = load_encoder(str(tmp_path / "store" / v), "cpu", precision="fp32")
    assert per_tower > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in served.model.visual.modules())
    x = _pixels().numpy()
    np.testing.assert_allclose(served.embed_pixels(x), stored.embed_pixels(x), atol=1e-4)


def test_members_that_do_not_belong_together_are_refused(members, tmp_path):
    (da, _), (db, _) = members
    a, b = stored_state(da), stored_state(db)
    with pytest.raises(ValueError, match="at least two"):
        ensemble_state([a])
    other_text = (b[0], {**b[1], "text.proj.weight": b[1]["text.proj.weight"] + 1e-3})
    with pytest.raises(ValueError, match="another text tower"):
        ensemble_state([a, other_text])
    other_arch = ({**b[0], "vision_cfg": {**b[0]["vision_cfg"], "image_size": [40, 30]}}, b[1])
    with pytest.raises(ValueError, match="another architecture"):
        ensemble_state([a, other_arch])
    nested, _ = ensemble_state([a, b])
    with pytest.raises(ValueError, match="ensemble itself"):
        ensemble_state([(nested, a[1]), a])
    with pytest.raises(ValueError, match="whole number"):
        build_clip({**a[0], ENSEMBLE_KEY: 0})


def test_a_new_tower_trained_from_an_ensemble_champion_is_one_tower(members):
    (da, _), (db, _) = members
    cfg, _ = ensemble_state([stored_state(da), stored_state(db)])
    assert ENSEMBLE_KEY not in tower_config(cfg, "regnetx_002", HW)


def _fashion(root, n=24):
    """A tiny fashion folder: three types, each its own colour."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        y = i % 3
        px = np.full((HW[0], HW[1], 3), 30, np.uint8)
        px[:, :, y] = 220
        Image.fromarray(px).save(root / "images" / f"{i}.png")
        rows.append({"product_id": f"p{i:03d}", "title": f"Brand Item {i} type {y}", "articleType": f"type{y}",
                     "image_path": f"images/{i}.png"})
    pd.DataFrame(rows).to_parquet(root / "products.parquet")
    return root


def test_the_command_stores_evaluates_and_promotes_only_when_asked(members, tmp_path, capsys):
    from models.encoders import load_encoder
    from models.store import current_version, read_manifest

    (da, ma), (db, mb) = members
    data = _fashion(tmp_path / "fashion")
    store = tmp_path / "store"
    before = current_version(store)
    args = ["--data", str(data), "--members", f"store:{da.name},{db}", "--store", str(store),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    assert current_version(store) == before                    # not promoted without --promote
    man = read_manifest(store / version)
    assert man["ensemble_of"] == [da.name, db.name] and man["text_tower_of"] == da.name
    assert "probe_image_acc" in man["metrics"]["valid"] and set(man["metrics"]["members_valid"]) == {da.name, db.name}
    # what the members stored and no more: not the packaged text transformer's other layers
    from safetensors import safe_open

    with safe_open(str(store / version / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    text = {k for k in stored_state(da)[1] if not k.startswith("visual.")}
    towers = {f"visual.members.{i}.{k.removeprefix('visual.')}" for i, d in enumerate((da, db))
              for k in stored_state(d)[1] if k.startswith("visual.")}
    assert keys == text | towers
    card = (store / version / "MODEL_CARD.md").read_text()
    assert da.name in card and db.name in card and "--members" in card and "its card gives no command" in card
    enc = load_encoder(str(store / version), "cpu")
    x = _pixels(3).numpy()
    with torch.no_grad():
        a = torch.nn.functional.normalize(ma.encode_image(torch.from_numpy(x)), dim=-1)
        b = torch.nn.functional.normalize(mb.encode_image(torch.from_numpy(x)), dim=-1)
    want = torch.nn.functional.normalize(a + b, dim=-1).numpy()
    assert float((enc.embed_pixels(x) * want).sum(-1).min()) > 0.999
    assert main([*args, "--promote"]) == 0
    assert current_version(store) == capsys.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(SystemExit, match="at least two"):
        main(["--data", str(data), "--members", f"store:{da.name}", "--store", str(store)])
    with pytest.raises(SystemExit, match="has no version 'nope'"):
        main(["--data", str(data), "--members", f"store:nope,store:{da.name}", "--store", str(store)])
