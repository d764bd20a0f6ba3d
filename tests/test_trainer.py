import numpy as np
import torch

from models.arch import build_clip
from models.training.config import BatchSchedule, TrainConfig
from models.training.data import TrainData, split_of
from models.training.pipeline import load_tokenizer
from models.training.trainer import Trainer
from tests.tiny_models import tiny_model_cfg

TITLES = ("red shirt", "blue jeans", "black shoe", "white watch", "green bag", "red dress", "blue cap", "grey sock")


def _data(n_classes=3):
    rng = np.random.default_rng(0)
    return TrainData(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), TITLES,
                     groups=np.array([[0], [0], [-1], [1], [1], [-1], [2], [3]]),
                     labels=np.array([0, 1, 2, 0, 1, 2, 0, -1]), n_classes=n_classes)


def test_locked_text_tower_stays_frozen_and_image_tower_learns(tmp_path):
    cfg = tiny_model_cfg(tmp_path)
    model = build_clip(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tc = TrainConfig(epochs=2, schedule=BatchSchedule(4, (1,)), chunk_size=2, warmup_steps=1, category_weight=0.5)
    result = Trainer(model, load_tokenizer(cfg["text_cfg"]), tc).fit(_data())
    assert [h["batch"] for h in result.history] == [4, 4, 8]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text.transformer."))
    assert not torch.equal(before["visual.proj"], after["visual.proj"])
    assert not torch.equal(before["text.proj.weight"], after["text.proj.weight"])
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_unlocked_text_with_masked_lm_trains_the_text_tower(tmp_path):
    cfg = tiny_model_cfg(tmp_path)
    model = build_clip(cfg)
    word = model.text.transformer.get_input_embeddings().weight.clone()
    tc = TrainConfig(epochs=1, schedule=BatchSchedule(8), chunk_size=4, warmup_steps=1, lock_text=False,
                     mlm_weight=1.0, mlm_probability=0.5, text_lr=1e-2)
    result = Trainer(model, load_tokenizer(cfg["text_cfg"]), tc).fit(_data())
    assert result.steps == 1 and np.isfinite(result.history[0]["loss"])
    assert not torch.equal(word, model.text.transformer.get_input_embeddings().weight)


def test_unlocking_the_top_text_layer_trains_it_alone_and_the_store_keeps_it(tmp_path):
    from models.store import trained_state_dict

    cfg = tiny_model_cfg(tmp_path)
    model = build_clip(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_layers = len(model.text.transformer.encoder.layer)
    top = f"text.transformer.encoder.layer.{n_layers - 1}."
    tc = TrainConfig(epochs=1, schedule=BatchSchedule(8), chunk_size=4, warmup_steps=1, lock_text=False,
                     unlocked_text_layers=1, category_weight=0.5, text_lr=1e-2)
    Trainer(model, load_tokenizer(cfg["text_cfg"]), tc).fit(_data())
    after = model.state_dict()
    moved = {k for k in before if k.startswith("text.transformer.") and not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(top) for k in moved)
    stored = trained_state_dict(model)
    assert {k for k in stored if k.startswith("text.transformer.")} == {k for k in after if k.startswith(top)}


def test_unlocking_more_layers_than_the_tower_has_is_refused(tmp_path):
    import pytest

    cfg = tiny_model_cfg(tmp_path)
    model = build_clip(cfg)
    tc = TrainConfig(lock_text=False, unlocked_text_layers=len(model.text.transformer.encoder.layer) + 1)
    with pytest.raises(ValueError, match="unlocked_text_layers must be in"):
        Trainer(model, load_tokenizer(cfg["text_cfg"]), tc)


def test_split_is_stable_and_about_ten_percent():
    ids = [f"P{i:05d}" for i in range(5000)]
    valid = sum(split_of(i) == "valid" for i in ids)
    assert 400 < valid < 600
    assert all(split_of(i, valid_percent=0) == "train" and split_of(i, valid_percent=100) == "valid" for i in ids)


def test_split_is_the_same_in_another_interpreter():
    """The split must not depend on the process (Python's salted ``hash()`` would give each run its own)."""
    import os
    import subprocess
    import sys

    ids = [f"P{i:05d}" for i in range(300)]
    code = ("import sys; from models.training.data import split_of; "
            "print(''.join('v' if split_of(l.strip()) == 'valid' else 't' for l in sys.stdin))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input="\n".join(ids), capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    assert out == "".join("v" if split_of(i) == "valid" else "t" for i in ids)
    assert 10 < out.count("v") < 60
