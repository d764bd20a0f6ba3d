"""Open attribute extraction: labelling, BIO decoding, the ExtractGPT metric, the split and the baseline.

Every expected value below is derived by hand from the inputs built here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.attributes.baseline import DictionaryBaseline
from models.attributes.data import Product, split_products
from models.attributes.extractor import clean_value
from models.attributes.metrics import judge, score_predictions
from models.attributes.spans import (
    IGNORE,
    B,
    I,
    O,
    Unit,
    align_span,
    bio_labels,
    decode,
    decode_best_spans,
    decode_tags,
    find_spans,
    word_units,
)

# "Folgers Coffee 24.2 oz" as the word-piece tokenizer cuts it: [CLS] folgers coffee 24 . 2 oz [SEP]
TITLE = "Folgers Coffee 24.2 oz"
OFFSETS = [(0, 0), (0, 7), (8, 14), (15, 17), (17, 18), (18, 19), (20, 22), (0, 0)]
SEGMENTS = [None, 0, 0, 0, 0, 0, 0, None]
WORDS = [None, 0, 1, 2, 3, 4, 5, None]
UNITS = word_units(OFFSETS, SEGMENTS, WORDS)
ATTRS = ["Brand", "Flavor", "Net content"]


def test_find_spans_is_case_insensitive_and_keeps_the_texts_offsets():
    assert find_spans("Red wine, RED glass", "red") == [(0, 3), (10, 13)]
    assert find_spans("Red wine", " wine ") == [(4, 8)]   # the value is stripped
    assert find_spans(None, "red") == [] and find_spans("red", "  ") == []


def test_word_units_merge_pieces_and_skip_special_tokens():
    # "Bimmor 4Inx6In" -> [CLS] bi ##mm ##or 4 ##in ##x ##6 ##in [SEP]
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6), (7, 8), (8, 10), (10, 11), (11, 12), (12, 14), (0, 0)]
    units = word_units(offsets, [None] + [0] * 8 + [None], [None, 0, 0, 0, 1, 1, 1, 1, 1, None])
    assert units == [Unit(1, 0, 0, 6), Unit(4, 0, 7, 14)]


def test_align_span_needs_word_boundaries():
    assert align_span(UNITS, 0, 15, 22) == (2, 5)        # "24.2 oz": the words 24 . 2 oz
    assert align_span(UNITS, 0, 1, 7) is None            # "olgers" starts inside a word
    assert align_span(UNITS, 1, 0, 7) is None            # no description segment


def test_bio_labels_tag_found_values_and_ignore_unsupervised_attributes():
    gold = {"Brand": ("folgers",), "Net content": ("24.2 oz",)}
    tags, stats = bio_labels([TITLE, None], UNITS, 8, gold, ["Brand", "Net content"], ATTRS)
    assert tags.shape == (8, 3)
    assert tags[:, 0].tolist() == [IGNORE, B, O, O, O, O, O, IGNORE]
    assert tags[:, 1].tolist() == [IGNORE] * 8                    # Flavor: not annotated for this product
    assert tags[:, 2].tolist() == [IGNORE, O, O, B, I, I, I, IGNORE]
    assert (stats.values, stats.labelled, stats.not_found, stats.unaligned) == (2, 2, 0, 0)


def test_bio_labels_tag_only_the_first_piece_of_a_word():
    # "Bimmor Lure" -> [CLS] bi ##mm ##or lure [SEP]
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6), (7, 11), (0, 0)]
    units = word_units(offsets, [None, 0, 0, 0, 0, None], [None, 0, 0, 0, 1, None])
    tags, stats = bio_labels(["Bimmor Lure", None], units, 6, {"Brand": ("BIMMOR",)}, ["Brand"], ["Brand"])
    assert tags[:, 0].tolist() == [IGNORE, B, IGNORE, IGNORE, O, IGNORE] and stats.labelled == 1


def test_bio_labels_count_values_that_cannot_be_tagged():
    gold = {"Brand": ("Nescafe", "olgers"), "Flavor": ()}
    tags, stats = bio_labels([TITLE, None], UNITS, 8, gold, ["Brand", "Flavor"], ATTRS)
    assert (stats.values, stats.labelled, stats.not_found, stats.unaligned) == (2, 0, 1, 1)
    assert set(tags[1:-1, 0].tolist()) == {O} and set(tags[1:-1, 1].tolist()) == {O}  # n/a: all O


def test_bio_labels_count_values_cut_off_by_truncation():
    # The description "dark roast" was cut after "dark": [CLS] folgers [SEP] dark [SEP]
    units = word_units([(0, 0), (0, 7), (0, 0), (0, 4), (0, 0)], [None, 0, None, 1, None], [None, 0, None, 0, None])
    tags, stats = bio_labels(["Folgers", "dark roast"], units, 5, {"Flavor": ("roast",)}, ["Flavor"], ["Flavor"])
    assert stats.truncated == 1 and stats.labelled == 0
    tags, stats = bio_labels(["Folgers", "dark roast"], units, 5, {"Flavor": ("dark",)}, ["Flavor"], ["Flavor"])
    assert stats.labelled == 1 and tags[:, 0].tolist() == [IGNORE, O, IGNORE, B, IGNORE]


def _probs(tags: list[list[int]], p: list[list[float]]) -> np.ndarray:
    """Probabilities [tokens, attributes, 3] where token t's tag for attribute a gets probability p[t][a]."""
    t_, a_ = len(tags), len(tags[0])
    out = np.zeros((t_, a_, 3))
    for t in range(t_):
        for a in range(a_):
            out[t, a, :] = (1 - p[t][a]) / 2
            out[t, a, tags[t][a]] = p[t][a]
    return out


def test_decode_merges_word_pieces_back_to_the_original_text():
    # "Bimmor 14.5cm lure | Red" -> [CLS] bi ##mm ##or 14 . 5 ##cm lure [SEP] red [SEP]
    title, desc = "Bimmor 14.5cm lure", "Red"
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6), (7, 9), (9, 10), (10, 11), (11, 13), (14, 18), (0, 0), (0, 3), (0, 0)]
    segments = [None, 0, 0, 0, 0, 0, 0, 0, 0, None, 1, None]
    words = [None, 0, 0, 0, 1, 2, 3, 3, 4, None, 0, None]
    units = word_units(offsets, segments, words)
    #        brand length color
    tags = [[O, O, O], [B, O, O], [O, I, O], [O, O, O], [O, B, O], [O, I, O], [O, I, O], [B, O, I],
            [O, O, O], [B, B, B], [O, O, B], [O, O, O]]
    p = [[0.9] * 3, [0.8, 0.9, 0.9], [0.1, 0.1, 0.1], [0.1] * 3, [0.9, 0.6, 0.9], [0.9] * 3, [0.9] * 3,
         [0.1, 0.1, 0.1], [0.9] * 3, [0.9] * 3, [0.9, 0.9, 0.5], [0.9] * 3]
    spans = decode_tags(_probs(tags, p), units)
    got = {(s.attribute, s.segment, (title, desc)[s.segment][s.start:s.end]): round(s.confidence, 6) for s in spans}
    # Only a word's first piece counts (the B/I on "##mm", "##cm" are ignored); special tokens never start a span.
    assert got == {(0, 0, "Bimmor"): 0.8, (1, 0, "14.5cm"): 0.8, (2, 1, "Red"): 0.5}
    assert [s for s in decode_tags(_probs(tags, p), units, min_confidence=0.6) if s.attribute == 2] == []


def test_decode_is_lenient_about_a_span_that_starts_with_i_and_stops_at_the_segment_end():
    # [CLS] red wine [SEP] dark [SEP]
    units = word_units([(0, 0), (0, 3), (4, 8), (0, 0), (0, 4), (0, 0)], [None, 0, 0, None, 1, None],
                       [None, 0, 1, None, 0, None])
    tags = [[O], [I], [I], [O], [I], [O]]
    spans = decode_tags(_probs(tags, [[0.9]] * 6), units)
    assert [(s.segment, s.start, s.end) for s in spans] == [(0, 0, 8), (1, 0, 4)]
    assert decode_tags(np.zeros((2, 1, 3)), []) == []


# "Tamarac by Slippers International Men's" -> [CLS] tamarac by slippers international men ' s [SEP]
BRAND_TEXT = "Tamarac by Slippers International Men's"
BRAND_UNITS = word_units([(0, 0), (0, 7), (8, 10), (11, 19), (20, 33), (34, 37), (37, 38), (38, 39), (0, 0)],
                         [None] + [0] * 7 + [None], [None, 0, 1, 2, 3, 4, 5, 6, None])


def _tag_rows(rows: list[list[float]]) -> np.ndarray:
    """Probabilities [tokens, 1 attribute, (O, B, I)] for the special tokens and the words of BRAND_UNITS."""
    o = [0.98, 0.01, 0.01]
    return np.array([o, *rows, o, o, o][:9], dtype=np.float32)[:, None, :]


def _texts(spans) -> list[tuple[str, float]]:
    return [(BRAND_TEXT[s.start:s.end], round(s.confidence, 4)) for s in spans]


def test_the_span_decoder_keeps_a_value_whole_where_one_word_inside_leans_to_o():
    probs = _tag_rows([[0.05, 0.9, 0.05],     # Tamarac: B
                       [0.3, 0.1, 0.6],       # by: I
                       [0.55, 0.05, 0.4],     # Slippers: O by a little
                       [0.04, 0.01, 0.95],    # International: I, confidently
                       [0.95, 0.03, 0.02]])   # Men
    # Word by word, the value is cut in two, and the stray I is a value of its own (the most confident one).
    assert sorted(_texts(decode_tags(probs, BRAND_UNITS))) == [("International", 0.95), ("Tamarac by", 0.75)]
    # As whole spans: the most probable tagging of these words is one span (its log-odds against all O is
    # log 18 + log 2 + log 0.73 + log 23.75 > log 18 + log 2 for "Tamarac by").
    assert _texts(decode_best_spans(probs, BRAND_UNITS)) == [("Tamarac by Slippers International", 0.7125)]
    assert decode_best_spans(probs, BRAND_UNITS, min_confidence=0.72) == []
    assert decode(probs, BRAND_UNITS, decoder="span") == decode_best_spans(probs, BRAND_UNITS)
    assert decode(probs, BRAND_UNITS, decoder="greedy") == decode_tags(probs, BRAND_UNITS)
    with pytest.raises(ValueError, match="unknown span decoder 'viterbi'"):
        decode(probs, BRAND_UNITS, decoder="viterbi")


def test_the_span_decoder_agrees_with_greedy_on_clear_tags_and_keeps_separate_values_apart():
    clear = _tag_rows([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05],
                       [0.9, 0.05, 0.05]])
    assert _texts(decode_best_spans(clear, BRAND_UNITS)) == _texts(decode_tags(clear, BRAND_UNITS)) == \
        [("Tamarac", 0.9)]
    # Two values of one attribute with a confident O between them: two spans, the more probable first taken.
    two = _tag_rows([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.1, 0.05, 0.85],
                     [0.9, 0.05, 0.05]])
    assert sorted(_texts(decode_best_spans(two, BRAND_UNITS))) == [("Slippers International", 0.85),
                                                                   ("Tamarac", 0.9)]
    nothing = _tag_rows([[0.9, 0.05, 0.05]] * 5)
    assert decode_best_spans(nothing, BRAND_UNITS) == [] and decode_best_spans(nothing, []) == []


def test_the_span_decoder_never_crosses_from_the_title_into_the_description():
    # [CLS] red wine [SEP] dark [SEP]: every word B or I; a span ends with its segment.
    units = word_units([(0, 0), (0, 3), (4, 8), (0, 0), (0, 4), (0, 0)], [None, 0, 0, None, 1, None],
                       [None, 0, 1, None, 0, None])
    probs = _probs([[O], [B], [I], [O], [I], [O]], [[0.9]] * 6)
    probs[4, 0] = [0.05, 0.45, 0.5]    # "dark": B beats O, so it may start a span (in its own segment)
    assert sorted((s.segment, s.start, s.end) for s in decode_best_spans(probs, units)) == [(0, 0, 8), (1, 0, 4)]


def test_clean_value_drops_separators_at_the_edges():
    assert clean_value("Stride Rite Baby-") == "Stride Rite Baby"
    assert clean_value(", Black ;") == "Black"
    assert clean_value('20 1/8"') == '20 1/8"' and clean_value("Co.") == "Co."
    assert clean_value("Cafe (Decaf)") == "Cafe (Decaf)" and clean_value("Decaf)") == "Decaf"
    assert clean_value("Medium (") == "Medium"
    assert clean_value(".5g") == "5g"


def test_judge_follows_the_extractgpt_cells():
    assert judge(None, ()) == "nn"
    assert judge("n/a", ["n/a"]) == "nn"
    assert judge("Mocha", ()) == "nv"
    assert judge(None, ["Folgers"]) == "vn"
    assert judge(" Folgers ", ["Folgers"]) == "vc"
    assert judge("folgers", ["Folgers"]) == "vw"            # exact comparison: case counts
    assert judge("Medium", ["M", "Medium"]) == "vc"         # any of several gold values


def test_micro_and_macro_scores_on_a_hand_made_case():
    categories = ["Coffee", "Coffee", "Coffee", "Coffee", "Coffee", "Shirt"]
    golds = [{"Brand": ("Folgers",), "Flavor": ()},
             {"Brand": ("Nescafe",)},
             {"Brand": ("Lavazza",)},
             {"Flavor": ()},
             {"Brand": ("Illy",)},
             {"Size": ()}]
    preds = [{"Brand": "Folgers", "Flavor": "Mocha"},          # vc, nv
             {"Brand": None, "Color": "Red"},                  # vn; Color is not in the gold: not scored
             {"Brand": "Illy"},                                # vw
             {},                                               # nn
             {"Brand": " Illy "},                              # vc
             {"Size": "L"}]                                    # nv
    s = score_predictions(categories, golds, preds)
    assert (s.micro.vc, s.micro.nv, s.micro.vn, s.micro.vw, s.micro.nn) == (2, 2, 1, 1, 1)
    assert s.micro.precision == pytest.approx(2 / 5)          # vc / (nv + vc + vw)
    assert s.micro.recall == pytest.approx(2 / 4)             # vc / (vn + vc + vw)
    assert s.micro.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    # groups: Coffee/Brand P=2/3 R=2/4; Coffee/Flavor P=0 R=0; Shirt/Size P=0 R=0 -> macro over 3 groups
    brand_f1 = 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)
    assert s.macro_f1 == pytest.approx(brand_f1 / 3)
    assert s.macro_precision == pytest.approx((2 / 3) / 3)


def test_scores_refuse_misaligned_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        score_predictions(["a"], [{}], [])


def _frame(rows):
    return pd.DataFrame(rows, columns=["split", "row_in_split", "product_id", "category", "title", "description",
                                       "gold"])


def test_split_keeps_duplicates_on_one_side_and_drops_subset_copies():
    rows = []
    for i in range(40):
        rows.append(("train", i, f"train-{i}", "Coffee", f"Product {i} Coffee", None, {"Brand": ("B",)}))
    for i in range(0, 40, 3):  # the subset split: the same products again under other ids, other spacing/case
        rows.append(("train_0.2", i, f"train_0.2-{i}", "Coffee", f"  product {i}   COFFEE", None, {"Brand": ("B",)}))
    rows.append(("train", 40, "train-40", "Coffee", "Product 7 Coffee", None, {}))  # a duplicate inside train
    ds = split_products(_frame(rows), "oa_mine", 0.3)
    assert ds.stats["duplicates_dropped"] == 14
    assert ds.stats["train"] + ds.stats["valid"] == 41
    assert all(not p.product_id.startswith("train_0.2") for p in ds.train + ds.valid)
    norm = {side: {" ".join(p.title.lower().split()) for p in getattr(ds, side)} for side in ("train", "valid")}
    assert not norm["train"] & norm["valid"] and norm["valid"]
    # Deterministic, and decided by the large split's product id: the subset's order does not matter.
    again = split_products(_frame(list(reversed(rows))), "oa_mine", 0.3)
    assert sorted(p.product_id for p in again.valid) == sorted(p.product_id for p in ds.valid)


def test_split_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="valid fraction"):
        split_products(_frame([]), "oa_mine", 1.5)


def _product(title, gold, category="Coffee", description=None):
    return Product("oa_mine", title, category, title, description, gold)


def test_dictionary_baseline_takes_the_longest_known_value_at_word_boundaries():
    train = [_product("a", {"Flavor": ("Mocha",), "Size": ("M",)}),
             _product("b", {"Flavor": ("coconut mocha",), "Size": ("Medium",)}),
             _product("c", {"Flavor": ("Vanilla",)}, category="Tea")]
    base = DictionaryBaseline(train)
    got = base.predict(_product("Coconut Mocha K-Cups, Medium", {"Flavor": ("Coconut Mocha",), "Size": ("Medium",)}))
    assert got == {"Flavor": "Coconut Mocha", "Size": "Medium"}      # the text's casing, longest first
    got = base.predict(_product("Mild roast, vanilla", {"Flavor": (), "Size": ()}))
    assert got == {"Flavor": None, "Size": None}                     # "M" inside "Mild" is no match; Tea's vanilla
    got = base.predict(_product("Dark roast", {"Flavor": ()}, description="Notes of MOCHA."))
    assert got == {"Flavor": "MOCHA"}                                # the description when the title has nothing


def test_supervision_covers_the_gold_and_the_attributes_outside_the_category():
    from models.attributes.data import category_schemas
    from models.attributes.train import supervised_attributes

    products = [_product("a", {"Brand": ("X",), "Flavor": ()}), _product("b", {"Roast type": ("Dark",)}),
                _product("c", {"Scent": ("Lavender",)}, category="Soap")]
    schemas = category_schemas(products)
    assert schemas == {"Coffee": {"Brand", "Flavor", "Roast type"}, "Soap": {"Scent"}}
    attrs = ["Brand", "Flavor", "Roast type", "Scent", "Processor Type"]
    # Roast type: a coffee attribute that product "a" was not annotated with, so its tags are unknown.
    assert supervised_attributes(products[0], schemas["Coffee"], attrs) == ["Brand", "Flavor", "Scent",
                                                                            "Processor Type"]
