"""Similarity search over the lake's product embeddings (the faiss index of :mod:`jobs.read.index`); no Spark.

    catalog-enrich similar PRODUCT_ID [--k 10] [--lake DIR]       products nearest to a product
    catalog-enrich search "red running shoes" [--image PATH]      products nearest to a text and/or an image
    catalog-enrich index [--lake DIR] [--full]                    bring the index up to the table (or rebuild it)

Scores are cosine similarities of the fused (text + image) embeddings. A text or image query is embedded with
the model the table was written with (its ``model_version``), so query and products share one space. When
the index is older than the table (a run committed after it was written), it is updated first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jobs.read.index import ProductIndex, choose_model_version, load_index, update_index
from jobs.runtime.exits import fail
from models.core.errors import CatalogEnrichError

__all__ = ["SearchError", "embed_query", "main", "model_ref_for", "open_index", "quarantine_note",
           "read_query_image", "similar",
           "text_search"]

DEFAULT_LOADER = "models.encoders:load_encoder"
# The query image is read like a catalog image by the job (udfs.images.ImagePolicy): at most this many bytes.
MAX_QUERY_IMAGE_BYTES = 32 * 1024 * 1024


class SearchError(CatalogEnrichError, ValueError):
    """A search that cannot be answered as asked (unknown product, model mismatch, unreadable image)."""


def open_index(lake: str | Path, model_version: str | None = None, out=None) -> ProductIndex:
    """The index of ``model_version`` (default: the table's main version), updated when the table is newer."""
    from jobs.read.index import _table

    out = out or sys.stderr
    mv = choose_model_version(lake, model_version)
    idx = load_index(lake, mv)
    table_version = _table(lake).version()
    if idx is not None and idx.table_version == table_version:
        return idx
    if idx is None:
        print(f"no index of {mv} yet: building it from product_embeddings v{table_version} ...", file=out)
    else:
        print(f"the index reflects product_embeddings v{idx.table_version}, the table is at v{table_version}: "
              f"updating it (catalog-enrich index --lake {lake} does this ahead of time)", file=out)
    try:
        stats = update_index(lake, mv)
    except OSError as e:  # a read-only lake: say how to fix it rather than search stale vectors
        raise SearchError(f"could not write the index under {lake}/_index ({e}); ask for "
                          f"`catalog-enrich index --lake {lake}` to be run where the lake is writable") from e
    print(f"index: {stats.count} products ({stats.mode}: +{stats.added}, ~{stats.replaced}, -{stats.removed}) "
          f"in {stats.seconds:.2f} s", file=out)
    return load_index(lake, mv)


def quarantine_note(lake: str | Path, product_id: str) -> str:
    """Why ``product_id`` has no embedding, as the quarantine table says (a filter on the id, no SQL)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    path = Path(lake) / "quarantine"
    try:
        if not DeltaTable.is_deltatable(str(path)):
            return "no product with that id was enriched, and the lake has no quarantine table"
        rows = DeltaTable(str(path)).to_pyarrow_dataset().to_table(
            columns=["product_id", "run_id", "reason_code", "detail", "quarantined_at"])
        rows = rows.filter(pc.equal(rows.column("product_id").cast(pa.string()), product_id)).to_pandas()
    except Exception as e:  # the note is a courtesy: a quarantine table that cannot be read must not hide the answer
        return f"the quarantine table could not be read to say why ({type(e).__name__})"
    if not len(rows):
        return "no product with that id was enriched or quarantined: check the id"
    last = rows.sort_values("quarantined_at").iloc[-1]
    detail = " ".join(str(last["detail"]).split())[:200]   # one line, whatever the row held
    return (f"it was quarantined by run {last['run_id']}: {last['reason_code']} ({detail})"
            + (f", {len(rows)} quarantined rows in all" if len(rows) > 1 else ""))


def similar(idx: ProductIndex, product_id: str, k: int, lake: str | Path | None = None) -> list[tuple[str, float]]:
    """The ``k`` products nearest to ``product_id``, itself left out; with ``lake``, a product that is not
    in the index is looked up in the quarantine table for the error message."""
    vec = idx.vector(product_id)
    if vec is None:
        why = quarantine_note(lake, product_id) if lake is not None else "it is unknown, or was quarantined"
        raise SearchError(f"product {product_id!r} is not in the index of {idx.meta['model_version']} "
                          f"({idx.index.ntotal} products): {why}")
    hits = idx.search(vec, k + 1)[0]
    return [h for h in hits if h[0] != product_id][:k]


def read_query_image(path: str, max_bytes: int = MAX_QUERY_IMAGE_BYTES) -> bytes:
    """The bytes of the query image, read as the job reads a catalog image: a regular file only (a named pipe
    would block, ``/dev/zero`` stream without end), opened without blocking, at most ``max_bytes``."""
    from udfs.images import read_image_bytes

    try:
        return read_image_bytes(path, max_bytes)
    except OSError as e:
        raise SearchError(f"--image {path}: {e.strerror or e}") from None
    except ValueError as e:  # over the byte cap
        raise SearchError(f"--image {path}: {e}") from None


def model_ref_for(model_version: str) -> str | None:
    """The model reference that loads ``model_version``, when the version string names one."""
    if model_version.split(":", 1)[0] in ("store", "hf-hub", "open_clip"):
        return model_version
    if "@cfg-" in model_version:   # builtin:NAME records NAME@cfg-<digest>-seed<N>
        return "builtin:" + model_version.split("@cfg-", 1)[0]
    return None


def embed_query(model_version: str, text: str | None, image: str | bytes | None, model: str | None = None,
                loader: str = DEFAULT_LOADER, image_label: str = "the query image") -> np.ndarray:
    """The query vector: text, image, or both fused like a product's embedding.

    ``image`` is a file path (read with :func:`read_query_image`) or the bytes of one (``image_label`` names
    them in errors); it is decoded under the
    job's limits (pixels, aspect ratio), so a hostile image is a :class:`SearchError`, never a hang or a crash.
    """
    from models.encoders import fuse
    from udfs.model_cache import import_object

    ref = model or model_ref_for(model_version)
    if ref is None:
        raise SearchError(f"the embeddings were written with model version {model_version!r}, which names no "
                          "model reference: pass --model REF for that model")
    from models.refs import ModelRefError

    try:
        enc = import_object(loader)(ref, "cpu")
    except (ModelRefError, RuntimeError, OSError) as e:
        raise SearchError(f"could not load the query model {ref!r}: {e}") from e
    if enc.version != model_version:
        raise SearchError(f"--model {ref} is model version {enc.version!r}, but the index holds {model_version!r}: "
                          f"pass the model the table was written with, or --model-version {enc.version} when the "
                          "table holds that version too")
    t = enc.embed_texts([text])[0] if text else None
    img = None
    if image:
        from models.images import ImageDecodeError, decode_image

        data, name = ((image, image_label) if isinstance(image, bytes)
                      else (read_query_image(image), f"--image {image}"))
        try:
            pixels = enc.preprocess(decode_image(data, enc.image_size))
        except ImageDecodeError as e:
            raise SearchError(f"{name}: {e}") from None
        except MemoryError:
            raise SearchError(f"{name}: out of memory while preparing the image") from None
        img = enc.embed_pixels(pixels[None])[0]
    return fuse(t, img) if t is not None else fuse(img, None)


def text_search(idx: ProductIndex, query: np.ndarray, k: int) -> list[tuple[str, float]]:
    return idx.search(query, k)[0]


def _results(lake: str, hits: list[tuple[str, float]]):
    import pandas as pd

    from jobs.read.lookup import latest_catalog, product_details

    df = pd.DataFrame({"rank": range(1, len(hits) + 1), "product_id": [h[0] for h in hits],
                       "score": [round(h[1], 4) for h in hits]})
    details = product_details(latest_catalog(lake), df["product_id"].tolist())
    return df.merge(details[["product_id", "title", "category"]], on="product_id", how="left")


def _print(df, fmt: str) -> None:
    if fmt == "json":
        text = df.to_json(orient="records", lines=True, force_ascii=False)
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return
    shown = df.assign(title=df["title"].fillna("").str.slice(0, 60), category=df["category"].fillna(""))
    print(shown.to_string(index=False) if len(df) else "(no results)")


def _parser(prog: str, what: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"catalog-enrich {prog}", description=what)
    p.add_argument("--lake", default="lake", help="folder of the Delta tables (default: ./lake)")
    p.add_argument("--model-version", default=None,
                   help="search the embeddings of this model version (default: the one most products have)")
    if prog != "index":
        p.add_argument("--k", type=int, default=10, help="results to return (default: 10)")
        p.add_argument("--format", choices=("table", "json"), default="table")
    return p


def main(argv: list[str] | None = None, command: str = "similar") -> int:
    """``catalog-enrich similar|search|index``; ``command`` is the subcommand (cli.py passes it)."""
    if command == "similar":
        p = _parser("similar", "Products nearest to a product, by cosine of the fused embeddings.")
        p.add_argument("product_id")
    elif command == "search":
        p = _parser("search", "Products nearest to a text and/or image query, embedded with the table's model.")
        p.add_argument("text", nargs="?", default=None, help="query text (a title-like phrase)")
        p.add_argument("--image", default=None, help="query image file (with or without text)")
        p.add_argument("--model", default=None, help="model reference for the query (default: the one the "
                                                     "table's model version names)")
        p.add_argument("--encoder-loader", default=DEFAULT_LOADER, help=argparse.SUPPRESS)
    else:
        p = _parser("index", "Bring the similarity index up to product_embeddings (incrementally), or --full.")
        p.add_argument("--full", action="store_true", help="rebuild from the whole table")
    args = p.parse_args(argv)
    if command != "index" and args.k < 1:
        p.error("--k must be at least 1")
    if command == "search" and not (args.text or args.image):
        p.error("give a query text, --image PATH, or both")
    try:
        # The image first: a bad one is refused in a line before the index or a model is opened.
        image = read_query_image(args.image) if command == "search" and args.image else None
        if command == "index":
            stats = update_index(args.lake, args.model_version, full=args.full)
            print(f"index of {stats.model_version}: {stats.count} products at product_embeddings "
                  f"v{stats.table_version} ({stats.mode}: +{stats.added}, ~{stats.replaced}, -{stats.removed}) "
                  f"in {stats.seconds:.2f} s\n  {stats.path}")
            return 0
        idx = open_index(args.lake, args.model_version)
        t = time.perf_counter()
        if command == "similar":
            hits = similar(idx, args.product_id, args.k, args.lake)
        else:
            q = embed_query(idx.meta["model_version"], args.text, image, args.model, args.encoder_loader,
                            image_label=f"--image {args.image}")
            t = time.perf_counter()
            hits = text_search(idx, q, args.k)
        took = time.perf_counter() - t
    except CatalogEnrichError as e:   # a query that cannot be answered (2), a damaged lake (4)
        return fail(e)
    if command == "similar" and args.format == "table":
        from jobs.read.lookup import latest_catalog, product_details

        d = product_details(latest_catalog(args.lake), [args.product_id]).to_dict("records")
        cat = d[0]["category"] if d and isinstance(d[0]["category"], str) else "no category"
        about = f": {d[0]['title']} ({cat})" if d else ""
        print(f"products like {args.product_id}{about}")
    _print(_results(args.lake, hits), args.format)
    print(f"({len(hits)} of {idx.index.ntotal} products, model {idx.meta['model_version']}, "
          f"{took * 1000:.1f} ms)", file=sys.stderr)
    return 0
