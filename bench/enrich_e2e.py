"""The enrich job end to end against a plain PyTorch loop; the incremental rerun; a 100k-row upsert into 1M.

    python bench/enrich_e2e.py                                  # N=3000 products, 1M-row upsert: ~6 min here
    python bench/enrich_e2e.py --products 20000 --repeats 3     # longer, steadier figures
    python bench/enrich_e2e.py --skip-upsert --device cuda      # on a GPU machine
    python bench/enrich_e2e.py --compare-model store:<previous>  # + the plain loop with another model, alternated

What it measures, in one process and one run (so the figures are side by side on the same machine state):

1. **A synthetic catalog** of N products with JPEG images of ``--image-size`` pixels (drawn product
   silhouettes, as in the shipped sample, upscaled), titles and descriptions from templates.
2. **Plain loop**: the same model over the same rows without Spark: pandas reads the Parquet file, a thread
   pool decodes the images, the model embeds titles and images in batches, the heads classify, pyarrow writes
   one Parquet file. It calls the same per-batch functions as the Spark UDFs (``udfs.embed.embed_frame``,
   ``udfs.heads.heads_frame``), so the ratio measures what Spark and the job's bookkeeping cost, not a
   different model path.
3. **Spark job**: ``jobs.enrich.run`` on ``local[*]`` into a fresh lake (validate with image hashing, select
   changed, embed, heads, Delta commits of every table, the similarity index, the run report; open attributes
   and duplicate matching are off because the plain loop has no counterpart for them). Products/s counts
   every product over the whole run, model loading included on both sides.
4. **Incremental rerun**: 1% of the products get a new title, the job runs again on the same lake; its time
   as a fraction of the full run's.
5. **Upsert**: ``--upsert-rows`` rows (90% replace existing products, 10% new) upserted into a
   ``--upsert-base``-row ``product_categories`` table through ``jobs.lake.lakehouse.Lake.upsert`` (the same
   copy-on-write commit the job uses); the table is built first and its build time is not counted.

Peak resident memory is sampled over the Spark phases for the driver (Python), the JVM (driver and, in local
mode, the executors) and the largest Python worker. ``--repeats`` repeats the plain loop and the Spark full
run alternately (fresh lake each time) and reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PeakRss, median  # noqa: E402

TARGETS = {"spark_vs_plain": 0.85, "incremental_fraction": 0.10, "upsert_seconds": 30.0}


# -- the synthetic catalog --------------------------------------------------------------------------------
def make_catalog(out: Path, n: int, image_size: int, seed: int = 11) -> Path:
    """``out/catalog.parquet`` with N products (about 4% without an image) and their JPEGs under ``out/images``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from jobs import make_sample_catalog as s

    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        ptype = s.TYPES[i % len(s.TYPES)]
        brand, colour, gender = rng.choice(s.BRANDS), rng.choice(list(s.COLOURS)), rng.choice(s.GENDERS)
        model = f"{brand[:2].upper()}-{rng.randint(1000, 99999)}"
        pid = f"B{i:07d}"
        uri = None
        if rng.random() > 0.04:
            img = s._draw(ptype.shape, s.COLOURS[colour], rng).resize((image_size, image_size), Image.BICUBIC)
            uri = f"images/{pid}.jpg"
            (out / uri).write_bytes(s._jpeg(img, 88))
        rows.append(dict(product_id=pid, title=s._title(brand, gender, colour, ptype.name, model, rng),
                         description=s._description(ptype, colour, rng), image_uri=uri, brand=brand,
                         category=ptype.category, price=round(rng.uniform(*ptype.price), 2), currency="EUR",
                         language="en", updated_at=None))
    path = out / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=s.CATALOG_SCHEMA), path)
    return path


def changed_copy(catalog: Path, fraction: float, seed: int = 5) -> tuple[Path, int]:
    """A copy of the catalog where ``fraction`` of the products have a new title."""
    import pyarrow.parquet as pq

    df = pq.read_table(catalog).to_pandas()
    rng = random.Random(seed)
    picked = rng.sample(range(len(df)), max(1, round(fraction * len(df))))
    df.loc[picked, "title"] = df.loc[picked, "title"] + " (new season)"
    out = catalog.with_name("catalog_changed.parquet")
    df.to_parquet(out, index=False)
    return out, len(picked)


# -- the plain loop -----------------------------------------------------------------------------------------
def plain_loop(catalog: Path, out: Path, model: str, device: str | None, batch_size: int, decode_threads: int,
               chunk: int = 2048) -> dict:
    """The same model over the same rows without Spark; returns products, seconds and products/s."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from jobs.stages.heads import HeadsConfig, plan_heads
    from models.encoders import load_encoder
    from models.heads.bundle import load_heads
    from udfs.embed import EmbedConfig, embed_frame
    from udfs.heads import heads_frame

    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    encoder = load_encoder(model, device)
    df = pq.read_table(catalog).to_pandas()
    counts = df["category"].value_counts().to_dict()
    plan, _ = plan_heads(HeadsConfig(), encoder.version, counts, lambda: encoder.embed_texts)
    bundle = load_heads(Path(plan.bundle_dir)) if plan.bundle_dir else None
    cfg = EmbedConfig(model_ref=model, batch_size=batch_size, device=device, decode_threads=decode_threads)
    root = catalog.parent
    writer = None
    n_ok = 0
    for start in range(0, len(df), chunk):
        part = df.iloc[start:start + chunk]
        titles = part["title"].fillna("").tolist()
        paths = [str(root / u) if isinstance(u, str) else None for u in part["image_uri"]]
        emb = embed_frame(titles, paths, encoder, cfg)
        ok = [i for i, e in enumerate(emb["error"]) if e is None]
        texts = [f"{titles[i]} {part['description'].iloc[i] or ''}".strip() for i in ok]
        heads = heads_frame([emb["text_embedding"][i] for i in ok], [emb["image_embedding"][i] for i in ok],
                            texts, plan, bundle, plan.terms, titles=[titles[i] for i in ok])   # as the job
        batch = pa.table({
            "product_id": [part["product_id"].iloc[i] for i in ok],
            "embedding": [np.asarray(emb["embedding"][i]) for i in ok],
            "text_embedding": [np.asarray(emb["text_embedding"][i]) for i in ok],
            "image_embedding": [None if emb["image_embedding"][i] is None else np.asarray(emb["image_embedding"][i])
                                for i in ok],
            "category": heads["category"], "confidence": heads["confidence"], "is_adult": heads["is_adult"],
        })
        if writer is None:
            writer = pq.ParquetWriter(out, batch.schema)
        writer.write_table(batch)
        n_ok += len(ok)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - t0
    return {"products": len(df), "embedded": n_ok, "seconds": round(seconds, 2),
            "products_per_s": round(len(df) / seconds, 1)}


# -- the Spark job --------------------------------------------------------------------------------------
def spark_run(spark, catalog: Path, lake: Path, run_id: str, model: str, device: str | None, batch_size: int,
              decode_threads: int) -> dict:
    from jobs.enrich import EnrichConfig, run

    cfg = EnrichConfig(catalog=str(catalog), lake=str(lake), model=model, run_id=run_id, batch_size=batch_size,
                       device=device, decode_threads=decode_threads, attributes="none", matching="none")
    t0 = time.perf_counter()
    summary = run(spark, cfg)
    seconds = time.perf_counter() - t0
    if summary.status != "succeeded" or not summary.accounted():
        raise RuntimeError(f"run {run_id} did not account for every row: {summary.counts}")
    return {"products": summary.counts["read"], "enriched": summary.counts["enriched"],
            "seconds": round(seconds, 2), "products_per_s": round(summary.counts["read"] / seconds, 1),
            "stages": {k: round(v, 1) for k, v in summary.timings.items()},
            "images_read": summary.images.get("read"), "images": summary.images.get("checked")}


# -- the upsert -------------------------------------------------------------------------------------------
def upsert_bench(spark, lake_dir: Path, base: int, rows: int) -> dict:
    """Build a ``base``-row product_categories table, then time the upsert of ``rows`` rows into it."""
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    from jobs.lake.lakehouse import Lake
    from schemas.tables import PRODUCT_CATEGORIES

    lake = Lake(spark, lake_dir)
    labels = F.array(*[F.lit(x) for x in ("Tshirts", "Shirts", "Jeans", "Dresses", "Watches", "Handbags")])

    def frame(ids, run_id: str):
        k = F.pmod(F.col("id"), F.lit(6)).cast("int")
        top = F.array(*[F.struct(F.element_at(labels, ((k + j) % 6) + 1).alias("label"),
                                 F.lit(0.5 / (j + 1)).alias("score")) for j in range(5)])
        return ids.select(
            F.format_string("P%08d", F.col("id")).alias("product_id"),
            F.element_at(labels, k + 1).alias("category"), (F.rand(7) * 0.5 + 0.5).alias("confidence"),
            top.alias("top_k"), F.lit("Apparel > Topwear > Tshirts").alias("seller_category"),
            F.lit("head:bench").alias("method"), F.lit("bench-encoder").alias("model_version"),
            F.lit(run_id).alias("run_id"), F.current_timestamp().alias("updated_at"))

    t0 = time.perf_counter()
    lake.append(PRODUCT_CATEGORIES, frame(spark.range(base), "build"), "build")
    build = time.perf_counter() - t0
    files_before = len(lake.files(PRODUCT_CATEGORIES))
    # 90% of the updates replace products spread over the whole table, 10% are new products.
    n_new = rows // 10
    old = (spark.range(base).where(F.rand(3) < (rows - n_new) / base)
           .limit(rows - n_new))
    ids = old.unionByName(spark.range(base, base + n_new))
    updates = frame(ids, "upsert")
    n_updates = updates.count()  # materialise the input first: the figure is the upsert, not the generator
    t0 = time.perf_counter()
    result = lake.upsert(PRODUCT_CATEGORIES, updates, "upsert")
    seconds = time.perf_counter() - t0
    total = DeltaTable(str(lake.path(PRODUCT_CATEGORIES))).to_pyarrow_dataset().count_rows()
    expected = base + n_new  # the replaced products keep their one row each
    if total != expected:
        raise RuntimeError(f"the upsert left {total} rows, expected {expected}")
    return {"base_rows": base, "upsert_rows": n_updates, "seconds": round(seconds, 2), "build_seconds": round(build, 1),
            "files_before": files_before, "files_added": result.added_files, "files_removed": result.removed_files,
            "rows_after": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--products", type=int, default=3000, help="synthetic catalog size N (default: 3000)")
    ap.add_argument("--image-size", type=int, default=256, help="side of the stored JPEGs in pixels (default: 256)")
    ap.add_argument("--model", default="default", help="model reference (default: the shipped default model)")
    ap.add_argument("--compare-model", default=None,
                    help="also run the plain loop with this model, alternating with --model in each repeat: the "
                         "per-product cost of one model against the other, side by side")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--decode-threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="plain/Spark full-run pairs; medians are reported")
    ap.add_argument("--changed", type=float, default=0.01, help="fraction changed for the incremental run")
    ap.add_argument("--upsert-base", type=int, default=1_000_000)
    ap.add_argument("--upsert-rows", type=int, default=100_000)
    ap.add_argument("--skip-upsert", action="store_true")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=os.environ.get("CATALOG_ENRICH_LOG", "WARNING"))
    from jobs.runtime.spark_session import build_session

    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        catalog = make_catalog(work / "catalog", a.products, a.image_size)
        print(f"catalog: {a.products} products, {a.image_size} px JPEGs, made in {time.perf_counter() - t:.1f} s",
              flush=True)
        spark = build_session("bench-enrich", conf={"spark.ui.enabled": "false"})
        plains, fulls, mems, others = [], [], [], []
        for r in range(a.repeats):
            plains.append(plain_loop(catalog, work / f"plain-{r}.parquet", a.model, a.device, a.batch_size,
                                     a.decode_threads))
            print(f"plain loop {r + 1}: {json.dumps(plains[-1])}", flush=True)
            if a.compare_model:
                others.append(plain_loop(catalog, work / f"other-{r}.parquet", a.compare_model, a.device,
                                         a.batch_size, a.decode_threads))
                print(f"plain loop {r + 1}, {a.compare_model}: {json.dumps(others[-1])}", flush=True)
            lake = work / f"lake-{r}"
            with PeakRss() as mem:
                fulls.append(spark_run(spark, catalog, lake, f"bench-full-{r}", a.model, a.device, a.batch_size,
                                       a.decode_threads))
            mems.append(mem.gib())
            print(f"spark full {r + 1}: {json.dumps(fulls[-1])}  peak GiB {mems[-1]}", flush=True)
        changed, n_changed = changed_copy(catalog, a.changed)
        with PeakRss() as mem:
            incr = spark_run(spark, changed, work / "lake-0", "bench-incremental", a.model, a.device, a.batch_size,
                             a.decode_threads)
        if incr["enriched"] != n_changed:
            raise RuntimeError(f"the incremental run enriched {incr['enriched']} products, {n_changed} changed")
        print(f"spark incremental ({n_changed} changed): {json.dumps(incr)}  peak GiB {mem.gib()}", flush=True)
        up = None
        if not a.skip_upsert:
            with PeakRss() as umem:
                up = upsert_bench(spark, work / "upsert-lake", a.upsert_base, a.upsert_rows)
            up["peak_gib"] = umem.gib()
            print(f"upsert: {json.dumps(up)}", flush=True)
        spark.stop()

    plain_s, full_s = median([p["seconds"] for p in plains]), median([f["seconds"] for f in fulls])
    figures = {
        "products": a.products, "image_size": a.image_size, "cpus": os.cpu_count(), "repeats": a.repeats,
        "plain_products_per_s": round(a.products / plain_s, 1), "spark_products_per_s": round(a.products / full_s, 1),
        "spark_vs_plain": round(plain_s / full_s, 3),
        "incremental_seconds": incr["seconds"], "full_seconds": full_s,
        "incremental_fraction": round(incr["seconds"] / full_s, 3),
        "upsert_seconds": up["seconds"] if up else None,
        "peak_gib": {k: max(m.get(k, 0) for m in mems) for k in ("all", "driver", "jvm", "workers")},
        "stages_full": fulls[0]["stages"], "stages_incremental": incr["stages"],
        # The first Spark run starts cold (JIT, Python workers, model loads), as a nightly spark-submit does;
        # the repeats reuse the warm JVM and workers. With --repeats, the cold pair is reported beside the medians.
        "first_pair": {"spark_vs_plain": round(plains[0]["seconds"] / fulls[0]["seconds"], 3),
                       "incremental_fraction": round(incr["seconds"] / fulls[0]["seconds"], 3)},
    }
    if others:
        other_s = median([o["seconds"] for o in others])
        figures["compare_model"] = {"model": a.compare_model, "plain_products_per_s": round(a.products / other_s, 1),
                                    "seconds_per_product_ratio": round(plain_s / other_s, 3)}
    print("\n| figure | measured | target |\n|---|---|---|")
    print(f"| plain PyTorch loop, products/s | {figures['plain_products_per_s']} | |")
    if others:
        c = figures["compare_model"]
        print(f"| plain loop with {c['model']}, products/s | {c['plain_products_per_s']} | |")
        print(f"| seconds per product, {a.model} / {c['model']} | {c['seconds_per_product_ratio']:.2f} | |")
    print(f"| Spark job end to end, products/s | {figures['spark_products_per_s']} | |")
    print(f"| Spark / plain | {figures['spark_vs_plain']:.2f} | >= {TARGETS['spark_vs_plain']} |")
    print(f"| incremental run ({a.changed:.0%} changed) / full run | {figures['incremental_fraction']:.3f} "
          f"({incr['seconds']} s / {full_s:.2f} s) | < {TARGETS['incremental_fraction']} |")
    if a.repeats > 1:
        first = figures["first_pair"]
        print(f"| first (cold) pair: Spark / plain | {first['spark_vs_plain']:.2f} "
              f"({plains[0]['seconds']} s / {fulls[0]['seconds']} s) | >= {TARGETS['spark_vs_plain']} |")
        print(f"| incremental run / first (cold) full run | {first['incremental_fraction']:.3f} | "
              f"< {TARGETS['incremental_fraction']} |")
    if up:
        print(f"| upsert {up['upsert_rows']:,} rows into {up['base_rows']:,}, s | {up['seconds']} | "
              f"< {TARGETS['upsert_seconds']:.0f} |")
    pk = figures["peak_gib"]
    print(f"| peak RSS GiB: all / driver / JVM / largest Python worker | {pk['all']} / {pk['driver']} / "
          f"{pk['jvm']} / {pk['workers']} | |")
    print(f"\nstages of the first full run (s): {figures['stages_full']}")
    print(f"stages of the incremental run (s): {figures['stages_incremental']}")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
