"""A catalog's own spelling: a mistyped title word read as the catalog's word one edit away, before pairs are scored.

Sellers mistype ("Microsft Office", "Sandisk Cruzer Blde"). The pair scorers were trained to tell near-identical
products apart, where one character often makes another product ("CNPS9700NT" against "CNPS9700LED"), and they read a
mistyped word the same way: with one typo in one title word, the job matched 34% of Amazon-Google listings with a
copy of themselves (TF-IDF character grams: 98%). So the job reads each title as the catalog spells it:

* the catalog's words are its titles' runs of four or more letters, lower-cased, counted over every product;
  a word written at least :data:`MIN_COUNT` times is known;
* a whole word of four or more letters (no digit or hyphen next to it, so model codes are never touched) that is
  not known is read as the most frequent known word one edit away (a letter dropped, added or changed, or two
  neighbours swapped), where there is one; every other word is read as written.

The vocabulary is the catalog's, not a dictionary's: it knows "Cruzer" where the catalog lists Cruzers, and it learns
a new catalog's words without training. The heads' lexical experts read typos the same way against their own
vocabulary of a few thousand words (:class:`models.heads.lexical.LexicalExpert`), through a table of every
vocabulary word with each letter dropped; a catalog's vocabulary runs to :data:`MAX_WORDS`, where that table would
hold millions of keys, so here each unknown word's few hundred edits are looked up instead. Two products whose names
are one letter apart and each written only once are not corrected towards each other (neither is known).

It also knows which titles the catalog writes :data:`SHARED_TITLE_MIN` or more times, letter for letter once case,
spacing and punctuation are set aside (:func:`models.matching.text.title_key`): such a title names a kind of product,
not one ("Nike Men Black T-shirt", a bare brand where titles were cut to it). A listing with one is matched by its part
number, or as the same listing twice at one known price, only (:func:`models.matching.features.mark_shared_titles`).
In the four whole electronics catalogs, 5 of the 120 pairs of listings that share a title written three or more times
are one product by their truths.

It knows the words that start :data:`LEAD_MIN` or more of the catalog's titles (:func:`models.matching.text.lead_word`:
mostly brands, as sellers start a title with the brand). Two titles that start with two such words, neither written in
the other title, are of two brands as far as the titles tell (:attr:`PairReading.other_leads`): the cross-encoder must
be sure of them, as of two brands the catalog's brand column names (:data:`LEAD_RULE`). A fashion catalog without a
brand column otherwise matched "Fila Men Black Sandals" with "Lotto Men Black Sandals".

And it may know the product types of the catalog's category head (:attr:`CatalogSpelling.types`, the head's leaf
classes): two titles that name types, none in common ("... Brown Wallet" / "... Brown Belt", "... Kurtis" /
"... Kurta"), are two products (:data:`TYPE_RULE`; the names are read as the head's stuffed-title switch reads them,
:func:`models.heads.bundle.named_class_mask`).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["LEAD_MIN", "LEAD_RULE", "MIN_COUNT", "MIN_LETTERS", "SHARED_TITLE_MIN", "SPELLING_RULE", "TYPE_RULE",
           "CatalogSpelling", "PairReading", "catalog_words", "lead_words", "shared_title_keys", "type_rule_version"]

# named in product_matches.scorer_version: a lake matched before the rule is matched again once
SPELLING_RULE = "catalog-spelling"
# Two titles that name product types of the category head, none in common, are two products. Named in
# scorer_version with a digest of the type names (type_rule_version): a lake is matched again when they change.
TYPE_RULE = "different-types"
# Two titles that start with two of the catalog's leading words (LEAD_MIN or more titles start with each), neither
# written in the other, are read as two brands: the cross-encoder's conflict floor decides them. Named in
# scorer_version.
LEAD_RULE = "leading-brands"
LEAD_MIN = 3

MIN_COUNT = 2       # a word the catalog writes this many times is known
MIN_LETTERS = 4     # shorter words are read as written (too many words lie one edit from a short one)
MAX_WORDS = 200_000   # the most frequent known words kept: the vocabulary travels with the score function
SHARED_TITLE_MIN = 3  # a title written by this many listings names no single product
_FIXES_KEPT = 200_000

_RUN = re.compile(r"[^\W\d_]+")                                 # runs of letters: what the vocabulary counts
_WORD = re.compile(r"(?<![\w-])[^\W\d_]{%d,}(?![\w-])" % MIN_LETTERS)   # whole words a typo may be read back in


def catalog_words(titles: Iterable[object]) -> Counter:
    """How often each lower-cased run of :data:`MIN_LETTERS` or more letters occurs in ``titles`` (None and
    non-strings count nothing)."""
    counts: Counter = Counter()
    for t in titles:
        if isinstance(t, str):
            counts.update(w for w in _RUN.findall(t.lower()) if len(w) >= MIN_LETTERS)
    return counts


def shared_title_keys(titles: Iterable[object]) -> frozenset[str]:
    """The keys (:func:`models.matching.text.title_key`) of the titles that :data:`SHARED_TITLE_MIN` or more of
    ``titles`` write."""
    from models.matching.text import title_key

    counts = Counter(k for k in map(title_key, titles) if k)
    return frozenset(k for k, c in counts.items() if c >= SHARED_TITLE_MIN)


def lead_words(titles: Iterable[object], counts: Iterable[int] | None = None) -> frozenset[str]:
    """The words (:func:`models.matching.text.lead_word`) that start :data:`LEAD_MIN` or more of ``titles``;
    ``counts``: how many titles each of ``titles`` stands for (one each by default; Spark's path counts the distinct
    first words of a catalog's titles)."""
    from models.matching.text import lead_word

    tally: Counter = Counter()
    for title, n in ((t, 1) for t in titles) if counts is None else zip(titles, counts, strict=True):
        if w := lead_word(title):
            tally[w] += n
    return frozenset(w for w, c in tally.items() if c >= LEAD_MIN)


def type_rule_version(types: Sequence[str]) -> str:
    """The type rule as ``product_matches.scorer_version`` names it: :data:`TYPE_RULE` and the first 8 hex digits of
    the sha256 of the sorted type names ("none" without any)."""
    if not types:
        return f"{TYPE_RULE}-none"
    return f"{TYPE_RULE}-{hashlib.sha256(chr(10).join(sorted(types)).encode()).hexdigest()[:8]}"


class PairReading(NamedTuple):
    """Pairs of titles as the match stage reads them (:meth:`CatalogSpelling.read_pairs`)."""

    left: list[object]       # the left titles as the catalog spells them
    right: list[object]
    shared: np.ndarray       # (N,) bool: a title of the pair is one the catalog shares
    other_types: np.ndarray  # (N,) bool: the titles name product types, none in common
    other_leads: np.ndarray  # (N,) bool: the titles start with two of the catalog's leading words, neither in the other


def _edits(word: str) -> set[str]:
    """Every string one edit from ``word``: a letter dropped, added or changed (from a-z and the word's own
    letters), or two neighbours swapped."""
    letters = set(string.ascii_lowercase) | set(word)
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in splits if b}
    out |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    out |= {a + c + b[1:] for a, b in splits if b for c in letters}
    out |= {a + c + b for a, b in splits for c in letters}
    out.discard(word)
    return out


@dataclass
class CatalogSpelling:
    """The known words of a catalog with their counts (:func:`catalog_words`, those written :data:`MIN_COUNT` or
    more times, at most :data:`MAX_WORDS`), the keys of the titles it shares (:func:`shared_title_keys`), the
    product types its category head knows (``types``: none, no type rule) and its leading words (:func:`lead_words`).
    """

    known: dict[str, int]
    shared: frozenset[str] = frozenset()
    types: tuple[str, ...] = ()
    leads: frozenset[str] = frozenset()
    _fixes: dict[str, str | None] = field(default_factory=dict, repr=False, compare=False)
    _titles: dict[str, str] = field(default_factory=dict, repr=False, compare=False)   # each title is in many pairs
    _is_shared: dict[object, bool] = field(default_factory=dict, repr=False, compare=False)
    _named: dict[object, frozenset[int]] = field(default_factory=dict, repr=False, compare=False)
    _leads_of: dict[str, tuple[str, str, str, frozenset[str]]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, counts: Counter | dict[str, int], shared: Iterable[str] = (), types: Sequence[str] = (),
           leads: Iterable[str] = ()) -> CatalogSpelling:
        kept = sorted(((w, c) for w, c in counts.items() if c >= MIN_COUNT and len(w) >= MIN_LETTERS),
                      key=lambda wc: (-wc[1], wc[0]))[:MAX_WORDS]
        return cls(dict(kept), frozenset(shared), tuple(types), frozenset(leads))

    @classmethod
    def from_titles(cls, titles: Iterable[object], types: Sequence[str] = ()) -> CatalogSpelling:
        titles = list(titles)
        return cls.of(catalog_words(titles), shared_title_keys(titles), types, lead_words(titles))

    def shared_titles(self, titles: Sequence[object]) -> np.ndarray:
        """Which of ``titles`` (as written) the catalog shares among :data:`SHARED_TITLE_MIN` or more listings."""
        from models.matching.text import title_key

        if not self.shared:
            return np.zeros(len(titles), bool)
        memo = self._is_shared
        if len(memo) >= _FIXES_KEPT:
            memo.clear()
        out = np.empty(len(titles), bool)
        for i, t in enumerate(titles):
            hit = memo.get(t)
            if hit is None:
                hit = memo[t] = title_key(t) in self.shared
            out[i] = hit
        return out

    def named_types(self, titles: Sequence[object]) -> list[frozenset[int]]:
        """The indices in :attr:`types` of the types each title names (:func:`models.heads.bundle.named_class_mask`;
        empty sets without types)."""
        if not self.types:
            return [frozenset()] * len(titles)
        from models.heads.bundle import named_class_mask

        memo = self._named
        if len(memo) >= _FIXES_KEPT:
            memo.clear()
        keys = [t if isinstance(t, str) else "" for t in titles]
        todo = list(dict.fromkeys(k for k in keys if k not in memo))
        if todo:
            for k, row in zip(todo, named_class_mask(todo, self.types), strict=True):
                memo[k] = frozenset(np.flatnonzero(row).tolist())
        return [memo[k] for k in keys]

    def other_types(self, left: Sequence[object], right: Sequence[object]) -> np.ndarray:
        """Which pairs of titles both name product types (:meth:`named_types`) with none in common."""
        a, b = self.named_types(left), self.named_types(right)
        return np.fromiter((bool(x) and bool(y) and not (x & y) for x, y in zip(a, b, strict=True)), bool, len(a))

    def other_leads(self, left: Sequence[object], right: Sequence[object]) -> np.ndarray:
        """Which pairs of titles start with two different leading words of the catalog (:data:`LEAD_MIN`), neither
        of them written in the other title (letters and digits compared, accents aside), nor written short there
        (:meth:`_lead`), nor one typing error from the other ("Sony" / "Snoy": short words are not read back by the
        spelling)."""
        from models.heads.lexical import one_edit

        out = np.zeros(len(left), bool)
        if not self.leads:
            return out
        for i, (a, b) in enumerate(zip(left, right, strict=True)):
            (la, ka, ia, wa), (lb, kb, ib, wb) = self._lead(a), self._lead(b)
            if la != lb and la in self.leads and lb in self.leads:
                out[i] = not (la in kb or lb in ka or ia.startswith(lb) or ib.startswith(la)
                              or ia[:2] in wb or ia[:3] in wb or ib[:2] in wa or ib[:3] in wa
                              or one_edit(la, lb))
        return out

    def _lead(self, title: object) -> tuple[str, str, str, frozenset[str]]:
        """(leading word, plain key, initials of its words, its words) of a title, memoised: a title is in many
        pairs. A brand may be written short in the other title: as its leading word ("WD My Passport" / "Western
        Digital My Passport": the initials start with it) or anywhere ("HDD extern WD My Passport")."""
        from models.matching.text import lead_word, plain_letters, title_key

        key = title if isinstance(title, str) else ""
        hit = self._leads_of.get(key)
        if hit is None:
            if len(self._leads_of) >= _FIXES_KEPT:
                self._leads_of.clear()
            words = _RUN.findall(plain_letters(key.lower()))
            hit = self._leads_of[key] = (lead_word(key), plain_letters(title_key(key)), "".join(w[0] for w in words),
                                         frozenset(w for w in words if len(w) >= 2))
        return hit

    def word(self, word: str) -> str | None:
        """The known word ``word`` is read as, or None where it is read as written."""
        low = word.lower()
        if low in self.known:
            return None
        if low not in self._fixes:
            if len(self._fixes) >= _FIXES_KEPT:
                self._fixes.clear()
            found = [w for w in _edits(low) if w in self.known]
            self._fixes[low] = max(found, key=lambda w: (self.known[w], w)) if found else None
        return self._fixes[low]

    def title(self, title: object) -> object:
        """``title`` as the catalog spells it (anything not a string is returned as is)."""
        if not isinstance(title, str) or not self.known:
            return title
        done = self._titles.get(title)
        if done is None:
            if len(self._titles) >= _FIXES_KEPT:
                self._titles.clear()

            def fix(m: re.Match) -> str:
                w = self.word(m.group(0))
                return m.group(0) if w is None else w

            done = self._titles[title] = _WORD.sub(fix, title)
        return done

    def titles(self, titles: Sequence[object]) -> list[object]:
        return [self.title(t) for t in titles]

    def read_pairs(self, left: Sequence[object], right: Sequence[object], leads_of: np.ndarray | None = None
                   ) -> PairReading:
        """Pairs of titles (as written) as the match stage reads them: both sides as the catalog spells them, which
        pairs hold a title the catalog shares (:meth:`shared_titles`), which name different product types
        (:meth:`other_types`) and which start with two brands (:meth:`other_leads`), both read in the spelled
        titles. ``leads_of``: the indices of the pairs whose leading words are read (None: every pair; the others
        are False): the score step reads them only for the pairs the cross-encoder reads, the only ones whose
        decision they change (:meth:`read_leads`)."""
        a, b = self.titles(left), self.titles(right)
        reading = PairReading(a, b, self.shared_titles(left) | self.shared_titles(right), self.other_types(a, b),
                              np.zeros(len(a), bool))
        return self.read_leads(reading, np.arange(len(a)) if leads_of is None else leads_of)

    def read_leads(self, reading: PairReading, among: np.ndarray) -> PairReading:
        """``reading`` with :meth:`other_leads` read for the pairs ``among`` (indices; in place, and returned)."""
        if len(among):
            reading.other_leads[among] = self.other_leads([reading.left[i] for i in among],
                                                          [reading.right[i] for i in among])
        return reading
