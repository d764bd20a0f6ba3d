"""Titles with typing errors: the heads' lexical experts read a mistyped word as the known word one edit away."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from models.heads.bundle import HeadBundle, LinearHead, find_heads, load_heads, save_heads
from models.heads.degrade import mistyped
from models.heads.lexical import LexicalExpert, one_edit

CLASSES = ["Tshirts", "Sandals", "Watches"]
TITLES = (["Nike Men Blue Tshirt", "Puma Women Black Tshirt", "Lee Men Grey Tshirt"] * 10
          + ["Bata Women Brown Sandals", "Catwalk Women Gold Sandals", "Puma Men Black Sandals"] * 10
          + ["Titan Men Steel Watch", "Fossil Women Gold Watch", "Casio Men Black Watch"] * 10)
LABELS = np.repeat([0, 1, 2], 30)


def _expert(on: bool) -> LexicalExpert:
    return dataclasses.replace(LexicalExpert.fit(TITLES, LABELS, len(CLASSES)), correct_typos=on)


@pytest.mark.parametrize("typed, read", [
    ("Tshrit", "tshirt"),      # two neighbours swapped
    ("Sandls", "sandals"),     # a letter dropped
    ("Sanddals", "sandals"),   # a letter added
    ("Wetch", "watch"),        # a letter changed
])
def test_a_mistyped_word_is_read_as_the_known_word_one_edit_away(typed, read):
    expert = _expert(True)
    assert expert._words(f"Nike Men Blue {typed}")[-1] == read
    assert _expert(False)._words(f"Nike Men Blue {typed}")[-1] == typed.lower()


def test_short_words_numbers_and_far_words_are_read_as_written():
    expert = _expert(True)
    assert expert._words("Lea Men 501 Shurtsx Tshirts2") == ("lea", "men", "501", "shurtsx", "tshirts2")


def test_the_most_frequent_of_two_known_words_one_edit_away_wins():
    titles = ["Black Watch"] * 20 + ["Black Match"] * 2 + ["Blue Tshirt"] * 20
    expert = dataclasses.replace(LexicalExpert.fit(titles, np.array([0] * 22 + [1] * 20), 2), correct_typos=True)
    assert one_edit("wxtch", "watch") and one_edit("wxtch", "match") is False
    assert expert._words("Black Xatch") == ("black", "watch")   # one edit from watch (20 titles) and match (2)


def test_correction_brings_a_mistyped_title_back_to_its_class_and_leaves_known_words_alone():
    off, on = _expert(False), _expert(True)
    clean = ["Fossil Women Gold Sandals", "Casio Men Gold Watch", "Bata Men Grey Tshirt"]
    typed = ["Fossil Women Gold Sandlas", "Casio Men Gold Wtach", "Bata Men Grey Tshrit"]
    np.testing.assert_array_equal(on.features(clean).toarray(), off.features(clean).toarray())
    np.testing.assert_array_equal(on.known_words(clean), off.known_words(clean))
    np.testing.assert_allclose(on.log_probs(typed), off.log_probs(clean), rtol=1e-6)   # read as the clean titles
    assert off.log_probs(clean)[0].argmax() == 1 and off.log_probs(typed)[0].argmax() == 2   # "Gold": a watch
    assert (on.known_words(typed) > off.known_words(typed)).all()      # the title expert's gate sees the word


def test_the_switch_reaches_every_lexical_expert_of_a_head_and_survives_the_store(tmp_path):
    lexical = _expert(False)
    expert = LinearHead("category.title", "text", tuple(CLASSES), np.zeros(4, np.float32), np.ones(4, np.float32),
                        ((np.zeros((4, 3), np.float32), np.zeros(3, np.float32)),), lexical=lexical, lexical_weight=1.0)
    head = LinearHead("category", "text", tuple(CLASSES), np.zeros(4, np.float32), np.ones(4, np.float32),
                      ((np.zeros((4, 3), np.float32), np.zeros(3, np.float32)),), lexical=lexical, lexical_weight=1.0,
                      title_expert=expert, title_weight=1.0)
    on = head.with_typo_correction(True)
    assert on.lexical.correct_typos and on.title_expert.lexical.correct_typos
    assert not head.lexical.correct_typos   # the head it came from is unchanged
    save_heads(tmp_path, "heads-test", HeadBundle("enc-v1", on), training_data="synthetic", metrics={})
    loaded = load_heads(find_heads(tmp_path, "enc-v1")).category
    assert loaded.lexical.correct_typos and loaded.title_expert.lexical.correct_typos
    desc = {k: v for k, v in lexical.describe().items() if k != "correct_typos"}   # saved before the switch
    assert LexicalExpert.from_parts("x", desc, lexical.tensors("x")).correct_typos is False


def test_mistyped_titles_change_the_chosen_words_by_one_edit_each():
    titles = ["Nike Men Blue Tshirts", "Puma Women Black Casual Shoes", "", "Lee 501 Men"]
    for words, n in (("last", 1), ("one", 1), ("two", 2)):
        out = mistyped(titles, words, seed=3)
        assert out == mistyped(titles, words, seed=3) and out != mistyped(titles, words, seed=4)
        assert out[2] == "" and out[3].split()[:2] == ["Lee", "501"]
        for t, o in zip(titles[:2], out[:2], strict=True):
            changed = [(a, b) for a, b in zip(t.split(), o.split(), strict=True) if a != b]
            assert len(changed) == n and all(one_edit(a, b) for a, b in changed)
            if words == "last":
                assert changed[0][0] == t.split()[-1]
    with pytest.raises(ValueError, match="must be"):
        mistyped(titles, "three", seed=0)
