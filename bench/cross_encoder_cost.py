"""Cost of the pair cross-encoder: candidate pairs/s per batch size, float32 beside bfloat16 autocast, median of 3.

    python bench/cross_encoder_cost.py [--pairs 2000] [--batches 32,64,128] [--threads N] [--device cpu]

Input: pairs of sample-catalog listings (`jobs/sample_catalog/catalog.parquet`): each product with its next
product in title order (near neighbours, as blocking yields them), serialised as the job does. The figure
includes tokenisation and the whole MiniLM pass over both listings. Per product, the job's cost is this times
the candidates per product that pass the feature scorer's prefilter (2.8 on the Walmart-Amazon catalog).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pairs(n: int) -> tuple[list[str], list[str]]:
    import pandas as pd

    from models.matching.cross import serialize

    cat = pd.read_parquet(REPO / "jobs" / "sample_catalog" / "catalog.parquet").sort_values("title", na_position="last")
    rows = [serialize(r) for r in cat[["title", "brand", "price"]].to_dict("records")]
    a, b = [], []
    while len(a) < n:
        for i in range(len(rows) - 1):
            a.append(rows[i])
            b.append(rows[i + 1])
    return a[:n], b[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--batches", default="32,64,128")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from models.matching.cross import load_cross

    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_cross("default", device=a.device)
    left, right = _pairs(a.pairs)
    print(f"{model.version} on {a.device}, {torch.get_num_threads()} threads, {len(left)} pairs")  # noqa: T201
    print("| batch | float32 pairs/s | bfloat16 pairs/s | bf16 / fp32 | max prob. difference |")  # noqa: T201
    print("|---|---|---|---|---|")  # noqa: T201
    for batch in [int(x) for x in a.batches.split(",")]:
        model.batch_size = batch
        rates, probs = {}, {}
        for dtype in ("float32", "bfloat16"):
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                with torch.autocast(a.device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    probs[dtype] = model.score(left, right)
                times.append(time.perf_counter() - t)
            rates[dtype] = len(left) / statistics.median(times)
        diff = float(np.abs(probs["float32"] - probs["bfloat16"]).max())
        print(f"| {batch} | {rates['float32']:.0f} | {rates['bfloat16']:.0f} | "  # noqa: T201
              f"{rates['bfloat16'] / rates['float32']:.2f} | {diff:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
