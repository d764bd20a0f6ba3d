"""Titles in non-Latin scripts tokenise and embed with the shipped model (its card says: trained for English)."""

from __future__ import annotations

import numpy as np
import pytest

from models.encoders import load_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("default", "cpu")


def test_japanese_korean_german_and_empty_titles_embed(encoder):
    titles = ["ブラック Tシャツ メンズ", "블랙 티셔츠 남성용", "Schwarzes T-Shirt für Herren", "", "x" * 5000]
    vectors = encoder.embed_texts(titles)
    assert vectors.shape == (len(titles), 384)
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Different scripts give different embeddings (nothing collapsed to the unknown token alone).
    assert not np.allclose(vectors[0], vectors[1])


def test_the_shipped_card_states_its_languages():
    from models.refs import parse_model_ref

    card = (parse_model_ref("default").name + "/MODEL_CARD.md")
    text = open(card, encoding="utf-8").read()
    assert "## Languages" in text and "English" in text


def test_many_texts_embed_in_bounded_batches_with_the_same_result(encoder, monkeypatch):
    titles = [f"{c} cotton t-shirt size {n}" for c in ("red", "navy blue", "black") for n in range(5)]
    whole = encoder.embed_texts(titles)
    calls = []
    tokenize = encoder._tokenize
    monkeypatch.setattr(encoder, "_tokenize", lambda texts: calls.append(len(texts)) or tokenize(texts))
    monkeypatch.setattr(encoder, "max_batch", 4)
    chunked = encoder.embed_texts(titles)
    assert calls == [4, 4, 4, 3]
    assert np.allclose(whole, chunked, atol=1e-5)
    assert encoder.embed_texts([]).shape == (0, 384)
