"""Inference throughput of attribute extractors side by side: products/s per model batch size (median of runs).

    python bench/attribute_throughput.py [--models default,store:attr-minilm-...] [--batches 32,64]
                                         [--precisions fp32,bf16] [--threads N] [--device cpu] [--no-descriptions]

Input: the titles, descriptions and seller categories of the sample catalog (`jobs/sample_catalog/catalog.parquet`,
345 rows), so the figure includes tokenisation, the model passes and span decoding. An attribute-conditioned
extractor asks each product the attributes of its category's schema (the sample's fashion categories are not in
the shipped schema: its generic attributes are asked), so its cost grows with the attributes asked; the line says
how many pairs it answered.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="default", help="comma-separated extractor references")
    p.add_argument("--batches", default="32,64")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-descriptions", action="store_true", help="titles only")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, auto")
    a = p.parse_args(argv)

    import pandas as pd
    import torch

    from models.attributes import load_extractor

    if a.threads:
        torch.set_num_threads(a.threads)
    catalog = pd.read_parquet(REPO / "jobs" / "sample_catalog" / "catalog.parquet")
    titles = [t if isinstance(t, str) else None for t in catalog["title"]]
    descriptions = ([None] * len(titles) if a.no_descriptions
                    else [d if isinstance(d, str) else None for d in catalog["description"]])
    categories = [c if isinstance(c, str) else None for c in catalog.get("category", [None] * len(titles))]
    print(f"{len(titles)} products, {'titles only' if a.no_descriptions else 'titles + descriptions'}, "  # noqa: T201
          f"{torch.get_num_threads()} threads, {a.device}")
    for ref, precision in ((r, pr) for r in a.models.split(",") for pr in a.precisions.split(",")):
        ex = load_extractor(ref, device=a.device, precision=precision)
        schema = getattr(ex, "schema", None)
        pairs = (sum(len(schema.attributes_for(c)) for c, t in zip(categories, titles, strict=True) if t)
                 if schema is not None else None)
        for b in (int(x) for x in a.batches.split(",")):
            ex.extract(titles[:16], descriptions[:16], categories[:16], batch_size=b)   # warm-up
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                ex.extract(titles, descriptions, categories, batch_size=b)
                times.append(time.perf_counter() - t0)
            rate = len(titles) / statistics.median(times)
            extra = f", {pairs / statistics.median(times):7.0f} (product, attribute) pairs/s" if pairs else ""
            print(f"{ex.version:50s} {ex.precision:4s} batch {b:4d}: {rate:8.1f} products/s{extra}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
