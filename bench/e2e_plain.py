"""The plain loop of ``bench/enrich_e2e.py``: the enrich job's work in one Python process, without Spark.

Each stage calls the per-batch functions the job's UDFs call, with the job's default settings, and is timed:

* ``validate``: pandas reads the catalog; every image URI is checked and hashed with
  ``udfs.images.inspect_image_stat`` under the job's ``ImagePolicy`` (what the job's inspect UDF runs); the row
  rules are the simple ones (id present and unique, title not blank, price finite and >= 0), not the job's
  whole list (invisible characters, text caps, content hashes: column expressions Spark evaluates cheaply);
* ``embed + heads``: ``udfs.embed.embed_frame`` then ``udfs.heads.heads_frame`` per chunk (the job runs the
  heads in the encoder's UDF too), the plan from ``jobs.stages.heads.plan_heads``;
* ``attributes``: the store's current extractor (``jobs.stages.heads.resolve_extractor("auto")``) loaded as
  ``udfs.attributes`` loads it, at the job's batch size and precision (``auto``), over title, description and
  seller category through ``udfs.attributes.extract_frame``;
* ``write``: the embeddings, categories and attribute values to Parquet (the job's ``commit`` stage writes
  Delta tables);
* ``match``: ``models.matching.blocking.candidate_pairs`` (the job's blocking on one machine) with the job's
  ``BlockingConfig``; the cosines of each candidate from the embeddings as the job's cell search takes them;
  the scores from ``udfs.matching.make_score_fn``, the very function the job's ``mapInPandas`` runs (feature
  scorer, then the cross-encoder above the ``MatchConfig`` prefilter, its threshold deciding), fed 2,048-row
  batches as Arrow would; then ``models.matching.cluster.cluster`` with the job's ``ClusterConfig``; matches and
  clusters to Parquet. (``models.matching.evaluate.score_candidates`` is not used: it embeds titles again
  through ``TitleVectors``, where the job reads the cosines from its own embeddings.)
* ``index``: a faiss exact inner-product index (``IndexIDMap2`` over ``IndexFlatIP``, as ``jobs.read.index``
  builds) over the fused embeddings, written to a file.

The job's ``select changed`` stage (the lake's previous embeddings), its run log (``enrichment_runs``) and its
run report have no counterpart here: they are the job's bookkeeping over a lake, reported as Spark-only.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["STAGES", "plain_loop", "torch_threads"]

# The plain loop's stages, in order; "embed" mode runs only "embed + heads" and "write" (the old comparison).
STAGES = ("validate", "embed + heads", "attributes", "write", "match", "index")
ARROW_ROWS = 2048   # spark.sql.execution.arrow.maxRecordsPerBatch (jobs/runtime/spark_session.py)


def torch_threads() -> int:
    """The cores this process may use (a ``taskset`` or container share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def _timed(timings: dict[str, float], name: str):
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t, 2)


def _validate(catalog: Path):
    """The catalog's valid rows with the checked ``image_path``; the number read."""
    import pandas as pd

    from udfs.images import ImagePolicy, PathMemo, inspect_image_stat

    df = pq_read(catalog)
    n_read = len(df)
    policy = ImagePolicy(image_root=str(catalog.parent.resolve()))
    ok = df["product_id"].notna() & (df["product_id"].astype(str).str.strip() != "")
    ok &= ~df["product_id"].duplicated(keep="first")
    ok &= df["title"].fillna("").str.strip() != ""
    price = pd.to_numeric(df["price"], errors="coerce")
    ok &= price.isna() | (price.map(math.isfinite) & (price >= 0))
    paths, memo = [], PathMemo(policy)   # the job's inspect UDF keeps one memo per Arrow batch
    for uri, good in zip(df["image_uri"], ok, strict=True):
        seen, reason, _, _ = (inspect_image_stat(uri if isinstance(uri, str) else None, policy, memo=memo) if good
                              else (None, "row", None, False))
        paths.append(None if seen is None else seen.image_path)
        if reason is not None:
            paths[-1] = False   # rejected
    df["image_path"] = paths
    return df[[p is not False for p in paths]].reset_index(drop=True), n_read


def pq_read(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas()


def _embed(df, model: str, device: str | None, batch_size: int, decode_threads: int, chunk: int,
           precision: str = "auto") -> dict:
    """Embeddings and heads of ``df``'s rows; the rows that failed decoding are left out."""
    import numpy as np

    from jobs.stages.heads import HeadsConfig, plan_heads
    from models.encoders import load_encoder
    from models.heads.bundle import load_heads
    from udfs.embed import EmbedConfig, embed_frame
    from udfs.heads import heads_frame

    encoder = load_encoder(model, device, precision)
    counts = df["category"].value_counts().to_dict()
    plan, _ = plan_heads(HeadsConfig(), encoder.version, counts, lambda: encoder.embed_texts)
    bundle = load_heads(Path(plan.bundle_dir)) if plan.bundle_dir else None
    cfg = EmbedConfig(model_ref=model, batch_size=batch_size, device=device, decode_threads=decode_threads,
                      precision=precision)
    out: dict[str, list] = {k: [] for k in ("row", "embedding", "text_embedding", "image_embedding", "category",
                                            "confidence", "is_adult")}
    for start in range(0, len(df), chunk):
        part = df.iloc[start:start + chunk]
        titles = part["title"].fillna("").tolist()
        paths = [p if isinstance(p, str) else None for p in part["image_path"]]
        emb = embed_frame(titles, paths, encoder, cfg)
        ok = [i for i, e in enumerate(emb["error"]) if e is None]
        texts = [f"{titles[i]} {part['description'].iloc[i] or ''}".strip() for i in ok]
        heads = heads_frame([emb["text_embedding"][i] for i in ok], [emb["image_embedding"][i] for i in ok],
                            texts, plan, bundle, plan.terms, titles=[titles[i] for i in ok])   # as the job
        out["row"] += [start + i for i in ok]
        for k in ("embedding", "text_embedding", "image_embedding"):
            out[k] += [None if emb[k][i] is None else np.asarray(emb[k][i], np.float32) for i in ok]
        for k in ("category", "confidence", "is_adult"):
            out[k] += list(heads[k])
    out["types"] = list(plan.types)   # the match stage's type rule reads them (jobs.enrich._match)
    return out


def _attributes(df, batch_size: int, device: str | None, threads: int, chunk: int,
                precision: str = "auto") -> list[dict] | None:
    """The open extractor's values of ``df``'s rows (None when the store has no extractor, as the job skips)."""
    from jobs.stages.heads import resolve_extractor
    from udfs.attributes import AttributesConfig, extract_frame
    from udfs.model_cache import import_object

    found = resolve_extractor("auto")
    if found is None:
        return None
    cfg = AttributesConfig(model_ref=found[0], batch_size=batch_size, device=device, torch_threads=threads,
                           precision=precision)
    extractor = import_object(cfg.loader)(cfg.model_ref, cfg.store, cfg.device, cfg.precision)
    rows = []
    for start in range(0, len(df), chunk):
        part = df.iloc[start:start + chunk]
        text = [t if isinstance(t, str) else None for t in part["title"]]
        desc = [d if isinstance(d, str) else None for d in part["description"]]
        cats = [c if isinstance(c, str) else None for c in part["category"]]
        for pid, values in zip(part["product_id"], extract_frame(text, desc, extractor, cfg, cats), strict=True):
            rows += [dict(product_id=pid, **v) for v in values]
    return rows


def _cosines(ia, ib, fused, text, image):
    """(fused, text, image) cosines of row pairs as the job's cell search takes them: the text embedding, or
    the fused one where it is missing; no image cosine unless both have an image."""
    import numpy as np

    def dot(m, i, j):
        # In slices: the rows of 458,000 pairs gathered at once are 700 MB a side, and took 14 s of the stage.
        out = np.empty(len(i), np.float32)
        for s in range(0, len(i), 16384):
            out[s:s + 16384] = np.einsum("ij,ij->i", m[i[s:s + 16384]], m[j[s:s + 16384]])
        return out

    t = np.where(np.isnan(text).any(axis=1, keepdims=True), fused, text)
    return dot(fused, ia, ib), dot(t, ia, ib), dot(image, ia, ib)   # NaN rows (no image) give NaN


def _match(df, emb: dict, threads: int, out: Path, precision: str = "auto") -> dict:
    """Block, score and cluster the embedded products as the job's match stage does; matches and clusters to
    ``out``. Returns counts (empty when the store has no pair scorer, as the job skips)."""
    import numpy as np
    import pandas as pd

    from jobs.stages.matching import MatchConfig, resolve_matching, resolve_pair_model
    from models.core.arrays import stack_rows
    from models.matching.artifact import load_scorer
    from models.matching.blocking import candidate_pairs
    from models.matching.cluster import cluster
    from models.matching.spelling import CatalogSpelling
    from udfs.matching import CrossSpec, make_score_fn

    scorer_dir = resolve_matching("auto")
    if scorer_dir is None:
        return {}
    cfg = MatchConfig(scorer=scorer_dir, cross=resolve_pair_model("auto"), torch_threads=threads,
                      precision=precision, types=tuple(emb["types"]))   # as jobs.enrich._match builds it
    scorer = load_scorer(cfg.scorer)
    rows = df.iloc[emb["row"]].reset_index(drop=True)
    ids = rows["product_id"].astype(str).to_numpy()
    fused = np.stack(emb["embedding"]).astype(np.float32)
    text = stack_rows(emb["text_embedding"], fused.shape[1])
    image = stack_rows(emb["image_embedding"], fused.shape[1])
    cand = candidate_pairs(ids, fused, rows["title"].fillna("").tolist(), cfg.blocking)
    pos = {p: i for i, p in enumerate(ids)}
    ia, ib = cand["a"].map(pos).to_numpy(), cand["b"].map(pos).to_numpy()
    fc, tc, ic = _cosines(ia, ib, fused, text, image)
    frame = pd.DataFrame({"a": cand["a"], "b": cand["b"], "fused_cosine": fc, "text_cosine": tc,
                          "image_cosine": ic, "blocking": cand["blocking"]})
    for side, idx in (("a", ia), ("b", ib)):
        for f in ("title", "brand", "price", "currency"):
            frame[f"{f}_{side}"] = rows[f].to_numpy()[idx]
        frame[f"price_{side}"] = frame[f"price_{side}"].astype("float64")
    cross = CrossSpec(cfg.cross, cfg.cross_prefilter, cfg.torch_threads, precision=cfg.precision) if cfg.cross else None
    spelling = CatalogSpelling.from_titles(rows["title"], cfg.types)   # as the match stage reads the catalog
    score = make_score_fn(scorer.version, scorer.to_json(), cross=cross, spelling=spelling)
    parts = list(score(frame.iloc[s:s + ARROW_ROWS] for s in range(0, len(frame), ARROW_ROWS)))
    matches = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"product_id_a": [], "product_id_b": [], "score": []})
    found = cluster(ids.tolist(), matches["product_id_a"].tolist(), matches["product_id_b"].tolist(),
                    matches["score"].to_numpy(), cfg.clusters)
    sizes = found.sizes()
    clusters = pd.DataFrame({"product_id": list(found.cluster_id), "cluster_id": list(found.cluster_id.values())})
    clusters["cluster_size"] = clusters["cluster_id"].map(sizes)
    clusters["guard"] = clusters["product_id"].map(found.guard)
    matches.to_parquet(out / "product_matches.parquet", index=False)
    clusters.to_parquet(out / "product_clusters.parquet", index=False)
    return {"candidates": len(cand), "matches": len(matches),
            "clusters": sum(1 for s in sizes.values() if s > 1)}


def _index(ids: list[str], fused, out: Path) -> None:
    import faiss
    import numpy as np

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(fused.shape[1]))
    index.add_with_ids(np.ascontiguousarray(fused, np.float32), np.arange(len(ids), dtype=np.int64))
    faiss.write_index(index, str(out / "index.faiss"))


def _write(df, emb: dict, attrs: list[dict] | None, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pids = df["product_id"].to_numpy()[emb["row"]].tolist()
    pq.write_table(pa.table({"product_id": pids, "embedding": emb["embedding"],
                             "text_embedding": emb["text_embedding"], "image_embedding": emb["image_embedding"]}),
                   out / "product_embeddings.parquet")
    pq.write_table(pa.table({"product_id": pids, "category": emb["category"], "confidence": emb["confidence"],
                             "is_adult": emb["is_adult"]}), out / "product_categories.parquet")
    if attrs is not None:
        pq.write_table(pa.Table.from_pylist(attrs) if attrs else pa.table({"product_id": pa.array([], pa.string())}),
                       out / "product_attributes.parquet")


def plain_loop(catalog: Path, out: Path, model: str, device: str | None, batch_size: int, decode_threads: int,
               stages: str = "all", chunk: int = 2048, precision: str = "auto") -> dict:
    """The job's work over ``catalog`` without Spark, its tables as Parquet files under the folder ``out``.
    ``stages``: ``all`` (the default job) or ``embed`` (embed + heads only, no validation); ``precision``: the
    job's ``--precision`` (``auto`` is its default). Returns products,
    seconds, products/s, the per-stage seconds and what matching found."""
    import numpy as np
    import torch

    from udfs.model_cache import clear

    clear()   # every repeat loads its models, as a fresh job does
    out.mkdir(parents=True, exist_ok=True)
    threads = torch_threads()
    torch.set_num_threads(threads)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if stages == "all":
        with _timed(timings, "validate"):
            df, n_read = _validate(catalog)
    else:   # as before issue 21: every row, its image resolved against the catalog's folder
        df = pq_read(catalog)
        n_read = len(df)
        df["image_path"] = [str(catalog.parent / u) if isinstance(u, str) else None for u in df["image_uri"]]
    with _timed(timings, "embed + heads"):
        emb = _embed(df, model, device, batch_size, decode_threads, chunk, precision)
    attrs = None
    if stages == "all":
        ok = df.iloc[emb["row"]].reset_index(drop=True)
        with _timed(timings, "attributes"):
            attrs = _attributes(ok, batch_size, device, threads, chunk, precision)
    with _timed(timings, "write"):
        _write(df, emb, attrs, out)
    matched: dict = {}
    if stages == "all":
        with _timed(timings, "match"):
            matched = _match(df, emb, threads, out, precision)
        with _timed(timings, "index"):
            _index(df["product_id"].to_numpy()[emb["row"]].tolist(), np.stack(emb["embedding"]), out)
    seconds = time.perf_counter() - t0
    return {"products": n_read, "embedded": len(emb["row"]), "seconds": round(seconds, 2),
            "products_per_s": round(n_read / seconds, 1), "stages": timings,
            "attribute_values": None if attrs is None else len(attrs), **matched}
