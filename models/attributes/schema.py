"""Which attributes each seller category is asked: learnt from train data, or a user's JSON file.

``{"categories": {category: {attribute: question text}}}``; the ``*`` entry is the fallback for a category the
schema does not know. Both extractors store one (the tagger keeps only its category's attributes, the
attribute-conditioned extractor asks them). No torch here.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.attributes.data import Product

__all__ = ["GENERIC", "AttributeSchema", "query_text"]

GENERIC = "*"      # the schema's fallback entry: attributes asked of a product whose category it does not know


def query_text(attribute: str, description: str | None, examples: Sequence[str]) -> str:
    """The text an attribute is asked with: its name, what it means, a few values it takes."""
    text = attribute
    if description:
        text += f": {description.strip()}"
    if examples:
        text += "; e.g. " + ", ".join(examples)
    return text


@dataclass
class AttributeSchema:
    """Per category, the attributes to ask and the query text of each; ``*`` is the fallback for unknown ones."""
    categories: dict[str, dict[str, str]]      # category -> attribute -> query text

    def attributes_for(self, category: str | None) -> dict[str, str]:
        if category is not None and category in self.categories:
            return self.categories[category]
        low = {c.casefold(): c for c in self.categories}
        if category is not None and category.strip().casefold() in low:
            return self.categories[low[category.strip().casefold()]]
        return self.categories.get(GENERIC, {})

    def to_json(self) -> dict[str, Any]:
        return {"categories": self.categories}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttributeSchema:
        cats = data.get("categories")
        if not isinstance(cats, dict) or not all(isinstance(v, dict) for v in cats.values()):
            raise ValueError("an attribute schema is {\"categories\": {category: {attribute: query text}}}")
        return cls({str(c): {str(a): str(q) for a, q in attrs.items()} for c, attrs in cats.items()})

    @classmethod
    def load(cls, path: str | Path) -> AttributeSchema:
        """A user's schema file. Query text may be left empty (``""``): the attribute's name is asked."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"attribute schema {path}: {e}") from e
        schema = cls.from_json(data)
        for attrs in schema.categories.values():
            for a, q in list(attrs.items()):
                attrs[a] = q or a
        return schema

    @classmethod
    def learn(cls, products: Iterable[Product], descriptions: Mapping[tuple[str, str], str] | None = None,
              n_examples: int = 3, generic_min_categories: int = 3) -> AttributeSchema:
        """Every attribute annotated (with a value or n/a) on a product of the category, with its most frequent
        values as examples; ``*``: the attributes that at least ``generic_min_categories`` categories have."""
        values: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for p in products:
            for a, vals in p.gold.items():
                values[(p.category, a)].update(v for v in vals)
        cats: dict[str, dict[str, str]] = defaultdict(dict)
        desc = descriptions or {}
        for (c, a), counts in sorted(values.items()):
            examples = [v for v, _ in counts.most_common(n_examples)]
            cats[c][a] = query_text(a, desc.get((c, a)), examples)
        spread = Counter(a for attrs in cats.values() for a in attrs)
        generic = {a: query_text(a, None, []) for a, n in spread.items() if n >= generic_min_categories}
        if generic:
            cats[GENERIC] = dict(sorted(generic.items()))
        return cls(dict(cats))
