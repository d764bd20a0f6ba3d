"""Character spans <-> per-token BIO tags, one independent B/I/O tagging per attribute.

Values are located in the text case-insensitively; a located value becomes a training span only when its
characters start and end on token boundaries of the tokenizer (otherwise the tagger could not produce exactly
that text). Decoding goes the other way: tags per token -> token runs -> character spans in the original text
through the tokenizer's offsets, so word pieces come back merged and in the text's own casing.

Numpy only (no torch): the unit tests and the evaluation use it without a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["B", "I", "IGNORE", "O", "LabelStats", "Span", "align_span", "bio_labels", "decode_tags", "find_spans"]

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
    unaligned: int = 0       # found only inside a token (e.g. "XL" inside "XXL")
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


def align_span(offsets: Sequence[tuple[int, int]], segments: Sequence[int | None], segment: int,
               start: int, end: int) -> tuple[int, int] | None:
    """Token indices ``(first, last)`` whose characters are exactly ``[start, end)`` in ``segment``, or None."""
    first = last = None
    for t, ((s, e), seg) in enumerate(zip(offsets, segments, strict=True)):
        if seg != segment or s == e:
            continue
        if s == start:
            first = t
        if e == end and first is not None:
            last = t
            break
        if s >= end:
            break
    if first is None or last is None:
        return None
    return first, last


def bio_labels(texts: Sequence[str | None], offsets: Sequence[tuple[int, int]], segments: Sequence[int | None],
               gold: dict[str, tuple[str, ...]], supervised: Sequence[str], attributes: Sequence[str],
               ) -> tuple[np.ndarray, LabelStats]:
    """Tags ``[tokens, attributes]`` (int8) for one encoded product.

    ``texts`` are the segments (title, description); ``gold`` maps attribute -> values (empty: n/a);
    ``supervised`` are the attributes whose tags are known for this product (every token not in one of their
    spans is O); every other attribute is IGNORE. Every aligned occurrence of a value is tagged.
    """
    index = {a: i for i, a in enumerate(attributes)}
    tags = np.full((len(offsets), len(attributes)), IGNORE, dtype=np.int8)
    special = np.array([seg is None or s == e for (s, e), seg in zip(offsets, segments, strict=True)])
    stats = LabelStats()
    # the last character each segment reaches after truncation
    reach = {seg: max((e for (_, e), sg in zip(offsets, segments, strict=True) if sg == seg), default=0)
             for seg in (0, 1)}
    for attr in supervised:
        col = index[attr]
        tags[:, col] = O
        for value in gold.get(attr, ()):
            stats.values += 1
            found = aligned = False
            visible = False
            for seg, text in enumerate(texts):
                for start, end in find_spans(text, value):
                    found = True
                    if end > reach[seg]:
                        continue
                    visible = True
                    tok = align_span(offsets, segments, seg, start, end)
                    if tok is None:
                        continue
                    aligned = True
                    first, last = tok
                    if (tags[first:last + 1, col] != O).any():
                        continue  # overlaps a span of this attribute already tagged (e.g. "Red" in "Red Wine")
                    tags[first, col] = B
                    tags[first + 1:last + 1, col] = I
            if aligned:
                stats.labelled += 1
            elif not found:
                stats.not_found += 1
            elif not visible:
                stats.truncated += 1
            else:
                stats.unaligned += 1
    tags[special, :] = IGNORE
    return tags, stats


def decode_tags(probs: np.ndarray, segments: Sequence[int | None], offsets: Sequence[tuple[int, int]],
                min_confidence: float = 0.0) -> list[Span]:
    """Spans from per-token tag probabilities ``[tokens, attributes, 3]`` of one sequence.

    A span starts at a B, or at an I that does not continue a span (lenient BIO), and runs over the following
    I tokens of the same segment. Its confidence is the mean probability of the chosen tags.
    """
    tags = probs.argmax(-1)
    valid = np.array([seg is not None and s != e for (s, e), seg in zip(offsets, segments, strict=True)])
    tags[~valid] = O
    spans: list[Span] = []
    for attr in np.flatnonzero((tags != O).any(0)):
        col = tags[:, attr]
        t, n = 0, len(col)
        while t < n:
            if col[t] == O:
                t += 1
                continue
            first, seg = t, segments[t]
            t += 1
            while t < n and col[t] == I and segments[t] == seg:
                t += 1
            last = t - 1
            conf = float(probs[np.arange(first, last + 1), attr, col[first:last + 1]].mean())
            if conf >= min_confidence:
                spans.append(Span(int(attr), int(seg), offsets[first][0], offsets[last][1], conf))
    return spans
