"""The open attribute UDF: (title, description) in, the extracted (attribute, value, confidence, source) list out.

Same pattern as :mod:`udfs.embed`: the extractor is loaded once per Python worker (:mod:`udfs.model_cache`) and
the extractor cuts each Arrow batch into model batches of ``batch_size`` rows, so the two sizes are tuned
independently. A row without a usable title gets an empty list (the job's validation quarantines it earlier).
Explode the array to get the ``product_attributes`` rows (one per product and attribute value).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd  # at module level: the UDF type hints are resolved in this module's namespace

from udfs.model_cache import cached, import_object

__all__ = ["ATTRIBUTES_SCHEMA", "AttributesConfig", "extract_frame", "make_attributes_udf"]

ATTRIBUTES_SCHEMA = "array<struct<attribute:string,value:string,confidence:float,source:string>>"
DEFAULT_LOADER = "models.attributes.extractor:load_extractor"


@dataclass(frozen=True)
class AttributesConfig:
    model_ref: str = "default"         # see models.attributes.extractor.load_extractor
    store: str | None = None           # attribute model store; None: the one shipped with the project
    batch_size: int = 32               # rows per model forward pass
    device: str | None = None          # None: CUDA when available
    min_confidence: float | None = None  # None: the stored model's default
    # product_attributes holds one row per product and attribute: keep each attribute's most confident value.
    one_per_attribute: bool = True
    torch_threads: int | None = None   # None: leave torch's default
    loader: str = DEFAULT_LOADER       # "module:function"(model_ref, store, device) -> extractor


def _extractor(cfg: AttributesConfig):
    def load():
        if cfg.torch_threads:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        return import_object(cfg.loader)(cfg.model_ref, cfg.store, cfg.device)

    return cached(("attribute-extractor", cfg.loader, cfg.model_ref, cfg.store, cfg.device), load)


def extract_frame(titles: list[str | None], descriptions: list[str | None], extractor, cfg: AttributesConfig
                  ) -> list[list[dict]]:
    """Extract one Arrow batch; one list of struct-like dicts per row."""
    found = extractor.extract(titles, descriptions, batch_size=cfg.batch_size, min_confidence=cfg.min_confidence,
                              one_per_attribute=cfg.one_per_attribute)
    return [[{"attribute": e.attribute, "value": e.value, "confidence": float(e.confidence), "source": e.source}
             for e in row] for row in found]


def make_attributes_udf(cfg: AttributesConfig = AttributesConfig()):  # noqa: B008 - frozen, so a safe default
    """An iterator pandas UDF ``(title, description) -> array<struct<attribute, value, confidence, source>>``."""
    from pyspark.sql.functions import pandas_udf

    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {cfg.batch_size}")

    @pandas_udf(ATTRIBUTES_SCHEMA)
    def extract_attributes(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
        extractor = _extractor(cfg)  # once per worker process, not per batch or task
        for titles, descriptions in batches:
            rows = extract_frame([t if isinstance(t, str) else None for t in titles],
                                 [d if isinstance(d, str) else None for d in descriptions], extractor, cfg)
            yield pd.Series(rows, index=titles.index)

    return extract_attributes
