"""Heads that do not trust a title which names nothing: degraded title copies, the lexical expert's gate."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from models.heads.bundle import HeadBundle, LinearHead, find_heads, load_heads, save_heads
from models.heads.degrade import KINDS, brand_of, degrade, degrade_mixed, known_brands
from models.heads.lexical import LexicalExpert
from models.heads.train import DegradedRows, HeadTrainConfig, _Rows, _with_degraded, fit_head

CLASSES = ["Shirt", "Shoe", "Watch"]
BRANDS = ["Nike", "Puma", "Peter England", "Red Tape", "Fossil", "Lee"]
TITLES = ["Nike Men Blue Shirt", "Peter England Men Grey Shirt", "Peter England Formal Shirt",
          "Red Tape Women Brown Shoe", "Puma Unisex Cap", "Fossil Watch", "", "Lee"]


def _text_tower(texts: list[str], d: int = 16) -> np.ndarray:
    """A tiny bag-of-words text tower: the mean of a fixed random vector per word (zeros for no words)."""
    out = np.zeros((len(texts), d), dtype=np.float32)
    for i, t in enumerate(texts):
        words = t.lower().split()
        for w in words:
            seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:4], "little")
            out[i] += np.random.default_rng(seed).normal(size=d).astype(np.float32) / len(words)
    return out


def _catalog(n: int, seed: int):
    """Titles "Brand Gender Colour Type" whose brand says nothing of the type; a photo that says it less
    sharply than the title's type word."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    titles = [f"{BRANDS[rng.integers(len(BRANDS))]} {rng.choice(['Men', 'Women'])} "
              f"{rng.choice(['Blue', 'Black', 'Grey'])} {CLASSES[c]}" for c in y]
    img = (np.eye(3, 8)[y] * 2.5 + rng.normal(size=(n, 8))).astype(np.float32)
    return titles, img, y


def test_brand_of_reads_the_words_before_the_gender_word_or_a_known_brand():
    brands = known_brands(TITLES * 5)
    assert brands[0] == "peter england" and "nike" in brands and "red tape" in brands
    got = [brand_of(t, brands) for t in TITLES]
    assert got == ["Nike", "Peter England", "Peter England", "Red Tape", "Puma", "Fossil", "", "Lee"]
    assert known_brands(TITLES) == ()                  # a prefix seen in fewer than five titles is no known brand
    assert brand_of("Tonino Lamborghini Feroce For Men Perfume") == "Tonino Lamborghini Feroce"


def test_degraded_titles_follow_their_kind_and_seed():
    titles = ["Puma Men Grey Solid Round Neck T-Shirt", "Nike Women Black Running Shoe", "Lee"]
    half = degrade(titles, "half", seed=3)
    for t, h in zip(titles, half, strict=True):
        words, kept = t.split(), h.split()
        assert 1 <= len(kept) <= len(words) and kept == [w for w in words if w in kept]   # in order, a subset
    shuffled = degrade(titles, "shuffle", seed=3)
    assert [sorted(s.split()) for s in shuffled] == [sorted(t.split()) for t in titles]
    assert shuffled != titles
    assert degrade(titles, "empty", seed=3) == ["", "", ""]
    assert degrade(titles, "brand", seed=3) == ["Puma", "Nike", "Lee"]
    assert degrade(titles, "half", seed=3) == half                                    # the seed fixes the draw
    mixed, kinds = degrade_mixed(titles * 40, seed=1)
    assert set(kinds) == set(range(len(KINDS))) and len(mixed) == 120
    assert all(m == "" for m, k in zip(mixed, kinds, strict=True) if KINDS[k] == "empty")
    with pytest.raises(ValueError, match="degradation kind must be one of"):
        degrade(titles, "upper", seed=0)


def test_half_degradation_differs_between_seeds():
    titles = ["Puma Men Grey Solid Round Neck T-Shirt"] * 50
    assert degrade(titles, "half", seed=17) != degrade(titles, "half", seed=2026)


def test_degraded_copies_sit_on_their_source_side_of_the_calibration_split():
    rows = _Rows(train_all=np.array([0, 1, 3]), train=np.array([0, 3]), calibration=np.array([2]),
                 weight=np.array([1.0, 0.3], dtype=np.float32))
    out = _with_degraded(rows, source=np.array([3, 2, 0, 1]), n=4)
    assert out.train.tolist() == [0, 3, 4, 6]          # copies of rows 3 and 0 train
    assert out.train_all.tolist() == [0, 1, 3, 4, 6, 7]
    assert out.calibration.tolist() == [2, 5]          # the copy of calibration row 2 calibrates
    assert out.weight.tolist() == pytest.approx([1.0, 0.3, 0.3, 1.0])
    assert out.n_real == 4                              # rows from 4 on are copies


def test_lexical_gate_silences_an_empty_title_and_shrinks_a_bare_brand():
    titles, img, y = _catalog(300, seed=0)
    lex = LexicalExpert.fit(titles, y, 3)
    np.testing.assert_allclose(lex.known_words(["", "Nike", "Nike Men Blue Shoe", "zzz qqq"]), [0, 1, 4, 0])
    layer = (np.zeros((8, 3), np.float32), np.zeros(3, np.float32))
    head = LinearHead("category", "image", tuple(CLASSES), np.zeros(8, np.float32), np.ones(8, np.float32),
                      (layer,), lexical=lex, lexical_weight=2.0)
    gated = LinearHead("category", "image", tuple(CLASSES), np.zeros(8, np.float32), np.ones(8, np.float32),
                       (layer,), lexical=lex, lexical_weight=2.0, lexical_min_words=4.0)
    x = np.zeros((3, 8), np.float32)
    texts = ["", "Nike", "Nike Men Blue Shoe"]
    full, part = head.combined_logits(x, texts), gated.combined_logits(x, texts)
    np.testing.assert_allclose(part[0], 0.0, atol=1e-6)                        # no known word: no say
    np.testing.assert_allclose(part[1], full[1] / 4, rtol=1e-5)                # one of four words
    np.testing.assert_allclose(part[2], full[2], rtol=1e-5)                    # a full title: unchanged


def _heads(seed: int = 0):
    titles, img, y = _catalog(1500, seed)
    x = np.concatenate([_text_tower(titles), img], axis=1)
    cfg = HeadTrainConfig(epochs=12, hidden=32, calibration_fraction=0.2, lexical_gates=(0.0, 2.0, 4.0))
    kw = {"name": "category", "inputs": "text+image", "text_slice": slice(0, 16), "image_slice": slice(16, 24),
          "texts": titles}
    old = fit_head(x, y, CLASSES, cfg, **kw)
    deg, _ = degrade_mixed(titles, seed=17, brands=known_brands(titles))
    new = fit_head(x, y, CLASSES, cfg, degraded=DegradedRows(np.concatenate([_text_tower(deg), img], axis=1),
                                                            np.arange(len(y)), deg), **kw)
    return old, new


def test_head_trained_beside_degraded_titles_reads_the_photo_when_the_title_names_nothing(tmp_path):
    old, new = _heads()
    titles, img, y = _catalog(600, seed=9)
    brands = known_brands(titles)

    def acc(head, kind):
        t = titles if kind == "full" else degrade(titles, kind, seed=2026, brands=brands)
        return float((head.predict(_text_tower(t), img, t).argmax(axis=1) == y).mean())

    for kind in ("brand", "empty"):   # the photo alone gets about 0.9 of them right
        assert acc(new, kind) > 0.6 and acc(new, kind) > acc(old, kind) + 0.2, kind
    assert acc(new, "full") >= acc(old, "full") - 0.01 and acc(new, "full") > 0.97
    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", new), training_data="synthetic", metrics={})
    loaded = load_heads(find_heads(tmp_path, "enc-v1")).category
    assert loaded.lexical_min_words == new.lexical_min_words
    t = degrade(titles[:20], "brand", seed=0, brands=brands)
    np.testing.assert_allclose(loaded.predict(_text_tower(t), img[:20], t), new.predict(_text_tower(t), img[:20], t),
                               atol=5e-3)   # float16 lexical weights


def test_a_bundle_saved_before_the_gate_loads_without_one():
    head = LinearHead("colour", "text", ("Red", "Blue"), np.zeros(4, np.float32), np.ones(4, np.float32),
                      ((np.ones((4, 2), np.float32), np.zeros(2, np.float32)),))
    desc = {k: v for k, v in head.describe().items() if k != "lexical_min_words"}   # the shipped bundle's form
    loaded = LinearHead.from_parts("colour", desc, head.tensors())
    assert loaded.lexical_min_words == 0.0 and loaded.classes == ("Red", "Blue")


def test_degraded_rows_must_match_the_rows():
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="expected one each"):
        DegradedRows(x, np.arange(3))
    with pytest.raises(ValueError, match="DegradedRows.x has shape"):
        fit_head(x, y, ["a", "b"], HeadTrainConfig(epochs=1), name="t", inputs="text",
                 degraded=DegradedRows(np.zeros((4, 5), np.float32), np.arange(4)))



def _photo_and_text_heads(seed: int = 0):
    titles, img, y = _catalog(1200, seed)
    cfg = HeadTrainConfig(epochs=12, hidden=32, calibration_fraction=0.2, lexical_features=0)
    text_head = fit_head(_text_tower(titles), y, CLASSES, cfg, name="category", inputs="text")
    photo = fit_head(img, y, CLASSES, cfg, name="category", inputs="image")
    return titles, y, text_head, photo


def _late_fused(n_valid: int):
    """A head that reads the photo alone plus a text head, late-fused on ``n_valid`` held-out rows, every other
    title empty: the fused head and what it was fitted from."""
    from models.heads.bundle import log_softmax
    from models.heads.train import fit_title_expert

    titles, y, text_head, photo = _photo_and_text_heads()
    vt, vimg, vy = _catalog(n_valid, seed=5)
    vt = [t if i % 2 else "" for i, t in enumerate(vt)]           # half the titles are empty
    vocabulary = LexicalExpert.fit(titles, y, len(CLASSES))
    own = log_softmax(photo.logits(vimg) / photo.temperature)
    x = _text_tower(vt)
    fused = fit_title_expert(photo, text_head, own, x, vy, vt, np.ones(len(vy), dtype=bool), vocabulary)
    assert fused.title_weight > 0 and fused.title_min_words > 0
    return fused, own, x, vt, vy, (photo, text_head, vocabulary)


def test_title_expert_weight_and_gate_are_fitted_on_the_held_out_rows():
    """A head that reads the photo alone (90% right) plus a text head (the title names the type), fused on rows
    neither learnt from: the fitted late fusion takes the text where the title says something and leaves an
    empty title to the photo."""
    from models.heads.train import fit_title_expert

    fused, own, x, vt, vy, (photo, text_head, vocabulary) = _late_fused(800)
    pred = fused.fused_log_probs(own, x, vt).argmax(axis=1)
    full, empty = np.arange(len(vy)) % 2 == 1, np.arange(len(vy)) % 2 == 0
    assert (pred[full] == vy[full]).mean() > (own.argmax(axis=1)[full] == vy[full]).mean() + 0.05
    np.testing.assert_array_equal(pred[empty], own.argmax(axis=1)[empty])   # no known word: the photo decides
    with pytest.raises(ValueError, match="needs a text head with the same classes"):
        fit_title_expert(photo, dataclasses.replace(text_head, classes=("a", "b", "c")), own, x, vy, vt,
                         np.ones(len(vy), dtype=bool), vocabulary)


def test_a_title_expert_survives_the_store(tmp_path):
    titles, img, y = _catalog(600, 0)
    txt = _text_tower(titles)
    cfg = HeadTrainConfig(epochs=4, hidden=32, calibration_fraction=0.2, lexical_gates=(0.0, 2.0))
    text_head = fit_head(txt, y, CLASSES, cfg, name="category", inputs="text", texts=titles)
    head = fit_head(np.concatenate([txt, img], axis=1), y, CLASSES, cfg, name="category", inputs="text+image",
                    text_slice=slice(0, 16), image_slice=slice(16, 24), texts=titles)
    expert = dataclasses.replace(text_head, name="category.title", lexical_weight=0.0, mention_weight=0.0,
                                 class_bias=None)
    fused = dataclasses.replace(head, title_expert=expert, title_weight=1.0, title_min_words=3.0,
                                fusion_temperature=0.8, fusion_temperature_poor=1.5)
    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", fused), training_data="synthetic", metrics={})
    loaded = load_heads(find_heads(tmp_path, "enc-v1")).category
    assert (loaded.title_weight, loaded.title_min_words, loaded.fusion_temperature,
            loaded.fusion_temperature_poor) == (1.0, 3.0, 0.8, 1.5)
    assert loaded.title_expert is not None and loaded.title_expert.name == "category.title"
    vt = ["Nike Men Blue Shirt", "Fossil", "", "Puma Women Black Watch"]
    got = loaded.predict(_text_tower(vt), img[:4], vt)
    np.testing.assert_allclose(got, fused.predict(_text_tower(vt), img[:4], vt), atol=5e-3)   # float16 lexical
    from safetensors.numpy import load_file

    stored = load_file(str(find_heads(tmp_path, "enc-v1") / "model.safetensors"))
    lexical = [k for k in stored if k.endswith(".lexical.weight")]
    assert lexical and all(stored[k].dtype == np.float16 for k in lexical)
    assert stored["category.layer0.weight"].dtype == np.float32       # only the lexical weights are halved
    assert not np.allclose(got, head.predict(_text_tower(vt), img[:4], vt))   # the expert changes the output


def test_the_heads_script_fits_the_fusion_on_one_half_of_valid_and_reports_on_the_other():
    import pandas as pd

    from models.heads import fashion
    from models.heads.robustness import DegradedTitles

    tr_titles, tr_img, ytr = _catalog(900, 0)
    va_titles, va_img, yva = _catalog(400, 3)
    brands = known_brands(tr_titles)
    deg_train, kinds = degrade_mixed(tr_titles, seed=17, brands=brands)
    valid = {"full": va_titles, **{c: degrade(va_titles, k, seed=2026, brands=brands)
                                   for c, k in (("brand", "brand"), ("half", "half"), ("none", "empty"))}}
    deg = DegradedTitles(deg_train, kinds, valid, _text_tower(deg_train),
                         {c: _text_tower(v) for c, v in valid.items()})
    e = {"tr_txt": _text_tower(tr_titles), "tr_img": np.pad(tr_img, ((0, 0), (0, 8))),
         "va_txt": _text_tower(va_titles), "va_img": np.pad(va_img, ((0, 0), (0, 8)))}
    rows = [pd.DataFrame({"product_id": [f"{p}{i}" for i in range(len(y))], "title": t,
                          "articleType": [CLASSES[c] for c in y]})
            for p, t, y in (("t", tr_titles, ytr), ("v", va_titles, yva))]
    cfg = HeadTrainConfig(epochs=6, hidden=32, calibration_fraction=0.2, lexical_gates=(0.0, 2.0))
    heads, metrics, md = fashion.evaluate_tasks(e, rows[0], rows[1], cfg, ablation=False, deg=deg,
                                                tasks=("category",))
    report = int((~fashion.dev_half(rows[1])).sum())
    assert 150 < report < 250 and metrics["category"]["valid_items"] == report
    assert metrics["category"]["degraded"]["head on image only"]["none"]["n"] == report
    assert heads["category"].inputs == "text+image" and "titles degraded" in md
    # every head's calibration is measured in every title condition (issue 18: honest on degraded titles too)
    fused = metrics["category"]["degraded"]["new head: text+image, trained beside degraded titles"]
    assert all(0.0 <= fused[c]["ece"] <= 1.0 and 0.0 < fused[c]["confidence"] <= 1.0 for c in fused)
    assert "ece" not in metrics["category"]["degraded"]["TF-IDF word + char n-grams + logistic regression"]["full"]
    assert "Calibration of the top-1 confidence" in md


def test_robustness_table_reports_the_calibration_of_a_head_that_keeps_its_confidence_on_an_empty_title():
    from models.heads.robustness import CONDITIONS, robustness_table

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=600)
    y[:5] = -1   # unlabelled rows count in no metric

    def probs(right: np.ndarray, confidence: float) -> np.ndarray:
        pred = np.where(right, y, (y + 1) % 3)
        out = np.full((len(y), 3), (1 - confidence) / 2)
        out[np.arange(len(y)), pred] = confidence
        return out

    half_right = rng.random(len(y)) < 0.5
    honest = {c: probs(np.ones(len(y), bool), 0.95) if c == "full" else probs(half_right, 0.5) for c in CONDITIONS}
    stubborn = {c: probs(np.ones(len(y), bool), 0.95) if c == "full" else probs(half_right, 0.95) for c in CONDITIONS}
    metrics, md = robustness_table(y, {"honest": honest.__getitem__, "stubborn": stubborn.__getitem__,
                                       "indices": lambda c: honest[c].argmax(axis=1)})
    assert metrics["honest"]["none"]["ece"] < 0.05 < 0.4 < metrics["stubborn"]["none"]["ece"]
    assert metrics["stubborn"]["none"]["confidence"] == pytest.approx(0.95)
    assert metrics["honest"]["none"]["accuracy"] == metrics["stubborn"]["none"]["accuracy"] \
        == metrics["indices"]["none"]["accuracy"]
    assert "ece" not in metrics["indices"]["none"]
    table = md.split("Calibration of the top-1 confidence")[1]
    assert "| honest |" in table and "| stubborn |" in table and "| indices |" not in table


def test_an_old_heads_probabilities_follow_the_new_heads_class_order_or_become_indices():
    from models.heads.fashion import _remapped

    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    same = _remapped(p, np.array([2, 0, 1]), 3)   # old class 0 is the new class 2, ...
    np.testing.assert_allclose(same, [[0.2, 0.1, 0.7], [0.3, 0.6, 0.1]])
    lacking = _remapped(p, np.array([-1, 0, 1]), 3)   # the new head lacks old class 0
    np.testing.assert_array_equal(lacking, [-1, 1])


def test_fusion_temperatures_follow_the_titles_evidence_and_change_no_decision():
    """Fitted over rows with full and empty titles, one temperature is a compromise: too sure where the title
    decides and the photo is unsure, or the reverse. Two, blended by the title gate, fit each end; the top class
    of every row stays where it was."""
    from models.heads.bundle import softmax
    from models.heads.train import expected_calibration_error, fit_temperature

    fused, own, x, vt, vy, _ = _late_fused(1600)
    assert fused.fusion_temperature_poor is not None and fused.fusion_temperature_poor != fused.fusion_temperature
    gate = fused.title_gate(vt)
    # the same fusion with one temperature fitted on the same rows, as bundles before 2026-12-06 have
    one = dataclasses.replace(fused, fusion_temperature_poor=None,
                              fusion_temperature=fit_temperature(fused.fused_log_probs(own, x, vt, gate), vy))

    def probs(head):
        return softmax(head.fused_log_probs(own, x, vt, gate) / head.fusion_temperatures(gate))

    p1, p2 = probs(one), probs(fused)
    np.testing.assert_array_equal(p1.argmax(axis=1), p2.argmax(axis=1))
    empty = np.arange(len(vy)) % 2 == 0
    ece = {name: [expected_calibration_error(p[m], vy[m]) for m in (empty, ~empty)]
           for name, p in (("one", p1), ("two", p2))}
    assert sum(ece["two"]) < sum(ece["one"])
    # the product's temperature runs between the two ends with its gate
    t = fused.fusion_temperatures(np.array([[0.0], [1.0], [0.5]]))
    np.testing.assert_allclose(t.ravel(), [fused.fusion_temperature_poor, fused.fusion_temperature,
                                           (fused.fusion_temperature + fused.fusion_temperature_poor) / 2])


def test_one_temperature_where_the_rows_do_not_span_both_ends_of_the_gate():
    from models.heads.bundle import log_softmax
    from models.heads.train import fit_fusion_temperatures

    _, _, _, photo = _photo_and_text_heads()
    _, vimg, vy = _catalog(300, seed=6)
    lp = log_softmax(photo.logits(vimg))
    full_only = fit_fusion_temperatures(photo, lp, vy, np.ones((len(vy), 1)))
    no_gate = fit_fusion_temperatures(photo, lp, vy, None)
    assert full_only.fusion_temperature_poor is None and no_gate.fusion_temperature_poor is None
    assert full_only.fusion_temperature == pytest.approx(no_gate.fusion_temperature)


def _fused_text_and_photo(n_valid: int):
    """A fused head on text + photo with a late-fused title expert (fitted on half-empty titles), as the shipped
    category head is built: ``(head, its text head, train titles, valid titles, valid photos, valid labels)``."""
    from models.heads.bundle import head_input, log_softmax
    from models.heads.train import fit_title_expert

    titles, img, y = _catalog(1200, 0)
    cfg = HeadTrainConfig(epochs=8, hidden=32, calibration_fraction=0.2, lexical_features=0)
    pad = lambda a: np.pad(a, ((0, 0), (0, 8)))   # noqa: E731  (image embeddings as wide as the text's)
    txt = _text_tower(titles)
    text_head = fit_head(txt, y, CLASSES, cfg, name="category", inputs="text")
    head = fit_head(np.concatenate([txt, pad(img)], axis=1), y, CLASSES, cfg, name="category",
                    inputs="text+image", text_slice=slice(0, 16), image_slice=slice(16, 32))
    vt, vimg, vy = _catalog(n_valid, seed=7)
    vimg = pad(vimg)
    fit_t = [t if i % 2 else "" for i, t in enumerate(vt)]
    x = head_input(_text_tower(fit_t), vimg, "text+image")
    fused = fit_title_expert(head, text_head, log_softmax(head.logits(x) / head.temperature), x, vy, fit_t,
                             np.ones(len(vy), dtype=bool), LexicalExpert.fit(titles, y, len(CLASSES)))
    return fused, text_head, titles, vt, vimg, vy


def test_recalibrating_a_stored_bundles_head_keeps_its_weights_and_decisions():
    from models.heads.recalibrate import recalibrate_head
    from models.heads.robustness import DegradedTitles

    fused, text_head, titles, vt, vimg, vy = _fused_text_and_photo(800)
    assert fused.title_weight > 0 and fused.title_min_words > 0
    old = dataclasses.replace(fused, fusion_temperature_poor=None)   # as a bundle saved before the change
    brands = known_brands(titles)
    valid = {"full": vt, **{c: degrade(vt, k, seed=2026, brands=brands)
                            for c, k in (("brand", "brand"), ("half", "half"), ("none", "empty"))}}
    deg = DegradedTitles([], np.zeros(0), valid, np.zeros((0, 16), np.float32),
                         {c: _text_tower(v) for c, v in valid.items()})
    new = recalibrate_head(old, {"va_img": vimg}, deg, vy)
    assert new.fusion_temperature_poor is not None
    assert all(a[0] is b[0] for a, b in zip(new.layers, old.layers, strict=True))   # the weights untouched
    for c in valid:
        np.testing.assert_array_equal(new.predict(deg.valid_txt[c], vimg, valid[c]).argmax(axis=1),
                                      old.predict(deg.valid_txt[c], vimg, valid[c]).argmax(axis=1))
    assert recalibrate_head(text_head, {"va_img": vimg}, deg, vy) is text_head   # no title expert: unchanged


def test_a_title_that_names_two_types_leaves_the_type_to_the_photo(tmp_path):
    """A seller's title stuffed with another type's name: with ``ambiguous_titles`` the title expert gets no
    weight there (the fused head without it decides, at the poor title's temperature); a title naming at most one
    type is read exactly as before; the flag survives the store and a bundle saved before it loads without it."""
    fused, own, x, vt, vy, _ = _late_fused(400)
    fused = dataclasses.replace(fused, fusion_temperature_poor=2.0)
    flagged = dataclasses.replace(fused, ambiguous_titles=True)
    stuffed_titles = [f"{t} {CLASSES[(c + 1) % 3]}" if t else t for t, c in zip(vt, vy, strict=True)]
    xs = _text_tower(stuffed_titles)
    gate = flagged.title_gate(stuffed_titles)
    two = np.array([sum(c.lower() in t.lower().split() for c in CLASSES) >= 2 for t in stuffed_titles])
    assert two.sum() > 100 and np.all(gate[two] == 0.0) and np.all(gate[~two] == fused.title_gate(stuffed_titles)[~two])
    # where the title names two types, the fused head's own log-probabilities decide (the photo, here)
    np.testing.assert_allclose(flagged.fused_log_probs(own, xs, stuffed_titles)[two], own[two], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(flagged.fusion_temperatures(gate))[two], 2.0)   # an empty title's
    assert not np.allclose(fused.fused_log_probs(own, xs, stuffed_titles)[two], own[two])   # the expert spoke
    # titles naming one type or none: nothing changes
    np.testing.assert_array_equal(flagged.fused_log_probs(own, x, vt), fused.fused_log_probs(own, x, vt))
    head = dataclasses.replace(flagged, name="category")
    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", head), training_data="synthetic", metrics={})
    assert load_heads(find_heads(tmp_path, "enc-v1")).category.ambiguous_titles is True
    desc = {k: v for k, v in head.describe().items() if k != "ambiguous_titles"}   # a bundle saved before the flag
    assert LinearHead.from_parts("category", desc, head.tensors()).ambiguous_titles is False


def test_the_types_an_ambiguous_title_names_get_the_fitted_weight(tmp_path):
    """On a title that names two or more types, each type it names gets ``named_weight`` on its fused
    log-probability (nothing else moves); the weight is fitted where the label is among the named types, and
    stays 0 where a seller's title names only other types; it survives the store, and a bundle saved before it
    loads with 0."""
    from models.heads.ambiguity import NAMED_WEIGHTS, fit_named_weight
    from models.heads.bundle import head_input, named_class_mask

    head, _, _, vt, vimg, vy = _fused_text_and_photo(900)
    head = dataclasses.replace(head, ambiguous_titles=True)
    # the title's own type and one other (a seller stuffing it), or two others with the own type cut off
    own_and_other = [f"{t} {CLASSES[(c + 1) % 3]}" for t, c in zip(vt, vy, strict=True)]
    others_only = [" ".join(t.split()[:-1] + [CLASSES[(c + 1) % 3], CLASSES[(c + 2) % 3]])
                   for t, c in zip(vt, vy, strict=True)]
    x = {k: head_input(_text_tower(ts), vimg, "text+image") for k, ts in
         (("own", own_and_other), ("others", others_only), ("plain", vt))}
    weighted = dataclasses.replace(head, named_weight=2.0)
    lp0, gate0 = head.fused_before_temperature(x["own"], own_and_other)
    lp2, gate2 = weighted.fused_before_temperature(x["own"], own_and_other)
    mask = named_class_mask(own_and_other, head.classes)
    assert mask.sum(axis=1).min() == 2 and np.all(mask[np.arange(len(vy)), vy])
    np.testing.assert_allclose(lp2 - lp0, 2.0 * mask, atol=1e-5)
    np.testing.assert_array_equal(gate0, gate2)
    np.testing.assert_allclose(weighted.fused_before_temperature(x["plain"], vt)[0],    # one type named: as before
                               head.fused_before_temperature(x["plain"], vt)[0], atol=1e-6)

    rows = np.arange(len(vy)) % 3 > 0
    w, curve = fit_named_weight(head, [(x["own"], own_and_other)], vy, rows)
    assert w > 0 and max(curve) > curve[0] and len(curve) == len(NAMED_WEIGHTS)
    acc = lambda h, k, ts: (h.probs(x[k], ts).argmax(axis=1) == vy)[~rows].mean()   # noqa: E731
    assert acc(dataclasses.replace(head, named_weight=w), "own", own_and_other) > acc(head, "own", own_and_other)
    assert fit_named_weight(head, [(x["others"], others_only)], vy, rows)[0] == 0.0

    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", weighted), training_data="synthetic", metrics={})
    assert load_heads(find_heads(tmp_path, "enc-v1")).category.named_weight == 2.0
    desc = {k: v for k, v in weighted.describe().items() if k != "named_weight"}   # a bundle saved before it
    assert LinearHead.from_parts("category", desc, weighted.tensors()).named_weight == 0.0


def test_stuffed_titles_append_other_types_words_and_keep_the_label():
    from models.heads.degrade import stuffed

    words = {"Shirt": ["Blue Shirt"], "Shoe": ["Casual Shoe"], "Watch": ["Steel Watch"]}
    titles, labels = ["Nike Men Blue Shirt", "Fossil Watch", ""], ["Shirt", "Watch", "Shoe"]
    out = stuffed(titles, labels, words, 2, seed=0)
    assert out == stuffed(titles, labels, words, 2, seed=0) and len(out) == 3
    for t, o, c in zip(titles, out, labels, strict=True):
        extra = o[len(t):].strip()
        others = [w for k, v in words.items() if k != c for w in v]
        assert o.startswith(t) and words[c][0] not in extra
        assert sum(extra.count(w) for w in others) == 2   # two phrases, each of another type


def test_the_types_a_title_names_are_read_as_sellers_write_them():
    from models.heads.bundle import named_class_mask, named_classes

    classes = ("Tshirts", "Casual Shoes", "Sports Shoes", "Watches", "Dresses", "Body Lotion", "Shorts", "Heels")
    titles = ["Nike Men Blue T-Shirt", "Puma Men Black Sports Shoes", "Nike Women Black T-Shirts Body Lotion Shorts",
              "Fossil Watch & Heels", "", "Sports Shoes Casual Shoes", "Women Red Dress", "Titan Men Steel Strap"]
    assert named_classes(titles, classes).tolist() == [1, 1, 3, 2, 0, 2, 1, 0]
    assert named_classes([None, float("nan")], classes).tolist() == [0, 0]
    mask = named_class_mask(titles, classes)
    assert [sorted(classes[j] for j in np.flatnonzero(m)) for m in mask[[2, 5]]] == [
        ["Body Lotion", "Shorts", "Tshirts"], ["Casual Shoes", "Sports Shoes"]]


def test_a_changed_description_stores_the_same_weight_bytes(tmp_path):
    """A new version that changes only a head's description keeps the earlier version's weight file byte for byte
    (no second copy of the tensors in git), and refuses where the tensors differ."""
    head = LinearHead("category", "text", tuple(CLASSES), np.zeros(4, np.float32), np.ones(4, np.float32),
                      ((np.arange(12, dtype=np.float32).reshape(4, 3), np.zeros(3, np.float32)),))
    first = save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", head), training_data="synthetic", metrics={})
    src = tmp_path / "heads" / first
    second = save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", dataclasses.replace(head, ambiguous_titles=True)),
                        training_data="synthetic", metrics={}, same_weights_as=src)
    assert second != first
    assert (tmp_path / "heads" / second / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert load_heads(tmp_path / "heads" / second).category.ambiguous_titles is True
    other = dataclasses.replace(head, mean=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="tensors are not those of"):
        save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", other), training_data="synthetic", metrics={},
                   same_weights_as=src)
