"""Features of a pair of product listings, computed the same way for training and in the Spark job.

A record is a mapping with ``title`` and optionally ``brand``, ``price`` and ``currency``. The embedding
cosines come from the caller (the title embeddings of the shipped encoder, and image/fused ones when both
products have an image). :func:`pair_features` returns the scorer's numeric inputs (:data:`FEATURES`, no
NaN: every optional signal has a ``*_known`` indicator) plus evidence columns for analysts, among them
``same_listing``: the two listings say the same in everything the matcher reads (:func:`same_listing_floor`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.matching.text import (
    as_text,
    brand_key,
    char_ngrams,
    colours,
    colours_disagree,
    genders,
    genders_disagree,
    model_numbers,
    names_product,
    numbers,
    parse_price,
    part_number_key,
    tokens,
)

if TYPE_CHECKING:
    from models.matching.spelling import PairReading

__all__ = ["DIFFERENT_PRODUCTS_RULE", "FEATURES", "SAME_LISTING_RULE", "SAME_LISTING_SCORE", "SAME_PART_NUMBER_RULE",
           "Prepared", "mark_catalog_reading", "mark_shared_titles", "match_decisions", "pair_features", "prepare",
           "prepare_key", "record_key", "same_listing_floor"]

# The scorer's inputs, in order. Image and fused cosines are evidence only: no labelled pair here has
# images, so a scorer could not learn what they are worth.
FEATURES = (
    "text_cosine", "token_jaccard", "token_overlap", "char3_jaccard", "length_ratio",
    "model_both", "model_shared", "model_conflict", "number_both", "number_jaccard",
    "brand_known", "brand_agree", "price_known", "price_similarity",
)


# Two listings whose title words are the same (case, spacing and punctuation aside), whose brands do not disagree
# and whose prices agree to 1% (or are not both known), and whose photos do not differ (image cosine at least
# 0.95, or not both with a photo), are one product listed twice as far as anything here can tell: they are a
# match scoring at least SAME_LISTING_SCORE, whatever the pair scorer says. The rule is there because the
# cross-encoder, trained on labelled pairs where such copies are often labelled different products (Amazon-Google:
# 34 of its 61 train pairs with equal titles) and on a shop's own near-identical listings as non-matches, scored
# an exact copy of a software listing under its threshold about half the time (EVALUATION.md, 2026-12-06).
SAME_LISTING_SCORE = 0.99
# Named in product_matches.scorer_version beside the scorers' versions, so that a lake matched before the rule (or
# under another version of it) is matched again in full by its next run.
SAME_LISTING_RULE = "same-listing"
# Two listings that carry the same seller's part number (the catalog's optional mpn column, as a key of at least
# five letters and digits with a digit in it: models.matching.text.part_number_key) and whose brands do not
# disagree are one product, a match scoring at least SAME_LISTING_SCORE too: a brand and a manufacturer part
# number are how shopping feeds name a product. In the Walmart-Amazon pairs no non-match shares one (0 of 5,568
# train, 0 of 1,856 valid), half the matches do (285 of 576, 99 of 193). Named in scorer_version as the rule above.
SAME_PART_NUMBER_RULE = "same-part-number"
# Two listings are never one product, whatever the scorers say, where their titles name colours and none in common,
# or say who the product is for and disagree (men's / women's), or where either title names nothing beyond its brand
# (empty, "N/A", or cut to the brand): the cross-encoder, trained on electronics and software listings, matched
# different products of a fashion catalog on their templated titles ("Puma Men's Black T-shirt" / "Puma Men's White
# T-shirt" 0.93), and two titles that say only "Samsung" at 0.94. On the labelled pairs of the four benchmarks these
# rules veto 4 of the job's 3,140 true train matches and none of its 776 true valid ones (EVALUATION.md, 2026-12-07
# night). A title the catalog shares among several listings is a kind of product too (mark_shared_titles).
# Brands that disagree need the cross-encoder's conflict floor, as model numbers that disagree do
# (models.matching.cross.CrossEncoder.is_match). Named in scorer_version as the rules above.
DIFFERENT_PRODUCTS_RULE = "different-products"
SAME_LISTING_PRICE_RATIO = 0.99
SAME_LISTING_IMAGE_COSINE = 0.95


@dataclass(frozen=True)
class Prepared:
    """The normalised parts of one record, computed once however many pairs it is in."""

    words: frozenset[str]
    grams: frozenset[str]
    codes: frozenset[str]
    nums: frozenset[str]
    compact: str
    brand: str
    price: float
    currency: str
    mpn: str = ""        # the seller's part number as a key (models.matching.text.part_number_key; "": none)
    colours: frozenset[str] = frozenset()   # the colour families the title names (models.matching.text.colours)
    genders: frozenset[str] = frozenset()   # who the title says the product is for (models.matching.text.genders)
    names_product: bool = True              # the title says something beyond the brand (text.names_product)


def record_key(title: object, brand: object, price: object, currency: object, mpn: object = None
               ) -> tuple[str, str, float | None, str, str]:
    """What :func:`prepare` reads of a record, normalised as it normalises it (a NaN price as None): records with
    equal keys prepare equal, so the key can name a prepared record in a memo."""
    p = parse_price(price)
    return (as_text(title), brand_key(as_text(brand)), None if math.isnan(p) else p, as_text(currency).strip().upper(),
            part_number_key(mpn))


def prepare_key(key: tuple[str, str, float | None, str, str]) -> Prepared:
    """:func:`prepare` of the record a :func:`record_key` came from."""
    title, brand, price, currency, mpn = key
    words = tokens(title)
    return Prepared(
        words=frozenset(words), grams=frozenset(char_ngrams(title)), codes=frozenset(model_numbers(title)),
        nums=frozenset(numbers(title)), compact="".join(c for c in "".join(words) if c.isalnum()),
        brand=brand, price=math.nan if price is None else price, currency=currency, mpn=mpn,
        colours=colours(title), genders=genders(title), names_product=names_product(title, brand),
    )


def prepare(record: Mapping) -> Prepared:
    return prepare_key(record_key(record.get("title"), record.get("brand"), record.get("price"),
                                  record.get("currency"), record.get("mpn")))


def _sizes(a: frozenset, b: frozenset) -> tuple[int, int]:
    """(|a & b|, |a | b|), the union's size by inclusion-exclusion: one intersection, no union built (about 40%
    off the features of the hundreds of thousands of candidate pairs in a run)."""
    shared = len(a & b)
    return shared, len(a) + len(b) - shared


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _brand(a: Prepared, b: Prepared) -> bool | None:
    """Brands agree when equal (one may extend the other: "elite" / "elitescreens"), or when the one known
    brand appears in the other title; they disagree only when both are known."""
    if a.brand and b.brand:
        return a.brand.startswith(b.brand) or b.brand.startswith(a.brand)
    known, other = (a, b) if a.brand else (b, a)
    if known.brand and len(known.brand) >= 2 and known.brand in other.compact:
        return True
    return None


def _models(a: Prepared, b: Prepared) -> tuple[bool, int]:
    """(both have model numbers, how many are shared); a model number also counts as shared when the other
    title holds it with different spacing or punctuation."""
    if not a.codes and not b.codes:
        return False, 0
    both = bool(a.codes) and bool(b.codes)
    shared = {c for c in a.codes if c in b.compact} | {c for c in b.codes if c in a.compact}
    return both, len(shared)


def _one(a: Prepared, b: Prepared) -> tuple[list[float], bool | None, bool | None, float]:
    shared, every = _sizes(a.words, b.words)
    small = min(len(a.words), len(b.words))
    length = small / max(len(a.words), len(b.words)) if small else 0.0
    m_both, m_shared = _models(a, b)
    n_both = bool(a.nums) and bool(b.nums)
    brand = _brand(a, b)
    same_currency = a.currency == b.currency  # both empty counts as the same (unknown) currency
    ratio = (min(a.price, b.price) / max(a.price, b.price)
             if same_currency and not (math.isnan(a.price) or math.isnan(b.price)) else math.nan)
    row = [_ratio(shared, every), _ratio(shared, small), _ratio(*_sizes(a.grams, b.grams)), length,
           float(m_both), float(m_shared > 0), float(m_both and m_shared == 0),
           float(n_both), _ratio(*_sizes(a.nums, b.nums)) if n_both else 0.0,
           float(brand is not None), float(bool(brand)),
           float(not math.isnan(ratio)), 0.0 if math.isnan(ratio) else ratio]
    model_match = (m_shared > 0) if (m_both or m_shared) else None
    return row, model_match, brand, ratio


def pair_features(left: Sequence[Prepared], right: Sequence[Prepared], text_cosine: np.ndarray,
                  image_cosine: np.ndarray | None = None, fused_cosine: np.ndarray | None = None) -> pd.DataFrame:
    """One row per pair ``(left[i], right[i])``: the :data:`FEATURES` columns plus the evidence columns
    ``image_cosine``, ``fused_cosine`` (NaN when not given), ``model_number_match``, ``brand_match`` (object:
    True/False/None) and ``price_ratio`` (NaN when unknown; the feature ``price_similarity`` is 0 then), named
    like the columns of ``product_matches``; and the rule columns ``same_listing`` and ``same_part_number``
    (:func:`same_listing_floor`) and ``different_products`` (:data:`DIFFERENT_PRODUCTS_RULE`)."""
    n = len(left)
    if len(right) != n or len(text_cosine) != n:
        raise ValueError(f"pair_features: left ({n}), right ({len(right)}) and text_cosine "
                         f"({len(text_cosine)}) must have one entry per pair")
    rows, models, brands, ratios, same, number, differ = [], [], [], [], [], [], []
    for a, b in zip(left, right, strict=True):
        row, m, br, r = _one(a, b)
        rows.append(row)
        models.append(m)
        brands.append(br)
        ratios.append(r)
        differ.append(not (a.names_product and b.names_product) or colours_disagree(a.colours, b.colours)
                      or genders_disagree(a.genders, b.genders))
        same.append(bool(a.compact) and a.compact == b.compact and br is not False and not differ[-1]
                    and not r < SAME_LISTING_PRICE_RATIO)   # a NaN ratio (a price unknown) passes
        number.append(bool(a.mpn) and a.mpn == b.mpn and br is not False)
    arr = np.asarray(rows, dtype=np.float64).reshape(n, len(FEATURES) - 1)
    out = pd.DataFrame(arr, columns=list(FEATURES[1:]))
    out.insert(0, "text_cosine", np.nan_to_num(np.asarray(text_cosine, dtype=np.float64), nan=0.0))
    nan = np.full(n, np.nan)
    out["image_cosine"] = nan if image_cosine is None else np.asarray(image_cosine, dtype=np.float64)
    out["fused_cosine"] = out["text_cosine"] if fused_cosine is None else np.asarray(fused_cosine, np.float64)
    out["model_number_match"] = pd.Series(models, dtype=object)
    out["brand_match"] = pd.Series(brands, dtype=object)
    out["price_ratio"] = np.asarray(ratios, dtype=np.float64)
    photos_differ = out["image_cosine"].to_numpy() < SAME_LISTING_IMAGE_COSINE   # NaN (no photo pair) is False
    out["same_listing"] = np.asarray(same, dtype=bool).reshape(n) & ~photos_differ
    out["same_part_number"] = np.asarray(number, dtype=bool).reshape(n)
    out["different_products"] = np.asarray(differ, dtype=bool).reshape(n)
    return out


def mark_shared_titles(features: pd.DataFrame, shared: np.ndarray) -> pd.DataFrame:
    """``features`` (of :func:`pair_features`) with the pairs ``shared`` (a listing whose title the catalog writes
    for several listings: :meth:`models.matching.spelling.CatalogSpelling.shared_titles`) marked
    ``different_products`` and not ``same_listing``: such a title names a kind of product, so the pair matches by a
    part number, or as the same listing twice where both prices are known and agree (a price unknown vouches for
    nothing here: three listings titled "Quill" without prices are three products). The frame is changed in place
    and returned."""
    ratio = np.asarray(features["price_ratio"], dtype=np.float64)
    vouched = np.asarray(features["same_listing"], dtype=bool) & (np.nan_to_num(ratio, nan=0.0)
                                                                    >= SAME_LISTING_PRICE_RATIO)
    shared = np.asarray(shared, dtype=bool) & ~vouched
    features["different_products"] = np.asarray(features["different_products"], dtype=bool) | shared
    features["same_listing"] = np.asarray(features["same_listing"], dtype=bool) & ~shared
    return features


def mark_catalog_reading(features: pd.DataFrame, reading: PairReading) -> pd.DataFrame:
    """``features`` (of :func:`pair_features`) with what the catalog's reading of the pairs tells
    (:meth:`models.matching.spelling.CatalogSpelling.read_pairs`): shared titles (:func:`mark_shared_titles`); titles
    that name different product types, marked ``different_products``; and titles that start with two of the catalog's
    brands, marked ``leads_disagree`` (the cross-encoder's conflict floor decides them, as brands that disagree:
    :meth:`models.matching.cross.CrossEncoder.is_match`). The frame is changed in place and returned."""
    mark_shared_titles(features, reading.shared)
    features["different_products"] = (np.asarray(features["different_products"], dtype=bool)
                                      | np.asarray(reading.other_types, dtype=bool))
    features["leads_disagree"] = np.asarray(reading.other_leads, dtype=bool)
    return features


def same_listing_floor(scores: np.ndarray, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, same)``: the pairs' scores with those of the same listing twice or of the same part number (the
    ``same_listing`` and ``same_part_number`` columns of :func:`pair_features`) raised to
    :data:`SAME_LISTING_SCORE`, and which pairs those are. Such a pair is a match whatever the scorer's threshold
    (the caller adds ``same`` to its decisions)."""
    same = np.asarray(features["same_listing"], dtype=bool)
    if "same_part_number" in features:
        same = same | np.asarray(features["same_part_number"], dtype=bool)
    return np.where(same, np.maximum(np.asarray(scores, np.float64), SAME_LISTING_SCORE), scores), same


def match_decisions(scores: np.ndarray, features: pd.DataFrame, read: np.ndarray, scorer: Any, cross: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, matched)`` of scored pairs as the job decides them: with a cross-encoder ``cross``, the pairs it
    read (``read``, their indices) match at its threshold (and conflict floor) and the others do not; without one,
    the feature ``scorer``'s threshold decides; two listings that tell of different products do not match
    (:data:`DIFFERENT_PRODUCTS_RULE`); the same listing twice, or the same part number, matches either way
    (:func:`same_listing_floor`, which also gives the returned scores)."""
    if cross is None:
        matched = np.asarray(scorer.is_match(scores), dtype=bool)
    else:
        matched = np.zeros(len(scores), bool)
        matched[read] = cross.is_match(np.asarray(scores)[read], features.iloc[read])
    if "different_products" in features:
        matched &= ~np.asarray(features["different_products"], dtype=bool)
    scores, same = same_listing_floor(scores, features)
    return scores, matched | same
