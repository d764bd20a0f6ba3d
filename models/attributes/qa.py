"""An extractor conditioned on the attribute: given a product and one attribute, its value or nothing.

The question-answering formulation of AVEQA / MAVEQA, made cheap enough for a nightly CPU job:

* the product's text (``[CLS] title [SEP] description [SEP]``) goes through MiniLM's embeddings and its frozen
  lower layers once, whatever the number of attributes asked;
* each attribute's *query* (``name: description; e.g. example values``, per category) goes through the same frozen
  layers once per model load (cached);
* the upper layers, fine-tuned, run over ``[query ; product]`` for every attribute asked, so every product word
  is read knowing which attribute is wanted, and a 3-way O/B/I classifier tags the product words.

Which attributes a product is asked for comes from its category's schema (:class:`AttributeSchema`, learnt from
the train data: every attribute annotated on a product of the category), overridable by a user's JSON file.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.attributes.base import SOURCES, EncodedRow, Extraction, clean_value, encode_row
from models.attributes.schema import GENERIC, AttributeSchema, query_text
from models.attributes.spans import B, I, O, Unit

__all__ = [
    "GENERIC", "MODEL_KIND", "AttributeSchema", "QAExtractor", "QueryTop", "decode_best", "encode_query", "load_qa",
    "query_text",
]

log = logging.getLogger(__name__)

MODEL_KIND = "attribute-qa-tagger"
QUERY_MAX_LENGTH = 48


def encode_query(tokenizer: Any, text: str, max_length: int = QUERY_MAX_LENGTH) -> list[int]:
    return list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])


def decode_best(probs: np.ndarray, units: Sequence[Unit], floor: float) -> tuple[int, int, int, float] | None:
    """The best span of one (product, attribute) tagging ``[tokens, 3]``: ``(segment, start, end, confidence)``.

    A span starts at the unit with the highest B probability (when it is at least ``floor``) and runs over the
    following units of its segment whose I probability beats O; its confidence is its start's B probability.
    """
    if not units:
        return None
    p = probs[[u.token for u in units]]                    # [units, 3]
    first = int(p[:, B].argmax())
    conf = float(p[first, B])
    if conf < floor:
        return None
    seg = units[first].segment
    last = first
    while last + 1 < len(units) and units[last + 1].segment == seg and p[last + 1, I] > p[last + 1, O] \
            and p[last + 1, I] >= p[last + 1, B]:
        last += 1
    return seg, units[first].start, units[last].end, conf


class QueryTop:
    """Factory of the trained part (kept as a function of torch so that importing this module needs no torch)."""

    @staticmethod
    def build(layers: list[Any], hidden: int, dropout: float = 0.1) -> Any:
        from torch import nn

        from models.attributes.tagger import _layer_out, attention_bias

        class _QueryTop(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layers = nn.ModuleList(layers)
                self.dropout = nn.Dropout(dropout)
                self.classifier = nn.Linear(hidden, 3)

            def forward(self, query: Any, query_mask: Any, product: Any, product_mask: Any) -> Any:
                """``[b, m, h]`` query and ``[b, n, h]`` product states -> O/B/I logits ``[b, n, 3]``."""
                import torch

                h = torch.cat([query, product], 1)
                bias = attention_bias(torch.cat([query_mask, product_mask], 1), h.dtype)
                for layer in self.layers:
                    h = _layer_out(layer(h, attention_mask=bias))
                return self.classifier(self.dropout(h[:, query.shape[1]:]))

        return _QueryTop()


def build_model(bert: Any, bottom_layers: int) -> tuple[Any, Any]:
    """The frozen shared bottom and a query top initialised from the tower's upper layers (copies)."""
    import copy

    from models.attributes.tagger import BottomEncoder

    bottom = BottomEncoder(bert, bottom_layers).eval()
    for p in bottom.parameters():
        p.requires_grad_(False)
    top = QueryTop.build([copy.deepcopy(layer) for layer in bert.encoder.layer[bottom_layers:]],
                         bert.config.hidden_size)
    return bottom, top


def bottom_states(bottom: Any, id_lists: Sequence[Sequence[int]], type_lists: Sequence[Sequence[int]] | None = None,
                  batch_size: int = 64) -> list[Any]:
    """The frozen bottom's output (``[tokens, hidden]``) per token sequence, batched by length."""
    import torch

    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
    out: list[Any] = [None] * len(id_lists)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            n = max(len(id_lists[i]) for i in idx)
            ids = torch.zeros((len(idx), n), dtype=torch.long)
            types = torch.zeros((len(idx), n), dtype=torch.long)
            mask = torch.zeros((len(idx), n), dtype=torch.long)
            for j, i in enumerate(idx):
                k = len(id_lists[i])
                ids[j, :k] = torch.tensor(id_lists[i])
                if type_lists is not None:
                    types[j, :k] = torch.tensor(type_lists[i])
                mask[j, :k] = 1
            h = bottom(ids, types, mask)
            for j, i in enumerate(idx):
                out[i] = h[j, :len(id_lists[i])].clone()
    return out


def stack(states: Sequence[Any]) -> tuple[Any, Any]:
    """Pad ``[tokens, hidden]`` tensors into ``[b, n, hidden]`` and their 0/1 mask."""
    import torch

    n = max(s.shape[0] for s in states)
    h = torch.zeros((len(states), n, states[0].shape[1]), dtype=states[0].dtype)
    mask = torch.zeros((len(states), n), dtype=torch.long)
    for j, s in enumerate(states):
        h[j, :s.shape[0]] = s
        mask[j, :s.shape[0]] = 1
    return h, mask


class QAExtractor:
    """A loaded attribute-conditioned extractor. ``extract`` is deterministic and runs under inference mode."""

    def __init__(self, tokenizer: Any, bottom: Any, top: Any, schema: AttributeSchema, *, version: str,
                 max_length: int, floor: float, device: str = "cpu"):
        self.tokenizer = tokenizer
        self.bottom = bottom.eval()
        self.top = top.eval()
        self.schema = schema
        self.version = version
        self.max_length = max_length
        self.floor = floor
        self.device = device
        self.normaliser: Any = None          # models.attributes.normalise.Normaliser, or None
        self.precision = "fp32"              # or "bf16" (models.precision)
        self._queries: dict[str, Any] = {}

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(sorted({a for attrs in self.schema.categories.values() for a in attrs}))

    def _query_states(self, texts: Iterable[str]) -> None:
        todo = sorted({t for t in texts if t not in self._queries})
        if not todo:
            return
        ids = [encode_query(self.tokenizer, t) for t in todo]
        for t, h in zip(todo, bottom_states(self.bottom, ids), strict=True):
            self._queries[t] = h.to(self.device)

    def tag_probs(self, product_states: Sequence[Any], query_texts: Sequence[str]) -> list[np.ndarray]:
        """O/B/I probabilities ``[tokens, 3]`` of each (product state, query) pair, one padded pass."""
        import torch

        from models.precision import autocast

        self._query_states(query_texts)
        q, qm = stack([self._queries[t] for t in query_texts])
        p, pm = stack(product_states)
        with torch.inference_mode(), autocast(self.precision, self.device):
            probs = self.top(q.to(self.device), qm.to(self.device), p.to(self.device), pm.to(self.device))
            probs = probs.float().softmax(-1).cpu().numpy()
        return [probs[i, :product_states[i].shape[0]] for i in range(len(product_states))]

    def extract(self, titles: Sequence[str | None], descriptions: Sequence[str | None] | None = None,
                categories: Sequence[str | None] | None = None, *, batch_size: int = 64,
                floor: float | None = None, **_ignored: Any) -> list[list[Extraction]]:
        """Per product one value per attribute of its category's schema that the text holds, most confident first.

        A missing or blank title gives nothing; a category the schema does not know is asked the generic
        attributes. Pairs are batched by product length (little padding).
        """
        n = len(titles)
        descriptions = list(descriptions) if descriptions is not None else [None] * n
        categories = list(categories) if categories is not None else [None] * n
        if not len(descriptions) == len(categories) == n:
            raise ValueError(f"titles, descriptions and categories differ in length: {n}, {len(descriptions)}, "
                             f"{len(categories)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        threshold = self.floor if floor is None else floor
        texts = [(t if isinstance(t, str) and t.strip() else None,
                  d if isinstance(d, str) and d.strip() else None) for t, d in zip(titles, descriptions, strict=True)]
        todo = [i for i, (t, _) in enumerate(texts) if t is not None]
        rows: dict[int, EncodedRow] = {i: encode_row(self.tokenizer, texts[i][0] or "", texts[i][1], self.max_length)
                                       for i in todo}
        out: list[list[Extraction]] = [[] for _ in range(n)]
        if not todo:
            return out
        states = bottom_states(self.bottom, [rows[i].input_ids for i in todo],
                               [rows[i].token_type_ids for i in todo])
        state_of = dict(zip(todo, states, strict=True))
        pairs = [(i, a, q) for i in todo for a, q in self.schema.attributes_for(categories[i]).items()]
        pairs.sort(key=lambda x: (len(rows[x[0]].input_ids), x[0]))
        found: dict[int, list[Extraction]] = defaultdict(list)
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s:s + batch_size]
            probs = self.tag_probs([state_of[i] for i, _, _ in chunk], [q for _, _, q in chunk])
            for (i, a, _), pr in zip(chunk, probs, strict=True):
                best = decode_best(pr, rows[i].units, threshold)
                if best is None:
                    continue
                seg, start, end, conf = best
                value = clean_value((texts[i][seg] or "")[start:end])
                if value:
                    found[i].append(Extraction(a, value, round(conf, 6), SOURCES[seg]))
        for i, ex in found.items():
            out[i] = sorted(ex, key=lambda e: (-e.confidence, e.attribute, e.value))
        return out


def load_qa(vdir: Path, manifest: dict[str, Any], model_cfg: dict[str, Any], pre: dict[str, Any], tower: str,
            device: str | None = None) -> QAExtractor:
    """Build a store version of the attribute-conditioned extractor that ``load_extractor`` verified."""
    from models import store as model_store
    from models.attributes.base import load_top, quiet_transformers, stored_extras
    from models.attributes.tagger import load_tower
    from models.encoders import pick_device

    quiet_transformers()
    tokenizer, bert = load_tower(tower)
    bottom, top = build_model(bert, int(model_cfg["bottom_layers"]))
    load_top(vdir, top)
    dev = pick_device(device)
    version = f"store:{manifest['version']}"
    schema, normaliser = stored_extras(model_cfg)
    if schema is None:
        raise model_store.ModelIntegrityError(f"{vdir}: an attribute-conditioned extractor's config has no schema")
    ex = QAExtractor(tokenizer, bottom.to(dev), top.to(dev), schema, version=version,
                     max_length=int(pre["max_length"]), floor=float(pre["floor"]), device=dev)
    ex.normaliser = normaliser
    log.info("loaded attribute extractor %s (%d categories, %d attributes) on %s", version,
             len(schema.categories), len(ex.attributes), dev)
    return ex
