"""A lexical expert for the heads: TF-IDF over the words of the title and a linear layer, applied in numpy.

A sentence embedding keeps what a title means and blurs which exact words it holds: the brand, a collection
name, a colour word. Some labels follow those words (a product's usage follows its brand line), which is why
TF-IDF + logistic regression is a strong baseline on titles. A head combines this expert with its embedding
MLP (see :class:`models.heads.bundle.LinearHead`), with a weight fitted on held-out rows, so the expert counts
only as far as it helps.

Training uses scikit-learn; inference re-implements the vectoriser's transform (lower-cased word 1-2 grams,
sublinear term frequency, smoothed idf, l2 norm) so a Spark worker needs only numpy and scipy.

Sellers mistype words ("Tshrit", "Sandlas"). A word the vocabulary does not hold tells the expert nothing, and the
title's other words then decide with the weight of a whole title (category accuracy on fashion valid falls from
0.975 to 0.872 with one typo in the type word). With ``correct_typos`` an unknown word of four or more letters (no
digit) is read as the vocabulary's most frequent word one edit away (a letter dropped, added, changed, or two
neighbours swapped), where there is one; every other word is read as written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LexicalExpert", "one_edit"]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")   # scikit-learn's default token pattern
_ABSENT = -30.0                          # bias of a class the expert never saw in training


@functools.lru_cache(maxsize=16384)
def _words(text: str) -> tuple[str, ...]:
    """The lower-cased words of ``text``; kept for the last texts seen, since each head's expert reads the same
    titles."""
    return tuple(_TOKEN.findall(text.lower()))


@functools.lru_cache(maxsize=16384)
def _terms(text: str) -> tuple[str, ...]:
    """The words and word pairs of ``text`` (the vectoriser's terms), kept like :func:`_words`."""
    return _terms_of(_words(text))


def _terms_of(words: tuple[str, ...]) -> tuple[str, ...]:
    return (*words, *(f"{a} {b}" for a, b in zip(words, words[1:], strict=False)))


_TYPO_MIN_LETTERS = 4
_FIXES_KEPT = 200_000     # corrected words remembered per expert before the memo starts again


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one letter dropped, added or changed, or two neighbours swapped."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


@dataclass(frozen=True)
class LexicalExpert:
    vocab: tuple[str, ...]
    idf: np.ndarray        # (V,)
    weight: np.ndarray     # (V, C)
    bias: np.ndarray       # (C,)
    correct_typos: bool = False   # an unknown word is read as the known word one edit away (module docstring)

    @classmethod
    def fit(cls, texts: Sequence[str], y: np.ndarray, n_classes: int, max_features: int = 5000, c: float = 10.0,
            seed: int = 0) -> LexicalExpert:
        """TF-IDF (word 1-2 grams, at most ``max_features`` terms) + logistic regression."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features)
        x = vec.fit_transform(list(texts))
        clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)
        vocab = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
        weight = np.zeros((len(vocab), n_classes), dtype=np.float32)
        bias = np.full(n_classes, _ABSENT, dtype=np.float32)
        seen = clf.classes_.astype(int)
        if len(seen) == 2:   # scikit-learn keeps one weight vector for two classes: logit of the second
            weight[:, seen[1]] = clf.coef_[0]
            bias[seen[0]], bias[seen[1]] = 0.0, clf.intercept_[0]
        else:
            weight[:, seen] = clf.coef_.T
            bias[seen] = clf.intercept_
        return cls(tuple(vocab), vec.idf_.astype(np.float32), weight, bias)

    def features(self, texts: Sequence[str]):
        """The l2-normalised TF-IDF matrix (sparse, N x V), as the fitted vectoriser computes it: every text's
        known terms gathered into one coordinate list, counted, weighted and normalised in numpy."""
        from scipy.sparse import csr_matrix

        n, index = len(texts), self._index
        cols = [[j for j in map(index.get, self._terms(text)) if j is not None] for text in texts]
        lengths = np.fromiter(map(len, cols), dtype=np.int64, count=n)
        flat = np.fromiter((j for c in cols for j in c), dtype=np.int64, count=int(lengths.sum()))
        m = csr_matrix((np.ones(len(flat)), (np.repeat(np.arange(n), lengths), flat)), shape=(n, len(self.vocab)))
        m.sum_duplicates()   # each stored value is now its term's count in the text
        m.data = (1.0 + np.log(m.data)) * self.idf[m.indices]
        row = np.repeat(np.arange(n), np.diff(m.indptr))
        m.data /= np.sqrt(np.bincount(row, weights=m.data ** 2, minlength=n))[row]
        return m.astype(np.float32)

    def known_words(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) how many distinct words of each text the vocabulary holds (the evidence the expert reads)."""
        index = self._index
        return np.array([len({w for w in self._words(t) if w in index}) for t in texts], dtype=np.float32)

    def gate(self, texts: Sequence[str], min_words: float) -> np.ndarray:
        """(N, 1) weight of the expert per text: ``known words / min_words``, at most 1 (1 when ``min_words`` is
        0): a title of one known word (a bare brand) counts for a fraction of a full one, an empty title for
        nothing."""
        if min_words <= 0:
            return np.ones((len(texts), 1), dtype=np.float32)
        return self.gate_of_known(self.known_words(texts), min_words)

    @staticmethod
    def gate_of_known(known: np.ndarray, min_words: float) -> np.ndarray:
        """(N, 1) :meth:`gate` from the counts of :meth:`known_words` (``min_words`` > 0): training fits
        ``min_words`` over a grid with the titles' counts taken once."""
        return np.minimum(1.0, known / float(min_words))[:, None]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.features(texts) @ self.weight) + self.bias

    def log_probs(self, texts: Sequence[str]) -> np.ndarray:
        z = self.logits(texts)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab)}

    def _words(self, text: str | None) -> tuple[str, ...]:
        """The words of ``text`` as this expert reads them: typos corrected when :attr:`correct_typos` is set."""
        words = _words(text or "")
        if not self.correct_typos:
            return words
        index, fixes = self._index, self._fixes
        out = []
        for w in words:
            if w not in index:
                if w not in fixes:
                    if len(fixes) >= _FIXES_KEPT:
                        fixes.clear()
                    fixes[w] = self._nearest(w)
                w = fixes[w]
            out.append(w)
        return tuple(out)

    def _terms(self, text: str | None) -> tuple[str, ...]:
        return _terms_of(self._words(text)) if self.correct_typos else _terms(text or "")

    @functools.cached_property
    def _fixes(self) -> dict[str, str]:
        return {}

    @functools.cached_property
    def _by_deletion(self) -> dict[str, tuple[str, ...]]:
        """Every vocabulary word of :data:`_TYPO_MIN_LETTERS` or more letters (no digit), and each string one
        letter shorter, -> the vocabulary words it comes from, most frequent (lowest idf) first."""
        index = self._index
        words = [t for t in self.vocab if " " not in t and len(t) >= _TYPO_MIN_LETTERS - 1
                 and not any(ch.isdigit() for ch in t)]
        words.sort(key=lambda t: (float(self.idf[index[t]]), t))
        table: dict[str, list[str]] = {}
        for t in words:
            for key in {t} | _deletes(t):
                table.setdefault(key, []).append(t)
        return {k: tuple(v) for k, v in table.items()}

    def _nearest(self, word: str) -> str:
        """The most frequent vocabulary word one edit from ``word`` (:func:`one_edit`), else ``word``."""
        if len(word) < _TYPO_MIN_LETTERS or any(ch.isdigit() for ch in word):
            return word
        table, idf, index = self._by_deletion, self.idf, self._index
        found = {t for key in {word} | _deletes(word) for t in table.get(key, ()) if one_edit(word, t)}
        return min(found, key=lambda t: (float(idf[index[t]]), t)) if found else word

    # -- serialisation (inside a head's tensors and description) --
    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.idf": self.idf.astype(np.float32), f"{prefix}.weight": self.weight.astype(np.float32),
                f"{prefix}.bias": self.bias.astype(np.float32)}

    def describe(self) -> dict[str, Any]:
        return {"vocab": list(self.vocab), "correct_typos": self.correct_typos}

    @classmethod
    def from_parts(cls, prefix: str, desc: dict[str, Any], tensors: dict[str, np.ndarray]) -> LexicalExpert:
        return cls(tuple(desc["vocab"]), tensors[f"{prefix}.idf"], tensors[f"{prefix}.weight"],
                   tensors[f"{prefix}.bias"], bool(desc.get("correct_typos", False)))
