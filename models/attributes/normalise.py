"""Normalised attribute values: units, number formats, casing and names written one way.

An extracted value is kept as the text writes it ("14\"", "G7", "650766-B21") and, where its attribute has a
normalisation rule, also normalised ("35.6", "Generation 7", "650766B21"). The rules are those WDC PAVE's
attribute descriptions name (``wdc_pave_attribute_descriptions.csv``: unit conversion, unit expansion, numeric
standardisation, delete marks, name expansion, substring extraction, to uppercase, generalisation), per
(category, attribute); a user may add their own in the same JSON form.

Two sources, in order:

1. **what train data shows**: a value written one way that train data normalises one way (the most frequent
   normalisation of its case-folded text for that attribute) -- this is how the generalisations, whose target
   vocabulary is the data's ("Ultra320 SCSI" -> "SCSI Interfaces"), are learnt;
2. **the rule**, for a value train data never saw: arithmetic and regular expressions, below.

A value that neither covers is returned as written when the attribute has no rule, and as written also when the
rule cannot parse it (a width of "adjustable"), so the normalised column is never emptier than the written one.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = ["RULES", "Normaliser", "apply_rule", "parse_number"]

RULES = ("unit conversion", "unit expansion", "numeric standardization", "delete marks", "name expansion",
         "substring extraction", "to uppercase", "generalisation")

_LENGTH_TO_CM = {"in": 2.54, "inch": 2.54, "inches": 2.54, '"': 2.54, "''": 2.54, "ft": 30.48, "feet": 30.48,
                 "foot": 30.48, "'": 30.48, "cm": 1.0, "mm": 0.1, "m": 100.0}
_WEIGHT_TO_G = {"oz": 28.3495, "ounce": 28.3495, "ounces": 28.3495, "lb": 453.592, "lbs": 453.592,
                "pound": 453.592, "pounds": 453.592, "kg": 1000.0, "g": 1.0, "gram": 1.0, "grams": 1.0}
_UNIT_NAMES = {"kb": "Kilobytes", "mb": "Megabytes", "gb": "Gigabytes", "tb": "Terabytes", "k": "Kilobytes",
               "m": "Megabytes", "g": "Gigabytes", "t": "Terabytes", "w": "Watts", "v": "Volts", "mhz": "Megahertz",
               "ghz": "Gigahertz", "rpm": "RPM"}
_WORD_NUMBERS = {"single": 1, "one": 1, "dual": 2, "double": 2, "two": 2, "twin": 2, "pair": 2, "triple": 3,
                 "three": 3, "trio": 3, "quad": 4, "four": 4, "hexa": 6, "six": 6, "octa": 8, "eight": 8,
                 "dozen": 12, "each": 1, "sp": 1, "dp": 2, "qp": 4, "qc": 4, "dc": 2}


def parse_number(text: str) -> float | None:
    """The first number of ``text``: ``3``, ``3.5``, ``1,200``, ``3-7/8``, ``4 3/4``, ``3/4``; None without one."""
    # A bare fraction first ("11/16"), else a number with an optional fraction after it ("3-7/8", "4 3/4").
    m = re.search(r"(\d+)/(\d+)|(\d[\d,]*(?:\.\d+)?)(?:(?:\s+|-)(\d+)/(\d+))?", text)
    if not m:
        return None
    if m.group(1):
        return float(Fraction(int(m.group(1)), max(1, int(m.group(2)))))
    whole = m.group(3).replace(",", "")
    try:
        value = float(whole)
    except ValueError:
        return None
    if m.group(4) and int(m.group(5) or 0):
        value += int(m.group(4)) / int(m.group(5))
    return value


def _unit_after(text: str, table: Mapping[str, float]) -> float | None:
    """The factor of the first unit of ``table`` named after the number in ``text``."""
    low = text.casefold()
    for unit in sorted(table, key=len, reverse=True):
        pattern = re.escape(unit) if not unit.isalpha() else rf"{re.escape(unit)}\b"
        if re.search(rf"\d\s*-?\s*{pattern}", low) or (not unit.isalpha() and unit in low):
            return table[unit]
    return None


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if decimals else str(int(round(value)))


def _conversion(attribute: str, value: str) -> str | None:
    number = parse_number(value)
    if number is None:
        return None
    name = attribute.casefold()
    if "weight" in name and "paper" in name:            # paper weight: lb -> kg, one decimal
        factor = _unit_after(value, _WEIGHT_TO_G) or _WEIGHT_TO_G["lb"]
        return _fmt(number * factor / 1000.0, 1)
    if "weight" in name or "size" in name:              # pack sizes: -> whole grams
        grams = _unit_after(value, _WEIGHT_TO_G)
        if grams is None:
            return None                                 # "leave it as is" for other units
        return _fmt(number * grams, 0)
    factor = _unit_after(value, _LENGTH_TO_CM) or _LENGTH_TO_CM["in"]   # lengths: inches unless named
    return _fmt(number * factor, 1)


def _expansion(value: str) -> str | None:
    m = re.fullmatch(r"\s*([\d.,/]+)\s*-?\s*([A-Za-z]+)\.?\s*", value)
    if not m:
        return None
    unit = _UNIT_NAMES.get(m.group(2).casefold())
    return f"{m.group(1)} {unit}" if unit else f"{m.group(1)} {m.group(2)}"


def _numeric(value: str) -> str | None:
    low = value.casefold()
    m = re.search(r"(\d+(?:\.\d+)?)\s*k\b", low)         # rotational speeds: 7.2K -> 7200
    if m:
        return str(int(round(float(m.group(1)) * 1000)))
    number = parse_number(low)
    if number is not None:
        return _fmt(number, 0) if number == int(number) else str(number)
    for word in re.findall(r"[a-z]+", low):
        if word in _WORD_NUMBERS:
            return str(_WORD_NUMBERS[word])
    return None


def _name_expansion(value: str) -> str | None:
    out = re.sub(r"\b(?:G|Gen)\s*-?\s*(\d+)\b", r"Generation \1", value, flags=re.IGNORECASE)
    return out if out != value else None


def apply_rule(rule: str, attribute: str, value: str) -> str | None:
    """``value`` under one of :data:`RULES`; None when the rule does not apply to it."""
    rule = rule.casefold()
    if rule == "unit conversion":
        return _conversion(attribute, value)
    if rule == "unit expansion":
        return _expansion(value)
    if rule == "numeric standardization":
        return _numeric(value)
    if rule == "delete marks":
        out = re.sub(r"[^0-9A-Za-z]", "", value)
        return out or None
    if rule == "name expansion":
        return _name_expansion(value)
    if rule == "substring extraction":                  # UPC-A: the manufacturer code, digits 2-6
        digits = re.sub(r"\D", "", value)
        return digits[1:6] if len(digits) >= 11 else None
    if rule == "to uppercase":
        return value.upper()
    return None                                         # generalisation: only what data shows


def _rule_name(params: str) -> str | None:
    low = params.casefold()
    if "generali" in low:
        return "generalisation"
    for rule in RULES:
        if rule in low:
            return rule
    return None


def _grams(text: str) -> Counter[str]:
    t = f" {text.casefold()} "
    return Counter(t[i:i + 3] for i in range(len(t) - 2))


@dataclass
class Normaliser:
    """Per attribute (and per (category, attribute) where the category matters) a rule and learnt mappings."""
    rules: dict[str, str] = field(default_factory=dict)          # "category\x1fattribute" or "attribute" -> rule
    mapping: dict[str, dict[str, str]] = field(default_factory=dict)   # attribute -> casefold(written) -> normalised
    # attribute -> ((grams, squared norm, normalised) per written value, value -> answer): _nearest's cache
    _near: dict[str, tuple[tuple, dict]] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def _key(category: str | None, attribute: str) -> str:
        return f"{category}\x1f{attribute}" if category else attribute

    def rule_for(self, category: str | None, attribute: str) -> str | None:
        """The (category, attribute) rule; the attribute's own only for a category the rules do not name."""
        if category and self._key(category, attribute) in self.rules:
            return self.rules[self._key(category, attribute)]
        named = {k.split("\x1f", 1)[0] for k in self.rules if "\x1f" in k}
        return self.rules.get(attribute) if not category or category not in named else None

    def _nearest(self, attribute: str, value: str, min_similarity: float = 0.5) -> str | None:
        """A generalisation for a value train data never saw: that of the most similar written value seen
        (cosine of character 3-gram counts), when similar enough. The written values' grams and the answers are
        kept per attribute, and dropped when its mapping grows (:meth:`learn`): a catalog repeats its values, and
        recounting every written value's grams for each took a sixth of the extractor's time."""
        table = self.mapping.get(attribute)
        if not table:
            return None
        entries, answers = self._near.get(attribute, ((), {}))
        if len(entries) != len(table):
            entries = tuple((g, sum(n * n for n in g.values()), norm)
                            for g, norm in ((_grams(w), n) for w, n in table.items()))
            answers = {}
            self._near[attribute] = (entries, answers)
        key = (value, min_similarity)
        if key in answers:
            return answers[key]
        grams = _grams(value)
        own = sum(n * n for n in grams.values())
        best, best_sim = None, min_similarity
        for written, sq, norm in entries:
            dot = sum(n * written[g] for g, n in grams.items() if g in written)
            sim = dot / ((own * sq) ** 0.5) if dot else 0.0
            if sim > best_sim:
                best, best_sim = norm, sim
        if len(answers) < 100_000:
            answers[key] = best
        return best

    def normalise(self, attribute: str, value: str, category: str | None = None) -> str | None:
        """The normalised value, or None when ``attribute`` has no rule and no learnt mapping."""
        rule = self.rule_for(category, attribute)
        value = value.strip()
        learnt = self.mapping.get(attribute, {}).get(value.casefold())
        if learnt is not None:
            # Case is the text's own unless the rule sets it: "steel" stays "steel" where "Steel" was learnt.
            if learnt.casefold() == value.casefold() and rule != "to uppercase":
                return value
            return learnt
        if rule is None:
            return None
        if rule == "generalisation":
            return self._nearest(attribute, value) or value
        return apply_rule(rule, attribute, value) or value

    @classmethod
    def from_descriptions(cls, csv_path: str | Path) -> Normaliser:
        """The rules of WDC PAVE's attribute descriptions file (``;``-separated)."""
        import pandas as pd

        d = pd.read_csv(csv_path, sep=";")
        rules: dict[str, str] = {}
        per_attribute: dict[str, Counter[str]] = defaultdict(Counter)
        for c, a, params in zip(d["Category"], d["Attribute"], d["Normalization_params"], strict=True):
            rule = _rule_name(params) if isinstance(params, str) else None
            if rule:
                rules[cls._key(str(c), str(a))] = rule
                per_attribute[str(a)][rule] += 1
        for a, counts in per_attribute.items():   # an attribute whose categories agree: also without a category
            if len(counts) == 1:
                rules.setdefault(a, next(iter(counts)))
        return cls(rules, {})

    def learn(self, pairs: Iterable[tuple[str, str, str]], min_count: int = 1) -> Normaliser:
        """Add mappings from ``(attribute, written, normalised)`` train pairs: per written text its most frequent
        normalisation, kept when seen ``min_count`` times and different from what the rule alone gives."""
        counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for a, written, norm in pairs:
            counts[(a, written.strip().casefold())][norm.strip()] += 1
        for (a, written), c in counts.items():
            norm, n = c.most_common(1)[0]
            if n >= min_count:
                self.mapping.setdefault(a, {})[written] = norm
        self._near.clear()
        return self

    def to_json(self) -> dict[str, Any]:
        return {"rules": self.rules, "mapping": self.mapping}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Normaliser:
        return cls({str(k): str(v) for k, v in data.get("rules", {}).items()},
                   {str(a): {str(k): str(v) for k, v in m.items()} for a, m in data.get("mapping", {}).items()})

    @classmethod
    def load(cls, path: str | Path) -> Normaliser:
        return cls.from_json(json.loads(Path(path).read_text()))
