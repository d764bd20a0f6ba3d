"""One attribute vocabulary for the open extractor and the closed heads.

``product_attributes`` names an attribute one way whichever model found it: lower case, single spaces
(``Pack Quantity`` -> ``pack quantity``, as a case-insensitive reader would compare it), and the synonyms below
folded into one name (the closed heads' ``colour`` and the gold sets' ``Color`` / ``Color(s)`` are one
``colour``). The ``method`` column says which model a row came from. The extractors keep the gold sets' names
inside (their evaluation scores against them); the names are folded where rows are written.
"""

from __future__ import annotations

import re

__all__ = ["SYNONYMS", "canonical_name"]

SYNONYMS: dict[str, str] = {
    "color": "colour", "colors": "colour", "color(s)": "colour", "colour(s)": "colour", "colours": "colour",
    "brand name": "brand", "sex": "gender",
}


def canonical_name(attribute: str) -> str:
    """The table's name of an attribute (see the module doc); blank stays blank."""
    name = re.sub(r"\s+", " ", attribute.strip().casefold())
    return SYNONYMS.get(name, name)
