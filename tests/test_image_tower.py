"""The convolutional image tower trained against a champion's locked text space (models.training.image_tower)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models.arch import build_clip
from models.training.data import TrainData
from models.training.image_tower import (
    PREPROCESS,
    ImageTowerConfig,
    augment,
    build_candidate,
    tower_config,
    train_image_tower,
)
from tests.tiny_models import tiny_model_cfg

HW = (32, 24)


def _champion(tmp_path, locked_text: bool = False):
    """A stored tiny champion (ViT tower, random BERT) whose text tower the candidate must keep. ``locked_text``:
    the transformer locked but its last layer, so the version stores that layer only (as the shipped ones do)."""
    from models.store import save_version, trained_state_dict

    cfg = tiny_model_cfg(tmp_path)
    model = build_clip(cfg)
    with torch.no_grad():   # a "fine-tuned" text tower: not what the package (or a seeded init) would give
        model.text.proj.weight.mul_(-0.5)
        for p in model.text.transformer.encoder.layer[-1].parameters():
            p.add_(0.01)
    if locked_text:
        model.text.transformer.requires_grad_(False)
    model.text.transformer.encoder.layer[-1].requires_grad_(True)
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.visual.preprocess_cfg.items()}
    version = save_version(tmp_path / "store", "tiny", cfg, pp, trained_state_dict(model),
                           training_data="synthetic", metrics={"valid": {"probe_image_acc": 0.1}})
    return tmp_path / "store" / version, model


def _data(n=24, classes=3):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    pixels = np.zeros((n, HW[0], HW[1], 3), dtype=np.uint8)
    for i, y in enumerate(labels):                       # each class its own colour, plus noise
        pixels[i, :, :, y] = 200
    pixels = (pixels + rng.integers(0, 40, pixels.shape)).astype(np.uint8)
    titles = tuple(f"item {i} colour {y}" for i, y in enumerate(labels))
    return TrainData(pixels, titles, np.full((n, 1), -1), labels.astype(np.int64), classes)


def test_tower_config_swaps_only_the_vision_tower():
    champ = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "layers": 1}, "text_cfg": {"hf_model_name": "x"}}
    cfg = tower_config(champ, "regnetx_002", (80, 60))
    assert cfg["text_cfg"] == champ["text_cfg"] and cfg["embed_dim"] == 32
    assert cfg["vision_cfg"]["timm_model_name"] == "regnetx_002" and cfg["vision_cfg"]["image_size"] == [80, 60]
    assert champ["vision_cfg"] == {"image_size": 16, "layers": 1}   # the champion's config is not touched


def test_augment_keeps_shape_and_range_and_flips_some():
    x = torch.zeros(64, 3, 8, 6)
    x[:, :, :, 0] = 255.0                                 # a white left column
    out = augment(x.clone(), torch.Generator().manual_seed(0), shift=0, jitter=0.0)
    assert out.shape == x.shape
    flipped = (out[:, 0, 0, -1] == 255).sum().item()
    assert 10 < flipped < 54                               # about half flipped
    out = augment(x.clone(), torch.Generator().manual_seed(0), shift=2, jitter=0.5)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255


def test_candidate_keeps_the_champion_text_tower_and_learns_the_image_tower(tmp_path):
    from models.training.pipeline import in_memory_encoder

    champ_dir, champ_model = _champion(tmp_path)
    cfg = ImageTowerConfig(arch="regnetx_002", image_hw=HW, epochs=2, batch_size=8, lr=1e-2, warmup_fraction=0.1)
    model, model_cfg = build_candidate(champ_dir, cfg)
    assert model.visual.preprocess_cfg["resize_mode"] == PREPROCESS["resize_mode"]
    champ_state = champ_model.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("text."):
            assert torch.equal(v, champ_state[k]), k
    data = _data()
    enc = in_memory_encoder(model, model_cfg)
    text = enc.embed_texts(list(data.titles))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_image_tower(model, data, text, cfg, tmp_path / "work")
    assert result["steps"] == 2 * (len(data) // 8) and len(result["history"]) == 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    moved = [k for k in before if k.startswith("visual.") and before[k].is_floating_point()
             and not torch.equal(before[k], after[k])]
    assert "visual.head.proj.weight" in moved
    assert np.allclose(in_memory_encoder(model, model_cfg).embed_texts(list(data.titles)), text, atol=1e-6)
    assert (tmp_path / "work" / "checkpoint.pt").is_file()
    # The image embedding reads the whole box: (H, W) inputs, one unit vector each.
    img = in_memory_encoder(model, model_cfg).embed_pixels(np.zeros((2, 3, *HW), dtype=np.float32))
    assert img.shape == (2, 32) and np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)


def test_training_resumes_from_its_checkpoint(tmp_path):
    champ_dir, _ = _champion(tmp_path)
    data = _data()
    text = np.random.default_rng(1).normal(size=(len(data), 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    one = ImageTowerConfig(arch="regnetx_002", image_hw=HW, epochs=1, batch_size=8)
    model, _ = build_candidate(champ_dir, one)
    first = train_image_tower(model, data, text, one, tmp_path / "work")
    two = ImageTowerConfig(arch="regnetx_002", image_hw=HW, epochs=2, batch_size=8)
    again, _ = build_candidate(champ_dir, two)
    resumed = train_image_tower(again, data, text, two, tmp_path / "work")
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]          # epoch 0 from the checkpoint, epoch 1 new
    assert resumed["history"][0] == first["history"][0]
    assert resumed["steps"] == 2 * first["steps"]


def test_bf16_training_moves_the_fp32_weights_of_the_image_tower(tmp_path):
    champ_dir, _ = _champion(tmp_path)
    data = _data()
    text = np.random.default_rng(2).normal(size=(len(data), 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    cfg = ImageTowerConfig(arch="regnetx_002", image_hw=HW, epochs=1, batch_size=8, lr=1e-2, bf16=True)
    model, _ = build_candidate(champ_dir, cfg)
    before = {k: v.clone() for k, v in model.visual.state_dict().items() if v.is_floating_point()}
    result = train_image_tower(model, data, text, cfg)
    assert all(np.isfinite(result["history"][0][k]) for k in ("clip", "category"))
    after = model.visual.state_dict()
    assert all(after[k].dtype == torch.float32 for k in before)          # autocast: the weights stay fp32
    assert not torch.equal(before["head.proj.weight"], after["head.proj.weight"])


def test_the_image_box_option_reads_height_by_width():
    from models.training.image_tower import _hw, _parser

    assert _hw("120x90") == (120, 90) and _hw("80X60") == (80, 60)
    for bad in ("80", "80x", "axb", "8x8"):
        with pytest.raises(SystemExit):
            _hw(bad)
    args = _parser().parse_args(["--data", "d", "--work", "w", "--image-hw", "120x90", "--bf16"])
    assert (_hw(args.image_hw), args.bf16) == ((120, 90), True)
    assert _parser().parse_args(["--data", "d", "--work", "w"]).image_hw == "80x60"


def test_config_refuses_a_batch_without_negatives():
    with pytest.raises(ValueError, match="negatives"):
        ImageTowerConfig(batch_size=1)


def test_stored_tower_round_trips_through_the_store(tmp_path):
    from models.encoders import load_encoder
    from models.store import save_version, trained_state_dict

    champ_dir, _ = _champion(tmp_path)
    cfg = ImageTowerConfig(arch="regnetx_002", image_hw=HW, epochs=1, batch_size=8)
    model, model_cfg = build_candidate(champ_dir, cfg)
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.visual.preprocess_cfg.items()}
    version = save_version(tmp_path / "store", "tower", model_cfg, pp, trained_state_dict(model),
                           training_data="synthetic", metrics={})
    enc = load_encoder(str(tmp_path / "store" / version), "cpu")
    assert enc.pixel_geometry == HW and enc.resize_mode == "longest"
    from PIL import Image

    arr = enc.preprocess(Image.new("RGB", (60, 80), (10, 20, 30)))
    assert arr.shape == (3, *HW)
    champ = load_encoder(str(champ_dir), "cpu")
    titles = ["red shirt", "blue jeans"]
    assert np.allclose(enc.embed_texts(titles), champ.embed_texts(titles), atol=1e-6)
    assert json.loads((tmp_path / "store" / version / "open_clip_config.json").read_text())[
        "preprocess_cfg"]["resize_mode"] == "longest"


def test_aux_labels_index_each_column_and_leave_rare_and_missing_values_out():
    import pandas as pd

    from models.training.image_tower import aux_labels

    rows = pd.DataFrame({"baseColour": ["Red", "Red", " Blue ", None, "", "Blue", "Teal"],
                         "usage": ["Casual"] * 6 + ["Sports"]})
    y, classes = aux_labels(rows, ("baseColour", "usage"), min_count=2)
    assert classes == [["Blue", "Red"], ["Casual"]]
    assert y.dtype == np.int64 and y.shape == (7, 2)
    assert y[:, 0].tolist() == [1, 1, 0, -1, -1, 0, -1]          # " Blue " trimmed; blank, missing, rare: -1
    assert y[:, 1].tolist() == [0] * 6 + [-1]
    with pytest.raises(ValueError, match="no column 'gender'"):
        aux_labels(rows, ("baseColour", "gender"))


def test_aux_classifiers_train_beside_the_category_and_resume(tmp_path):
    champ_dir, _ = _champion(tmp_path)
    data = _data()
    text = np.random.default_rng(3).normal(size=(len(data), 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    # Two other labels: one the photo shows (its colour channel, as the category), one it cannot (parity).
    y_aux = np.stack([data.labels, np.arange(len(data)) % 2], axis=1).astype(np.int64)
    y_aux[0, 1] = -1
    cfg = ImageTowerConfig(arch="regnetx_002", image_hw=HW, epochs=1, batch_size=8, lr=1e-2, aux_weight=1.0)
    model, _ = build_candidate(champ_dir, cfg)
    result = train_image_tower(model, data, text, cfg, tmp_path / "work", aux=(y_aux, [3, 2]))
    first = result["history"][0]
    assert np.isfinite(first["aux"]) and first["aux"] > 0
    saved = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=True)
    assert saved["aux_heads"]["0.weight"].shape == (3, 32) and saved["aux_heads"]["1.weight"].shape == (2, 32)
    two = dataclasses.replace(cfg, epochs=2)
    again, _ = build_candidate(champ_dir, two)
    resumed = train_image_tower(again, data, text, two, tmp_path / "work", aux=(y_aux, [3, 2]))
    assert resumed["history"][0] == first and len(resumed["history"]) == 2
    # Without the weight the classifiers are not built and the history has no auxiliary loss.
    plain = train_image_tower(build_candidate(champ_dir, dataclasses.replace(cfg, aux_weight=0.0))[0], data, text,
                              dataclasses.replace(cfg, aux_weight=0.0), aux=(y_aux, [3, 2]))
    assert "aux" not in plain["history"][0]
    with pytest.raises(ValueError, match="other parts"):      # the aux run's checkpoint, resumed without them
        train_image_tower(build_candidate(champ_dir, dataclasses.replace(two, aux_weight=0.0))[0], data, text,
                          dataclasses.replace(two, aux_weight=0.0), tmp_path / "work")
    with pytest.raises(ValueError, match="auxiliary labels must be"):
        train_image_tower(model, data, text, cfg, aux=(y_aux[:5], [3, 2]))
    with pytest.raises(ValueError, match="aux_weight"):
        ImageTowerConfig(aux_weight=-1.0)


def test_the_aux_options_parse():
    from models.training.image_tower import _parser

    args = _parser().parse_args(["--data", "d", "--work", "w", "--aux-weight", "0.5", "--aux-columns", "usage"])
    assert (args.aux_weight, args.aux_columns) == (0.5, "usage")
    assert _parser().parse_args(["--data", "d", "--work", "w"]).aux_weight == 0.0


def test_a_stored_tower_is_measured_in_bf16_and_the_measurement_recorded(tmp_path, capsys):
    import pandas as pd
    from PIL import Image

    from models.encoders import image_bf16_holds
    from models.store import read_manifest, save_version, trained_state_dict, verify_version
    from models.training.data import split_of
    from models.training.image_precision import main

    champ_dir, _ = _champion(tmp_path)
    model, model_cfg = build_candidate(champ_dir, ImageTowerConfig(arch="regnetx_002", image_hw=HW))
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.visual.preprocess_cfg.items()}
    version = save_version(tmp_path / "store", "tower", model_cfg, pp, trained_state_dict(model),
                           training_data="synthetic", metrics={})
    data = tmp_path / "fashion"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        path = f"images/{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(data / path)
        rows.append({"product_id": f"p{i}", "title": f"item {i}", "articleType": f"t{i % 3}", "image_path": path})
    pd.DataFrame(rows).to_parquet(data / "products.parquet")
    held_out = sum(split_of(r["product_id"]) == "valid" for r in rows)
    assert held_out > 0
    args = ["--data", str(data), "--store", str(tmp_path / "store"), "--version", version,
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--dry-run"]) == 0
    assert "image_bf16_on_cpu" not in read_manifest(tmp_path / "store" / version)
    assert main(args) == 0
    m = verify_version(tmp_path / "store" / version)["image_bf16_on_cpu"]
    assert m["photos"] == held_out and 0.0 < m["cosine_min"] <= m["cosine_median"] <= 1.0 + 1e-6
    assert image_bf16_holds({"image_bf16_on_cpu": m}) == (m["cosine_min"] >= 0.999)
    assert "bf16 on a CPU:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a convolutional tower"):
        main(["--data", str(data), "--store", str(tmp_path / "store"), "--version", champ_dir.name,
              "--cache-dir", str(tmp_path / "cache")])
