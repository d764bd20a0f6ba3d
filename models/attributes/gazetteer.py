"""Widen a tagged value to a known value around it: "Banana" -> "Banana Boat" when train has "Banana Boat".

The tagger's commonest mistake is the span's edge, not the attribute: on OA-Mine's valid split 218 of its 290 wrong
values overlap the gold value ("10-Packet" for "10-Packet Box", "Gore Front Moccasin" cut to "Moccasin"). Where
the product's category has a train value for that attribute that *contains* the tagged value and is written in
the product's text (whole words, any case), the tagger most likely stopped short of it: the value becomes that
occurrence, as the text writes it. Values the tagger found that train already knows are kept as they are, and
values are never shortened (shortening to a known value lost 2-5 F1 points: "Chocolate Chip Oatmeal" is a flavour
of its own).

Chosen on one half of the valid split (by a hash of the product id) among widening, shortening and both, with a
minimum train count of 1, 2 or 3: widening with any count was best there on the mean of the three gold sets; on
the other half it added 0.5 (OA-Mine), 0.7 (AE-110K) and 0.4 (WDC PAVE) F1 points to the shipped tagger.

Learnt from train values only; stored with the extractor (``model_cfg["gazetteer"]``). No torch here.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.attributes.data import Product

__all__ = ["Gazetteer"]


@dataclass
class Gazetteer:
    """category -> attribute -> {train value: how many train products have it}."""
    values: dict[str, dict[str, dict[str, int]]]
    _folded: dict[tuple[str, str], list[tuple[str, str, int]]] = field(default_factory=dict, repr=False)

    @classmethod
    def learn(cls, products: Iterable[Product]) -> Gazetteer:
        counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for p in products:
            for attribute, vals in p.gold.items():
                counts[(p.category, attribute)].update({v.strip() for v in vals if v.strip()})
        out: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        for (c, a), cnt in sorted(counts.items()):
            out[c][a] = dict(sorted(cnt.items()))
        return cls(dict(out))

    def to_json(self) -> dict[str, Any]:
        return {"values": self.values}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gazetteer:
        vals = data.get("values")
        if not isinstance(vals, dict):
            raise ValueError('a gazetteer is {"values": {category: {attribute: {value: count}}}}')
        return cls({str(c): {str(a): {str(v): int(n) for v, n in vs.items()} for a, vs in attrs.items()}
                    for c, attrs in vals.items()})

    def _known(self, category: str, attribute: str) -> list[tuple[str, str, int]]:
        key = (category, attribute)
        if key not in self._folded:
            vs = self.values.get(category, {}).get(attribute, {})
            self._folded[key] = [(v, v.casefold(), n) for v, n in vs.items()]
        return self._folded[key]

    def widen(self, category: str | None, attribute: str, value: str, texts: Sequence[str | None]
              ) -> tuple[str, int] | None:
        """``(occurrence, index of the text)`` of a longer train value of (category, attribute) that contains
        ``value`` and is written in one of ``texts`` (the most frequent in train, then the longest), or None:
        nothing to widen to, or train knows ``value`` as it is."""
        if category is None:
            return None
        known = self._known(category, attribute)
        if not known:
            return None
        needle = value.strip()
        folded = needle.casefold()
        if any(v == needle for v, _, _ in known):
            return None
        best: tuple[int, int, str, int] | None = None
        for v, vf, n in known:
            if len(vf) <= len(folded) or folded not in vf:
                continue
            if best is not None and (n, len(v)) <= best[:2]:
                continue
            pattern = re.compile(rf"(?<!\w){re.escape(v)}(?!\w)", re.IGNORECASE)
            for i, text in enumerate(texts):
                m = pattern.search(text) if text else None
                if m is not None:
                    best = (n, len(v), m.group(0), i)
                    break
        return (best[2], best[3]) if best is not None else None
