"""Degraded copies of product titles, for training heads that do not trust a title which names nothing.

A catalog title is often far poorer than the templated fashion titles ("Brand Gender Colour Type"): only the
brand, a few words, nothing at all. A head trained on full titles alone learns that the title settles the label
and then trusts a bare brand name over the photo. Training beside degraded copies (same product, same photo,
same label) teaches it to read the photo when the title carries little.

Kinds: ``brand`` (the title cut to its brand: the words before the gender word, or a brand seen so elsewhere),
``half`` (each word kept with probability one half, at least one kept), ``empty`` and ``shuffle`` (the words in a
random order).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["KINDS", "brand_of", "degrade", "degrade_mixed", "known_brands", "mistyped", "stuffed"]

KINDS = ("brand", "half", "empty", "shuffle")
_GENDER_WORDS = {"men", "women", "boys", "girls", "unisex"}
_MAX_BRAND_WORDS = 4   # "United Colors of Benetton": a longer prefix before the gender word is no brand
_MIN_BRAND_TITLES = 5  # a prefix before the gender word counts as a known brand once this many titles share it


def _words(title: str) -> list[str]:
    return (title or "").split()


def _gender_prefix(words: list[str]) -> list[str] | None:
    for i, w in enumerate(words[: _MAX_BRAND_WORDS + 1]):
        if re.sub(r"\W", "", w).lower() in _GENDER_WORDS:
            prefix = words[:i]
            if prefix and prefix[-1].lower() == "for":   # "Tonino Lamborghini Feroce For Men"
                prefix = prefix[:-1]
            return prefix or None
    return None


def known_brands(titles: Sequence[str]) -> tuple[str, ...]:
    """Brands read from the titles: a prefix before the gender word that at least five titles share (perfume
    and watch names sit there too, each in a title or two); longest first, lower-cased."""
    counts: dict[str, int] = {}
    for t in titles:
        p = _gender_prefix(_words(t))
        if p:
            key = " ".join(p).lower()
            counts[key] = counts.get(key, 0) + 1
    found = [b for b, n in counts.items() if n >= _MIN_BRAND_TITLES]
    return tuple(sorted(found, key=lambda b: (-len(b), b)))


def brand_of(title: str, brands: Sequence[str] = ()) -> str:
    """The brand of a templated title: the longest known brand it starts with (``brands``, from
    :func:`known_brands`); else the words before its gender word; else its first word ("" for an empty one)."""
    words = _words(title)
    low = " ".join(words).lower()
    for b in brands:
        if low == b or low.startswith(b + " "):
            return " ".join(words[: len(b.split())])
    prefix = _gender_prefix(words)
    if prefix:
        return " ".join(prefix)
    return words[0] if words else ""


def degrade(titles: Sequence[str], kind: str, seed: int, brands: Sequence[str] = ()) -> list[str]:
    """Each title degraded the same way (``kind`` from :data:`KINDS`); ``seed`` fixes the random ones."""
    if kind not in KINDS:
        raise ValueError(f"degradation kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    out = []
    for t in titles:
        words = _words(t)
        if kind == "brand":
            out.append(brand_of(t, brands))
        elif kind == "empty" or not words:
            out.append("")
        elif kind == "half":
            keep = rng.random(len(words)) < 0.5
            if not keep.any():
                keep[rng.integers(len(words))] = True
            out.append(" ".join(w for w, k in zip(words, keep, strict=True) if k))
        else:
            out.append(" ".join(words[i] for i in rng.permutation(len(words))))
    return out


def degrade_mixed(titles: Sequence[str], seed: int, brands: Sequence[str] = (),
                  kinds: Sequence[str] = KINDS) -> tuple[list[str], np.ndarray]:
    """One degraded copy per title, its kind drawn at random from ``kinds``; with the kind index of each."""
    if not kinds:
        raise ValueError("degrade_mixed needs at least one kind")
    rng = np.random.default_rng(seed)
    which = rng.integers(len(kinds), size=len(titles))
    out = [""] * len(titles)
    for k, kind in enumerate(kinds):
        idx = np.flatnonzero(which == k).tolist()
        for i, t in zip(idx, degrade([titles[i] for i in idx], kind, seed + 1 + k, brands), strict=True):
            out[i] = t
    return out, which


def stuffed(titles: Sequence[str], labels: Sequence[str], words: Mapping[str, Sequence[str]], n: int, seed: int
            ) -> list[str]:
    """Each title with ``n`` other products' words appended, as a seller stuffs a listing with search words: for
    each, a class other than the title's own label drawn at random, and one of its entries in ``words`` (class ->
    phrases: its name, or the last words of its titles). The label stays the title's own."""
    rng = np.random.default_rng(seed)
    pool = sorted(c for c, ws in words.items() if len(ws))
    out = []
    for title, label in zip(titles, labels, strict=True):
        extra: list[str] = []
        while len(extra) < n and len(pool) > 1:
            c = pool[int(rng.integers(len(pool)))]
            if c != label:
                extra.append(words[c][int(rng.integers(len(words[c])))])
        out.append(" ".join([title or "", *extra]).strip())
    return out


def _typo(word: str, rng: np.random.Generator) -> str:
    """``word`` with one typing error inside it (never its first or last letter): two neighbours swapped, a letter
    dropped, one added or one changed."""
    j = int(rng.integers(1, len(word) - 2)) if len(word) > 3 else 1
    kind = int(rng.integers(4))
    letter = string.ascii_lowercase[int(rng.integers(len(string.ascii_lowercase)))]
    if kind == 0:
        return word[:j] + word[j + 1] + word[j] + word[j + 2:]
    if kind == 1:
        return word[:j] + word[j + 1:]
    if kind == 2:
        return word[:j] + letter + word[j:]
    return word[:j] + letter + word[j + 1:]


def mistyped(titles: Sequence[str], words: str, seed: int) -> list[str]:
    """Each title with typing errors, as sellers make them: in its ``words`` "last" word (the type, in a templated
    title), in "one" word drawn at random, or in "two" of them; only words of four or more letters without a digit
    are mistyped (a title without one stays as it is)."""
    if words not in ("last", "one", "two"):
        raise ValueError(f"mistyped: words must be 'last', 'one' or 'two', got {words!r}")
    rng = np.random.default_rng(seed)
    out = []
    for title in titles:
        ws = _words(title)
        ok = [i for i, w in enumerate(ws) if len(w) >= 4 and w.isalpha()]
        if words == "last":
            chosen = ok[-1:]
        else:
            k = min(len(ok), 1 if words == "one" else 2)
            chosen = [ok[int(i)] for i in rng.choice(len(ok), size=k, replace=False)] if k else []
        for i in chosen:
            ws[i] = _typo(ws[i], rng)
        out.append(" ".join(ws))
    return out
