"""Normalising product text for matching: word tokens, model numbers, brands and prices.

Listings of one product differ in case, punctuation and the way model numbers are written ("KE-8301",
"ke8301", "KE 8301"), so every comparison works on normalised forms: lower-cased word tokens, model numbers
compacted to their letters and digits, brands lower-cased without punctuation.
"""

from __future__ import annotations

import math
import re
import unicodedata

__all__ = ["as_text", "brand_key", "char_ngrams", "code_spans", "lone_number_spans", "model_numbers", "numbers",
           "parse_price", "part_number_key", "tokens", "with_part_number"]

# Word tokens: runs of letters/digits (any script), keeping inner hyphens, dots and slashes that join
# the parts of a model number ("ph3100u-1e3s", "t048.417.27").
_TOKEN = re.compile(r"[^\W_]+(?:[-./][^\W_]+)*")
_JOINERS = re.compile(r"[-./]")
_HAS_DIGIT = re.compile(r"\d")
_HAS_ALPHA = re.compile(r"[^\W\d_]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_NON_ALNUM = re.compile(r"[^\w]|_")
# Where a title writes a model code (a token of letters, digits and hyphens mixing both) or a number standing alone
# (not part of a code, a decimal or a hyphenated token), as written: for copies that change one in place.
_CODE_SPAN = re.compile(r"\b(?=[\w-]*[^\W\d_])(?=[\w-]*\d)[\w-]{3,}\b")
_LONE_NUMBER = re.compile(r"(?<![\w.-])\d+(?![\w.-])")


def _fold(text: str | None) -> str:
    if not text:
        return ""
    return unicodedata.normalize("NFKC", str(text)).lower()


def _letters_digits(text: str) -> str:
    """The lower-cased letters and digits of ``text``: case, spacing and punctuation set aside."""
    return _NON_ALNUM.sub("", text.lower())


def as_text(value: object) -> str:
    """A field's value as text: ``""`` for a missing one (None, or the NaN that pandas gives for it)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


# A part number names one product when it is this long (letters and digits) and holds a digit: "40320" or
# "ea91bp4", not "n/a", "black" or "1".
PART_NUMBER_MIN_LENGTH = 5


def part_number_key(mpn: object) -> str:
    """The seller's part number as two listings of one product share it: lower-cased letters and digits ("KD-55X80K"
    and "kd55x80k" are one key); ``""`` when it cannot name a product (shorter than
    :data:`PART_NUMBER_MIN_LENGTH`, without a digit, or one character repeated)."""
    key = _letters_digits(_fold(as_text(mpn)))
    if len(key) < PART_NUMBER_MIN_LENGTH or not any(ch.isdigit() for ch in key) or len(set(key)) < 2:
        return ""   # too short, no digit, or a filler such as "00000"
    return key


def with_part_number(title: str | None, mpn: object) -> str | None:
    """``title`` with the seller's part number ``mpn`` written after it when the title does not already hold it
    (letters and digits compared, case and punctuation aside); the rule of the enrich job's matching title
    (``jobs.stages.matching.matching_title``, on Spark columns), for the labelled pairs that carry a part number."""
    number = as_text(mpn).strip()
    key = _letters_digits(number)
    if not key or (title is not None and key in _letters_digits(str(title))):
        return title
    return number if title is None else f"{title} {number}"


def tokens(text: str | None) -> list[str]:
    """Lower-cased word tokens; model numbers stay one token."""
    return _TOKEN.findall(_fold(text))


def model_numbers(text: str | None, min_len: int = 4) -> set[str]:
    """Normalised model numbers: tokens mixing letters and digits, compacted ("KE-8301" -> "ke8301").

    A compacted token also counts when a title splits it in two ("KE 8301"): adjacent letter and digit
    tokens are joined when their concatenation mixes both.
    """
    toks = tokens(text)
    out = set()
    for i, t in enumerate(toks):
        c = _JOINERS.sub("", t)
        if len(c) >= min_len and _HAS_DIGIT.search(c) and _HAS_ALPHA.search(c):
            out.add(c)
        if i + 1 < len(toks) and 1 <= len(t) <= 3 and t.isalpha() and toks[i + 1].isdigit() and len(toks[i + 1]) >= 3:
            out.add(t + toks[i + 1])
    return out


def code_spans(text: str | None, min_digits: int = 2) -> list[re.Match[str]]:
    """The model codes of ``text`` as written (matches, in order) that hold at least ``min_digits`` digits."""
    return [m for m in _CODE_SPAN.finditer(str(text or "")) if sum(c.isdigit() for c in m[0]) >= min_digits]


def lone_number_spans(text: str | None) -> list[re.Match[str]]:
    """The numbers of ``text`` standing alone as written (matches, in order): "9" in "studio 9", not "8301" in
    "KE-8301" nor "2" in "v2.5"."""
    return list(_LONE_NUMBER.finditer(str(text or "")))


def numbers(text: str | None) -> set[str]:
    """Pure numbers of a title ("890", "2007", "4.0"): versions, sizes and capacities."""
    return {m.replace(",", ".") for m in _NUMBER.findall(_fold(text))
            if not any(c.isalpha() for c in m)}


def brand_key(brand: str | None) -> str:
    """A brand compared case- and punctuation-insensitively ("KESTREL", "Kestrel" -> "kestrel")."""
    return _letters_digits(_fold(brand))


def char_ngrams(text: str | None, n: int = 3) -> set[str]:
    """Character n-grams of the lower-cased text with spaces collapsed (robust to tokenisation)."""
    s = " ".join(tokens(text))
    if len(s) < n:
        return {s} if s else set()
    return {s[i:i + n] for i in range(len(s) - n + 1)}


def parse_price(value) -> float:
    """A price as a float, or NaN: accepts numbers and strings like "$234.95", "1,299.00", "378,00 лв"."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) and v > 0 else math.nan
    s = re.sub(r"[^\d.,]", "", str(value))
    if not s or not any(c.isdigit() for c in s):
        return math.nan
    if "," in s and "." in s:  # the later separator is the decimal one
        s = s.replace(",", "") if s.rfind(".") > s.rfind(",") else s.replace(".", "").replace(",", ".")
    elif "," in s:  # "378,00" is a decimal comma, "1,299" a thousands separator
        head, _, tail = s.rpartition(",")
        s = head.replace(",", "") + ("." if len(tail) != 3 else "") + tail
    try:
        v = float(s)
    except ValueError:
        return math.nan
    return v if math.isfinite(v) and v > 0 else math.nan
