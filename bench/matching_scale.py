"""Scale of the matching job: time and peak memory of blocking + scoring + clustering, and the growth exponent.

    python bench/matching_scale.py [--sizes 10000,100000] [--dim 384] [--workdir DIR]
    python bench/matching_scale.py --sizes 10000,100000,1000000      # the 1M point (long: run on a quiet machine)

For each size, in a fresh process (its own JVM, so memory figures do not mix): synthetic products in
duplicate groups (about 40% of the products have 1-3 other listings of the same product: a shared model
number, reworded titles, embeddings near the group's centre; the others are singletons) and in families of
similar products (same brand and kind, embedding cosine about 0.6: the near neighbours that are not
duplicates), written as a real
``product_embeddings`` Delta table; then one full run of :func:`jobs.stages.matching.match_and_cluster` on
``local[*]`` configured as the enrich job configures it: the shipped pair scorer, the shipped cross-encoder
reading the pairs the scorer passes (``--pair-model none``: the feature scorer alone), ``--precision auto``, one
torch thread a task. Reported per size: seconds for blocking, scoring and clustering, peak resident memory of the
whole process tree (driver, JVM, Python workers), candidates, the pairs the cross-encoder read and the scoring
stage's milliseconds per such pair and per product, matches, and the recall/precision of the planted duplicate
pairs. The exponent is the least-squares slope of log(total seconds)
over log(size): 1 is linear, 2 quadratic. The default sizes run in a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PeakRss, scratch  # noqa: E402

BRANDS = ["Acme", "Zeta", "Nova", "Orbit", "Kestrel", "Lumen", "Vela", "Quill", "Fjord", "Tundra"]
KINDS = ["Kettle", "Lamp", "Drill", "Blender", "Router", "Watch", "Backpack", "Monitor", "Speaker", "Jacket"]
FAMILY = 12  # products per family


def synthetic(n: int, dim: int, seed: int = 0, chunk: int = 100_000):
    """(products table, a reader of embeddings batches, the planted group of each product). Embeddings are
    made chunk by chunk in float32, so generating 1M x 384 needs about 2 GB, not ten."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    sizes = []
    total = 0
    while total < n:  # most products are singletons, the others come in groups of 2-4 listings
        s = 1 if rng.random() < 0.82 else int(rng.integers(2, 5))
        s = min(s, n - total)
        sizes.append(s)
        total += s
    group = np.repeat(np.arange(len(sizes)), sizes)
    # Product families (one brand and kind, FAMILY products): their embeddings are alike (cosine about 0.6),
    # so every listing has near neighbours that are other products: hard negatives for the scorer.
    family = np.arange(len(sizes)) // FAMILY
    centres = rng.standard_normal((len(sizes), dim), dtype=np.float32)
    centres *= 0.8
    centres += rng.standard_normal((int(family.max()) + 1, dim), dtype=np.float32)[family]
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    rank = np.arange(n) - first[group]
    brand = np.asarray(BRANDS)[family[group] % len(BRANDS)]
    kind = np.asarray(KINDS)[(family[group] // len(BRANDS)) % len(KINDS)]
    forms = ["{b} {k} {c}", "NEW {B} {kl} {cc}", "{k} by {b}, model {c}", "{b} {c} {k} - genuine"]
    titles = []
    for i in range(n):
        code = f"{brand[i][:2].upper()}-{100000 + group[i]}"
        titles.append(forms[rank[i] % 4].format(b=brand[i], B=brand[i].upper(), k=kind[i], kl=kind[i].lower(),
                                                c=code, cc=code.replace("-", "")))
    ids = np.asarray([f"P{i:08d}" for i in range(n)])
    price = (10 + group % 500).astype(float) * (1 + 0.02 * rank)
    products = pa.table({"product_id": ids, "title": titles, "brand": brand, "price": price,
                         "currency": np.full(n, "EUR")})
    vec_type = pa.list_(pa.float32())
    schema = pa.schema([("product_id", pa.string()), ("model_version", pa.string()), ("embedding", vec_type),
                        ("text_embedding", vec_type), ("image_embedding", vec_type), ("content_hash", pa.string()),
                        ("run_id", pa.string()), ("updated_at", pa.timestamp("us", tz="UTC"))])

    def batches():
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            emb = centres[group[s:e]] + 0.3 * rng.standard_normal((e - s, dim), dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            vec = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim).cast(vec_type)
            yield pa.record_batch([pa.array(ids[s:e]), pa.array(["bench-encoder"] * (e - s)), vec, vec,
                                   pa.nulls(e - s, vec_type), pa.array(ids[s:e]), pa.array(["bench"] * (e - s)),
                                   pa.array([0] * (e - s), pa.timestamp("us", tz="UTC"))], schema=schema)

    return products, pa.RecordBatchReader.from_batches(schema, batches()), group


def one(n: int, dim: int, workdir: Path, pair_model: str = "auto", precision: str = "auto") -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    from jobs.lake.lakehouse import Lake
    from jobs.runtime.spark_session import build_session
    from jobs.stages.matching import MatchConfig, match_and_cluster, resolve_matching, resolve_pair_model
    from schemas.tables import PRODUCT_EMBEDDINGS

    t = time.perf_counter()
    products, embeddings, group = synthetic(n, dim)
    root = workdir / f"n{n}"
    pq.write_table(products, root.with_suffix(".products.parquet"))
    write_deltalake(str(root / PRODUCT_EMBEDDINGS.name), embeddings, mode="overwrite")
    del embeddings  # the generator holds the cluster centres
    gen = time.perf_counter() - t
    spark = build_session("matching-scale", conf={"spark.driver.memory": os.environ.get("BENCH_DRIVER_MEMORY", "6g"),
                                                  "spark.ui.enabled": "false"})
    spark.sparkContext.setCheckpointDir(str(workdir / "checkpoints"))
    lake = Lake(spark, root)
    with PeakRss() as mem:
        t = time.perf_counter()
        cross = resolve_pair_model(pair_model)   # as jobs.enrich._match builds the stage's settings
        cfg = MatchConfig(scorer=resolve_matching("auto"), cross=cross, torch_threads=1, precision=precision)
        stats = match_and_cluster(spark, lake, spark.read.parquet(str(root.with_suffix(".products.parquet"))),
                                  f"bench-{n}", "bench-encoder", cfg)
        total = time.perf_counter() - t
    matches = DeltaTable(str(root / "product_matches")).to_pandas(columns=["product_id_a", "product_id_b"])
    a = matches["product_id_a"].str[1:].astype(int).to_numpy()
    b = matches["product_id_b"].str[1:].astype(int).to_numpy()
    sizes = np.bincount(group)
    true_pairs = int((sizes * (sizes - 1) // 2).sum())
    correct = int((group[a] == group[b]).sum())
    spark.stop()
    read, scoring = stats.get("cross_pairs"), stats.get("scoring_seconds")
    return {"n": n, "dim": dim, "pair_model": Path(cross).name if cross else None, "precision": precision,
            "seconds": round(total, 1), "blocking_s": stats.get("blocking_seconds"), "cross_pairs": read,
            "scoring_ms_per_cross_pair": round(1000 * scoring / read, 2) if read and scoring else None,
            "scoring_ms_per_product": round(1000 * scoring / n, 2) if scoring else None,
            "scoring_s": scoring, "clustering_s": stats.get("clustering_seconds"),
            "peak_rss_gib": round(mem.peak / 2**30, 2), "cells": stats.get("cells"),
            "peak_process_gib": {k: round(v / 2**30, 2) for k, v in mem.by_kind.items()},
            "largest_cell": stats.get("largest_cell"), "candidates": stats.get("candidates"),
            "matches": len(matches), "true_pairs": true_pairs,
            "pair_recall": round(correct / max(true_pairs, 1), 4),
            "pair_precision": round(correct / max(len(matches), 1), 4), "cc_rounds": stats.get("cc_rounds"),
            "clusters": stats.get("clusters"), "generate_s": round(gen, 1)}


def exponent(rows: list[dict]) -> float:
    xs = [math.log(r["n"]) for r in rows]
    ys = [math.log(r["seconds"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated catalog sizes")
    ap.add_argument("--dim", type=int, default=384, help="embedding dimension (the shipped model's is 384)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--pair-model", default="auto",
                    help="the cross-encoder, as the job's --pair-model: auto (the shipped one), none, store:VERSION")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="as the job's --precision")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one size here
    a = ap.parse_args(argv)
    if a.one is not None:
        print(json.dumps(one(a.one, a.dim, Path(a.workdir), a.pair_model, a.precision)), flush=True)
        return 0
    rows = []
    with scratch(a.workdir) as tmp:
        for n in [int(s) for s in a.sizes.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), "--dim", str(a.dim), "--workdir", tmp,
                                  "--pair-model", a.pair_model, "--precision", a.precision],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                errors = [ln for ln in out.stderr.splitlines() if "Error" in ln or "Exception" in ln]
                print("\n".join(errors[:20]) + "\n...\n" + out.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\ncross-encoder: {rows[0]['pair_model'] or 'none'}, precision {a.precision}")
    print("\n| products | total s | blocking s | scoring s | clustering s | peak RSS GiB | candidates "
          "| read by the cross-encoder | scoring ms / pair read | scoring ms / product | matches | recall | precision |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['seconds']} | {r['blocking_s']} | {r['scoring_s']} | {r['clustering_s']} | "
              f"{r['peak_rss_gib']} | {r['candidates']:,} | {r['cross_pairs'] or '-'} | "
              f"{r['scoring_ms_per_cross_pair'] or '-'} | {r['scoring_ms_per_product']} | {r['matches']:,} | "
              f"{r['pair_recall']:.3f} | {r['pair_precision']:.3f} |")
    if len(rows) >= 2:
        print(f"\ngrowth exponent (slope of log time over log size): {exponent(rows):.2f}  (1 = linear, 2 = quadratic)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
