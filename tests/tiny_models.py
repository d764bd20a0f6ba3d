"""Tiny random-weight CLIP configs for fast tests (nothing downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.refs import text_tower_path


def tiny_model_cfg(tmp: Path) -> dict[str, Any]:
    """A 16-px one-layer ViT and a two-layer random BERT (MiniLM's tokenizer and vocabulary)."""
    from transformers import BertConfig

    bert = tmp / "tiny-bert"
    if not (bert / "config.json").is_file():
        BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64).save_pretrained(bert)
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "mlp_ratio": 2.0,
                       "patch_size": 8},
        "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": text_tower_path(),
                     "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear", "hf_model_pretrained": False,
                     "context_length": 16},
    }
