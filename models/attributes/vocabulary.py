"""One attribute vocabulary for the open extractor and the closed heads.

``product_attributes`` names an attribute one way whichever model found it: lower case, words joined by ``_``
(``Pack Quantity`` -> ``pack_quantity``), and the synonyms below folded into one name (the closed heads' ``colour``
and the gold sets' ``Color`` / ``Color(s)`` are one ``colour``). The ``method`` column says which model a row came
from. The extractors keep the gold sets' names inside (their evaluation scores against them); the names are
folded where rows are written.
"""

from __future__ import annotations

import re

__all__ = ["SYNONYMS", "canonical_name"]

SYNONYMS: dict[str, str] = {
    "color": "colour", "colors": "colour", "color_s": "colour", "colour_s": "colour", "colours": "colour",
    "brand_name": "brand", "sex": "gender", "department": "gender",
}


def canonical_name(attribute: str) -> str:
    """The table's name of an attribute (see the module doc); blank stays blank."""
    name = re.sub(r"[^0-9a-z]+", "_", attribute.strip().casefold()).strip("_")
    return SYNONYMS.get(name, name)
