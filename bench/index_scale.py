"""Similarity index at catalog scale: full build, a 1% incremental update, and query latency.

    python bench/index_scale.py [--sizes 10000,100000] [--dim 384] [--lake /tmp/index-bench]

Writes a synthetic ``product_embeddings`` table (random unit vectors) with the deltalake package, builds the
index, replaces 1% of the products and deletes 0.1% in one merge and one delete, updates the index, and
times single-product ``similar`` queries (k = 10) against the exact inner-product index.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.read.index import load_index, update_index  # noqa: E402
from jobs.read.search import similar  # noqa: E402


def _table(ids: list[str], dim: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((len(ids), dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), dim).cast(pa.list_(pa.float32()))
    return pa.table({"product_id": ids, "model_version": ["bench"] * len(ids), "embedding": emb,
                     "content_hash": [f"{seed}-{i}" for i in ids]})


def bench(n: int, dim: int, lake: Path) -> None:
    from deltalake import DeltaTable, write_deltalake

    shutil.rmtree(lake, ignore_errors=True)
    ids = [f"P{i:09d}" for i in range(n)]
    write_deltalake(str(lake / "product_embeddings"), _table(ids, dim, 0))
    full = update_index(lake)
    changed = ids[:: 100]
    dt = DeltaTable(str(lake / "product_embeddings"))
    (dt.merge(_table(changed, dim, 1), predicate="t.product_id = s.product_id", source_alias="s", target_alias="t")
     .when_matched_update_all().execute())
    DeltaTable(str(lake / "product_embeddings")).delete("product_id >= 'P%09d'" % (n - n // 1000))
    inc = update_index(lake)
    idx = load_index(lake, "bench")
    queries = ids[1:: max(1, n // 200)][:200]
    t = time.perf_counter()
    for q in queries:
        similar(idx, q, 10)
    per_query = (time.perf_counter() - t) / len(queries) * 1000
    print(f"{n:>9,} x {dim}: full build {full.seconds:6.2f} s | update (+0 ~{inc.replaced:,} -{inc.removed:,}) "
          f"{inc.seconds:6.2f} s | similar k=10 {per_query:6.2f} ms/query")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--lake", default="/tmp/index-bench")
    a = p.parse_args()
    for n in (int(s) for s in a.sizes.split(",")):
        bench(n, a.dim, Path(a.lake))


if __name__ == "__main__":
    main()
