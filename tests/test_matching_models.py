"""models.matching without Spark: normalisation, pair features, scorer training/storage, blocking, clustering."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pandas as pd
import pytest

from models.matching.artifact import load_scorer, promote_scorer, save_scorer
from models.matching.blocking import BlockingConfig, assign, block_search, candidate_pairs, code_pairs, kmeans
from models.matching.cluster import ClusterConfig, cluster, connected_components, pairwise_prf
from models.matching.features import FEATURES, SAME_LISTING_SCORE, pair_features, prepare, same_listing_floor
from models.matching.scorer import PairScorer
from models.matching.text import brand_key, model_numbers, numbers, parse_price, tokens
from models.matching.train import ScorerTrainConfig, best_threshold, prf, train_pair_scorer
from models.store import ModelIntegrityError


def test_model_numbers_are_normalised_across_spellings():
    assert model_numbers("Kestrel Unisex Black Watch KE-8301") == {"ke8301"}
    assert model_numbers("Watch Kestrel Black KE8301 Unisex") == {"ke8301"}
    assert "ke8301" in model_numbers("Kestrel KE 8301 watch")
    assert model_numbers("toshiba ph3100u-1e3s 1tb usb 3.0") >= {"ph3100u1e3s"}
    assert model_numbers("Women's Purple T-Shirt") == set()  # letters only: not a model number
    assert numbers("harmony 890 remote, 4.0 cu ft") == {"890", "4.0"}
    assert tokens("NEW FJORD cap") == ["new", "fjord", "cap"]
    assert brand_key("KESTREL") == brand_key("Kestrel") == "kestrel"


@pytest.mark.parametrize(("raw", "value"), [
    (19.99, 19.99), ("$\u200e234.95", 234.95), ("1,299.00", 1299.0), ("378,00 лв", 378.0), ("1.299,50", 1299.5),
    ("1,299", 1299.0), ("", math.nan), (None, math.nan), ("free", math.nan), (0.0, math.nan),
])
def test_parse_price(raw, value):
    got = parse_price(raw)
    assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value)


def _feat(a: dict, b: dict, cos: float = 0.9) -> pd.Series:
    return pair_features([prepare(a)], [prepare(b)], np.array([cos])).iloc[0]


def test_pair_features_see_model_numbers_brands_and_prices():
    a = {"title": "Quill Women Purple Dress QU-7101", "brand": "Quill", "price": 29.74, "currency": "EUR"}
    dup = {"title": "Women's Purple Dress | Quill QU7101 | fast shipping", "brand": None, "price": 29.72,
           "currency": "EUR"}
    other = {"title": "Quill Women Purple Dress QU-5550", "brand": "QUILL", "price": 80.0, "currency": "EUR"}
    f = _feat(a, dup)
    assert f["model_shared"] == 1 and f["model_conflict"] == 0 and f["model_number_match"] is True
    assert f["brand_known"] == 1 and f["brand_agree"] == 1  # the known brand appears in the other title
    assert f["brand_match"] is True and f["price_ratio"] == pytest.approx(29.72 / 29.74)
    g = _feat(a, other)
    assert g["model_conflict"] == 1 and g["model_number_match"] is False
    assert g["token_jaccard"] > f["token_jaccard"]  # the near-identical title of another product
    assert g["brand_agree"] == 1 and g["price_similarity"] == pytest.approx(29.74 / 80)
    h = _feat(a, dict(other, currency="USD", brand="Orca"))
    assert h["price_known"] == 0 and h["price_similarity"] == 0 and math.isnan(h["price_ratio"])
    assert h["brand_known"] == 1 and h["brand_agree"] == 0 and h["brand_match"] is False
    assert _feat(a, dict(other, brand=None, title="Dress QU-5550"))["brand_match"] is None
    assert not np.isnan(pair_features([prepare(a)] * 3, [prepare(other)] * 3, np.ones(3))[list(FEATURES)]
                        .to_numpy()).any()
    with pytest.raises(ValueError, match="one entry per pair"):
        pair_features([prepare(a)], [prepare(a), prepare(a)], np.ones(1))


def test_pair_feature_overlaps_are_the_set_ratios_of_the_two_titles():
    rng = np.random.default_rng(4)
    vocab = ["quill", "dress", "purple", "women", "qu-7101", "qu7101", "2 pack", "32gb", "64 gb", "usb", "v2"]
    for _ in range(200):
        a, b = (" ".join(rng.choice(vocab, size=rng.integers(0, 6))) for _ in range(2))
        pa_, pb = prepare({"title": a}), prepare({"title": b})
        f = pair_features([pa_], [pb], np.zeros(1)).iloc[0]

        def ratio(x: frozenset, y: frozenset) -> float:
            return len(x & y) / len(x | y) if x | y else 0.0

        small = min(len(pa_.words), len(pb.words))
        assert f["token_jaccard"] == ratio(pa_.words, pb.words)
        assert f["char3_jaccard"] == ratio(pa_.grams, pb.grams)
        assert f["token_overlap"] == (len(pa_.words & pb.words) / small if small else 0.0)
        both = bool(pa_.nums) and bool(pb.nums)
        assert f["number_jaccard"] == (ratio(pa_.nums, pb.nums) if both else 0.0)


def test_the_score_step_prepares_a_listing_once_per_worker_and_by_what_it_says(monkeypatch):
    """The score step keeps prepared listings across partitions, keyed by their content: a product id that comes
    back with another title (a later run in the same worker) is prepared again, and the scores are those of a
    step that prepares every listing afresh."""
    import models.matching.features as features
    import udfs.matching as um
    from jobs.stages.matching import resolve_matching

    scorer = load_scorer(resolve_matching("auto"))
    calls, keyed = [], []
    real, real_key = features.prepare_key, features.record_key
    monkeypatch.setattr(features, "prepare_key", lambda key: calls.append(key) or real(key))
    monkeypatch.setattr(features, "record_key", lambda *raw: keyed.append(raw) or real_key(*raw))
    monkeypatch.setattr(um, "_PREPARED", {})
    monkeypatch.setattr(um, "_RAW", {})

    def frame(title_b: str, price_b: object) -> pd.DataFrame:
        return pd.DataFrame({
            "a": ["p1", "p1"], "b": ["p2", "p3"], "fused_cosine": [0.9, 0.8], "text_cosine": [0.9, 0.8],
            "image_cosine": [np.nan, np.nan], "blocking": ["ann", "ann"],
            "title_a": ["Kestrel Black Watch KE-8301"] * 2, "brand_a": ["Kestrel"] * 2, "price_a": [20.0, 20.0],
            "currency_a": ["EUR"] * 2, "title_b": [title_b, "Kestrel Black Watch KE-9999"],
            "brand_b": [None, "Kestrel"], "price_b": [price_b, 20.0], "currency_b": ["EUR", "EUR"]})

    import cloudpickle

    def task():   # each Spark task unpickles the function afresh, as cloudpickle ships it
        return cloudpickle.loads(cloudpickle.dumps(um.make_score_fn(scorer.version, scorer.to_json(), keep_all=True)))

    score = task()
    first = pd.concat(score(iter([frame("Watch Kestrel KE8301 Black", 20.0)])))
    n_keyed = len(keyed)
    again = pd.concat(task()(iter([frame("Watch Kestrel KE8301 Black", 20.0)])))   # another partition
    assert len(calls) == 3 and first["score"].tolist() == again["score"].tolist()
    assert len(keyed) == n_keyed   # the same fields again: found by the fields, nothing normalised
    changed = pd.concat(score(iter([frame("Pioneer TS-G6843R speaker", np.nan)])))   # p2 now says something else
    assert len(calls) == 4 and changed["score"].iloc[0] < first["score"].iloc[0]
    none_price = pd.concat(score(iter([frame("Pioneer TS-G6843R speaker", None)])))   # None reads as NaN
    assert len(calls) == 4 and none_price["score"].tolist() == changed["score"].tolist()
    monkeypatch.setattr(um, "_PREPARED", {})
    monkeypatch.setattr(um, "_RAW", {})
    fresh = pd.concat(score(iter([frame("Pioneer TS-G6843R speaker", np.nan)])))
    assert fresh["score"].tolist() == changed["score"].tolist()
    monkeypatch.setattr(um, "PREPARED_MEMO_ROWS", 2)   # full: emptied, never grown past its bound
    score(iter([frame("Kestrel KE-8301", 21.0)])).__next__()
    assert len(um._PREPARED) <= 2 and len(um._RAW) <= 2


def test_the_score_step_reads_the_pairs_of_several_batches_in_one_cross_encoder_pass(monkeypatch):
    """With the cross-encoder, the pairs that pass the prefilter in up to POOL_BATCHES batches go through it in
    one pass (sorted by length together, padded less); the rows, their order and the scores are those of scoring
    each batch by itself (fp32: within float noise), and the passes stay bounded."""
    import udfs.matching as um
    from jobs.stages.matching import resolve_matching, resolve_pair_model

    cat = pd.read_parquet("jobs/sample_catalog/catalog.parquet").dropna(subset=["title"]).reset_index(drop=True)
    rng = np.random.default_rng(7)
    n = 600
    ia, ib = rng.integers(0, len(cat), n), rng.integers(0, len(cat), n)
    cos = rng.uniform(0.5, 1.0, n).astype(np.float32)
    frame = pd.DataFrame({"a": cat["product_id"].to_numpy()[ia], "b": cat["product_id"].to_numpy()[ib],
                          "fused_cosine": cos, "text_cosine": cos, "image_cosine": np.full(n, np.nan, np.float32),
                          "blocking": "ann"})
    for side, idx in (("a", ia), ("b", ib)):
        for f in ("title", "brand", "price", "currency"):
            frame[f"{f}_{side}"] = cat[f].to_numpy()[idx] if f in cat else None
    # every other pair: a listing against another seller's copy of it (its words in another order), so that
    # many pairs pass the feature scorer's prefilter, spread over every batch
    copy = np.arange(n) % 2 == 0
    frame.loc[copy, "b"] = frame.loc[copy, "a"] + "-copy"
    for f in ("brand", "price", "currency"):
        frame.loc[copy, f"{f}_b"] = frame.loc[copy, f"{f}_a"]
    frame.loc[copy, "title_b"] = [" ".join(reversed(t.split())) for t in frame.loc[copy, "title_a"]]
    batches = [frame.iloc[s:s + 50].reset_index(drop=True) for s in range(0, n, 50)]   # 12 batches

    scorer = load_scorer(resolve_matching("auto"))
    spec = um.CrossSpec(str(resolve_pair_model("auto")), precision="fp32")
    model = um._cross(spec)
    passes: list[int] = []
    real = model.score
    monkeypatch.setattr(model, "score", lambda a, b, f=None: passes.append(len(a)) or real(a, b, f))
    score = um.make_score_fn(scorer.version, scorer.to_json(), keep_all=True, cross=spec)
    got = pd.concat(score(iter(batches)), ignore_index=True)
    assert len(passes) == 1 and 0 < passes[0] < n            # some pairs under the prefilter, the rest at once
    first = passes[0]

    expected = []   # each batch alone, as the step scored before pooling
    for pdf in batches:
        f, s = um._features(pdf, scorer)
        read = np.flatnonzero(s >= spec.prefilter)
        sub = pdf.iloc[read]
        s[read] = real(um._serialised(sub, "a"), um._serialised(sub, "b"), f.iloc[read])
        s = same_listing_floor(s, f)[0]   # a listing drawn against itself
        expected.append(pd.DataFrame({"product_id_a": pdf["a"], "product_id_b": pdf["b"], "score": s}))
    expected = pd.concat(expected, ignore_index=True)
    assert got["product_id_a"].tolist() == expected["product_id_a"].tolist()
    assert got["product_id_b"].tolist() == expected["product_id_b"].tolist()
    np.testing.assert_allclose(got["score"].to_numpy(), expected["score"].to_numpy(), atol=1e-5)

    passes.clear()
    monkeypatch.setattr(um, "POOL_BATCHES", 5)   # 12 batches: passes of 5, 5 and 2 batches
    counted: list[int] = []   # the match stage's count of the pairs the cross-encoder read (an accumulator there)
    counter = types.SimpleNamespace(add=counted.append)
    again = pd.concat(um.make_score_fn(scorer.version, scorer.to_json(), keep_all=True, cross=spec,
                                       read_counter=counter)(iter(batches)), ignore_index=True)
    assert len(passes) == 3 and sum(passes) == first
    assert sum(counted) == first and 0 < len(counted) <= len(batches)
    np.testing.assert_allclose(again["score"].to_numpy(), got["score"].to_numpy(), atol=1e-5)
    matches = pd.concat(um.make_score_fn(scorer.version, scorer.to_json(), cross=spec)(iter(batches)))
    by_pair = dict(zip(zip(got["product_id_a"], got["product_id_b"], strict=True), got["score"], strict=True))
    assert len(matches) and (matches["score"] >= model.threshold).all()
    assert all(abs(by_pair[(a, b)] - p) < 1e-5
               for a, b, p in zip(matches["product_id_a"], matches["product_id_b"], matches["score"], strict=True))


def test_the_same_listing_twice_is_recognised_by_its_words_brand_price_and_photo():
    """``same_listing``: the same title words (case, spacing and punctuation aside), brands that do not disagree,
    prices within 1% or not both known, photos not different; reordered words, another edition, another price
    or brand, or an empty title are not the same listing."""
    base = {"title": "Sound Forge Audio Studio 9", "brand": "Sony Media", "price": 69.59}
    same = [dict(base), dict(base, title="sound forge - audio studio 9 ", brand=None), dict(base, price=69.2),
            dict(base, price=None)]
    differ = [dict(base, title="Sound Forge Audio Studio 8"), dict(base, title="Audio Studio 9 Sound Forge"),
              dict(base, price=19.99), dict(base, brand="Magix")]
    others = same + differ
    f = pair_features([prepare(base)] * len(others), [prepare(x) for x in others], np.ones(len(others)))
    assert f["same_listing"].tolist() == [True] * len(same) + [False] * len(differ)
    empty = pair_features([prepare({"title": ""})], [prepare({"title": ""})], np.ones(1))
    assert not empty["same_listing"].any()
    photos = pair_features([prepare(base)] * 3, [prepare(base)] * 3, np.ones(3),
                           image_cosine=np.array([0.99, 0.4, np.nan]))
    assert photos["same_listing"].tolist() == [True, False, True]   # two photos that differ: two products
    scores, flag = same_listing_floor(np.array([0.05, 0.995, 0.3]), pd.DataFrame({"same_listing": [True, True, False]}))
    assert scores.tolist() == [SAME_LISTING_SCORE, 0.995, 0.3] and flag.tolist() == [True, True, False]


def test_the_same_part_number_is_one_product_unless_the_brands_differ():
    """``same_part_number``: both listings carry one part number (letters and digits, at least five with a digit,
    compared as a key) and brands that do not disagree; a short or digit-less number, another number, another
    brand, or a number on one side only is not; the floor makes such a pair a match."""
    from models.matching.text import part_number_key

    base = {"title": "Canon CLI-226 Black Ink Tank 4546B001 in Retail Packaging", "brand": "Canon",
            "mpn": "4546B001"}
    same = [dict(base, title="Canon CLI-226 Black Ink Tank", mpn="4546-b001"), dict(base, title="Ink tank",
                                                                                 brand=None, mpn=" 4546B001 ")]
    differ = [dict(base, mpn="4546B002"), dict(base, brand="Epson"), dict(base, mpn=None), {"title": base["title"]}]
    others = same + differ
    f = pair_features([prepare(base)] * len(others), [prepare(x) for x in others], np.zeros(len(others)))
    assert f["same_part_number"].tolist() == [True] * len(same) + [False] * len(differ)
    assert [part_number_key(x) for x in ("KD-55X80K", "40320", "ea91", "black-xl", "n/a", "000-000", None,
                                         float("nan"))] == ["kd55x80k", "40320", "", "", "", "", "", ""]
    short = pair_features([prepare({"title": "a", "mpn": "ab1"})], [prepare({"title": "b", "mpn": "AB-1"})],
                          np.zeros(1))
    assert not short["same_part_number"].any()   # too short to name one product
    frame = pd.DataFrame({"same_listing": [False, False], "same_part_number": [True, False]})
    scores, flag = same_listing_floor(np.array([0.05, 0.3]), frame)
    assert scores.tolist() == [SAME_LISTING_SCORE, 0.3] and flag.tolist() == [True, False]


@pytest.mark.parametrize(("a", "b", "differ"), [
    ("Puma Men's Black T-shirt", "Puma Men's White T-shirt", True),            # two colours
    ("Titan Men Silver Dial Watch", "Titan Men Gold Dial Watch", True),
    ("Nike Men Navy Shorts", "Nike Men Blue Shorts", False),                  # one colour family
    ("Lee Men Grey Jeans", "Lee Men Silver-Grey Jeans", False),
    ("Diva Women Multi Coloured Kurta", "Diva Women Red Kurta", False),       # many colours: none in particular
    ("Sony Black Headphones", "Sony Headphones", False),                      # one side names no colour
    ("Puma Men Kuris Sports Shoes", "Puma Women Kuris Sports Shoes", True),    # men's and women's
    ("Fastrack Unisex Sunglasses", "Fastrack Men Sunglasses", False),         # a unisex product is for men
    ("Gini and Jony Kids Jeans", "Gini and Jony Girls Jeans", False),
    ("Gini and Jony Boys Jeans", "Gini and Jony Girls Jeans", True),
    ("Nintendo Game Boy Advance", "Pac-Man for Women", False),                # singulars name products
])
def test_titles_that_name_other_colours_or_genders_tell_of_different_products(a, b, differ):
    f = pair_features([prepare({"title": a})], [prepare({"title": b})], np.ones(1))
    assert bool(f["different_products"].iloc[0]) is differ


def test_a_title_that_names_nothing_beyond_its_brand_matches_nothing():
    """An empty title, a placeholder, or a title cut to its brand names no product: a pair with one never matches
    on what the scorers say, not even as the same listing twice; the same part number still does."""
    from models.matching.features import match_decisions
    from models.matching.text import names_product

    assert [names_product(t, b) for t, b in [("Samsung", "Samsung"), ("", "Sony"), ("N/A", None), (None, None),
                                             ("NEW", None), ("United Colors of Benetton", "United Colors of Benetton"),
                                             ("Samsung TV", "samsung"), ("Quill", None), ("mediarecover", "allume")]
            ] == [False, False, False, False, False, False, True, True, True]
    samsung = {"title": "Samsung", "brand": "Samsung"}
    tv = {"title": "Samsung TV UE55", "brand": "Samsung"}
    left = [samsung, {"title": "", "brand": "Sony"}, dict(samsung, mpn="UE55TU7100"), tv]
    right = [samsung, {"title": "", "brand": "Sony"}, dict(samsung, mpn="UE-55TU7100"), tv]
    f = pair_features([prepare(x) for x in left], [prepare(x) for x in right], np.ones(4))
    assert f["different_products"].tolist() == [True, True, True, False]
    assert f["same_listing"].tolist() == [False, False, False, True]

    class Everything:   # a scorer that matches every pair
        def is_match(self, scores):
            return np.ones(len(scores), bool)

    scores, matched = match_decisions(np.full(4, 0.95), f, np.arange(4), Everything())
    assert matched.tolist() == [False, False, True, True]   # the part number, and a title that names a product
    assert scores.tolist() == [0.95, 0.95, SAME_LISTING_SCORE, SAME_LISTING_SCORE]


def test_brands_that_disagree_need_the_conflict_floor():
    """Like model numbers that disagree, brands that both listings give and that disagree make a pair a match only
    at the cross-encoder's conflict floor; a brand on one side only, or brands that agree, keep its threshold."""
    from models.matching.cross import CrossEncoder

    model = CrossEncoder(None, None, None, max_length=16, calibration=(1.0, 0.0), threshold=0.2)
    f = pair_features([prepare({"title": "Titan Men Black Dial Watch", "brand": "Titan"})] * 3,
                      [prepare({"title": "Timex Men Black Dial Watch", "brand": b}) for b in ("Timex", None, "titan")],
                      np.ones(3))
    assert f["brand_match"].tolist() == [False, None, True]
    assert model.is_match(np.full(3, 0.6), f).tolist() == [False, True, True]
    assert model.is_match(np.full(3, 0.95), f).tolist() == [True, True, True]
    assert model.is_match(np.full(3, 0.6)).tolist() == [True, True, True]   # without the evidence: the threshold


def candidate_rows(rows: list[dict], cosine: float) -> pd.DataFrame:
    """The score step's candidate rows for ``rows`` (``a, b`` and both sides' title, brand and price): no currency,
    no photos, the title and fused cosines ``cosine``."""
    frame = pd.DataFrame(rows)
    frame["currency_a"] = frame["currency_b"] = None
    frame["fused_cosine"] = frame["text_cosine"] = np.float32(cosine)
    frame["image_cosine"] = np.float32(np.nan)
    frame["blocking"] = "ann"
    return frame


def test_the_score_step_matches_a_software_listing_with_its_copy():
    """The job's score step (the shipped feature scorer and cross-encoder) matches each listing with an exact copy
    of itself at SAME_LISTING_SCORE or more: the cross-encoder alone, trained on labels that call many such copies
    different products, scored some of these under its threshold. A copy at another price keeps the scorers' own
    score."""
    import udfs.matching as um
    from jobs.stages.matching import resolve_matching, resolve_pair_model

    listings = [("sound forge audio studio 9", "sony media", 69.59), ("adobe photoshop cs3", "adobe", 649.0),
                ("microsoft office 2007 professional", None, 329.0), ("macbackup", "macware", 29.99),
                ("pc tools spyware doctor 2007", "encore", 29.95)]
    rows = [{"a": f"p{i}", "b": f"q{i}", "title_a": t, "brand_a": br, "price_a": pr, "title_b": t, "brand_b": br,
             "price_b": pr} for i, (t, br, pr) in enumerate(listings)]
    rows.append({"a": "p9", "b": "q9", "title_a": "ares rising", "brand_a": "interplay", "price_a": 69.95,
                 "title_b": "ares rising", "brand_b": None, "price_b": 29.95})
    frame = candidate_rows(rows, cosine=1.0)

    scorer = load_scorer(resolve_matching("auto"))
    spec = um.CrossSpec(str(resolve_pair_model("auto")), precision="fp32")
    got = pd.concat(um.make_score_fn(scorer.version, scorer.to_json(), keep_all=True, cross=spec)(iter([frame])))
    by_pair = dict(zip(got["product_id_a"], got["score"], strict=True))
    assert all(by_pair[f"p{i}"] >= SAME_LISTING_SCORE for i in range(len(listings)))
    matches = pd.concat(um.make_score_fn(scorer.version, scorer.to_json(), cross=spec)(iter([frame])))
    assert {f"p{i}" for i in range(len(listings))} <= set(matches["product_id_a"])

    f, s = um._features(frame.iloc[[-1]].reset_index(drop=True), scorer)   # the copy at another price
    own = um._cross(spec).score(um._serialised(frame.iloc[[-1]], "a"), um._serialised(frame.iloc[[-1]], "b"), f) \
        if s[0] >= spec.prefilter else s
    assert not f["same_listing"].iloc[0] and by_pair["p9"] == pytest.approx(float(own[0]), abs=1e-5)


def test_the_score_step_keeps_apart_listings_that_tell_of_different_products():
    """With the shipped scorers, which matched each of these pairs of different products before the rule
    (scores 0.27-0.94): another colour, another gender, another brand, titles cut to the brand, empty titles. A
    seller's rewording of one product, with its colour and gender, still matches."""
    import udfs.matching as um
    from jobs.stages.matching import resolve_matching, resolve_pair_model

    pairs = [("Puma Men's Sless Black T-shirt", None, "Puma Men's Ferrari White T-shirt", None),
             ("Nike Men Solid Black T-shirt", None, "Nike Women Solid Black T-shirt", None),
             ("Estd. 1977 Men Black Sandals", "Estd. 1977", "Coolers Men Black Sandals", "Coolers"),
             ("Samsung", "Samsung", "Samsung", "Samsung"), ("", "Samsung", "", "Samsung"),
             ("Fjord Cap for Kids - Yellow (FJ-7521)", "Fjord", "NEW FJORD cap yellow FJ-7521 kids", "Fjord")]
    frame = candidate_rows([{"a": f"p{i}", "b": f"q{i}", "title_a": ta, "brand_a": ba, "price_a": None, "title_b": tb,
                          "brand_b": bb, "price_b": None} for i, (ta, ba, tb, bb) in enumerate(pairs)], cosine=0.95)
    scorer = load_scorer(resolve_matching("auto"))
    spec = um.CrossSpec(str(resolve_pair_model("auto")), precision="fp32")
    matches = pd.concat(um.make_score_fn(scorer.version, scorer.to_json(), cross=spec)(iter([frame])))
    assert set(matches["product_id_a"]) == {f"p{len(pairs) - 1}"}


def _walk(trees, row: np.ndarray) -> float:
    """One row through each tree node by node, as scikit-learn's float32 rule reads it (NaN fails ``<=``)."""
    total = 0.0
    for node in trees.roots:
        while trees.left[node] >= 0:
            v = np.float64(np.float32(row[trees.feature[node]]))
            node = trees.left[node] if v <= trees.threshold[node] else trees.right[node]
        total += trees.value[node]
    return trees.bias + trees.rate * total


def test_scorer_trees_follow_scikit_learn_at_the_thresholds_and_on_nan():
    from sklearn.ensemble import GradientBoostingClassifier

    from models.matching.train import _to_trees

    rng = np.random.default_rng(5)
    x = rng.random((800, 4))
    x[:, 1] = np.round(x[:, 1], 1)   # ties: many rows sit exactly on a split
    y = ((x[:, 0] + x[:, 1] > 1.0) ^ (rng.random(800) < 0.1)).astype(int)
    gb = GradientBoostingClassifier(n_estimators=30, max_depth=4, init="zero", random_state=0).fit(x, y)
    trees = _to_trees(gb, 4)
    probe = rng.random((300, 4))
    for j in range(4):   # rows exactly at a threshold, in float64 and as the float32 just above and below it
        th = trees.threshold[(trees.feature == j) & (trees.left >= 0)]
        probe[:100, j] = rng.choice(th, 100)
        probe[100:150, j] = np.nextafter(rng.choice(th, 50).astype(np.float32), np.float32(1))
        probe[150:200, j] = np.nextafter(rng.choice(th, 50).astype(np.float32), np.float32(-1))
    np.testing.assert_allclose(trees.raw(probe), gb.decision_function(probe), rtol=0, atol=1e-9)
    probe[::3, 1] = np.nan
    probe[1::5, 0] = np.nan
    assert np.allclose(trees.raw(probe), [_walk(trees, r) for r in probe], rtol=0, atol=1e-12)
    assert trees.raw(np.zeros((0, 4))).shape == (0,)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_scorer_trees_as_complete_trees_give_the_node_walks_log_odds_bit_for_bit(depth):
    """The complete-tree evaluation (shallow trees, rows in chunks) against the node-by-node walk, on trees with
    leaves above the last level, rows on the thresholds, NaN, and more rows than a chunk."""
    from sklearn.ensemble import GradientBoostingClassifier

    from models.matching import scorer as scorer_mod
    from models.matching.train import _to_trees

    rng = np.random.default_rng(depth)
    x = rng.random((600, 5))
    x[:, 2] = np.round(x[:, 2], 1)
    y = ((x[:, 0] * x[:, 1] > 0.25) ^ (rng.random(600) < 0.1)).astype(int)
    gb = GradientBoostingClassifier(n_estimators=25, max_depth=depth, min_samples_leaf=40, init="zero",
                                    random_state=0).fit(x, y)
    trees = _to_trees(gb, 5)
    inner = trees.left >= 0
    probe = rng.random((2 * scorer_mod.HEAP_CHUNK + 77, 5))
    for j in range(5):
        th = trees.threshold[(trees.feature == j) & inner]
        if len(th):
            probe[: 300, j] = rng.choice(th, 300)
    probe[::7, 1] = np.nan
    walk = scorer_mod.Trees(trees.roots, trees.feature, trees.threshold, trees.left, trees.right, trees.value,
                            trees.rate, trees.bias)
    walk.__dict__["_heap"] = None   # the node walk (a cached property, set before its first use)
    heap = trees._heap
    assert (heap is not None) == (depth <= scorer_mod.HEAP_MAX_DEPTH)
    if depth > 2:   # min_samples_leaf leaves some leaves above the last level: the filling is exercised
        assert inner.sum() < len(trees.roots) * (2 ** depth - 1)
    got, want = trees.raw(probe), walk.raw(probe)
    assert np.array_equal(got, want)
    assert np.allclose(got[~np.isnan(probe).any(axis=1)],
                       gb.decision_function(probe[~np.isnan(probe).any(axis=1)]), rtol=0, atol=1e-9)


def _toy_pairs(n: int, seed: int) -> pd.DataFrame:
    """Feature rows where matches share a model number and have high cosine, with label noise."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    df = pd.DataFrame({f: rng.random(n) for f in FEATURES})
    df["model_shared"] = np.where(y, rng.random(n) < 0.9, rng.random(n) < 0.05).astype(float)
    df["text_cosine"] = np.clip(np.where(y, 0.8, 0.5) + 0.15 * rng.standard_normal(n), -1, 1)
    df["label"] = np.where(rng.random(n) < 0.05, ~y, y).astype(int)
    return df


def test_scorer_trains_calibrates_round_trips_and_is_checksummed(tmp_path):
    train, valid = _toy_pairs(3000, 0), _toy_pairs(1000, 1)
    cfg = ScorerTrainConfig(n_trees=40, folds=3)
    s = train_pair_scorer(train, valid, cfg, meta={"encoder_version": "toy"})
    scores = s.score(valid)
    assert scores.min() >= 0 and scores.max() <= 1
    assert prf(valid["label"], s.is_match(scores))["f1"] > 0.8
    assert s.meta["metrics"]["valid_f1"] == pytest.approx(prf(valid["label"], s.is_match(scores))["f1"])
    # Calibrated: among pairs scored around p, about p are matches.
    hi = scores > 0.8
    assert valid["label"][hi].mean() > 0.75 and valid["label"][scores < 0.2].mean() < 0.25
    back = PairScorer.from_json(s.to_json())
    assert np.array_equal(back.score(valid), scores) and back.threshold == s.threshold

    root = tmp_path / "store"
    version = save_scorer(root, s, training_data="toy")
    promote_scorer(root, version)
    loaded = load_scorer(root)
    assert loaded.version == version and np.array_equal(loaded.score(valid), scores)
    assert load_scorer(root / version).version == version
    again = [save_scorer(root, s, training_data="toy") for _ in range(3)]   # the same scorer, within a second
    assert len({version, *again}) == 4 and all(load_scorer(root / v).version == v for v in again)
    path = root / version / "scorer.json"
    path.write_text(path.read_text().replace('"threshold": ', '"threshold": 0.0001 + '))
    with pytest.raises(ModelIntegrityError, match="sha256 does not match"):
        load_scorer(root)
    (root / version / "scorer.pkl").write_bytes(b"\x80")
    with pytest.raises(ModelIntegrityError, match="not in the manifest"):
        load_scorer(root / version)


def test_scorer_refuses_other_features_and_bad_files():
    s = train_pair_scorer(_toy_pairs(600, 2), _toy_pairs(300, 3), ScorerTrainConfig(n_trees=5, folds=2))
    d = json.loads(s.to_json())
    with pytest.raises(ValueError, match="retrain it"):
        PairScorer.from_json(json.dumps(dict(d, features=d["features"][:-1])), expected_features=FEATURES)
    with pytest.raises(ValueError, match="not a pair scorer"):
        PairScorer.from_json(json.dumps(dict(d, format="other")))
    with pytest.raises(ValueError, match="missing"):
        s.score(pd.DataFrame({"text_cosine": [0.5]}))


def test_shipped_scorer_loads_and_separates_the_obvious_cases():
    s = load_scorer()
    a = {"title": "Kestrel Unisex Black Watch KE-8301", "brand": "Kestrel", "price": 142.45, "currency": "EUR"}
    b = {"title": "Watch Kestrel Black KE8301 Unisex", "brand": "KESTREL", "price": 140.49, "currency": "EUR"}
    c = {"title": "Kestrel Unisex Black Watch KE-4417", "brand": "Kestrel", "price": 210.0, "currency": "EUR"}
    f = pair_features([prepare(a), prepare(a)], [prepare(b), prepare(c)], np.array([0.9, 0.97]))
    match, other = s.score(f)
    assert match >= s.threshold > other


def test_best_threshold_maximises_f1():
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    t, f1 = best_threshold(y, s)
    assert t == 0.6 and f1 == pytest.approx(prf(y, s >= t)["f1"])
    assert all(prf(y, s >= u)["f1"] <= f1 + 1e-12 for u in s)


def _clustered(n_groups: int, per: int, d: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, d))
    x = np.repeat(centres, per, axis=0) + noise * rng.standard_normal((n_groups * per, d))
    ids = [f"p{i:05d}" for i in range(len(x))]
    groups = np.repeat(np.arange(n_groups), per)
    return ids, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), groups


def test_block_search_is_exact_within_a_cell():
    ids, x, _ = _clustered(20, 3, 16, 0.3, 0)
    qi, ji, cos = block_search(ids, x, ids, x, k=2, min_cosine=-1.0)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    expect = {(i, j) for i in range(len(ids)) for j in np.argsort(-sims[i])[:2]}
    assert set(zip(qi.tolist(), ji.tolist(), strict=True)) == expect
    assert np.allclose(cos, sims[qi, ji], atol=1e-5)
    assert all(i != j for i, j in zip(qi, ji, strict=True))


def test_blocking_finds_the_duplicates_with_far_fewer_pairs():
    ids, x, groups = _clustered(300, 3, 32, 0.25, 1)
    cfg = BlockingConfig(block_size=100, probes=2, neighbours=5, min_cosine=0.3)
    cand = candidate_pairs(ids, x, [""] * len(ids), cfg)
    found = set(zip(cand["a"], cand["b"], strict=True))
    true = {(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids)) if groups[i] == groups[j]}
    assert len(true & found) / len(true) > 0.97
    assert len(cand) < 0.02 * len(ids) * (len(ids) - 1) / 2
    assert (cand["a"] < cand["b"]).all() and not cand.duplicated(["a", "b"]).any()
    assert kmeans(x, 9, seed=3).shape == (9, 32) and np.array_equal(kmeans(x, 9, seed=3), kmeans(x, 9, seed=3))
    top = assign(x[:5], kmeans(x, 9), 3)
    assert top.shape == (5, 3) and all(len(set(r)) == 3 for r in top.tolist())


def test_code_pairs_skip_unspecific_keys_and_respect_queries():
    ids = ["a", "b", "c", "d"]
    titles = ["Shirt AB-1234", "AB1234 shirt", "Mug XY-9999", "Mug XY9999 large"]
    assert code_pairs(ids, titles, 10) == {("a", "b"), ("c", "d")}
    assert code_pairs(ids, titles, 10, queries={"d"}) == {("c", "d")}
    assert code_pairs(ids, titles, 1) == set()


def test_clusters_use_the_smallest_id_and_guard_giant_components():
    nodes = [f"n{i:02d}" for i in range(12)]
    chain = [(nodes[i], nodes[i + 1]) for i in range(7)]         # n00..n07 chained: a component of 8
    scores = [0.95, 0.95, 0.5, 0.95, 0.95, 0.5, 0.95]
    pair = [("n09", "n10")]
    a = [e[0] for e in chain + pair]
    b = [e[1] for e in chain + pair]
    # Every match links (no margin, no split): the components and the guard alone.
    plain = {"min_score": 0.0, "margin": None, "linkage": None}
    got = cluster(nodes, a, b, scores + [0.6], ClusterConfig(max_size=5, strict_thresholds=(0.9,), **plain))
    assert got.cluster_id["n10"] == "n09" and got.guard["n10"] is None and got.cluster_id["n11"] == "n11"
    assert [got.cluster_id[n] for n in nodes[:8]] == ["n00"] * 3 + ["n03"] * 3 + ["n06"] * 2
    assert all(got.guard[n] == "strict:0.9" for n in nodes[:8])
    strict = cluster(nodes, a, b, scores + [0.6], ClusterConfig(max_size=2, strict_thresholds=(0.9,), **plain))
    assert strict.guard["n00"] == "dissolved" and strict.cluster_id["n01"] == "n01"
    assert strict.cluster_id["n07"] == "n06" and strict.guard["n07"] == "strict:0.9"
    assert connected_components(["x"], [("c", "b"), ("b", "a")]) == {"x": "x", "a": "a", "b": "a", "c": "a"}


def test_pairwise_prf():
    truth = {"a": "1", "b": "1", "c": "1", "d": "2"}
    pred = {"a": "x", "b": "x", "c": "y", "d": "y"}
    m = pairwise_prf(pred, truth)  # predicted pairs ab, cd; true pairs ab, ac, bc
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(1 / 3)


def _tiny_benchmarks(root):
    """Files shaped like shared/data/matching, with made-up products (a few dozen pairs per benchmark)."""
    from models.matching.data import BENCHMARKS

    rng = np.random.default_rng(0)
    kinds = ["shirt", "watch", "mug", "camera", "drive", "remote"]
    prods = [(f"{rng.choice(['acme', 'zeta', 'nova'])} {rng.choice(kinds)} {rng.choice(kinds)} "
              f"{chr(97 + i % 26)}{chr(97 + i // 26)}-{1000 + i}", float(10 + i)) for i in range(60)]

    def relist(t):
        words = t.split()
        return " ".join(words[1:] + words[:1]).upper()

    rows = []
    for split in ("train", "valid"):
        for i in range(0, 60, 2 if split == "train" else 3):
            j = (i + 7) % 60
            rows.append((split, 1, prods[i][0], relist(prods[i][0]), prods[i][1], prods[i][1] * 1.02, i, i))
            rows.append((split, 0, prods[i][0], relist(prods[j][0]), prods[i][1], prods[j][1], i, j))
    df = pd.DataFrame(rows, columns=["split", "label", "lt", "rt", "lp", "rp", "lc", "rc"])
    for b in BENCHMARKS.values():
        path = root / b.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if "{split}" in b.path:
            for split, name in zip(("train", "valid"), b.splits, strict=True):
                d = df[df["split"] == split]
                pd.DataFrame({"id_left": d["lc"] * 10, "title_left": d["lt"], "brand_left": None,
                              "price_left": d["lp"].astype(str), "priceCurrency_left": "EUR",
                              "cluster_id_left": d["lc"], "id_right": d["rc"] * 10 + 1, "title_right": d["rt"],
                              "brand_right": None, "price_right": d["rp"].astype(str), "priceCurrency_right": "EUR",
                              "cluster_id_right": d["rc"], "label": d["label"]}).to_parquet(
                                  root / b.path.format(split=name))
        else:
            out = {"split": df["split"], "label": df["label"]}
            for side, t, pr, c in (("left", "lt", "lp", "lc"), ("right", "rt", "rp", "rc")):
                out[f"{side}_{b.title}"] = df[t]
                if b.brand:
                    out[f"{side}_{b.brand}"] = ""
                out[f"{side}_{b.price}"] = df[pr].astype(str)
                out[f"{side}_serialized"] = df[t] + " " + df[pr].astype(str)
                if b.mpn:   # a part number the title lacks on every third product, none on the rest
                    out[f"{side}_{b.mpn}"] = [f"PN-{k}X" if k % 3 == 0 else "" for k in df[c]]
            pd.DataFrame(out).to_parquet(path)


def _hash_embed(texts):
    """Bag-of-words hashed into 64 dimensions: similar titles get similar vectors."""
    import zlib

    from models.matching.text import tokens

    out = np.zeros((len(texts), 64), np.float32)
    for i, t in enumerate(texts):
        for w in tokens(t):
            out[i, zlib.crc32(w.encode()) % 64] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_evaluation_runs_end_to_end_on_benchmark_shaped_files(tmp_path):
    from models.matching.data import BENCHMARKS, TitleVectors, featurize, load_offers, load_pairs
    from models.matching.evaluate import evaluate_all, to_markdown

    data = tmp_path / "data"
    _tiny_benchmarks(data)
    vectors = TitleVectors(_hash_embed, "hash-64", tmp_path / "cache")
    train = pd.concat([featurize(load_pairs(data, b, BENCHMARKS[b].splits[0]), vectors) for b in BENCHMARKS])
    valid = pd.concat([featurize(load_pairs(data, b, BENCHMARKS[b].splits[1]), vectors) for b in BENCHMARKS])
    scorer = train_pair_scorer(train, valid, ScorerTrainConfig(n_trees=20, folds=2))
    r = evaluate_all(str(data), scorer, vectors, BlockingConfig(block_size=20, neighbours=3, min_cosine=0.0))
    for name, d in r["pairs"]["datasets"].items():
        base = name.removesuffix(" + mpn")
        assert d["pairs"] == len(load_pairs(data, base, BENCHMARKS[base].splits[1]))
        assert 0 <= d["ours"]["f1"] <= d["best_threshold_f1"] + 1e-9 <= 1 + 1e-9
        if name in BENCHMARKS:
            assert r["blocking"][name]["pair_completeness"] > 0.5  # shared model numbers are lexical keys
    # the benchmark with part numbers is read a second time with them, outside the pooled figures
    assert set(r["pairs"]["datasets"]) == set(BENCHMARKS) | {"walmart_amazon + mpn"}
    assert r["pairs"]["pooled"]["pairs"] == sum(r["pairs"]["datasets"][b]["pairs"] for b in BENCHMARKS)
    c = r["wdc_clusters"]
    assert c["offers"] == len(load_offers(data, BENCHMARKS["wdc_products"].splits[1])) and c["ours"]["recall"] > 0.5
    md = to_markdown(r, "python -m models.matching.evaluate ...")
    assert "| abt_buy | valid |" in md and "89.3" in md and "pair completeness" in md and "pairwise F1" in md
    sellers = r["sellers"]["datasets"]
    assert set(sellers) == set(BENCHMARKS) and all(v["the same listing again"]["ours"] == 1.0 for v in sellers.values())
    assert all(0 <= x[k] <= 1 for v in sellers.values() for x in v.values() for k in ("ours", "baseline"))
    assert "| words in reverse order |" in md
    others = r["sellers"]["other_products"]
    assert set(others) == set(BENCHMARKS)
    assert all(0 <= x["ours"] <= 1 and 1 <= x["records"] <= r["sellers"]["records"]
               for v in others.values() for x in v.values())
    assert "| another model code (its last digit changed) |" in md
    assert (tmp_path / "cache" / "hash-64" / "titles.parquet").is_file()  # embeddings are cached


def test_part_numbers_are_read_into_the_titles_as_the_job_reads_them(tmp_path):
    """``load_pairs(..., mpn=True)`` writes Walmart-Amazon's part numbers into the titles that lack them, by the
    job's rule; the other benchmarks load as without it; and the evaluation's features keep the embedding cosine
    of the plain titles, as the job embeds the plain title."""
    from models.matching.data import TitleVectors, featurize, load_pairs
    from models.matching.evaluate import with_part_numbers

    data = tmp_path / "data"
    _tiny_benchmarks(data)
    plain, numbered = (load_pairs(data, "walmart_amazon", "valid", mpn=m) for m in (False, True))
    raw = pd.read_parquet(data / "er_magellan" / "walmart_amazon_structured.parquet").query("split == 'valid'")
    for side in ("left", "right"):
        got, was, number = numbered[f"{side}_title"], plain[f"{side}_title"], raw[f"{side}_modelno"].to_numpy()
        assert list(got) == [t if not n else f"{t} {n}" for t, n in zip(was, number, strict=True)]
    assert (numbered["left_title"] != plain["left_title"]).any() and (number == "").any()
    assert numbered["left_id"].equals(plain["left_id"])   # the same records
    abt = load_pairs(data, "abt_buy", "valid", mpn=True)
    assert abt.equals(load_pairs(data, "abt_buy", "valid"))
    vectors = TitleVectors(_hash_embed, "hash-64", tmp_path / "cache")
    pairs, feats = with_part_numbers(str(data), "walmart_amazon", "valid", vectors)
    assert pairs.equals(numbered)
    assert np.allclose(feats["text_cosine"], featurize(plain, vectors)["text_cosine"])
    assert not np.allclose(featurize(numbered, vectors)["text_cosine"], feats["text_cosine"])
    assert not feats["token_jaccard"].equals(featurize(plain, vectors)["token_jaccard"])
    # the numbers are read beside the titles too, as the job's same-part-number rule reads them
    assert numbered["left_mpn"].notna().any() and "left_mpn" not in plain
    assert feats["same_part_number"].any() and (feats.loc[feats["same_part_number"], "label"] == 1).all()
    assert not featurize(plain, vectors)["same_part_number"].any()


def test_the_cross_encoder_trains_and_calibrates_with_the_part_numbers_only_when_asked(tmp_path):
    from models.matching.cross_train import CrossTrainConfig, load_training_pairs

    data = tmp_path / "data"
    _tiny_benchmarks(data)
    (plain_tr, plain_va), (tr, va) = (load_training_pairs(data, CrossTrainConfig(source_neighbours=2, mpn=m))
                                      for m in (False, True))

    def walmart(df):
        return df["dataset"].str.startswith("walmart_amazon")

    def numbered(df):
        return (df["a"] + df["b"]).str.contains("PN-")

    assert not numbered(plain_tr).any() and not numbered(plain_va).any()
    for part in (tr[~tr["calibration"]], tr[tr["calibration"]], va, tr[tr["dataset"] == "walmart_amazon_mined"]):
        assert numbered(part[walmart(part)]).any()
    assert not numbered(tr[~walmart(tr)]).any() and not numbered(va[~walmart(va)]).any()
    assert len(va) == len(plain_va) and va[~walmart(va)].equals(plain_va[~walmart(plain_va)])


def test_other_product_copies_change_the_model_code_or_the_number_and_skip_titles_without_one():
    """The evaluation's near-identical other products: the model code with the most digits one digit off, or the
    first number standing alone one higher; nothing else in the listing changes, and a title without one is left out."""
    from models.matching.evaluate import OTHER_PRODUCTS

    code, number, colour = OTHER_PRODUCTS.values()
    r = {"id": 1, "title": "Sony KDL-40EX500 40 inch LCD TV, 240-pin", "brand": "sony", "price": 499.0}
    assert code(r) == dict(r, title="Sony KDL-40EX501 40 inch LCD TV, 240-pin")
    assert number(r) == dict(r, title="Sony KDL-40EX500 41 inch LCD TV, 240-pin")
    assert number({"title": "sound forge audio studio 9"})["title"] == "sound forge audio studio 10"
    assert code({"title": "Kestrel Watch KE-8309"})["title"] == "Kestrel Watch KE-8300"
    assert code({"title": "adobe illustrator cs3 for mac win32"}) is None     # no code with 3 digits
    assert number({"title": "Kestrel Watch KE-8301 v2.5"}) is None            # numbers inside codes do not count
    assert colour(r) is None                                                  # no colour word
    assert colour({"title": "Kestrel Black Watch, black strap"})["title"] == "Kestrel White Watch, black strap"
    assert colour({"title": "GREY Hoodie"})["title"] == "GOLD Hoodie"
    assert colour({"title": "gray hoodie"})["title"] == "gold hoodie"    # gray and grey: one colour, never kept
    assert colour({"title": "BlackBerry Bold 9700"}) is None                  # a word, not a colour


def test_the_colour_row_is_held_out_from_the_training_copies():
    """No other-product copy of training (--other-share) swaps a colour word: the evaluation's colour row reads a
    kind of other product the cross-encoder was never shown."""
    import random

    from models.matching.cross_train import other_product
    from models.matching.evaluate import COLOUR_SWAPS

    rng = random.Random(0)
    titles = [f"Acme {c} Kettle KT-{n}00 {n} litre" for c in COLOUR_SWAPS for n in range(1, 6)]
    for t in titles:
        out = other_product(t, rng)
        assert out is not None and out != t
        assert [w for w in out.split() if w in COLOUR_SWAPS] == [w for w in t.split() if w in COLOUR_SWAPS]


@pytest.mark.slow
def test_retrain_scorer_promotes_only_a_better_scorer(tmp_path):
    from models.matching.train import retrain_scorer

    data = tmp_path / "data"
    _tiny_benchmarks(data)
    kw = {"store": tmp_path / "store", "encoder_ref": "builtin:catalog-tiny-minilm", "cache_dir": tmp_path / "cache",
          "cfg": ScorerTrainConfig(n_trees=20, folds=2)}
    first = retrain_scorer(str(data), **kw)
    assert first["promoted"] and first["champion"] is None
    assert load_scorer(tmp_path / "store").version == first["version"]
    assert load_scorer(tmp_path / "store").meta["encoder_version"].startswith("catalog-tiny-minilm")
    second = retrain_scorer(str(data), **kw)  # the same data and seed: no better, so not promoted
    assert not second["promoted"] and second["champion"] == first["version"]
    assert second["valid_f1"] == pytest.approx(second["champion_valid_f1"])
    assert load_scorer(tmp_path / "store").version == first["version"]


def test_scorer_rewritten_with_its_manifest_fails_the_name_digest(tmp_path):
    from models.digest import sha256_file

    s = train_pair_scorer(_toy_pairs(600, 4), _toy_pairs(300, 5), ScorerTrainConfig(n_trees=5, folds=2))
    version = save_scorer(tmp_path, s, training_data="toy")
    vdir = tmp_path / version
    path = vdir / "scorer.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), threshold=0.0001)) + "\n")   # loads fine
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["scorer.json"] = sha256_file(path)
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match=r"the digest in its name \([0-9a-f]{10}\) does not match"):
        load_scorer(vdir)
