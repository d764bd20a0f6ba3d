"""The attribute extractor: store round trip and integrity, batching invariants, and the shipped model's output."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from models import store as model_store
from models.attributes.extractor import Extraction, Extractor, best_per_attribute, load_extractor, resolve_version
from models.attributes.train import TrainConfig, save_extractor

TITLES = ["Folgers Classic Roast Ground Coffee, 30.5 Ounce Canister",
          "Bimmor 12CM 16.5G Fishing Floating Minnow Lures 6# Hooks",
          "",
          "Canon PG-210 XL Ink Cartridge, Black"]
DESCRIPTIONS = [None, None, "a description without a title", "Genuine Canon ink. Color: Black. Page yield 220 pages."]


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    """A stored extractor with a seeded, untrained top over three attributes (plumbing, not quality)."""
    import torch

    from models.attributes.tagger import load_tower, split_tower
    from models.refs import text_tower_path

    tokenizer, bert = load_tower(text_tower_path())
    torch.manual_seed(0)
    bottom, top = split_tower(bert, 5, 3)
    with torch.no_grad():
        top.classifier.bias.copy_(torch.tensor([0.0, 1.0, 0.5] * 3))  # plenty of spans to compare
    ex = Extractor(tokenizer, bottom, top, ["Brand", "Color", "Size"], version="in-memory", max_length=64,
                   min_confidence=0.0)
    root = tmp_path_factory.mktemp("attr-store")
    cfg = TrainConfig(bottom_layers=5, max_length=64, min_confidence=0.0)
    facts = {"label_stats": {}, "split": {}, "train_seconds": 0.0, "losses": []}
    version = save_extractor(ex, root, cfg, facts, {}, "card {version}", "test data", name="test-attr")
    model_store.promote(root, version)
    return root, version, ex


def test_store_round_trip_gives_the_same_extractions(random_store):
    root, version, ex = random_store
    loaded = load_extractor("current", store=root, device="cpu")
    assert loaded.version == f"store:{version}" and loaded.attributes == ("Brand", "Color", "Size")
    got = loaded.extract(TITLES, DESCRIPTIONS)
    want = ex.extract(TITLES, DESCRIPTIONS)  # float32 top vs. the stored float16 one: same spans
    assert [[(e.attribute, e.value, e.source) for e in row] for row in got] == \
        [[(e.attribute, e.value, e.source) for e in row] for row in want]
    assert (root / version / "MODEL_CARD.md").read_text() == f"card {version}"


def test_extractions_are_spans_of_their_source_and_independent_of_batching(random_store):
    root, version, _ = random_store
    ex = load_extractor(f"store:{version}", store=root, device="cpu")
    one = ex.extract(TITLES, DESCRIPTIONS, batch_size=1)
    many = ex.extract(TITLES, DESCRIPTIONS, batch_size=3)
    assert len(one) == len(TITLES) and one[2] == []  # no title: nothing extracted
    assert any(one)
    for row_a, row_b, title, desc in zip(one, many, TITLES, DESCRIPTIONS, strict=True):
        assert [(e.attribute, e.value, e.source) for e in row_a] == [(e.attribute, e.value, e.source) for e in row_b]
        for a, b in zip(row_a, row_b, strict=True):
            assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
        for e in row_a:
            assert isinstance(e, Extraction) and 0.0 <= e.confidence <= 1.0
            assert e.value in (title if e.source == "title" else desc)
        confs = [e.confidence for e in row_a]
        assert confs == sorted(confs, reverse=True)
    assert ex.extract(TITLES, DESCRIPTIONS, batch_size=2) == ex.extract(TITLES, DESCRIPTIONS, batch_size=2)
    best = ex.extract(TITLES, DESCRIPTIONS, batch_size=1, one_per_attribute=True)
    for row_all, row_best in zip(one, best, strict=True):
        assert row_best == [e for e in row_all if e == max((x for x in row_all if x.attribute == e.attribute),
                                                            key=lambda x: x.confidence)]


def test_extract_checks_its_arguments(random_store):
    root, version, ex = random_store
    with pytest.raises(ValueError, match="differ in length"):
        ex.extract(["a", "b"], [None])
    with pytest.raises(ValueError, match="batch_size"):
        ex.extract(["a"], batch_size=0)


def test_a_changed_weight_file_is_refused(random_store, tmp_path):
    root, version, _ = random_store
    copy = tmp_path / version
    shutil.copytree(root / version, copy)
    data = bytearray((copy / model_store.WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / model_store.WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(model_store.ModelIntegrityError, match="sha256 does not match"):
        load_extractor(str(copy), device="cpu")


def test_unknown_references_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no version 'nope'"):
        resolve_version("store:nope", store=tmp_path)
    with pytest.raises(ValueError, match="has no current version"):
        resolve_version("current", store=tmp_path)
    with pytest.raises(ValueError, match="cannot resolve"):
        resolve_version(str(tmp_path / "missing"))


def test_best_per_attribute_keeps_the_most_confident_value():
    found = [Extraction("Brand", "Canon", 0.7, "title"), Extraction("Brand", "PG-210", 0.9, "title"),
             Extraction("Color", "Black", 0.8, "description")]
    assert best_per_attribute(found) == {"Brand": "PG-210", "Color": "Black"}


def test_the_shipped_extractor_finds_obvious_values():
    ex = load_extractor("default", device="cpu")
    assert ex.version.startswith("store:attr-minilm-")
    got = [best_per_attribute(row) for row in ex.extract(TITLES, DESCRIPTIONS)]
    assert got[0].get("Brand") == "Folgers" and got[0].get("Item form") == "Ground Coffee"
    assert got[1].get("Brand") == "Bimmor"
    assert got[2] == {}
    assert got[3].get("Brand") == "Canon" and got[3].get("Color") == "Black"


def test_a_stored_gazetteer_is_loaded_and_widens_values_to_it(random_store, tmp_path):
    from models.attributes.gazetteer import Gazetteer

    _, _, ex = random_store
    known = "Folgers Classic Roast"
    gaz = Gazetteer({"Coffee": {a: {known: 3} for a in ex.attributes}})
    ex.gazetteer = gaz
    try:   # word by word: the random tagger's runs of B/I then stop inside the known value
        cfg = TrainConfig(bottom_layers=5, max_length=64, min_confidence=0.0, decoder="greedy")
        facts = {"label_stats": {}, "split": {}, "train_seconds": 0.0, "losses": []}
        version = save_extractor(ex, tmp_path, cfg, facts, {}, "card {version}", "test data", name="test-attr")
    finally:
        ex.gazetteer = None
    loaded = load_extractor(f"store:{version}", store=tmp_path, device="cpu")
    assert loaded.gazetteer is not None and loaded.gazetteer.values == gaz.values
    widened = loaded.extract(TITLES[:1], [None], ["Coffee"])[0]
    loaded.gazetteer = None
    plain = loaded.extract(TITLES[:1], [None], ["Coffee"])[0]
    inside = [e for e in plain if e.value.casefold() in known.casefold() and e.value != known]
    assert inside, "the random tagger should tag some words of the known value"
    assert {(e.attribute, e.value) for e in widened} == \
        {(e.attribute, known if e in inside else e.value) for e in plain}


def test_a_version_reads_its_tags_with_the_decoder_it_was_saved_with(random_store, tmp_path):
    import json

    root, version, _ = random_store
    loaded = load_extractor(f"store:{version}", store=root, device="cpu")
    stored = json.loads((root / version / model_store.CONFIG_FILE).read_text())
    assert loaded.decoder == "span" and stored["preprocess_cfg"]["decoder"] == "span"
    # A version saved before the span decoder existed (no "decoder" in its preprocess config) reads its tags as
    # it did then, word by word.
    weights = (root / version / model_store.WEIGHTS_FILE).read_bytes()

    def saved_with(**decoder: str) -> str:
        pre = {k: v for k, v in stored["preprocess_cfg"].items() if k != "decoder"} | decoder
        return model_store.save_version(tmp_path, "test-attr", stored["model_cfg"], pre, {}, training_data="test",
                                        metrics={}, weights_file=weights)

    greedy = load_extractor(f"store:{saved_with()}", store=tmp_path, device="cpu")
    assert greedy.decoder == "greedy"
    by_span, by_word = loaded.extract(TITLES, DESCRIPTIONS), greedy.extract(TITLES, DESCRIPTIONS)
    assert by_span != by_word          # the random tagger's tags are ragged: the two decoders read them apart
    loaded.decoder = "greedy"
    assert loaded.extract(TITLES, DESCRIPTIONS) == by_word
    with pytest.raises(model_store.ModelIntegrityError, match="unknown span decoder 'viterbi'"):
        load_extractor(f"store:{saved_with(decoder='viterbi')}", store=tmp_path, device="cpu")


def test_a_soup_of_two_stored_taggers_is_their_mean_in_float16(random_store):
    import torch

    from models.attributes.train import mean_state

    _, _, ex = random_store
    a = {k: v.clone() for k, v in ex.top.state_dict().items()}
    b = {k: v + 0.25 if v.is_floating_point() else v for k, v in a.items()}
    mean = mean_state([a, b])
    for k, v in a.items():
        assert torch.allclose(mean[k], v.float() + 0.125, rtol=1e-3, atol=1e-3), k   # fp16 keeps ~3 digits
        assert torch.equal(mean[k], mean[k].half().float()), k                         # what the store keeps
    with pytest.raises(ValueError, match="same tensors"):
        mean_state([a, {k: v for k, v in b.items() if not k.startswith("classifier.")}])


def test_an_ensemble_version_averages_its_members_tag_probabilities_and_checks_them(random_store, tmp_path):
    import copy

    import numpy as np
    import torch

    from models.attributes.base import encode_row
    from models.attributes.train import ensemble_members

    _, _, ex = random_store
    cfg = TrainConfig(bottom_layers=5, max_length=64, min_confidence=0.0)
    facts = {"label_stats": {}, "split": {}, "train_seconds": 0.0, "losses": []}
    other = copy.copy(ex)
    other.top = copy.deepcopy(ex.top)
    with torch.no_grad():
        other.top.classifier.bias.copy_(torch.tensor([1.0, 0.0, 0.0] * 3))   # a member that tags little
    member_store = tmp_path / "elsewhere"
    member = save_extractor(other, member_store, cfg, facts, {}, "card {version}", "test data", name="test-attr")
    root = tmp_path / "store"
    refs = ensemble_members([member_store / member], root)     # copied beside the ensemble
    assert (root / member).is_dir() and refs[0]["version"] == member
    version = save_extractor(ex, root, cfg, {**facts, "ensemble": [member]}, {}, "card {version}", "test data",
                             name="test-attr", ensemble=refs)
    loaded = load_extractor(f"store:{version}", store=root, device="cpu")
    assert len(loaded.members) == 1
    rows = [encode_row(loaded.tokenizer, TITLES[0], None, 64)]
    got = loaded.tag_probs(rows)[0]
    member_probs = load_extractor(f"store:{member}", store=root, device="cpu").tag_probs(rows)[0]
    loaded.members = []                               # the ensemble's own top alone
    own = loaded.tag_probs(rows)[0]
    np.testing.assert_allclose(got, (own + member_probs) / 2, atol=1e-5)
    assert not np.allclose(got, own, atol=1e-3)
    # A member whose weights changed is refused, naming it.
    weights = root / member / model_store.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-2] + b"\0\0")
    with pytest.raises(model_store.ModelIntegrityError, match=member):
        load_extractor(f"store:{version}", store=root, device="cpu")


def test_a_category_prefix_shifts_the_words_and_is_never_a_unit(random_store):
    from models.attributes.base import encode_row

    _, _, ex = random_store
    tok = ex.tokenizer
    plain = encode_row(tok, TITLES[0], "Medium roast", 64)
    cat = encode_row(tok, TITLES[0], "Medium roast", 64, "Coffee & Tea")
    k = len(cat.input_ids) - len(plain.input_ids)
    assert k == len(tok("Coffee & Tea", add_special_tokens=False)["input_ids"]) + 1
    assert tok.convert_ids_to_tokens(cat.input_ids[:k + 1])[-1] == "[SEP]"
    assert [(u.segment, u.start, u.end) for u in cat.units] == [(u.segment, u.start, u.end) for u in plain.units]
    assert [cat.input_ids[u.token] for u in cat.units] == [plain.input_ids[u.token] for u in plain.units]
    assert min(u.token for u in cat.units) > k                     # no unit inside the prefix
    assert len(cat.token_type_ids) == len(cat.input_ids) and cat.token_type_ids[:k + 1] == [0] * (k + 1)
    # the prefix takes its room from the product's text, never beyond max_length; a blank prefix is no prefix
    long = encode_row(tok, TITLES[0] * 10, None, 32, "Home & Kitchen > Coffee, Tea & Espresso > Coffee > Ground")
    assert len(long.input_ids) == 32
    assert encode_row(tok, TITLES[0], None, 64, "  ") == encode_row(tok, TITLES[0], None, 64)


def test_batched_encoding_gives_each_products_own_encoding(random_store):
    """encode_rows (a few batched tokenizer calls) against the tokenizer called for one product at a time: with
    and without a description or a category, texts cut to max_length on either side, blank and accented text."""
    import random

    from models.attributes.base import PREFIX_MAX_TOKENS, EncodedRow, encode_rows
    from models.attributes.spans import Unit, word_units

    _, _, ex = random_store

    def encode_row(tok, title, description, max_length, prefix=None):   # one product, as the tokenizer reads it
        pre = []
        if isinstance(prefix, str) and prefix.strip():
            pre = [*tok(prefix.strip(), add_special_tokens=False, truncation=True, max_length=PREFIX_MAX_TOKENS
                        )["input_ids"], tok.sep_token_id]
        enc = tok(title, description or None, truncation="longest_first", max_length=max_length - len(pre),
                  return_offsets_mapping=True)
        units = word_units([tuple(o) for o in enc["offset_mapping"]], enc.sequence_ids(), enc.word_ids())
        ids, types, k = list(enc["input_ids"]), list(enc["token_type_ids"]), len(pre)
        return EncodedRow(ids[:1] + pre + ids[1:], types[:1] + [0] * k + types[1:],
                          [Unit(u.token + k, u.segment, u.start, u.end) for u in units])

    rnd = random.Random(3)
    words = [*" ".join(TITLES).split(), "Ünïcödé", "—", "TS-G6843R", '6x8"', "180W", "日本語", "(2-pack)"]
    titles, descs, cats = [], [], []
    categories = [None, "  ", "Coffee & Tea", "Home & Kitchen > Coffee, Tea & Espresso > Coffee > Ground"]
    for _ in range(120):
        titles.append(" ".join(rnd.choices(words, k=rnd.choice([1, 3, 12, 60]))))
        descs.append(rnd.choice([None, "", "Medium roast", " ".join(rnd.choices(words, k=rnd.choice([5, 80])))]))
        cats.append(rnd.choice(categories))
    for max_length in (64, 24):
        want = [encode_row(ex.tokenizer, t, d, max_length, c) for t, d, c in zip(titles, descs, cats, strict=True)]
        assert encode_rows(ex.tokenizer, titles, descs, max_length, cats) == want
        assert encode_rows(ex.tokenizer, titles, descs, max_length) == [
            encode_row(ex.tokenizer, t, d, max_length) for t, d in zip(titles, descs, strict=True)]
    assert encode_rows(ex.tokenizer, [], [], 64) == []
    with pytest.raises(ValueError, match="descriptions"):
        encode_rows(ex.tokenizer, titles[:2], descs[:1], 64)


def test_a_tagger_trained_with_the_category_reads_it_after_a_store_round_trip(random_store, tmp_path):
    from models.attributes.base import encode_row

    _, _, ex = random_store
    cfg = TrainConfig(bottom_layers=5, max_length=64, min_confidence=0.0, category_input=True)
    facts = {"label_stats": {}, "split": {}, "train_seconds": 0.0, "losses": []}
    version = save_extractor(ex, tmp_path, cfg, facts, {}, "card {version}", "test data", name="test-attr")
    loaded = load_extractor(f"store:{version}", store=tmp_path, device="cpu")
    assert loaded.category_input and not ex.category_input
    # the same title read under two categories is tagged differently: the category reaches the encoder
    probs = loaded.tag_probs([encode_row(loaded.tokenizer, TITLES[0], None, 64, c) for c in ("Coffee", "Fishing")])
    assert probs[0].shape == probs[1].shape and not np.allclose(probs[0], probs[1], atol=1e-4)
    # without categories it reads the title alone, as the plain tagger with the same weights does
    spans = [[(e.attribute, e.value) for e in row] for row in loaded.extract(TITLES[:1], None, None)]
    assert spans == [[(e.attribute, e.value) for e in row] for row in ex.extract(TITLES[:1])]
    got = loaded.extract(TITLES[:1] * 2, None, ["Coffee", "Fishing"])
    assert all(e.value in TITLES[0] and e.source == "title" for row in got for e in row)
