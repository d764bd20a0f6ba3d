"""Glue shared by the shipped-model script and ``jobs/retrain.py``: build, train, wrap and store a candidate."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.arch import build_clip, resolve_text_cfg
from models.refs import ModelRef, builtin_config_bytes
from models.training.config import TrainConfig
from models.training.data import TrainData
from models.training.trainer import Trainer, TrainResult

__all__ = ["candidate_config", "in_memory_encoder", "load_tokenizer", "save_candidate", "stored_preprocess",
           "stored_state",
           "train_candidate"]

log = logging.getLogger(__name__)


def candidate_config(base: str = "catalog-tiny-minilm", text_proj: str | None = "mlp") -> dict[str, Any]:
    """The architecture of a candidate: a builtin config, with a trainable text projection.

    With the MiniLM locked, a projection is the only text-side part that learns; ``mlp`` lets the text
    embedding move towards what the images show (type, colour) rather than stay MiniLM's sentence space.
    """
    cfg = json.loads(builtin_config_bytes(base) or b"null")  # zip-safe (spark-submit --py-files)
    if cfg is None:
        raise ValueError(f"no builtin architecture {base!r} in models/configs")
    cfg["text_cfg"]["hf_proj_type"] = text_proj
    return cfg


def load_tokenizer(text_cfg: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_cfg(text_cfg)["hf_tokenizer_name"])


def stored_state(vdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture, trained weights) of a store version, verified first (checksums, no pickles): what a
    candidate continues from."""
    from safetensors.torch import load_file

    from models.store import CONFIG_FILE, WEIGHTS_FILE, verify_version

    verify_version(vdir)
    return json.loads((vdir / CONFIG_FILE).read_text())["model_cfg"], load_file(str(vdir / WEIGHTS_FILE))


def train_candidate(model_cfg: dict[str, Any], data: TrainData, cfg: TrainConfig, seed: int = 0,
                    feature_cache: Path | None = None, init_state: dict[str, Any] | None = None,
                    ) -> tuple[Any, TrainResult]:
    """Build and train a candidate. ``feature_cache``: an ``.npy`` file for the locked text tower's features
    (the MiniLM pass over every title costs minutes on a CPU; they only depend on the titles).
    ``init_state``: trained weights to continue from (a stored version's), instead of a fresh image tower."""
    model = build_clip(model_cfg, seed=seed)
    proj = getattr(model.text, "proj", None)
    if model_cfg["text_cfg"].get("hf_proj_type") == "linear" and proj.weight.shape[0] == proj.weight.shape[1]:
        import torch

        # A square linear projection starts as the identity: the candidate starts in the locked tower's own
        # space (the baseline's), so training can only add to what MiniLM already separates.
        with torch.no_grad():
            proj.weight.copy_(torch.eye(proj.weight.shape[0]))
    if init_state is not None:
        own = model.state_dict()
        # Continuing from a version with another text projection: keep its image tower, not its projection.
        init_state = {k: v for k, v in init_state.items()
                      if not k.startswith("text.proj.") or (k in own and own[k].shape == v.shape)}
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        # Text-tower tensors that came from the stored version differ from the package's: store them again.
        model.stored_text_keys = frozenset(k for k in init_state if k.startswith("text.transformer."))
        if unexpected or any(not k.startswith(("text.transformer.", "text.proj.")) for k in missing):
            raise ValueError(f"init weights do not fit the candidate: unexpected {unexpected[:5]}, "
                             f"missing {[k for k in missing if not k.startswith('text.transformer.')][:5]}")
    tokenizer = load_tokenizer(model_cfg["text_cfg"])
    trainer = Trainer(model, tokenizer, cfg)
    features = None
    if cfg.lock_text and feature_cache is not None:
        import torch

        from models.training.trainer import text_features, tokenize_all

        if feature_cache.is_file():
            features = torch.from_numpy(np.load(feature_cache))
        else:
            ids = tokenize_all(tokenizer, data.titles, trainer.context_length)
            features = text_features(model.text, ids)
            feature_cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(feature_cache, features.numpy())
    result = trainer.fit(data, features)
    return model, result


def in_memory_encoder(model: Any, model_cfg: dict[str, Any], name: str = "candidate") -> Any:
    """An :class:`models.encoders.Encoder` around a model that is not (yet) in a store, for evaluation."""
    from models.encoders import Encoder, _hf_tokenizer

    text_cfg = resolve_text_cfg(model_cfg["text_cfg"])
    ctx = int(text_cfg.get("context_length", 64))
    model.eval()
    return Encoder(model, _hf_tokenizer(text_cfg["hf_tokenizer_name"], ctx),
                   ModelRef("local", name, version=f"unsaved:{name}"), "cpu", ctx)


def stored_preprocess(model: Any) -> dict[str, Any]:
    """The model's preprocessing config as the store writes it (JSON: tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.visual.preprocess_cfg.items()}


def save_candidate(root: Path, name: str, model: Any, model_cfg: dict[str, Any], train_cfg: TrainConfig,
                   result: TrainResult, metrics: dict[str, Any], training_data: str, card: str,
                   image_bf16: dict[str, Any] | None = None) -> str:
    """Save a trained candidate; ``image_bf16``: the measurement of its image tower in bf16
    (:func:`models.encoders.measure_image_bf16`), which lets it run so on a CPU where it holds."""
    from models.encoders import IMAGE_BF16_KEY
    from models.store import save_version, trained_state_dict

    pp = stored_preprocess(model)
    extra = {
        "base_architecture": "catalog-tiny-minilm",
        "languages": ["en"],
        "train_config": dataclasses.asdict(train_cfg),
        "training": {"steps": result.steps, "samples": result.samples, "seconds": round(result.seconds, 1),
                     "samples_per_s": round(result.samples_per_s, 1)},
        **({IMAGE_BF16_KEY: image_bf16} if image_bf16 else {}),
    }
    return save_version(root, name, model_cfg, pp, trained_state_dict(model), training_data=training_data,
                        metrics=metrics, extra=extra, card=card)


def same_embeddings(a: Any, b: Any, data: TrainData, n: int = 16) -> bool:
    """True when two encoders embed the first ``n`` items identically (store round-trip check)."""
    from models.training.evaluate import embed_data

    sub = data.subset(np.arange(min(n, len(data))))
    ia, ta = embed_data(a, sub)
    ib, tb = embed_data(b, sub)
    return bool(np.allclose(ia, ib, atol=1e-5) and np.allclose(ta, tb, atol=1e-5))
