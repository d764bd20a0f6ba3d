"""The dictionary baseline: the values seen in train for a category's attribute, looked up in the text.

For each (category, attribute) the train split's values are tried longest first; the first one found in the
title, else in the description (case-insensitively, not inside a longer word) is the prediction, written as it
appears in the text. This is ExtractGPT's attribute-value lookup baseline, with the longest match first instead
of the order of the training file, and word boundaries so that a size "M" does not match every "m".
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

from models.attributes.data import Product

__all__ = ["DictionaryBaseline"]


class DictionaryBaseline:
    def __init__(self, products: Iterable[Product]):
        values: dict[tuple[str, str], set[str]] = defaultdict(set)
        for p in products:
            for attribute, vals in p.gold.items():
                values[(p.category, attribute)].update(v.strip() for v in vals if v.strip())
        # Longest first, then alphabetical: deterministic when two values have the same length.
        self._patterns: dict[tuple[str, str], list[re.Pattern[str]]] = {
            key: [re.compile(rf"(?<!\w){re.escape(v)}(?!\w)", re.IGNORECASE)
                  for v in sorted(vs, key=lambda v: (-len(v), v.lower(), v))]
            for key, vs in values.items()}

    def predict(self, product: Product, attributes: Iterable[str] | None = None) -> dict[str, str | None]:
        """attribute -> value found in the text, or None; by default the product's gold attributes."""
        out: dict[str, str | None] = {}
        for attribute in attributes if attributes is not None else product.gold:
            out[attribute] = None
            for pattern in self._patterns.get((product.category, attribute), ()):
                m = next((m for text in (product.title, product.description or "") if (m := pattern.search(text))),
                         None)
                if m is not None:
                    out[attribute] = m.group(0)
                    break
        return out
