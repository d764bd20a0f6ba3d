"""Scoring the enrich job's product_attributes rows against a gold set (jobs.attributes_eval), on hand-made rows."""

from __future__ import annotations

import pandas as pd

from jobs.attributes_eval import catalog_of, job_predictions, score_tables
from models.attributes.data import Dataset, Product

GOLD = [Product("oa_mine", "p1", "Coffee", "Folgers Classic Roast Ground Coffee", None,
                {"Brand": ("Folgers",), "Color(s)": ("Brown",), "Flavor": ()}),
        Product("oa_mine", "p2", "Coffee", "Nescafe Gold Blend", "A rich blend.", {"Brand": ("Nescafe",)}),
        Product("oa_mine", "p3", "Coffee", "", None, {"Brand": ("Lavazza",)})]
DS = Dataset("oa_mine", [], GOLD, {})


def _rows(*rows):
    return pd.DataFrame(rows, columns=["product_id", "attribute", "value", "normalized_value", "confidence"])


def test_the_catalog_carries_each_valid_product_once_with_its_sets_name():
    cat = catalog_of({"oa_mine": DS})
    assert cat["product_id"].tolist() == ["oa_mine:p1", "oa_mine:p2", "oa_mine:p3"]
    assert cat.loc[1, "description"] == "A rich blend." and cat.loc[0, "category"] == "Coffee"


def test_the_tables_most_confident_value_is_scored_under_the_tables_names():
    table = _rows(("oa_mine:p1", "brand", "Folgers Classic", None, 0.6),
                  ("oa_mine:p1", "brand", "Folgers", "FOLGERS", 0.9),      # the more confident one counts
                  ("oa_mine:p1", "colour", "Brown", None, 0.8),           # gold "Color(s)" is the table's colour
                  ("oa_mine:p1", "flavor", "Classic Roast", None, 0.7),   # gold n/a: a false positive
                  ("oa_mine:p2", "brand", "Nescafe Gold", None, 0.95))    # wrong; p3 (quarantined) has no rows
    assert job_predictions(table)["oa_mine:p1"] == {"brand": "Folgers", "colour": "Brown",
                                                     "flavor": "Classic Roast"}
    assert job_predictions(table, normalised=True)["oa_mine:p1"]["brand"] == "FOLGERS"
    m = score_tables("oa_mine", DS, table).micro
    assert (m.vc, m.nv, m.vw, m.vn) == (2, 1, 1, 1)
    assert score_tables("oa_mine", DS, _rows()).micro.vn == 4            # no rows at all: every value missed


def test_generalisation_cache_answers_as_a_fresh_normaliser_and_follows_what_is_learnt():
    from models.attributes.normalise import Normaliser

    def fresh(n: Normaliser) -> Normaliser:
        return Normaliser(dict(n.rules), {a: dict(m) for a, m in n.mapping.items()})

    n = Normaliser({"Color": "generalisation"}, {})
    n.learn([("Color", "navy blue", "Blue"), ("Color", "dark red", "Red")])
    queries = ["navy blues", "Navy-Blue", "darkred", "green", "navy blues"]   # the last one from the cache
    got = [n.normalise("Color", q) for q in queries]
    assert got == [fresh(n).normalise("Color", q) for q in queries]
    assert got[0] == "Blue" and got[2] == "Red" and got[3] == "green"      # unknown and dissimilar: kept as written
    n.learn([("Color", "navy bluesy", "Navy")])                             # closer to "navy blues" than "navy blue"
    assert n.normalise("Color", "navy blues") == fresh(n).normalise("Color", "navy blues") == "Navy"
