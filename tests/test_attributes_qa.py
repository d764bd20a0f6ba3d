"""The attribute-conditioned extractor end to end on a tiny model, its schema, the normaliser and the vocabulary."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from models.attributes.data import Dataset, Product
from models.attributes.normalise import Normaliser, apply_rule, parse_number
from models.attributes.qa import decode_best
from models.attributes.schema import GENERIC, AttributeSchema
from models.attributes.spans import Unit
from models.attributes.vocabulary import canonical_name

# -- the normaliser ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "number"), [("14\"", 14.0), ("3-7/8\"", 3.875), ("4 3/4", 4.75), ("11/16", 0.6875),
                                              ("1,200 sheets", 1200.0), ("adjustable", None)])
def test_parse_number_reads_fractions_and_thousands(text, number):
    assert parse_number(text) == (pytest.approx(number) if number is not None else None)


@pytest.mark.parametrize(("rule", "attribute", "value", "want"), [
    ("unit conversion", "Width", "14\"", "35.6"),              # inches unless named, one decimal
    ("unit conversion", "Height", "6-7/8\"", "17.5"),
    ("unit conversion", "Width", "30 cm", "30.0"),
    ("unit conversion", "Size/Weight", "2.5oz", "71"),         # whole grams
    ("unit conversion", "Size/Weight", "12 inches", None),     # another unit: left as written
    ("unit conversion", "Paper Weight", "20 lb", "9.1"),       # kilograms
    ("unit expansion", "Cache", "18MB", "18 Megabytes"),
    ("unit expansion", "Capacity", "425W", "425 Watts"),
    ("numeric standardization", "Processor Core", "Quad Core", "4"),
    ("numeric standardization", "Rotational Speed", "7.2K RPM", "7200"),
    ("numeric standardization", "Pack Quantity", "20 Sheets/Pack", "20"),
    ("delete marks", "Part Number", "650766-B21", "650766B21"),
    ("name expansion", "Generation", "G7", "Generation 7"),
    ("name expansion", "Generation", "Gen8 Gen9", "Generation 8 Generation 9"),
    ("substring extraction", "Retail UPC", "095205742466", "95205"),
    ("to uppercase", "Brand", "Tea One", "TEA ONE"),
    ("generalisation", "Interface", "U320 SCSI", None),        # learnt only, never a rule
])
def test_rules(rule, attribute, value, want):
    assert apply_rule(rule, attribute, value) == want


def test_normaliser_prefers_what_train_data_shows_and_keeps_the_texts_case():
    norm = Normaliser({"Computers\x1fInterface": "generalisation", "Grocery\x1fBrand": "to uppercase",
                       "Width": "unit conversion"}, {})
    norm.learn([("Interface", "Ultra320 SCSI", "SCSI Interfaces"), ("Interface", "ultra320 scsi", "SCSI Interfaces"),
                ("Material", "Steel", "Steel")])
    assert norm.normalise("Interface", "ULTRA320 SCSI", "Computers") == "SCSI Interfaces"
    # an unseen value of a generalised attribute: the normalisation of the most similar seen value
    assert norm.normalise("Interface", "Ultra320 SCSI LVD", "Computers") == "SCSI Interfaces"
    assert norm.normalise("Interface", "Bluetooth", "Computers") == "Bluetooth"    # nothing similar: as written
    assert norm.normalise("Material", "steel") == "steel"          # learnt "Steel" differs only by case
    assert norm.normalise("Brand", "Tea One", "Grocery") == "TEA ONE"
    assert norm.normalise("Brand", "Tea One", "Computers") is None  # the rule is Grocery's, not the attribute's
    assert norm.normalise("Width", "14\"", "Anything") == "35.6"
    assert norm.normalise("Flavor", "Mocha") is None
    again = Normaliser.from_json(json.loads(json.dumps(norm.to_json())))
    assert again.normalise("Interface", "ULTRA320 SCSI", "Computers") == "SCSI Interfaces"


def test_normaliser_reads_the_rules_of_a_descriptions_file(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("Category;Attribute;Normalization_params\n"
                   "Home;Width;[Unit Conversion]\nHome;Color;[Color Generalization]\nJewelry;Brand;[To Uppercase]\n"
                   "Home;Material;\n")
    norm = Normaliser.from_descriptions(csv)
    assert norm.rule_for("Home", "Width") == "unit conversion"
    assert norm.rule_for("Home", "Color") == "generalisation"
    assert norm.rule_for("Jewelry", "Brand") == "to uppercase"
    assert norm.rule_for("Home", "Brand") is None and norm.rule_for("Home", "Material") is None


# -- the vocabulary and the schema -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "want"), [("Color", "colour"), ("Color(s)", "colour"), ("colour", "colour"),
                                            ("Brand Name", "brand"), ("Pack Quantity", "pack quantity"),
                                            ("Size/Weight", "size/weight"), (" gender ", "gender")])
def test_one_vocabulary(name, want):
    assert canonical_name(name) == want


def _p(pid: str, category: str, title: str, gold: dict) -> Product:
    return Product("t", pid, category, title, None, {k: tuple(v) for k, v in gold.items()})


def test_schema_is_learnt_per_category_with_a_generic_fallback_and_a_user_file_overrides(tmp_path):
    products = [_p("1", "Coffee", "Folgers Mocha", {"Brand": ["Folgers"], "Flavor": ["Mocha"]}),
                _p("2", "Coffee", "Lavazza", {"Brand": ["Lavazza"], "Flavor": []}),
                _p("3", "Tea", "Lipton", {"Brand": ["Lipton"]}),
                _p("4", "Soap", "Dove", {"Brand": ["Dove"], "Scent": ["Rose"]})]
    schema = AttributeSchema.learn(products, {("Coffee", "Flavor"): "the taste"}, generic_min_categories=3)
    assert set(schema.attributes_for("Coffee")) == {"Brand", "Flavor"}
    assert "the taste" in schema.attributes_for("Coffee")["Flavor"]
    assert "Folgers" in schema.attributes_for("Coffee")["Brand"]            # example values in the question
    assert schema.attributes_for("coffee ") == schema.attributes_for("Coffee")  # case and spaces ignored
    assert set(schema.attributes_for("Garden hose")) == {"Brand"} == set(schema.categories[GENERIC])
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"categories": {"Coffee": {"Roast": ""}}}))
    user = AttributeSchema.load(path)
    assert user.attributes_for("Coffee") == {"Roast": "Roast"} and user.attributes_for("Tea") == {}
    path.write_text(json.dumps({"Coffee": ["Roast"]}))
    with pytest.raises(ValueError, match="attribute schema"):
        AttributeSchema.load(path)


def test_decode_best_takes_the_likeliest_start_and_its_continuation():
    units = [Unit(1, 0, 0, 7), Unit(2, 0, 8, 13), Unit(3, 0, 14, 20), Unit(4, 1, 0, 5)]
    probs = np.zeros((5, 3))
    probs[:, 0] = 1.0
    probs[2] = [0.1, 0.8, 0.1]      # B at "Classic"
    probs[3] = [0.2, 0.1, 0.7]      # I at "Roast"
    probs[4] = [0.1, 0.1, 0.8]      # I, but in the description: a span stays in its segment
    assert decode_best(probs, units, 0.5) == (0, 8, 20, pytest.approx(0.8))
    assert decode_best(probs, units, 0.9) is None
    assert decode_best(probs, [], 0.0) is None


# -- the extractor end to end on a tiny model --------------------------------------------------------------

BRANDS = ["Folgers", "Lavazza", "Nescafe", "Illy", "Kimbo", "Segafredo", "Tchibo", "Melitta", "Jacobs", "Dallmayr"]
ROASTS = ["Dark", "Medium", "Light"]
SIZES = ["12 oz", "24 oz", "500 g", "1 kg"]


def _catalog(n: int, seed: int) -> list[Product]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        brand, roast, size = rng.choice(BRANDS), rng.choice(ROASTS), rng.choice(SIZES)
        has_size = i % 3 != 0
        title = f"{brand} {roast} Roast Ground Coffee" + (f", {size}" if has_size else "")
        out.append(Product("tiny", f"p{seed}-{i}", "Coffee", title, None,
                           {"Brand": (brand,), "Roast": (roast,), "Size": (size,) if has_size else ()}))
    return out


@pytest.fixture(scope="module")
def tiny_version(tmp_path_factory):
    """A tiny conditioned extractor trained on synthetic coffee titles and saved in a store: (folder, facts)."""
    from models.attributes.qa_train import QATrainConfig, save_qa, train_on

    tmp = tmp_path_factory.mktemp("tiny-qa")
    train = _catalog(120, seed=1)
    cfg = QATrainConfig(epochs=4, batch_size=16, lr_layers=3e-4, lr_head=3e-3, max_length=32, threads=1)
    norm = Normaliser({"Size": "unit conversion"}, {})
    extractor, facts = train_on({"tiny": Dataset("tiny", train, [], {})}, cfg, tmp / "work", None, norm)
    version = save_qa(extractor, tmp / "store", cfg, facts, {}, "tiny test model", "synthetic")
    return tmp / "store" / version, facts


@pytest.mark.slow
def test_a_tiny_extractor_trains_saves_loads_and_answers_per_attribute(tiny_version):
    from models.attributes.extractor import load_extractor

    folder, facts = tiny_version
    assert facts["losses"][-1] < facts["losses"][0]
    loaded = load_extractor(str(folder), device="cpu")
    assert loaded.version == f"store:{folder.name}" and set(loaded.attributes) == {"Brand", "Roast", "Size"}

    test = _catalog(30, seed=2)
    found = loaded.extract([p.title for p in test], [None] * len(test), [p.category for p in test])
    brand = sum(any(e.attribute == "Brand" and e.value == p.gold["Brand"][0] for e in f)
                for p, f in zip(test, found, strict=True))
    roast = sum(any(e.attribute == "Roast" and e.value == p.gold["Roast"][0] for e in f)
                for p, f in zip(test, found, strict=True))
    assert brand >= 27 and roast >= 24, (brand, roast)
    # no size in the title: nothing asked of it is made up
    no_size = [f for p, f in zip(test, found, strict=True) if not p.gold["Size"]]
    assert sum(any(e.attribute == "Size" for e in f) for f in no_size) <= 2
    assert all(len({e.attribute for e in f}) == len(f) for f in found)      # one value per attribute
    assert loaded.normaliser is not None and loaded.normaliser.normalise("Size", "12 oz") == "340"
    # an empty title gives nothing; the same inputs give the same outputs
    assert loaded.extract([None, ""], None, ["Coffee", "Coffee"]) == [[], []]
    assert loaded.extract([test[0].title], None, ["Coffee"]) == loaded.extract([test[0].title], None, ["Coffee"])
    # a user's schema decides what is asked
    loaded.schema = AttributeSchema({"Coffee": {"Brand": "Brand"}})
    assert {e.attribute for f in loaded.extract([p.title for p in test[:5]], None, ["Coffee"] * 5) for e in f} \
        <= {"Brand"}


@pytest.mark.slow
@pytest.mark.spark
def test_the_udf_runs_the_conditioned_extractor_with_the_tables_vocabulary_and_a_user_schema(spark, tiny_version):
    from udfs.attributes import AttributesConfig, make_attributes_udf

    folder, _ = tiny_version
    rows = [("a", "Lavazza Dark Roast Ground Coffee, 12 oz", None, "Coffee"),
            ("b", "Illy Light Roast Ground Coffee", None, "Coffee"),
            ("c", None, None, "Coffee")]
    df = spark.createDataFrame(rows, "product_id string, title string, description string, category string")
    udf = make_attributes_udf(AttributesConfig(model_ref=str(folder), device="cpu", batch_size=4))
    got = {r.product_id: r.a for r in df.select("product_id", udf("title", "description", "category").alias("a"))
           .collect()}
    a = {x.attribute: x for x in got["a"]}
    assert a["brand"].value == "Lavazza" and a["brand"].normalized_value is None      # no rule for brands here
    assert a["size"].value == "12 oz" and a["size"].normalized_value == "340"         # ounces -> grams
    assert "size" not in {x.attribute for x in got["b"]} and got["c"] == []
    schema = json.dumps({"categories": {"Coffee": {"Roast": "Roast"}}})
    only = make_attributes_udf(AttributesConfig(model_ref=str(folder), device="cpu", schema_json=schema))
    asked = {x.attribute for r in df.select(only("title", "description", "category").alias("a")).collect()
             for x in r.a}
    assert asked == {"roast"}
