"""Adult-product recognition: three signals, each named in the output row when it fires.

* ``embedding``: the adult head's probability from the text embedding is at or above its threshold;
* ``category``: the predicted category is a mature one (a label of the bundle's mature list, or a category name
  that the term list matches, e.g. ``Mature > Erotic`` from a zero-shot taxonomy);
* ``term``: the title or description contains a term of the configurable multilingual term list.

Lingerie, swimwear and innerwear are ordinary apparel: neither the term list nor the training data treats them
as adult, and the evaluation measures the false-positive rate on them.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["AdultDecision", "TermList", "decide_adult"]


def _is_cjk(term: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in term)


@dataclass(frozen=True)
class TermList:
    """Terms per group (``erotic``, ``weapons``, ...), all languages merged."""

    groups: dict[str, tuple[str, ...]]

    @classmethod
    def load(cls, path: str | Path | None = None) -> TermList:
        # The shipped list is read through importlib.resources, so it also loads from a --py-files zip.
        p = Path(path) if path else resources.files("models.heads").joinpath("adult_terms.json")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"adult term list {p}: {e}") from None
        groups: dict[str, tuple[str, ...]] = {}
        for group, by_lang in raw.items():
            if group.startswith("_"):
                continue
            if not isinstance(by_lang, dict):
                raise ValueError(f"adult term list {p}: group {group!r} must map languages to term lists")
            groups[group] = tuple(sorted({t.strip().lower() for terms in by_lang.values() for t in terms
                                          if t.strip()}))
        return cls(groups)

    def __post_init__(self) -> None:
        patterns = {}
        for group, terms in self.groups.items():
            # Latin/Cyrillic terms on word boundaries ("gun" must not fire in "gunmetal"); CJK and Hangul have
            # no spaces between words, so those terms match as substrings. Longest first. Each run of consecutive
            # word terms shares one pair of boundary checks, (?<!\w)(?:a|b|...)(?!\w): the same alternatives in the
            # same order as a pair per term, so the same matches, and 4-6x faster (one look-behind per position
            # instead of one per term; the adult check took over a quarter of the heads' time).
            ordered = sorted(terms, key=len, reverse=True)
            runs = []
            for cjk, run in itertools.groupby(ordered, key=_is_cjk):
                alts = "|".join(re.escape(t) for t in run)
                runs.append(alts if cjk else rf"(?<!\w)(?:{alts})(?!\w)")
            if runs:
                patterns[group] = re.compile("|".join(runs), re.IGNORECASE)
        object.__setattr__(self, "_patterns", patterns)

    def match(self, text: str | None) -> list[str]:
        """``group:term`` for every group with a match in ``text`` (first match per group)."""
        if not text:
            return []
        out = []
        for group, pat in self._patterns.items():  # type: ignore[attr-defined]
            m = pat.search(text)
            if m:
                out.append(f"{group}:{m.group(0).lower()}")
        return out


@dataclass(frozen=True)
class AdultDecision:
    is_adult: bool
    score: float
    reasons: tuple[str, ...]


def decide_adult(texts: list[str], *, terms: TermList, embedding_scores: np.ndarray | None = None,
                 threshold: float = 0.5, categories: list[str | None] | None = None,
                 category_scores: np.ndarray | None = None,
                 mature_categories: frozenset[str] = frozenset()) -> list[AdultDecision]:
    """Combine the signals per product. ``score`` is the strongest signal: the head probability, 1.0 for a
    term match, the category confidence for a mature category."""
    out = []
    for i, text in enumerate(texts):
        reasons: list[str] = []
        score = 0.0
        if embedding_scores is not None:
            s = float(embedding_scores[i])
            score = s
            if s >= threshold:
                reasons.append(f"embedding:{s:.2f}")
        if categories is not None and categories[i]:
            cat = categories[i]
            if cat in mature_categories or terms.match(cat) or cat.split(">")[0].strip().lower() == "mature":
                reasons.append(f"category:{cat}")
                score = max(score, float(category_scores[i]) if category_scores is not None else 1.0)
        hits = terms.match(text)
        if hits:
            reasons += [f"term:{h}" for h in hits]
            score = 1.0
        out.append(AdultDecision(bool(reasons), round(min(max(score, 0.0), 1.0), 6), tuple(reasons)))
    return out
