"""The gazetteer widens a tagged value to the train value written around it, and does nothing else."""

from __future__ import annotations

import pytest

from models.attributes.base import Extraction
from models.attributes.data import Product
from models.attributes.extractor import widen_to_known
from models.attributes.gazetteer import Gazetteer


def _p(pid: str, category: str, gold: dict[str, tuple[str, ...]]) -> Product:
    return Product("oa_mine", pid, category, f"title {pid}", None, gold)


@pytest.fixture()
def gaz() -> Gazetteer:
    return Gazetteer.learn([
        _p("1", "Sunscreen", {"Brand": ("Banana Boat",), "Size": ("8 oz",)}),
        _p("2", "Sunscreen", {"Brand": ("Banana Boat",)}),
        _p("3", "Sunscreen", {"Brand": ("Banana Boat Kids",)}),
        _p("4", "Sunscreen", {"Brand": ("Nivea",), "Size": ()}),
        _p("5", "Coffee", {"Brand": ("Boat Coffee Co",)}),
        _p("6", "Cereal", {"Flavor": ("Chocolate Chip",)}),
    ])


def test_a_value_cut_short_is_widened_to_the_known_value_as_the_text_writes_it(gaz):
    texts = ("BANANA BOAT Simply Protect Sunscreen", None)
    assert gaz.widen("Sunscreen", "Brand", "BANANA", texts) == ("BANANA BOAT", 0)
    # The description is searched when the title does not have it.
    assert gaz.widen("Sunscreen", "Brand", "Banana", ("Banana sunscreen", "by Banana Boat")) == ("Banana Boat", 1)


def test_the_most_frequent_known_value_wins_then_the_longest(gaz):
    texts = ("Banana Boat Kids lotion", None)
    # "Banana Boat" (2 products) beats "Banana Boat Kids" (1): both are written in the text.
    assert gaz.widen("Sunscreen", "Brand", "Banana", texts) == ("Banana Boat", 0)
    # Only the longer one contains "Kids".
    assert gaz.widen("Sunscreen", "Brand", "Kids", texts) == ("Banana Boat Kids", 0)


def test_nothing_changes_where_it_should_not(gaz):
    texts = ("Banana Boat Kids lotion, Nivea, Chocolate Chip Oatmeal", None)
    assert gaz.widen("Sunscreen", "Brand", "Banana Boat", texts) is None        # train knows it as it is
    assert gaz.widen("Sunscreen", "Brand", "Banana Boat Kids Pro", texts) is None  # never shortened
    assert gaz.widen("Cereal", "Flavor", "Chocolate Chip Oatmeal", texts) is None
    assert gaz.widen("Sunscreen", "Brand", "Nivea", texts) is None
    assert gaz.widen("Coffee", "Brand", "Boat", texts) is None                  # the known value is not in the text
    assert gaz.widen("Tea", "Brand", "Banana", texts) is None                  # a category train never saw
    assert gaz.widen(None, "Brand", "Banana", texts) is None
    assert gaz.widen("Sunscreen", "Colour", "Banana", texts) is None
    # Whole words only: "Banana Boats" is not "Banana Boat".
    assert gaz.widen("Sunscreen", "Brand", "Banana", ("Banana Boats lotion", None)) is None
    # n/a gold values are not values.
    assert gaz.values["Sunscreen"]["Size"] == {"8 oz": 1}


def test_json_round_trip_keeps_the_decisions(gaz):
    back = Gazetteer.from_json(gaz.to_json())
    assert back.values == gaz.values
    assert back.widen("Sunscreen", "Brand", "Banana", ("Banana Boat x", None)) == ("Banana Boat", 0)
    with pytest.raises(ValueError, match="gazetteer"):
        Gazetteer.from_json({"categories": {}})


def test_widened_values_merge_with_the_same_value_found_whole(gaz):
    found = [Extraction("Brand", "Banana Boat", 0.7, "title"), Extraction("Brand", "Banana", 0.9, "title"),
             Extraction("Size", "8", 0.8, "title")]
    out = widen_to_known(gaz, found, "Sunscreen", ("Banana Boat lotion 8 oz", None))
    assert out == [Extraction("Brand", "Banana Boat", 0.9, "title"), Extraction("Size", "8 oz", 0.8, "title")]
