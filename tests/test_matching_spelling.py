"""A catalog's own spelling: a mistyped title word read as the catalog's word one edit away before pairs are scored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.matching.spelling import CatalogSpelling, catalog_words

CATALOG = ["Microsoft Office 2007 Student", "Microsoft Office Mac 2008", "Microsoft Windows Vista",
           "SanDisk Cruzer Blade 8GB", "SanDisk Cruzer Blade 16GB", "Zalman CNPS9700NT Cooler",
           "Zalman CNPS9700LED Cooler", "Nikon Coolpix P500", "Nikon Coolpix P510", "Pliancy watch", "Plaincy watch"]


def test_the_catalog_counts_its_words_of_four_letters_or_more_and_knows_those_written_twice():
    counts = catalog_words([*CATALOG, None, 7])
    assert counts["microsoft"] == 3 and counts["cnps"] == 2 and "mac" not in counts and "gb" not in counts
    spelling = CatalogSpelling.from_titles(CATALOG)
    assert set(spelling.known) == {"microsoft", "office", "sandisk", "cruzer", "blade", "zalman", "cnps",
                                   "cooler", "nikon", "coolpix", "watch"}


@pytest.mark.parametrize("typed, read", [
    ("Micrsoft Office 2007", "microsoft Office 2007"),       # a letter dropped
    ("SanDisk Cruzer Bladde 8GB", "SanDisk Cruzer blade 8GB"),  # a letter added
    ("Nikon Coolpox P500", "Nikon coolpix P500"),            # a letter changed
    ("Zalman CNPS9700NT Cooelr", "Zalman CNPS9700NT cooler"),  # two neighbours swapped
])
def test_a_mistyped_word_is_read_as_the_catalogs_word(typed, read):
    assert CatalogSpelling.from_titles(CATALOG).title(typed) == read


def test_model_codes_short_words_rare_names_and_non_strings_are_read_as_written():
    spelling = CatalogSpelling.from_titles(CATALOG)
    for title in ("Zalman CNPS9700N Cooler", "Zalman CNPZ-9700 Cooler", "Nikon Cool-pix P500", "Vista Home Mac",
                  "Plaincy watch", "Pliancy watch", ""):
        assert spelling.title(title) == title   # codes; hyphenated; three letters; two names each written once
    assert spelling.title(None) is None and np.isnan(spelling.title(float("nan")))
    assert CatalogSpelling.from_titles([]).title("Micrsoft") == "Micrsoft"


def test_the_most_frequent_of_two_known_words_one_edit_away_wins():
    spelling = CatalogSpelling.from_titles(["black watch"] * 5 + ["black match"] * 2)
    assert spelling.title("Black Wxtch") == "Black watch" and spelling.title("Black Mxtch") == "Black match"
    assert spelling.title("Black Xatch") == "Black watch"   # one edit from both: the more frequent


def test_the_score_step_reads_both_titles_as_the_catalog_spells_them():
    """A listing against a copy of itself with a typo in one word: with the catalog's spelling the score step scores
    the pair as the listing against itself; without it the typo costs the pair its score."""
    import udfs.matching as um
    from jobs.stages.matching import resolve_matching
    from models.matching.artifact import load_scorer

    titles = ["Microsoft Office 2007 Student", "Microsoft Office 2007 Stuednt", "Microsoft Office 2007 Student"]
    frame = pd.DataFrame({
        "a": ["p1", "p1"], "b": ["p2", "p3"], "fused_cosine": [0.9, 0.9], "text_cosine": [0.9, 0.9],
        "image_cosine": [np.nan, np.nan], "blocking": ["ann", "ann"], "title_a": [titles[0]] * 2,
        "brand_a": ["Microsoft"] * 2, "price_a": [99.0, 99.0], "currency_a": ["USD"] * 2,
        "title_b": titles[1:], "brand_b": ["Microsoft"] * 2, "price_b": [99.0, 99.0], "currency_b": ["USD"] * 2})
    scorer = load_scorer(resolve_matching("auto"))
    spelling = CatalogSpelling.from_titles(["Microsoft Office 2007 Student", "Microsoft Office Student 2010"])
    plain = pd.concat(um.make_score_fn(scorer.version, scorer.to_json(), keep_all=True)(iter([frame])))
    read = pd.concat(um.make_score_fn(scorer.version, scorer.to_json(), keep_all=True, spelling=spelling)(
        iter([frame])))
    assert read["score"].iloc[0] == pytest.approx(read["score"].iloc[1])      # the typo read back
    assert plain["score"].iloc[0] < plain["score"].iloc[1]                    # as written, the typo costs
    assert read["score"].iloc[1] == pytest.approx(plain["score"].iloc[1])    # a clean pair is scored as before


def test_titles_that_three_listings_write_alike_are_shared():
    """A title written by three or more listings (letters and digits, case and punctuation aside) is shared; two
    are not; empty titles never are."""
    from models.matching.spelling import shared_title_keys

    titles = ["Quill", "quill", "QUILL!", "Nike Men Black T-Shirt", "nike men black tshirt", "", "", "", None, "-"]
    assert shared_title_keys(titles) == frozenset({"quill"})
    spelling = CatalogSpelling.from_titles(titles)
    assert spelling.shared_titles(["Quill", "Q-uill", "Nike Men Black T-shirt", "", None]).tolist() == [
        True, True, False, False, False]
    assert not CatalogSpelling.from_titles(CATALOG).shared_titles(CATALOG).any()


@pytest.mark.spark
def test_the_spark_path_counts_the_catalogs_words_and_shared_titles_as_pandas_does(spark):
    from jobs.stages.matching import _spelling

    titles = [*CATALOG, "Quill", "quill", "QUILL!", "Nike Men Black T-Shirt", "nike men black tshirt", "", None,
              *LEADS_CATALOG, "- Pokémon!", "3 Nike"]
    flagged = spark.createDataFrame(pd.DataFrame({"title": titles}), "title string")
    on_spark, on_driver = _spelling(flagged=flagged), _spelling(titles=pd.Series(titles))
    assert on_spark.known == on_driver.known and on_spark.shared == on_driver.shared == frozenset({"quill"})
    assert on_spark.leads == on_driver.leads == frozenset({"microsoft", "quill", "fila", "lotto", "pokemon", "wd",
                                                           "western", "hdd", "flia"})


def test_a_listing_whose_title_the_catalog_shares_is_matched_by_its_part_number_only():
    """Three listings titled "Quill" (a catalog whose titles were cut to the brand) are not the same product for
    it, not even as the same listing twice; with the same part number two of them are."""
    import udfs.matching as um
    from jobs.stages.matching import resolve_matching
    from models.matching.artifact import load_scorer

    frame = pd.DataFrame({
        "a": ["p1", "p1"], "b": ["p2", "p3"], "fused_cosine": [0.99, 0.99], "text_cosine": [1.0, 1.0],
        "image_cosine": [np.nan, np.nan], "blocking": ["ann", "ann"], "title_a": ["Quill"] * 2,
        "brand_a": [None] * 2, "price_a": [None] * 2, "currency_a": [None] * 2, "mpn_a": ["QU-7101"] * 2,
        "title_b": ["Quill"] * 2, "brand_b": [None] * 2, "price_b": [None] * 2, "currency_b": [None] * 2,
        "mpn_b": ["QU-9999", "QU7101"]})
    scorer = load_scorer(resolve_matching("auto"))
    score = um.make_score_fn(scorer.version, scorer.to_json(),
                             spelling=CatalogSpelling.from_titles(["Quill"] * 3 + CATALOG))
    assert pd.concat(score(iter([frame])))["product_id_b"].tolist() == ["p3"]
    alone = um.make_score_fn(scorer.version, scorer.to_json(), spelling=CatalogSpelling.from_titles(["Quill"] * 2))
    assert pd.concat(alone(iter([frame])))["product_id_b"].tolist() == ["p2", "p3"]   # two listings: a listing twice
    priced = frame.assign(price_a=49.0, price_b=[49.0, 12.0])   # one price for both: the same listing twice
    assert pd.concat(score(iter([priced])))["product_id_b"].tolist() == ["p2", "p3"]


TYPES = ("Belts", "Wallets", "Tshirts", "Casual Shoes", "Sports Shoes", "Kurtas", "Kurtis")


@pytest.mark.parametrize("left, right, differ", [
    ("Peter England Men Brown Wallet", "Peter England Men Brown Belt", True),
    ("W Women Printed Cream Kurtis", "W Women Printed White Kurta", True),
    ("Franco Leone Men Brown Casual Shoes", "Franco Leone Men Sports Shoes", True),
    ("Puma Men Black T-Shirt", "Puma Men's Black Tshirts", False),     # one type, spelled two ways
    ("Puma Men Black T-Shirt", "Puma Men Black Ferrari Tee", False),   # the other names no type
    ("Baggit Women Wallet and Belt combo", "Baggit Women Brown Belt", False),   # a type in common
    ("", None, False),
])
def test_titles_that_name_different_product_types_tell_of_two_products(left, right, differ):
    spelling = CatalogSpelling.from_titles([left, right], types=TYPES)
    assert spelling.other_types([left], [right]).tolist() == [differ]
    assert spelling.read_pairs([left], [right]).other_types.tolist() == [differ]
    assert not CatalogSpelling.from_titles([left, right]).other_types([left], [right]).any()   # no types, no rule


def test_types_are_read_in_the_titles_as_the_catalog_spells_them():
    catalog = ["Lee Men Brown Belt", "Lee Men Black Belt", "Lee Men Blue Wallet", "Lee Men Black Wallet"]
    spelling = CatalogSpelling.from_titles(catalog, types=TYPES)
    assert spelling.read_pairs(["Lee Men Brown Walet"], ["Lee Men Brown Belt"]).other_types.tolist() == [True]


def test_the_type_rule_is_named_by_its_types_in_the_scorer_version():
    from models.matching.spelling import type_rule_version

    assert type_rule_version(()) == "different-types-none"
    assert type_rule_version(TYPES) == type_rule_version(tuple(reversed(TYPES))) != type_rule_version(TYPES[:-1])


def test_the_score_function_keeps_apart_listings_of_different_types():
    """Two listings of one brand and colour, a wallet and a belt, that the shipped scorers match on their words
    alone: with the category head's types they are two products; the same listing written twice still matches."""
    import udfs.matching as um
    from jobs.stages.matching import resolve_matching
    from models.matching.artifact import load_scorer
    from tests.test_matching_models import candidate_rows

    titles = [("Peter England Men Brown Wallet", "Peter England Men Brown Belt"),
              ("Peter England Men Brown Belt", "Peter England Men's Brown Belt")]
    frame = candidate_rows([{"a": a_id, "b": b_id, "title_a": a, "brand_a": None, "price_a": None, "title_b": b,
                             "brand_b": None, "price_b": None}
                            for (a_id, b_id), (a, b) in zip([("p1", "p2"), ("p2", "p3")], titles, strict=True)],
                           cosine=0.97)
    scorer = load_scorer(resolve_matching("auto"))
    catalog = [t for pair in titles for t in pair]
    blind = um.make_score_fn(scorer.version, scorer.to_json(), spelling=CatalogSpelling.from_titles(catalog))
    typed = um.make_score_fn(scorer.version, scorer.to_json(),
                             spelling=CatalogSpelling.from_titles(catalog, types=TYPES))
    assert pd.concat(blind(iter([frame])))["product_id_b"].tolist() == ["p2", "p3"]
    assert pd.concat(typed(iter([frame])))["product_id_b"].tolist() == ["p3"]


LEADS_CATALOG = ["Fila Men Black Sandals", "Fila Men Grey Shoes", "Fila Women Pink Top", "Lotto Men Black Sandals",
                 "Lotto Men Blue Shoes", "LOTTO Women Red Shorts", "Pokémon TCG Darkness Ablaze",
                 "POKEMON TCG Rebel Clash", "Pokemon Sword Elite Box", "Puma Men Black T-shirt", "New Puma Cap",
                 *[f"WD {t}" for t in ("Blue 1TB", "Red 2TB", "My Passport 1TB")],
                 *[f"Western Digital {t}" for t in ("Blue 1TB", "Green 2TB", "My Passport 1TB")],
                 *[f"HDD {t}" for t in ("extern Seagate 2TB", "intern Toshiba 1TB", "extern WD My Passport 1TB")],
                 *[f"Flia {t}" for t in ("Men Black Sandals", "Men Grey Shoes", "Women Pink Top")]]


@pytest.mark.parametrize("left, right, differ", [
    ("Fila Men Black Sandals", "Lotto Men Black Sandals", True),       # two of the catalog's leading words
    ("Fila Men Black Sandals", "Lotto Men Black Fila Sandals", False),  # the other title writes it
    ("Pokémon TCG Darkness Ablaze", "POKEMON TCG Darkness Ablaze", False),   # accents aside, one word
    ("Fila Men Black Sandals", "Puma Men Black Sandals", False),       # "puma" starts only one title
    ("Fila Men Black Sandals", "Men's Lotto Black Sandals", False),    # a title that does not start with one
    ("WD My Passport 1TB", "Western Digital My Passport 1TB", False),  # a brand written short, by its initials
    ("Western Digital My Passport 1TB", "HDD extern WD My Passport 1TB", False),   # the same, anywhere
    ("Fila Men Black Sandals", "Flia Men Black Sandals", False),       # a brand mistyped, as sellers repeat it
])
def test_titles_that_start_with_two_of_the_catalogs_brands_are_read_as_two_brands(left, right, differ):
    from models.matching.text import lead_word

    assert lead_word("  -Sony- Cyber-shot") == "sony" and lead_word("3 pack") == "" and lead_word(None) == ""
    assert lead_word("Q&Q Men Black Watch") == "qq" and lead_word("U.S. Polo Assn. Men") == "us"   # up to a space
    spelling = CatalogSpelling.from_titles(LEADS_CATALOG)
    assert spelling.leads == frozenset({"fila", "lotto", "pokemon", "wd", "western", "hdd", "flia"})
    assert spelling.read_pairs([left], [right]).other_leads.tolist() == [differ]


def test_two_brands_read_from_the_titles_need_the_conflict_floor_unless_the_brand_column_agrees():
    from models.matching.cross import CrossEncoder
    from models.matching.features import mark_catalog_reading, pair_features, prepare

    model = CrossEncoder(None, None, None, max_length=16, calibration=(1.0, 0.0), threshold=0.2)
    spelling = CatalogSpelling.from_titles(LEADS_CATALOG)
    left = ["Fila Men Black Sandals"] * 2
    right = ["Lotto Men Black Sandals"] * 2
    f = pair_features([prepare({"title": t, "brand": b}) for t, b in zip(left, [None, "Fila"], strict=True)],
                      [prepare({"title": t, "brand": b}) for t, b in zip(right, [None, "fila"], strict=True)],
                      np.ones(2))
    mark_catalog_reading(f, spelling.read_pairs(left, right))
    assert f["leads_disagree"].tolist() == [True, True]
    assert model.is_match(np.full(2, 0.6), f).tolist() == [False, True]   # the brand column says they agree
    assert model.is_match(np.full(2, 0.95), f).tolist() == [True, True]
