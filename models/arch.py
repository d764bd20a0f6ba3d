"""Build an open_clip model from an architecture given as data (a ``model_cfg`` dict).

Used by the model store (load a trained version) and by training (create a candidate). The MiniLM placeholder
in ``text_cfg`` is replaced by the folder inside its PyPI package, so configs stay portable between machines.
"""

from __future__ import annotations

import copy
from typing import Any

from models.refs import MINILM_PLACEHOLDER, RANDOM_SEED, text_tower_path

__all__ = ["build_clip", "resolve_text_cfg"]


def resolve_text_cfg(text_cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(text_cfg)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if cfg.get(key) == MINILM_PLACEHOLDER:
            cfg[key] = text_tower_path()
    cfg.setdefault("hf_model_pretrained", True)
    return cfg


def build_clip(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | None = None, device: str = "cpu",
               seed: int = RANDOM_SEED) -> Any:
    """A ``CustomTextCLIP`` for ``model_cfg``: seeded random image tower, pretrained HF text tower (unless the
    config says ``hf_model_pretrained: false``), preprocessing config set on ``model.visual``."""
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = copy.deepcopy(model_cfg)
    cfg["text_cfg"] = resolve_text_cfg(cfg["text_cfg"])
    cfg.pop("custom_text", None)
    # Seeded so that every Spark worker and every test builds the same untrained weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CustomTextCLIP(**cfg)
    pp = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg or {})
    pp["size"] = model.visual.image_size
    open_clip.set_model_preprocess_cfg(model, pp)
    return model.to(device)
