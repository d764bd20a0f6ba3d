"""Character spans <-> per-word BIO tags, one independent B/I/O tagging per attribute.

The tagger decides per word (the tokenizer's pre-tokenized words: whitespace and punctuation split them), through
the tag of the word's first piece. Values are located in the text case-insensitively; a located value becomes a
training span only when its characters start and end on word boundaries (otherwise the tagger could not produce
exactly that text). Decoding goes the other way: tags per word -> word runs -> character spans in the original
text through the tokenizer's offsets, so word pieces come back merged and in the text's own casing.

Numpy only (no torch): the unit tests and the evaluation use it without a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "B", "DECODERS", "I", "IGNORE", "O", "LabelStats", "Span", "Unit", "align_span", "bio_labels", "decode",
    "decode_best_spans", "decode_tags", "find_spans", "word_units",
]

O, B, I = 0, 1, 2  # noqa: E741 - the tag names of the BIO scheme
IGNORE = -1        # an attribute not annotated for this product: no loss


@dataclass(frozen=True)
class Span:
    attribute: int       # index into the extractor's attribute list
    segment: int         # 0 = title, 1 = description
    start: int           # character offsets in that segment's text, end exclusive
    end: int
    confidence: float


@dataclass
class LabelStats:
    """How the gold values of a set of products turned into spans (reported in the model card)."""
    values: int = 0          # non-n/a gold values
    labelled: int = 0        # found and aligned to token boundaries at least once
    not_found: int = 0       # not in the text at all (case-insensitive): no span extractor can produce them
    unaligned: int = 0       # found only inside a word (e.g. "XL" inside "XXL", "Black" in "BlackALTERNATE")
    truncated: int = 0       # found only past the tokenizer's length limit

    def add(self, other: LabelStats) -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def find_spans(text: str | None, value: str) -> list[tuple[int, int]]:
    """Non-overlapping case-insensitive occurrences of ``value`` (stripped) in ``text``, left to right."""
    needle = value.strip()
    if not text or not needle:
        return []
    # re with IGNORECASE keeps the text's own offsets (str.lower() may change a string's length).
    return [(m.start(), m.end()) for m in re.finditer(re.escape(needle), text, flags=re.IGNORECASE)]


class Unit(NamedTuple):
    """What the tagger decides on: a whole word (the tag of its first word piece), with its character range. (A
    named tuple: a product's text has dozens, made for every product of a run.)"""
    token: int           # index of the word's first piece
    segment: int         # 0 = title, 1 = description
    start: int
    end: int


def word_units(offsets: Sequence[tuple[int, int]], segments: Sequence[int | None],
               words: Sequence[int | None]) -> list[Unit]:
    """Words as the tokenizer's pre-tokenizer splits them (whitespace and punctuation), in token order.

    Tagging words rather than pieces keeps spans from starting or ending inside a word ("tock" for "Stock").
    """
    spans: list[list[int]] = []   # [token, segment, start, end] of each word; a Unit made once per word
    key = None
    for t, ((s, e), seg, w) in enumerate(zip(offsets, segments, words, strict=True)):
        if seg is None or w is None or s == e:
            key = None
            continue
        if (seg, w) == key:
            last = spans[-1]
            if e > last[3]:
                last[3] = e
        else:
            spans.append([t, seg, s, e])
            key = (seg, w)
    return [Unit(*u) for u in spans]


def align_span(units: Sequence[Unit], segment: int, start: int, end: int) -> tuple[int, int] | None:
    """Indices ``(first, last)`` into ``units`` whose characters are exactly ``[start, end)``, or None."""
    first = None
    for i, u in enumerate(units):
        if u.segment != segment:
            continue
        if u.start == start:
            first = i
        if first is not None and u.end == end:
            return first, i
        if u.start >= end:
            break
    return None


def bio_labels(texts: Sequence[str | None], units: Sequence[Unit], n_tokens: int,
               gold: dict[str, tuple[str, ...]], supervised: Sequence[str], attributes: Sequence[str],
               ) -> tuple[np.ndarray, LabelStats]:
    """Tags ``[tokens, attributes]`` (int8) for one encoded product; only the units' tokens carry tags.

    ``texts`` are the segments (title, description); ``gold`` maps attribute -> values (empty: n/a);
    ``supervised`` are the attributes whose tags are known for this product (every unit not in one of their
    spans is O); every other attribute, and every token that is not a unit's first piece, is IGNORE.
    Every aligned occurrence of a value is tagged.
    """
    index = {a: i for i, a in enumerate(attributes)}
    tags = np.full((n_tokens, len(attributes)), IGNORE, dtype=np.int8)
    rows = np.array([u.token for u in units], dtype=np.int64)
    stats = LabelStats()
    reach = {seg: max((u.end for u in units if u.segment == seg), default=0) for seg in (0, 1)}
    for attr in supervised:
        col = np.zeros(len(units), dtype=np.int8)
        for value in gold.get(attr, ()):
            stats.values += 1
            found = aligned = visible = False
            for seg, text in enumerate(texts):
                for start, end in find_spans(text, value):
                    found = True
                    if end > reach[seg]:
                        continue  # cut off by the length limit
                    visible = True
                    span = align_span(units, seg, start, end)
                    if span is None:
                        continue
                    aligned = True
                    first, last = span
                    if (col[first:last + 1] != O).any():
                        continue  # overlaps a span of this attribute already tagged ("Red" in "Red Wine")
                    col[first] = B
                    col[first + 1:last + 1] = I
            if aligned:
                stats.labelled += 1
            elif not found:
                stats.not_found += 1
            elif not visible:
                stats.truncated += 1
            else:
                stats.unaligned += 1
        if len(units):
            tags[rows, index[attr]] = col
    return tags, stats


def decode_tags(probs: np.ndarray, units: Sequence[Unit], min_confidence: float = 0.0) -> list[Span]:
    """Spans from per-token tag probabilities ``[tokens, attributes, 3]`` of one sequence, read at its units.

    A span starts at a B, or at an I that does not continue a span (lenient BIO), and runs over the following
    I units of the same segment; its characters run from its first unit's start to its last unit's end, so
    word pieces come back merged. Its confidence is the mean probability of the chosen tags.
    """
    if not units:
        return []
    p = probs[[u.token for u in units]]                      # [units, attributes, 3]
    tags = p.argmax(-1)
    segs = [u.segment for u in units]
    spans: list[Span] = []
    for attr in np.flatnonzero((tags != O).any(0)):
        col = tags[:, attr]
        t, n = 0, len(col)
        while t < n:
            if col[t] == O:
                t += 1
                continue
            first, seg = t, segs[t]
            t += 1
            while t < n and col[t] == I and segs[t] == seg:
                t += 1
            last = t - 1
            conf = float(p[np.arange(first, last + 1), attr, col[first:last + 1]].mean())
            if conf >= min_confidence:
                spans.append(Span(int(attr), int(seg), units[first].start, units[last].end, conf))
    return spans


# Below this log-odds of B against O a word is not tried as a span's first word (P(B) < 0.05 P(O)), and a span is not
# grown past words that cost more than this much log-odds below its best so far: both only prune, since a span
# through such words would need I tags of a confidence the tagger does not give.
_START_FLOOR = -3.0
_GROW_SLACK = 6.0


def decode_best_spans(probs: np.ndarray, units: Sequence[Unit], min_confidence: float = 0.0) -> list[Span]:
    """Spans from per-token tag probabilities ``[tokens, attributes, 3]``, each the most probable whole span.

    Word by word, the tags are independent given the text, so the probability of tagging words ``i..j`` as one
    span (B, then I...) rather than leaving them O is, in log-odds, ``b[i] + i[i+1] + ... + i[j]`` with
    ``b = log P(B) - log P(O)`` and ``i = log P(I) - log P(O)``. Per attribute this takes the spans of positive
    log-odds, best first, none overlapping one taken before, within one segment. Unlike :func:`decode_tags`
    (each word's most probable tag), a span is not cut where one word inside it leans to O while the words after
    it are confidently I ("Tamarac by | Slippers International"), nor started at a stray I. Its confidence is the
    mean probability of its tags, as in :func:`decode_tags`, so ``min_confidence`` means the same.
    """
    if not units:
        return []
    p = probs[[u.token for u in units]]                      # [units, attributes, 3]
    lp = np.log(np.clip(p.astype(np.float64), 1e-9, 1.0))
    b = lp[:, :, B] - lp[:, :, O]
    i = lp[:, :, I] - lp[:, :, O]
    segs = np.array([u.segment for u in units])
    n = len(units)
    spans: list[Span] = []
    for attr in np.flatnonzero(((b > 0) | (i > 0)).any(0)):
        found = []
        for first in (int(k) for k in np.flatnonzero(b[:, attr] > _START_FLOOR)):
            score = best = float(b[first, attr])
            last = first
            for j in range(first + 1, n):
                if segs[j] != segs[first]:
                    break
                score += i[j, attr]
                if score > best:
                    best, last = score, j
                elif score < best - _GROW_SLACK:
                    break
            if best > 0:
                found.append((-best, first, last))
        taken = np.zeros(n, dtype=bool)
        for _, first, last in sorted(found):
            if taken[first:last + 1].any():
                continue
            taken[first:last + 1] = True
            conf = float((p[first, attr, B] + p[first + 1:last + 1, attr, I].sum()) / (last - first + 1))
            if conf >= min_confidence:
                spans.append(Span(int(attr), int(segs[first]), units[first].start, units[last].end, conf))
    return spans


DECODERS = {"greedy": decode_tags, "span": decode_best_spans}


def decode(probs: np.ndarray, units: Sequence[Unit], min_confidence: float = 0.0, decoder: str = "greedy"
           ) -> list[Span]:
    """Spans by the named decoder: ``greedy`` (:func:`decode_tags`) or ``span`` (:func:`decode_best_spans`)."""
    try:
        fn = DECODERS[decoder]
    except KeyError:
        raise ValueError(f"unknown span decoder {decoder!r}: one of {', '.join(DECODERS)}") from None
    return fn(probs, units, min_confidence)
