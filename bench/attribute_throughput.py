"""Inference throughput of the shipped attribute extractor: products/s per model batch size (median of 3 runs).

    python bench/attribute_throughput.py [--batches 8,32,64] [--threads N] [--device cpu]

Input: the titles and descriptions of the sample catalog (`jobs/sample_catalog/catalog.parquet`, 345 rows), so
the figure includes tokenisation, the full MiniLM forward pass and span decoding.
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
    p.add_argument("--batches", default="8,32,64")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    import pandas as pd
    import torch

    from models.attributes import load_extractor

    if a.threads:
        torch.set_num_threads(a.threads)
    catalog = pd.read_parquet(REPO / "jobs" / "sample_catalog" / "catalog.parquet")
    titles = [t if isinstance(t, str) else None for t in catalog["title"]]
    descriptions = [d if isinstance(d, str) else None for d in catalog["description"]]
    ex = load_extractor("default", device=a.device)
    print(f"{ex.version} on {a.device}, {torch.get_num_threads()} threads, {len(titles)} products")  # noqa: T201
    for b in (int(x) for x in a.batches.split(",")):
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            ex.extract(titles, descriptions, batch_size=b)
            times.append(time.perf_counter() - t0)
        print(f"batch {b:4d}: {len(titles) / statistics.median(times):8.1f} products/s")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
