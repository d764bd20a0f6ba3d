"""Build an open_clip model from an architecture given as data (a ``model_cfg`` dict).

Used by the model store (load a trained version) and by training (create a candidate). The MiniLM placeholder
in ``text_cfg`` is replaced by the folder inside its PyPI package, so configs stay portable between machines.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from models.refs import MINILM_PLACEHOLDER, RANDOM_SEED, text_tower_path
from models.store import CONFIG_FILE, FROZEN_PREFIX, WEIGHTS_FILE, ModelIntegrityError, verify_version

__all__ = ["ENSEMBLE_KEY", "FIT_PREPROCESS", "build_clip", "default_preprocess", "ensemble_size", "load_model",
           "pixel_geometry", "resolve_text_cfg"]

# The convolutional towers read the whole photo fitted into their (H, W) box on white; the ViT towers (a square
# ``image_size``) read open_clip's centre square.
FIT_PREPROCESS = {"resize_mode": "longest", "fill_color": 255, "interpolation": "bicubic"}
# ``model_cfg`` key: the number of ``vision_cfg`` towers whose embeddings are averaged (models/ensemble.py).
ENSEMBLE_KEY = "vision_ensemble"


def pixel_geometry(model_cfg: dict[str, Any]) -> int | tuple[int, int]:
    """What photos are decoded to for ``model_cfg``: the side of a centre square (``image_size`` an int), or the
    (H, W) box a whole photo is fitted into (``image_size`` a pair)."""
    size = model_cfg["vision_cfg"]["image_size"]
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else int(size)


def default_preprocess(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a model config implies when none is stored with it (see :func:`pixel_geometry`)."""
    return dict(FIT_PREPROCESS) if isinstance(pixel_geometry(model_cfg), tuple) else {}


def ensemble_size(model_cfg: dict[str, Any]) -> int:
    """How many image towers of ``vision_cfg`` the model runs side by side (:class:`models.ensemble.ImageEnsemble`;
    1: a single tower, as every config without ``vision_ensemble``)."""
    n = model_cfg.get(ENSEMBLE_KEY, 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{ENSEMBLE_KEY} must be a whole number of towers >= 1, got {n!r}")
    return n


def resolve_text_cfg(text_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(text_cfg)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if cfg.get(key) == MINILM_PLACEHOLDER:
            cfg[key] = text_tower_path()
    cfg.setdefault("hf_model_pretrained", True)
    return cfg


def build_clip(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | None = None, device: str = "cpu",
               seed: int = RANDOM_SEED) -> Any:
    """A ``CustomTextCLIP`` for ``model_cfg``: seeded random image tower (or ``vision_ensemble`` of them, one
    :class:`models.ensemble.ImageEnsemble`), pretrained HF text tower (unless the config says
    ``hf_model_pretrained: false``), preprocessing config set on ``model.visual``."""
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = copy.deepcopy(model_cfg)
    cfg["text_cfg"] = resolve_text_cfg(cfg["text_cfg"])
    cfg.pop("custom_text", None)
    members = ensemble_size(cfg)
    cfg.pop(ENSEMBLE_KEY, None)
    # Seeded so that every Spark worker and every test builds the same untrained weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CustomTextCLIP(**cfg)
        if members > 1:
            from open_clip.model import CLIPVisionCfg, _build_vision_tower

            from models.ensemble import ImageEnsemble

            vision_cfg = CLIPVisionCfg(**cfg["vision_cfg"])
            model.visual = ImageEnsemble([model.visual] + [_build_vision_tower(cfg["embed_dim"], vision_cfg)
                                                           for _ in range(members - 1)])
    pp = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg or default_preprocess(model_cfg))
    pp["size"] = model.visual.image_size
    open_clip.set_model_preprocess_cfg(model, pp)
    return model.to(device)


def load_model(vdir: Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Verify and build the model of a version; returns ``(model, text_cfg)``.

    The architecture comes from the config; the stored tensors are loaded strictly: every stored key must
    exist in the model, and every model key must be stored except the frozen text transformer's.
    """
    from safetensors.torch import load_file

    verify_version(vdir)
    cfg = json.loads((vdir / CONFIG_FILE).read_text())
    model = build_clip(cfg["model_cfg"], cfg.get("preprocess_cfg"), device="cpu")
    state = load_file(str(vdir / WEIGHTS_FILE))
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith(FROZEN_PREFIX))
    if unexpected or missing:
        raise ModelIntegrityError(f"{vdir / WEIGHTS_FILE} does not fit its config: unexpected {unexpected[:5]}, "
                                  f"missing {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return model.to(device), cfg["model_cfg"]["text_cfg"]
