"""Heads on the embeddings: training tricks, calibration, label cleaning, store round trip, adult signals."""

from __future__ import annotations

import numpy as np
import pytest

from models.heads.adult import TermList, decide_adult
from models.heads.bundle import HeadBundle, find_heads, load_heads, mentions, save_heads
from models.heads.train import HeadTrainConfig, clean_label_mask, expected_calibration_error, fit_head, fit_temperature
from models.heads.zero_shot import ZeroShotLabels, label_prompt, zero_shot_probs
from models.store import ModelIntegrityError


def _blobs(n_per: int = 80, k: int = 4, d: int = 16, seed: int = 0, spread: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    return x, y


@pytest.mark.parametrize("change", [{}, {"ema_decay": 0.9}, {"fgm_eps": 0.5}, {"rdrop_alpha": 1.0},
                                    {"hidden": 0}, {"clean_labels": True}])
def test_fit_head_learns_separable_classes_with_each_trick(change):
    x, y = _blobs()
    xt, yt = _blobs(n_per=30, seed=0)
    # A linear head learns slower than an MLP from the same few steps: give it a larger learning rate.
    cfg = HeadTrainConfig(epochs=15, batch_size=64, hidden=32, **change) if "hidden" not in change else \
        HeadTrainConfig(epochs=15, batch_size=64, lr=5e-2, **change)
    head = fit_head(x, y, ["a", "b", "c", "d"], cfg, name="t", inputs="text")
    probs = head.probs(xt)
    assert probs.shape == (len(xt), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs.argmax(axis=1) == yt).mean() > 0.95
    assert 0.05 <= head.temperature <= 20


def test_rdrop_needs_dropout():
    with pytest.raises(ValueError, match="rdrop_alpha > 0 needs dropout"):
        HeadTrainConfig(rdrop_alpha=1.0, dropout=0.0)


def test_temperature_scaling_recovers_an_overconfident_scale():
    # Labels drawn from softmax(l); a model that outputs 4*l is overconfident by a temperature of 4.
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=1.5, size=(4000, 5))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(4 * logits, y)
    assert 3.4 < t < 4.6
    over = np.exp(4 * logits) / np.exp(4 * logits).sum(axis=1, keepdims=True)
    fixed = np.exp(4 * logits / t) / np.exp(4 * logits / t).sum(axis=1, keepdims=True)
    assert expected_calibration_error(fixed, y) < 0.5 * expected_calibration_error(over, y)


def test_confident_learning_finds_flipped_labels():
    x, y = _blobs(n_per=100, k=4, d=16, seed=2)
    rng = np.random.default_rng(3)
    flipped = rng.choice(len(y), size=40, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1 + rng.integers(0, 3, size=40)) % 4
    keep = clean_label_mask(x, noisy, 4, folds=3)
    dropped = np.flatnonzero(~keep)
    assert len(dropped) >= 30
    assert np.isin(dropped, flipped).mean() > 0.8      # what it drops is mostly what was flipped


def _bundle(d: int = 8) -> HeadBundle:
    x, y = _blobs(n_per=40, k=3, d=2 * d, seed=4)
    cat = fit_head(x, y, ["Tshirts", "Watches", "Mugs"], HeadTrainConfig(epochs=5, hidden=16),
                   name="category", inputs="text+image", image_slice=slice(d, 2 * d))
    col = fit_head(x[:, :d], y, ["Red", "Blue", "Green"], HeadTrainConfig(epochs=5, hidden=0), name="colour",
                   inputs="text")
    return HeadBundle("enc-v1", cat, {"colour": col}, None, 0.5)


def test_head_bundle_round_trip_through_the_store(tmp_path):
    bundle = _bundle()
    version = save_heads(tmp_path, "heads-test", bundle, training_data="synthetic", metrics={"acc": 1.0})
    vdir = find_heads(tmp_path, "enc-v1")
    assert vdir is not None and vdir.name == version
    assert find_heads(tmp_path, "another-encoder") is None
    loaded = load_heads(vdir)
    assert loaded.version == version and loaded.encoder_version == "enc-v1"
    rng = np.random.default_rng(0)
    t, i = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.category.predict(t, i), bundle.category.predict(t, i), rtol=1e-5)
    np.testing.assert_allclose(loaded.attributes["colour"].predict(t, None),
                               bundle.attributes["colour"].predict(t, None), rtol=1e-5)
    # A missing image is read as zeros, not as NaN.
    assert np.isfinite(loaded.category.predict(t, np.full_like(i, np.nan))).all()


def test_mentions_match_whole_names_longest_first():
    classes = ("Blue", "Navy Blue", "Red", "Off White")
    got = mentions(["Navy Blue polo", "red and BLUE scarf", "Redwood mug", "off white tee", "", "Bluetooth speaker"],
                   classes)
    assert got.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def _colour_task(n: int, named: float, seed: int):
    """Embeddings that only weakly know the colour; titles that name it in a share ``named`` of the rows."""
    rng = np.random.default_rng(seed)
    colours = ["Red", "Blue", "Green", "Black"]
    y = rng.integers(0, 4, size=n)
    x = (np.eye(4)[y] * 0.4 + rng.normal(size=(n, 4))).astype(np.float32)
    titles = [f"{'Acme ' + colours[c] if rng.random() < named else 'Acme'} cotton shirt" for c in y]
    return x, y, titles, colours


def test_mention_weight_is_fitted_when_titles_name_the_class_and_zero_when_they_do_not():
    x, y, titles, colours = _colour_task(1200, named=0.8, seed=5)
    cfg = HeadTrainConfig(epochs=4, hidden=0, lr=5e-2, calibration_fraction=0.3)
    lexical = fit_head(x, y, colours, cfg, name="colour", inputs="text", texts=titles)
    plain = fit_head(x, y, colours, cfg, name="colour", inputs="text")
    xv, yv, tv, _ = _colour_task(600, named=0.8, seed=6)
    assert lexical.mention_weight > 0 and plain.mention_weight == 0
    acc_lexical = (lexical.predict(xv, None, tv).argmax(axis=1) == yv).mean()
    acc_plain = (plain.predict(xv, None, tv).argmax(axis=1) == yv).mean()
    assert acc_lexical > acc_plain + 0.3
    # Without texts at inference the head falls back to its embedding part.
    np.testing.assert_allclose(lexical.predict(xv, None), lexical.with_temperature(lexical.temperature, 0.0, 0.0)
                               .predict(xv, None, tv), rtol=1e-5)
    x, y, titles, colours = _colour_task(1200, named=0.0, seed=7)
    assert fit_head(x, y, colours, cfg, name="colour", inputs="text", texts=titles).mention_weight == 0


def test_mention_weight_survives_the_store(tmp_path):
    x, y, titles, colours = _colour_task(600, named=0.9, seed=8)
    head = fit_head(x, y, colours, HeadTrainConfig(epochs=2, hidden=0, calibration_fraction=0.3), name="colour",
                    inputs="text", texts=titles)
    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", None, {"colour": head}), training_data="synthetic",
               metrics={})
    loaded = load_heads(find_heads(tmp_path, "enc-v1")).attributes["colour"]
    assert loaded.mention_weight == head.mention_weight > 0
    # The lexical expert's weights are stored in float16: probabilities move by about 1e-3, decisions do not.
    got, want = loaded.predict(x[:9], None, titles[:9]), head.predict(x[:9], None, titles[:9])
    np.testing.assert_allclose(got, want, atol=5e-3)
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))


def test_tampered_head_bundle_is_refused(tmp_path):
    save_heads(tmp_path, "heads-test", _bundle(), training_data="synthetic", metrics={})
    vdir = find_heads(tmp_path, "enc-v1")
    weights = vdir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256 does not match"):
        load_heads(vdir)


@pytest.mark.parametrize("text, group", [
    ("Silicone Dildo 18cm", "erotic"), ("EROTIC massage candle", "erotic"), ("大人のおもちゃ セット", "erotic"),
    ("성인용품 커플 세트", "erotic"), ("Erotische Spiele für Paare", "erotic"), ("Stun gun 5000kV", "weapons"),
    ("Pfefferspray zur Selbstverteidigung", "weapons"),
])
def test_term_list_matches_adult_terms_in_six_languages(text, group):
    hits = TermList.load().match(text)
    assert any(h.startswith(group + ":") for h in hits), hits


@pytest.mark.parametrize("text", [
    "Gunmetal Analog Watch", "Amante Women Black Lace Lingerie Set", "Speedo Women Swimwear", "Jockey Men Briefs",
    "Nike Men Sports Bra", "Sexy Beach Women Bikini", "Titan Men Dress Watch", "",
])
def test_term_list_leaves_ordinary_apparel_alone(text):
    assert TermList.load().match(text) == []


def test_term_list_finds_what_one_boundary_checked_pattern_per_term_finds():
    r"""The shared boundary checks of a run of word terms give the same first match, term for term, as the
    reference: one ``(?<!\w)term(?!\w)`` alternative per word term and the bare term for CJK and Hangul, in the
    same longest-first order; on terms inside words, next to digits, underscores, accents and CJK, in any case."""
    import random
    import re

    from models.heads.adult import _is_cjk

    terms = TermList.load()
    reference = {g: re.compile("|".join(re.escape(t) if _is_cjk(t) else rf"(?<!\w){re.escape(t)}(?!\w)"
                                        for t in sorted(ts, key=len, reverse=True)), re.IGNORECASE)
                 for g, ts in terms.groups.items()}
    words = [t for ts in terms.groups.values() for t in ts]
    rng = random.Random(7)
    texts = []
    for _ in range(3000):
        t = rng.choice(words)
        form = rng.choice([t, t.upper(), t.title(), "x" + t, t + "x", t + "s", f"-{t}-", f"ab{t}cd", t + t, "1" + t,
                           t + "1", "é" + t, t + "_", "日本" + t, f"{t} {rng.choice(words)}"])
        before, after = rng.choice(["", "Navy cotton ", "日本語", "Stun "]), rng.choice(["", " set", "です", "gun"])
        texts.append(before + form + after)
    found = 0
    for text in texts:
        want = [f"{g}:{m.group(0).lower()}" for g, p in reference.items() if (m := p.search(text))]
        assert terms.match(text) == want, text
        found += bool(want)
    assert 0.3 * len(texts) < found < len(texts)   # both kinds of text were there


def test_decide_adult_names_every_signal():
    terms = TermList.load()
    ds = decide_adult(["Plain mug", "Vibrator deluxe", "Plain mug", "Leather whip"], terms=terms,
                      embedding_scores=np.array([0.1, 0.2, 0.9, 0.3]), threshold=0.5,
                      categories=[None, None, None, "Mature > Erotic"], category_scores=np.array([0, 0, 0, 0.7]))
    assert [d.is_adult for d in ds] == [False, True, True, True]
    assert ds[0].reasons == () and ds[0].score == pytest.approx(0.1)
    assert ds[1].reasons == ("term:erotic:vibrator",) and ds[1].score == 1.0
    assert ds[2].reasons == ("embedding:0.90",)
    assert ds[3].reasons == ("category:Mature > Erotic",) and ds[3].score == pytest.approx(0.7)


def test_term_list_file_errors_are_clear(tmp_path):
    bad = tmp_path / "terms.json"
    bad.write_text('{"erotic": ["not a mapping"]}')
    with pytest.raises(ValueError, match="must map languages to term lists"):
        TermList.load(bad)


def test_zero_shot_picks_the_nearest_label():
    assert label_prompt("Apparel > Topwear > Tshirts") == "Tshirts, Topwear, Apparel"
    emb = {"Tshirts, Topwear, Apparel": [1, 0, 0], "Mugs, Kitchen, Home": [0, 1, 0], "Watches": [0, 0, 1]}
    labels = ZeroShotLabels.build(["Apparel > Topwear > Tshirts", "Home > Kitchen > Mugs", "Watches", "Watches"],
                                  lambda texts: np.array([emb[t] for t in texts], dtype=np.float32), "test")
    assert labels.labels == ("Apparel > Topwear > Tshirts", "Home > Kitchen > Mugs", "Watches")
    probs = zero_shot_probs(np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 0.1]]), labels)
    assert probs.argmax(axis=1).tolist() == [1, 0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def _brand_task(n: int, seed: int):
    """Labels that follow a brand word (not a class name) in the title; embeddings that barely know them."""
    rng = np.random.default_rng(seed)
    usage = ["Casual", "Sports", "Ethnic"]
    brands = [["Urbanic", "Levis"], ["Adidas", "Puma"], ["Fabindia", "Biba"]]
    y = rng.integers(0, 3, size=n)
    x = (np.eye(3)[y] * 0.3 + rng.normal(size=(n, 3))).astype(np.float32)
    titles = [f"{brands[c][rng.integers(0, 2)]} {rng.choice(['Men', 'Women'])} cotton top" for c in y]
    return x, y, titles, usage


def test_lexical_expert_computes_what_scikit_learn_computes():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from models.heads.lexical import LexicalExpert

    _, y, titles, _ = _brand_task(300, seed=1)
    _, _, other, _ = _brand_task(50, seed=2)
    ours = LexicalExpert.fit(titles, y, 3)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=5000)
    clf = LogisticRegression(C=10.0, max_iter=1000, random_state=0).fit(vec.fit_transform(titles), y)
    # repeated words (counts above one), an empty text and one without a known word between the others
    texts = [other[0] + " " + other[0], *other[1:25], "", "no known words here", *other[25:]]
    x = vec.transform(texts)
    np.testing.assert_allclose(ours.features(texts).toarray(), x.toarray(), atol=1e-6)
    np.testing.assert_allclose(ours.logits(texts), clf.decision_function(x), rtol=1e-4, atol=1e-4)


def test_lexical_weight_is_fitted_where_title_words_carry_the_label_and_survives_the_store(tmp_path):
    x, y, titles, usage = _brand_task(1500, seed=3)
    cfg = HeadTrainConfig(epochs=4, hidden=0, lr=5e-2, calibration_fraction=0.3)
    head = fit_head(x, y, usage, cfg, name="usage", inputs="text", texts=titles)
    plain = fit_head(x, y, usage, cfg, name="usage", inputs="text")
    xv, yv, tv, _ = _brand_task(500, seed=4)
    assert head.lexical is not None and head.lexical_weight > 0 and head.mention_weight == 0
    assert (head.predict(xv, None, tv).argmax(axis=1) == yv).mean() > (plain.predict(xv, None).argmax(axis=1)
                                                                       == yv).mean() + 0.3
    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", None, {"usage": head}), training_data="synthetic",
               metrics={})
    loaded = load_heads(find_heads(tmp_path, "enc-v1")).attributes["usage"]
    assert loaded.lexical_weight == head.lexical_weight and loaded.lexical.vocab == head.lexical.vocab
    np.testing.assert_allclose(loaded.predict(xv[:9], None, tv[:9]), head.predict(xv[:9], None, tv[:9]), atol=5e-3)



def test_lexical_expert_is_refitted_on_the_calibration_rows_once_its_weight_is_chosen():
    from models.heads.train import _split_calibration

    x, y, titles, usage = _brand_task(1000, seed=5)
    cfg = HeadTrainConfig(epochs=2, hidden=0, lr=5e-2, calibration_fraction=0.2)
    _, cal = _split_calibration(len(y), cfg.calibration_fraction, cfg.seed)
    # A brand only the calibration rows carry: the expert that chose the weight never saw it, the served one must.
    for i in cal[y[cal] == 2][:4]:
        titles[i] = f"Kalakari {titles[i]}"
    head = fit_head(x, y, usage, cfg, name="usage", inputs="text", texts=titles)
    assert head.lexical is not None and head.lexical_weight > 0
    assert "kalakari" in head.lexical.vocab
    assert head.predict(x[:1] * 0, None, ["Kalakari kurta"]).argmax() == 2

def _prior_biased_scores(n: int, seed: int, offset: float = 3.0):
    """Scores of a model that knows the classes but under-scores the two rare ones by ``offset`` (as a model
    trained on a skewed prior does): read as they are, it never dares to name a rare class."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.96, 0.02, 0.02])
    z = (3.0 * np.eye(3)[y] + rng.normal(size=(n, 3))).astype(np.float32)
    z[:, 1:] -= offset
    return z, y


def _identity_head(name: str = "usage"):
    from models.heads.bundle import LinearHead

    return LinearHead(name, "text", ("Casual", "Party", "Travel"), np.zeros(3, np.float32), np.ones(3, np.float32),
                      ((np.eye(3, dtype=np.float32), np.zeros(3, np.float32)),))


def test_prior_adjustment_lifts_the_rare_classes_and_survives_the_store(tmp_path):
    from models.heads.metrics import accuracy_f1
    from models.heads.train import fit_prior_adjustment

    prior = np.array([0.96, 0.02, 0.02])
    z, y = _prior_biased_scores(3000, seed=5)
    plain = _identity_head()
    adjusted = fit_prior_adjustment(plain, z, y, prior)
    assert adjusted.class_bias is not None
    # The rare classes get the bonus, the common one does not.
    assert adjusted.class_bias[1] > adjusted.class_bias[0] and adjusted.class_bias[2] > adjusted.class_bias[0]
    zv, yv = _prior_biased_scores(3000, seed=6)
    m_plain = accuracy_f1(yv, plain.predict(zv, None).argmax(axis=1))
    m_adj = accuracy_f1(yv, adjusted.predict(zv, None).argmax(axis=1))
    assert m_adj["macro_f1"] > m_plain["macro_f1"] + 0.1 and m_adj["accuracy"] >= m_plain["accuracy"]
    probs = adjusted.predict(zv, None)
    assert np.all((probs >= 0) & (probs <= 1)) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", None, {"usage": adjusted}), training_data="synthetic",
               metrics={})
    loaded = load_heads(find_heads(tmp_path, "enc-v1")).attributes["usage"]
    np.testing.assert_allclose(loaded.class_bias, adjusted.class_bias)
    np.testing.assert_allclose(loaded.predict(zv[:50], None), probs[:50], rtol=1e-5)


def test_prior_adjustment_stays_off_where_the_scores_know_nothing_of_the_rare_classes():
    from models.heads.train import fit_prior_adjustment

    # Scores that carry no information about the rare classes: naming them more often only loses accuracy.
    rng = np.random.default_rng(7)
    y = rng.choice(3, size=3000, p=[0.9, 0.05, 0.05])
    z = rng.normal(size=(3000, 3)).astype(np.float32)
    z[:, 0] += 2.0
    assert fit_prior_adjustment(_identity_head(), z, y, np.array([0.9, 0.05, 0.05])).class_bias is None


def test_head_training_fits_the_prior_adjustment_only_when_asked():
    x, y = _blobs(n_per=150, k=3, spread=1.5, seed=2)
    cfg = HeadTrainConfig(epochs=3, hidden=0, lr=5e-2, calibration_fraction=0.3)
    assert fit_head(x, y, ["a", "b", "c"], cfg, name="colour", inputs="text").class_bias is None


def test_prior_adjustment_stays_off_when_the_classes_are_balanced():
    x, y = _blobs(n_per=150, k=3, spread=1.5, seed=2)
    cfg = HeadTrainConfig(epochs=3, hidden=0, lr=5e-2, calibration_fraction=0.3, prior_adjustment=True)
    assert fit_head(x, y, ["a", "b", "c"], cfg, name="colour", inputs="text").class_bias is None


def test_the_heads_gelu_stays_in_float32_and_is_the_exact_gelu():
    """The heads' MLP runs in float32 through its activation (a float64 constant had promoted it, and the next
    layer's product with it), and its GELU is the erf one to float32 precision (torch's float32 kernel: within
    2e-6), not the tanh approximation (which is up to 5e-4 away on this range)."""
    from scipy.special import erf

    from models.heads.bundle import _gelu

    z = np.linspace(-6, 6, 1001, dtype=np.float32)
    g = _gelu(z)
    assert g.dtype == np.float32
    x = z.astype(np.float64)
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2.0)))
    np.testing.assert_allclose(g, exact, rtol=1e-6, atol=2e-6)
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert np.abs(tanh_form - exact).max() > 1e-4
