"""The cross-encoder pair scorer: both listings read together by MiniLM, one calibrated probability per pair.

The feature scorer (:mod:`models.matching.scorer`) compares two listings through numbers computed on each
alone (cosines, overlaps, model-number keys); near-identical different products ("... 40 inch" / "... 46 inch",
one model digit apart) look alike to it. Here the two serialised listings go through MiniLM as one sequence
(``[CLS] a [SEP] b [SEP]``), so attention compares their words and numbers directly (Ditto's recipe, on the
packaged MiniLM instead of RoBERTa).

The network is :mod:`models.attributes.tagger`'s split: the packaged tower's embeddings and lower
``bottom_layers`` layers, frozen and never stored, then trained copies of its upper layers and a linear head on
the ``[CLS]`` and mean-pooled states. Only the top is stored (fp16 safetensors, about 11 MB). A logistic map
``sigmoid(a * logit + b + sum of w_f * feature_f)``, fitted on a calibration slice of train, turns logits into
probabilities; the features are the exact-evidence columns of :mod:`models.matching.features` (model numbers
shared or in conflict, numbers, brand, price, overlaps), which the network reads only as word pieces: two colour
variants one model-code letter apart read alike to it. The decision threshold comes from that slice too.

A listing is serialised as ``title: ... ; brand: ... ; price: ...`` (the fields a catalog row has; numbers and
model codes as written, lower-cased by the tokenizer).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models import store as model_store
from models.matching.text import parse_price

# The pair features (models.matching.features.FEATURES) the calibration may weigh beside the logit: exact evidence
# only, no embedding cosine, so the calibration does not depend on the encoder.
STACK_FEATURES = ("token_jaccard", "token_overlap", "char3_jaccard", "length_ratio", "model_both", "model_shared",
                  "model_conflict", "number_both", "number_jaccard", "brand_known", "brand_agree", "price_known",
                  "price_similarity")

__all__ = ["DEFAULT_CROSS_STORE", "MODEL_KIND", "STACK_FEATURES", "CrossEncoder", "cross_info", "cross_version",
           "load_cross", "resolve_cross", "serialize"]

log = logging.getLogger(__name__)

MODEL_KIND = "pair-cross-encoder"
DEFAULT_CROSS_STORE = Path(__file__).resolve().parents[1] / "store" / "cross"


def _text(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return " ".join(str(v).split())


def serialize(record: Mapping[str, object]) -> str:
    """One listing as the model reads it: ``title: ... ; brand: ... ; price: 12.50`` (absent fields left out)."""
    parts = [f"title: {_text(record.get('title'))}"]
    brand = _text(record.get("brand"))
    if brand:
        parts.append(f"brand: {brand}")
    price = parse_price(record.get("price"))
    if not math.isnan(price):
        parts.append(f"price: {price:.2f}")
    return " ; ".join(parts)


def _top_class():
    import torch
    from torch import nn

    from models.attributes.tagger import _layer_out, attention_bias

    class CrossTop(nn.Module):
        """Upper transformer layers and a linear head on ``[CLS]`` beside the mean of the pair's tokens."""

        def __init__(self, layers: list[nn.Module], hidden: int, dropout: float = 0.1):
            super().__init__()
            self.layers = nn.ModuleList(layers)
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(2 * hidden, 1)

        def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            bias = attention_bias(mask, hidden.dtype)
            h = hidden
            for layer in self.layers:
                h = _layer_out(layer(h, attention_mask=bias))
            m = mask.to(h.dtype)[:, :, None]
            mean = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(self.dropout(torch.cat([h[:, 0], mean], dim=1)))[:, 0]

    return CrossTop


def split_cross(bert: Any, bottom_layers: int) -> tuple[Any, Any]:
    """The frozen bottom (shared with ``bert``) and a top initialised from copies of its upper layers."""
    import copy

    from models.attributes.tagger import BottomEncoder

    bottom = BottomEncoder(bert, bottom_layers).eval()
    for p in bottom.parameters():
        p.requires_grad_(False)
    top = _top_class()([copy.deepcopy(layer) for layer in bert.encoder.layer[bottom_layers:]],
                       bert.config.hidden_size)
    return bottom, top


class CrossEncoder:
    """A loaded cross-encoder: :meth:`score` maps pairs of serialised listings to calibrated probabilities."""

    def __init__(self, tokenizer: Any, bottom: Any, top: Any, *, max_length: int, calibration: tuple[float, float],
                 threshold: float, version: str = "unsaved", device: str = "cpu", batch_size: int = 64,
                 feature_weights: Mapping[str, float] | None = None, precision: str = "fp32"):
        self.tokenizer, self.bottom, self.top = tokenizer, bottom, top
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"cross-encoder precision must be fp32 or bf16 (resolve auto first), got {precision!r}")
        self.precision = precision
        self.max_length, self.calibration, self.threshold = int(max_length), calibration, float(threshold)
        unknown = sorted(set(feature_weights or {}) - set(STACK_FEATURES))
        if unknown:
            raise ValueError(f"cross-encoder calibration weighs unknown features {unknown}")
        self.feature_weights = dict(feature_weights or {})
        self.version, self.device, self.batch_size = version, device, int(batch_size)

    def encode(self, a: Sequence[str], b: Sequence[str]) -> dict[str, list[list[int]]]:
        return self.tokenizer(list(a), list(b), truncation="longest_first", max_length=self.max_length)

    def logits(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Raw logits of the pairs ``(a[i], b[i])``, batched by length (padding only within similar lengths)."""
        import torch

        from models.precision import autocast

        if len(a) != len(b):
            raise ValueError(f"cross-encoder: {len(a)} left and {len(b)} right listings")
        out = np.zeros(len(a), np.float32)
        if not len(a):
            return out
        enc = self.encode(a, b)
        ids, types = enc["input_ids"], enc["token_type_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        self.top.eval()
        with torch.inference_mode(), autocast(self.precision, self.device):
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                x, t, m = pad([ids[i] for i in idx], [types[i] for i in idx], self.device)
                out[idx] = self.top(self.bottom(x, t, m), m).float().cpu().numpy()
        return out

    def probability(self, logits: np.ndarray, features: Any = None) -> np.ndarray:
        """Calibrated probabilities; ``features`` (a frame with the :data:`STACK_FEATURES` columns, one row per
        logit) is needed when the calibration weighs features."""
        a, b = self.calibration
        z = a * np.asarray(logits, np.float64) + b
        if self.feature_weights:
            if features is None:
                raise ValueError(f"cross-encoder {self.version} weighs pair features: pass them with the logits")
            for name, w in self.feature_weights.items():
                z = z + w * np.asarray(features[name], np.float64)
        return 1.0 / (1.0 + np.exp(-z))

    def score(self, a: Sequence[str], b: Sequence[str], features: Any = None) -> np.ndarray:
        return self.probability(self.logits(a, b), features)

    # A pair whose listings both carry model numbers and share none is a match only at this score or above: two
    # listings one model code apart (TU-2204 / TU-9990) read alike to the network. Chosen with the clustering
    # settings on the dev parts of the whole catalogs (jobs.catalog_eval; EVALUATION.md). Brands that disagree
    # need it too (2026-12-07): the network matched a fashion catalog's listings of different brands on their
    # templated titles ("Titan Men Black Dial Watch" / "Timex Men Black Dial Watch").
    conflict_floor: float = 0.9

    def is_match(self, scores: np.ndarray, features: Any = None) -> np.ndarray:
        """Scores at or above the threshold; with ``features``, a pair whose model numbers or brands disagree
        (both known, none shared), or whose titles start with two brands (``leads_disagree``, where the brands are
        not known to agree), needs :attr:`conflict_floor`."""
        ok = np.asarray(scores) >= self.threshold
        if features is not None:
            conflict = np.asarray(features["model_conflict"], np.float64) > 0
            if "brand_known" in features:
                conflict |= ((np.asarray(features["brand_known"], np.float64) > 0)
                             & (np.asarray(features["brand_agree"], np.float64) == 0))
            if "leads_disagree" in features:
                leads = np.asarray(features["leads_disagree"], bool)
                if "brand_agree" in features:
                    leads = leads & ~(np.asarray(features["brand_agree"], np.float64) > 0)
                conflict |= leads
            ok &= ~conflict | (np.asarray(scores) >= self.conflict_floor)
        return ok


def pad(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]], device: str = "cpu") -> tuple[Any, Any, Any]:
    """Right-padded ``(input_ids, token_type_ids, attention_mask)`` tensors of one batch."""
    import torch

    n = max(len(x) for x in ids)
    x = torch.zeros((len(ids), n), dtype=torch.long)
    t = torch.zeros_like(x)
    m = torch.zeros_like(x)
    for i, (row, typ) in enumerate(zip(ids, types, strict=True)):
        x[i, :len(row)] = torch.as_tensor(row)
        t[i, :len(typ)] = torch.as_tensor(typ)
        m[i, :len(row)] = 1
    return x.to(device), t.to(device), m.to(device)


def resolve_cross(ref: str | None = "default", store: str | Path | None = None) -> Path:
    """The version folder of ``ref``: ``default``/``current``, ``store:VERSION`` or a version folder."""
    from models.refs import resolve_substore_ref

    root = model_store.store_root(store) if store is not None else DEFAULT_CROSS_STORE
    return resolve_substore_ref(ref, root, "cross-encoder", model_store.ModelIntegrityError)


def cross_version(ref: str | None = "default", store: str | Path | None = None) -> str:
    """The version id rows record, without loading torch."""
    return f"store:{resolve_cross(ref, store).name}"


def cross_info(ref: str | None = "default", store: str | Path | None = None) -> tuple[str, float]:
    """``(version id rows record, decision threshold)`` of a verified version, without loading torch."""
    vdir = resolve_cross(ref, store)
    manifest = model_store.verify_version(vdir)
    pre = json.loads((vdir / model_store.CONFIG_FILE).read_text())["preprocess_cfg"]
    return f"store:{manifest['version']}", float(pre["threshold"])


def load_cross(ref: str | None = "default", store: str | Path | None = None, device: str | None = None,
               precision: str = "fp32") -> CrossEncoder:
    """Verify (checksums, the tower it was trained on) and load a stored cross-encoder; ``precision`` is
    auto, fp32 or bf16 (:mod:`models.precision`)."""
    from safetensors.torch import load_file

    from models.attributes.base import quiet_transformers
    from models.attributes.tagger import load_tower
    from models.encoders import pick_device
    from models.precision import cast_linears, resolve_precision
    from models.refs import verified_minilm_version

    vdir = resolve_cross(ref, store)
    manifest, model_cfg, pre, tower = verified_minilm_version(vdir, (MODEL_KIND,), "a pair cross-encoder")
    quiet_transformers()
    tokenizer, bert = load_tower(tower)
    bottom, top = split_cross(bert, int(model_cfg["bottom_layers"]))
    state = {k: v.float() for k, v in load_file(str(vdir / model_store.WEIGHTS_FILE)).items()}
    if set(state) != set(top.state_dict()):
        raise model_store.ModelIntegrityError(f"{vdir / model_store.WEIGHTS_FILE} does not fit its config")
    top.load_state_dict(state)
    dev = pick_device(device)
    cal = pre["calibration"]
    model = CrossEncoder(tokenizer, bottom.to(dev), top.to(dev), max_length=int(pre["max_length"]),
                         calibration=(float(cal["a"]), float(cal["b"])), threshold=float(pre["threshold"]),
                         feature_weights={k: float(v) for k, v in cal.get("features", {}).items()},
                         version=f"store:{manifest['version']}", device=dev,
                         precision=resolve_precision(precision, dev))
    if model.precision == "bf16":   # it only ever runs under bf16 autocast from now on
        cast_linears(model.bottom, model.top)
    return model
