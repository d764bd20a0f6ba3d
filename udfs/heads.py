"""The heads: embeddings (and the text, for the term list) in; category, closed attributes and adult flag out.

The enrich job runs them in the same pandas UDF as the encoder (:func:`make_embed_heads_udf`), one pass of the
models per product. Everything here is numpy: a head bundle is a few small matrices, loaded (and
checksum-verified) once per worker.
Without a bundle for the encoder, or when the bundle's labels do not fit the catalog, categories come from
zero-shot classification against category names embedded on the driver (:class:`HeadsPlan.zero_shot`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd  # at module level: the UDF type hints are resolved in this module's namespace

from models.core.arrays import stack_rows
from models.core.faults import checkpoint
from models.heads.adult import TermList
from models.heads.zero_shot import ZeroShotLabels
from udfs.embed import EMBED_SCHEMA, cached_encoder, embed_frame
from udfs.model_cache import cached
from udfs.task_faults import maybe_fail

__all__ = ["EMBED_HEADS_SCHEMA", "HEADS_SCHEMA", "HeadsPlan", "embed_heads_frame", "heads_frame",
           "make_embed_heads_udf"]

HEADS_SCHEMA = (
    "category string, confidence double, top_k array<struct<label: string, score: double>>, "
    "attributes array<struct<attribute: string, value: string, confidence: double, source: string>>, "
    "is_adult boolean, adult_score double, adult_reasons array<string>"
)
HEADS_FIELDS = ("category", "confidence", "top_k", "attributes", "is_adult", "adult_score", "adult_reasons")
EMBED_HEADS_SCHEMA = f"{EMBED_SCHEMA}, {HEADS_SCHEMA}"


@dataclass(frozen=True)
class HeadsPlan:
    """What the heads stage does in this run; decided on the driver (:func:`jobs.stages.heads.plan_heads`)."""

    bundle_dir: str | None                 # verified head bundle, or None
    category_mode: str                     # "head" | "zero-shot" | "none"
    zero_shot: ZeroShotLabels | None = None
    top_k: int = 5
    terms: TermList | None = None          # loaded on the driver (None: the shipped multilingual term list)
    types: tuple[str, ...] = ()            # the category head's classes where it names the categories: the product
                                           # types the match stage's type rule reads (jobs.stages.matching)

    def __post_init__(self) -> None:
        if self.category_mode not in ("head", "zero-shot", "none"):
            raise ValueError(f"category_mode must be head, zero-shot or none, got {self.category_mode!r}")
        if self.category_mode == "zero-shot" and self.zero_shot is None:
            raise ValueError("category_mode 'zero-shot' needs zero_shot labels")
        if self.category_mode == "head" and self.bundle_dir is None:
            raise ValueError("category_mode 'head' needs a head bundle")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")


def _resources(plan: HeadsPlan):
    from models.heads.bundle import load_heads

    def load():
        return load_heads(Path(plan.bundle_dir)) if plan.bundle_dir else None

    # The term list travels in the plan: the driver read it, so workers need no access to its file.
    return cached(("heads", plan.bundle_dir), load), plan.terms or TermList.load()


def heads_frame(text_emb: list, image_emb: list, texts: list[str], plan: HeadsPlan, bundle, terms,
                titles: list[str] | None = None) -> dict[str, list]:
    """Apply the plan to one batch; pure. Returns the output columns of :data:`HEADS_SCHEMA`.

    ``texts`` (title and description) feed the adult term list; ``titles`` the heads' mention experts, which
    were fitted on titles (default: ``texts``)."""
    from models.heads.adult import decide_adult
    from models.heads.zero_shot import zero_shot_probs

    n = len(texts)
    named = texts if titles is None else titles
    t = stack_rows(text_emb)
    img = stack_rows(image_emb, t.shape[1])   # as wide as the text side, also when no row has a photo
    has_image = ~np.isnan(img).any(axis=1)
    out: dict[str, list] = {"category": [None] * n, "confidence": [None] * n, "top_k": [[] for _ in range(n)],
                            "attributes": [[] for _ in range(n)]}
    probs, labels = None, None
    if plan.category_mode == "head":
        probs, labels = bundle.category.predict(t, img, named), bundle.category.classes
    elif plan.category_mode == "zero-shot":
        probs, labels = zero_shot_probs(t, plan.zero_shot), plan.zero_shot.labels
    if probs is not None:
        k = min(plan.top_k, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        # as Python lists once: indexing the arrays element by element was a third of the heads' time
        top_ids, top_p = top.tolist(), np.take_along_axis(probs, top, axis=1).astype(np.float64).tolist()
        for i in range(n):
            out["category"][i] = labels[top_ids[i][0]]
            out["confidence"][i] = top_p[i][0]
            out["top_k"][i] = [{"label": labels[j], "score": p} for j, p in zip(top_ids[i], top_p[i], strict=True)]
    if bundle is not None:
        for name, head in bundle.attributes.items():
            p = head.predict(t, img, named)
            best = p.argmax(axis=1)
            for i in range(n):
                conf = float(p[i, best[i]])
                if conf >= bundle.attribute_threshold:
                    source = "title+image" if head.inputs != "text" and has_image[i] else "title"
                    if head.inputs == "image":
                        if not has_image[i]:
                            continue
                        source = "image"
                    out["attributes"][i].append({"attribute": name, "value": head.classes[best[i]],
                                                 "confidence": conf, "source": source})
    adult_head = bundle.adult if bundle is not None else None
    decisions = decide_adult(
        texts, terms=terms,
        embedding_scores=None if adult_head is None else adult_head.predict(t, None)[:, 1],
        threshold=bundle.adult_threshold if bundle is not None else 0.5,
        categories=out["category"], category_scores=np.array([c or 0.0 for c in out["confidence"]]),
        mature_categories=frozenset(bundle.mature_categories) if bundle is not None else frozenset())
    out["is_adult"] = [d.is_adult for d in decisions]
    out["adult_score"] = [d.score for d in decisions]
    out["adult_reasons"] = [list(d.reasons) for d in decisions]
    return out


def embed_heads_frame(titles: list[str], paths: list[str | None], descriptions: list[str | None], encoder,
                      embed_cfg, plan: HeadsPlan, bundle, terms) -> dict[str, list]:
    """Embed one batch (:func:`udfs.embed.embed_frame`), then apply the heads to the rows that embedded; pure
    apart from reading image files. Returns the columns of :data:`EMBED_HEADS_SCHEMA` (heads null on a row
    whose image failed)."""
    n = len(titles)
    cols = embed_frame(titles, paths, encoder, embed_cfg)
    ok = [i for i in range(n) if cols["error"][i] is None]
    heads: dict[str, list] = {name: [] for name in HEADS_FIELDS}
    if ok:
        texts = [" ".join(x for x in (titles[i], descriptions[i]) if x) for i in ok]
        heads = heads_frame([cols["text_embedding"][i] for i in ok], [cols["image_embedding"][i] for i in ok],
                            texts, plan, bundle, terms, titles=[titles[i] for i in ok])
    for name, values in heads.items():
        column: list = [None] * n
        for j, i in enumerate(ok):
            column[i] = values[j]
        cols[name] = column
    return cols


def make_embed_heads_udf(embed_cfg, plan: HeadsPlan, progress=None):
    """An iterator pandas UDF ``(title, image_path, description) -> struct<EMBED_HEADS_SCHEMA>``: one pass of
    the models over each product, so the embeddings go from the encoder to the heads inside the Python worker
    (a separate heads pass cost a second trip of every embedding through the JVM, about a second at 20k).
    ``progress``, a Spark accumulator, gets each batch's rows once they are done (:mod:`jobs.runtime.progress`)."""
    from pyspark.sql.functions import pandas_udf

    if embed_cfg.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {embed_cfg.batch_size}")

    @pandas_udf(EMBED_HEADS_SCHEMA)
    def embed_heads(batches: Iterator[tuple[pd.Series, pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        encoder = cached_encoder(embed_cfg)         # once per worker process, not per batch or task
        bundle, terms = _resources(plan)
        for titles, paths, descriptions in batches:
            checkpoint("embed_batch")           # tests only: see models.core.faults
            maybe_fail(("embed", "heads"), titles.iloc[0] if len(titles) else None)
            cols = embed_heads_frame(
                [t if isinstance(t, str) else "" for t in titles], [p if isinstance(p, str) else None for p in paths],
                [d if isinstance(d, str) else None for d in descriptions], encoder, embed_cfg, plan, bundle, terms)
            if progress is not None:
                progress.add(len(titles))
            yield pd.DataFrame(cols, index=titles.index)

    return embed_heads
