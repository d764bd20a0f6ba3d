"""Normalising product text for matching: word tokens, model numbers, brands and prices.

Listings of one product differ in case, punctuation and the way model numbers are written ("KE-8301",
"ke8301", "KE 8301"), so every comparison works on normalised forms: lower-cased word tokens, model numbers
compacted to their letters and digits, brands lower-cased without punctuation.
"""

from __future__ import annotations

import math
import re
import unicodedata

__all__ = ["as_text", "brand_key", "char_ngrams", "code_spans", "colours", "colours_disagree", "genders",
           "genders_disagree", "lead_word", "lone_number_spans", "model_numbers", "names_product", "numbers",
           "parse_price", "part_number_key", "plain_letters", "title_key", "tokens", "with_part_number"]

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


# Colour words, each read as its family, so that two ways of writing one colour ("navy" / "blue", "grey" / "silver")
# agree. Only words that are a colour wherever they stand in a product title: "gold" and "silver" stay (a watch's
# colour), but "coffee", "wine", "olive", "charcoal", "rose", "cream", "ivory", "tan", "copper" or "bronze" name
# other things in titles too, and are left out.
COLOUR_FAMILIES: dict[str, str] = {
    "black": "black", "white": "white",
    "grey": "grey", "gray": "grey", "silver": "grey",
    "red": "red", "maroon": "red", "burgundy": "red",
    "blue": "blue", "navy": "blue", "teal": "blue", "turquoise": "blue",
    "green": "green",
    "pink": "pink", "magenta": "pink", "fuchsia": "pink",
    "gold": "gold", "golden": "gold",
    "brown": "brown", "beige": "brown", "khaki": "brown",
    "purple": "purple", "violet": "purple", "lavender": "purple", "mauve": "purple", "lilac": "purple",
    "yellow": "yellow", "mustard": "yellow",
    "orange": "orange",
}
# A title that says it has many colours names none in particular.
MULTICOLOUR_WORDS = frozenset({"multi", "multicolor", "multicolour", "multicolored", "multicoloured", "assorted"})
# Who a product is for, from the words sellers write; the singulars "man", "boy", "girl" are left out, since they
# are in product names ("Pac-Man", "Game Boy").
GENDER_WORDS: dict[str, str] = {
    "men": "men", "mens": "men", "male": "men",
    "women": "women", "womens": "women", "female": "women", "ladies": "women",
    "boys": "boys", "girls": "girls", "kids": "kids", "unisex": "unisex",
}
# Pairs of different words that one product can carry: a unisex product is for men and for women, a kids' one for
# boys and for girls.
_GENDERS_THAT_AGREE = frozenset({("unisex", "men"), ("unisex", "women"), ("kids", "boys"), ("kids", "girls")})
# Words a title holds where it names no product: what a feed writes in an empty field, or a bare "NEW".
PLACEHOLDER_WORDS = frozenset({"na", "nan", "none", "null", "nil", "untitled", "unknown", "tbd", "tba", "title",
                               "notitle", "product", "item", "new", "test", "sample", "default"})
_LETTER_WORD = re.compile(r"[^\W\d_]+")


def _letter_words(text: str | None) -> list[str]:
    """The runs of letters of the lower-cased text, an apostrophe dropped ("Men's" -> "mens")."""
    return _LETTER_WORD.findall(_fold(text).replace("'", "").replace("\u2019", ""))


def colours(text: str | None) -> frozenset[str]:
    """The colour families a title names (:data:`COLOUR_FAMILIES`); none where it says it has many colours."""
    words = _letter_words(text)
    if MULTICOLOUR_WORDS.intersection(words):
        return frozenset()
    return frozenset(COLOUR_FAMILIES[w] for w in words if w in COLOUR_FAMILIES)


def colours_disagree(a: frozenset[str], b: frozenset[str]) -> bool:
    """Two titles that both name colours, none of them in common: two colour variants, two products."""
    return bool(a) and bool(b) and not (a & b)


def genders(text: str | None) -> frozenset[str]:
    """Who a title says the product is for (:data:`GENDER_WORDS`)."""
    return frozenset(GENDER_WORDS[w] for w in _letter_words(text) if w in GENDER_WORDS)


def genders_disagree(a: frozenset[str], b: frozenset[str]) -> bool:
    """Two titles that both say who the product is for, with no word in common and no pair that one product can
    carry (unisex with men or women, kids with boys or girls): a men's and a women's version, two products."""
    if not a or not b or a & b:
        return False
    return not any((x, y) in _GENDERS_THAT_AGREE or (y, x) in _GENDERS_THAT_AGREE for x in a for y in b)


# A title's first word: up to the first space (the ASCII spaces, as Spark's regular expressions read \s)
_FIRST = re.compile(r"[ \t\n\x0b\f\r]*([^ \t\n\x0b\f\r]+)")
_NOT_LETTER_DIGIT = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")


def lead_word(title: object) -> str:
    """The first word of a title (up to the first space), lower-cased, its letters and digits only, accents off
    ("Q&Q" -> "qq", "U.S." -> "us", "Pokémon" -> "pokemon"; "" where that is shorter than two characters or all
    digits). Sellers start a title with the brand ("Puma Men Black T-shirt", "Sony Cyber-shot DSC-W800"), so a
    word that starts many of a catalog's titles is mostly one."""
    m = _FIRST.match(plain_letters(_fold(as_text(title))))
    w = _NOT_LETTER_DIGIT.sub("", m.group(1)) if m else ""
    return "" if len(w) < 2 or _DIGITS.fullmatch(w) else w


def plain_letters(text: str) -> str:
    """``text`` with its accents off ("Pokémon" -> "Pokemon"): the letters decomposed, their combining marks
    dropped."""
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def title_key(title: object) -> str:
    """A title as listings that write it alike share it: its lower-cased letters and digits ("Nike Men Black
    T-Shirt" and "nike men black tshirt" are one key; "" for an empty or missing title)."""
    return _letters_digits(_fold(as_text(title)))


def names_product(title: str | None, brand: str | None = None) -> bool:
    """Whether a title says anything beyond its brand: a word (letters and digits) that is not part of the brand
    (:func:`brand_key`) and not a placeholder (:data:`PLACEHOLDER_WORDS`). An empty title, "N/A", or a title cut to
    the brand ("Samsung" of brand Samsung) names no product: two such listings are not one product for saying the
    same nothing."""
    key = brand_key(brand)
    for word in tokens(title):
        compact = _letters_digits(word)
        if compact and compact not in PLACEHOLDER_WORDS and not (key and compact in key):
            return True
    return False


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
