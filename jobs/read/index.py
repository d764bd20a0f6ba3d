"""A nearest-neighbour index over ``product_embeddings``, one per model version, kept next to the lake.

    lake/_index/<model version>/CURRENT                 the name of the live generation
    lake/_index/<model version>/<generation>/index.faiss    faiss IndexIDMap2 over an exact inner-product index
    lake/_index/<model version>/<generation>/ids.parquet    faiss id -> product_id, content_hash
    lake/_index/<model version>/<generation>/meta.json      model version, the Delta version it reflects, counts

Why exact inner product (``IndexFlatIP``): the embeddings are L2-normalised, so inner product is cosine; a flat
index needs no training, gives exact neighbours, and at catalog sizes per model version (a million products of
384 floats is 1.5 GB) a query is a few milliseconds per 100k products. An approximate index (IVF, HNSW) would
need retraining as the catalog drifts and would make "same product first" depend on a recall setting. The
index is wrapped in ``IndexIDMap2`` so rows can be removed and replaced by id: an update reads only the
product ids and content hashes of the table, and the embeddings of the products that are new or changed
(from the Delta files added since the version the index reflects), never the whole table again.

A new generation is written beside the old one and ``CURRENT`` is replaced atomically, so a search running
during an update reads one consistent generation. This module needs neither Spark nor torch.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.lake.damage import DamagedLakeError, reading
from models.core.errors import CatalogEnrichError
from models.core.io import atomic_write

__all__ = ["IndexError_", "IndexStats", "ProductIndex", "ProductIndexError", "choose_model_version", "index_dir",
           "load_index", "model_versions", "refresh_index", "update_index"]

log = logging.getLogger(__name__)

EMBEDDINGS = "product_embeddings"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class ProductIndexError(CatalogEnrichError, RuntimeError):
    """The index cannot be built or used as asked (no table, empty table, unknown model version)."""


IndexError_ = ProductIndexError   # the old name, kept for one release for callers that import it


@dataclass
class IndexStats:
    model_version: str
    table_version: int
    count: int
    mode: str                   # full | incremental | up-to-date
    added: int = 0
    replaced: int = 0
    removed: int = 0
    seconds: float = 0.0
    path: str = ""


@dataclass
class ProductIndex:
    """A loaded generation: the faiss index, its id mapping and its metadata."""

    index: Any
    ids: Any                    # pandas DataFrame: faiss_id, product_id, content_hash
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def table_version(self) -> int:
        return int(self.meta["table_version"])

    def _maps(self):
        # Built once per loaded index: a query then costs O(k) lookups, not a scan of the id table.
        if not hasattr(self, "_by_fid"):
            self._by_fid = dict(zip(self.ids["faiss_id"].tolist(), self.ids["product_id"].tolist(), strict=True))
            self._by_pid = {p: f for f, p in self._by_fid.items()}
        return self._by_fid, self._by_pid

    def faiss_id(self, product_id: str) -> int | None:
        return self._maps()[1].get(product_id)

    def vector(self, product_id: str) -> np.ndarray | None:
        fid = self.faiss_id(product_id)
        return None if fid is None else self.index.reconstruct(fid)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest products of each query row as ``(product_id, score)``, best first."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, fids = self.index.search(q, min(k, self.index.ntotal))
        by_fid = self._maps()[0]
        return [[(by_fid[int(f)], float(s)) for f, s in zip(fr, sr, strict=True) if f >= 0]
                for fr, sr in zip(fids, scores, strict=True)]


def index_dir(lake: str | Path, model_version: str) -> Path:
    """The folder of one model version's index (the version, made safe as a folder name)."""
    return Path(lake) / "_index" / _SAFE.sub("_", model_version)


def _table(lake: str | Path, version: int | None = None):
    from deltalake import DeltaTable

    path = Path(lake) / EMBEDDINGS
    if not DeltaTable.is_deltatable(str(path)):
        raise ProductIndexError(f"no {EMBEDDINGS} table in {lake}: run the enrich job first (catalog-enrich enrich "
                          f"--lake {lake}) or pass --lake")
    with reading(path, EMBEDDINGS, version):
        return DeltaTable(str(path), version=version)


def model_versions(lake: str | Path) -> dict[str, int]:
    """Products per model version in ``product_embeddings``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dt = _table(lake)
    with reading(Path(lake) / EMBEDDINGS, EMBEDDINGS):
        col = dt.to_pyarrow_dataset().to_table(columns=["model_version"]).column("model_version")
    return {r["values"]: r["counts"] for r in pc.value_counts(col.cast(pa.string())).to_pylist()}


def choose_model_version(lake: str | Path, requested: str | None = None) -> str:
    """``requested`` if the table holds it, else the model version most products were embedded with."""
    counts = model_versions(lake)
    if not counts:
        raise ProductIndexError(f"{EMBEDDINGS} in {lake} is empty: no product was enriched yet")
    if requested is None:
        return max(counts, key=lambda v: (counts[v], v))
    if requested not in counts:
        raise ProductIndexError(f"no embeddings of model version {requested!r} in {lake}; the table holds "
                          + ", ".join(f"{v} ({n} products)" for v, n in sorted(counts.items())))
    return requested


def load_index(lake: str | Path, model_version: str) -> ProductIndex | None:
    """The live generation of ``model_version``'s index, or None when there is none."""
    import faiss
    import pandas as pd

    root = index_dir(lake, model_version)
    try:
        gen = root / (root / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    damaged = f"the similarity index of {model_version} ({gen})"
    rebuild = f"rebuild it with catalog-enrich index --lake {lake} --full"
    try:
        meta = json.loads((gen / "meta.json").read_text())
        if meta.get("model_version") != model_version:  # two versions that map to one folder name
            return None
        index = faiss.read_index(str(gen / "index.faiss"))
        ids = pd.read_parquet(gen / "ids.parquet")
        meta["table_version"], meta["next_id"] = int(meta["table_version"]), int(meta["next_id"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        # A deleted or truncated file: faiss raises RuntimeError, pyarrow ArrowInvalid (a ValueError), json a
        # ValueError; a meta.json that is JSON but not ours a KeyError, TypeError or AttributeError.
        problem = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DamagedLakeError(damaged, f"it cannot be read ({type(e).__name__}: {problem})", rebuild) from e
    if index.ntotal != len(ids):
        raise DamagedLakeError(damaged, f"it is inconsistent ({index.ntotal} vectors, {len(ids)} ids)", rebuild)
    return ProductIndex(index, ids, meta)


def _vectors(table, dim: int | None) -> np.ndarray:
    """The ``embedding`` column of an Arrow table as an (n, dim) float32 matrix, without a Python loop."""
    import pyarrow.compute as pc

    col = table.column("embedding").combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(col) == 0:
        return np.zeros((0, dim or 0), np.float32)
    d = int(lengths[0])
    if (lengths != d).any() or (dim is not None and d != dim):
        raise ProductIndexError(f"{EMBEDDINGS} holds embeddings of several dimensions for one model version")
    return np.ascontiguousarray(pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d))


def _read_embeddings(dt, since: int | None, model_version: str, product_ids: list[str]):
    """Embeddings of ``product_ids``: from the files added after version ``since`` when that version is still
    readable (an upsert writes every row it changes into new files), else from the whole table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    def read(dataset, model_filter: bool):
        # Delta's Arrow schema may say string_view where files hold string (or the reverse), and pyarrow has no
        # kernel comparing the two: filter on the model version in the scan only where the types agree, and on
        # the ids in memory after a cast.
        cols = ["product_id", "model_version", "embedding"]
        got = dataset.to_table(columns=cols, filter=(ds.field("model_version") == model_version)
                               if model_filter else None)
        pid, mv = got.column("product_id").cast(pa.string()), got.column("model_version").cast(pa.string())
        keep = pc.and_(pc.equal(mv, model_version), pc.is_in(pid, pa.array(product_ids, pa.string())))
        return pa.table({"product_id": pid, "embedding": got.column("embedding")}).filter(keep)

    if since is not None:
        try:
            from deltalake import DeltaTable

            old = set(DeltaTable(dt.table_uri, version=since).file_uris())
            added = [f for f in dt.file_uris() if f not in old]
            got = read(ds.dataset(added, format="parquet"), False) if added else None
            if got is not None and len(set(got.column("product_id").to_pylist())) == len(product_ids):
                return got
        except Exception as e:  # vacuumed or unreadable history: read the current files instead
            log.info("index: version %s of %s not readable (%s); reading the whole table", since, EMBEDDINGS, e)
    return read(dt.to_pyarrow_dataset(), True)


def _write(lake: str | Path, index, ids, meta: dict[str, Any]) -> Path:
    import faiss

    root = index_dir(lake, meta["model_version"])
    gen = root / f"v{meta['table_version']:08d}-{uuid.uuid4().hex[:6]}"
    gen.mkdir(parents=True)
    faiss.write_index(index, str(gen / "index.faiss"))
    ids.to_parquet(gen / "ids.parquet", index=False)
    (gen / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    atomic_write(root / "CURRENT", gen.name + "\n")   # readers see the old generation or the new one
    # Keep the previous generation for searches that opened it a moment ago; drop older ones.
    gens = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("v")),
                  key=lambda p: p.stat().st_mtime)
    for old in gens[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    return gen


def update_index(lake: str | Path, model_version: str | None = None, full: bool = False) -> IndexStats:
    """Bring ``model_version``'s index up to the current version of ``product_embeddings``: add new products,
    replace changed ones (by content hash), remove products that left the table. ``full`` rebuilds it."""
    import faiss
    import pandas as pd
    import pyarrow.dataset as ds

    t0 = time.perf_counter()
    dt = _table(lake)
    mv = choose_model_version(lake, model_version)
    version = dt.version()
    current = None if full else load_index(lake, mv)
    if current is not None and current.table_version == version:
        return IndexStats(mv, version, current.index.ntotal, "up-to-date", path=str(index_dir(lake, mv)))

    with reading(Path(lake) / EMBEDDINGS, EMBEDDINGS):
        rows = dt.to_pyarrow_dataset().to_table(columns=["product_id", "content_hash"],
                                                filter=ds.field("model_version") == mv).to_pandas()
    if current is None:
        old = pd.DataFrame({"faiss_id": pd.Series(dtype="int64"), "product_id": pd.Series(dtype="object"),
                            "content_hash": pd.Series(dtype="object")})
        next_id, index, since = 0, None, None
    else:
        old, next_id, index, since = current.ids, int(current.meta["next_id"]), current.index, current.table_version
    merged = rows.merge(old, on="product_id", how="outer", suffixes=("", "_old"), indicator=True)
    gone = merged[merged["_merge"] == "right_only"]
    changed = merged[(merged["_merge"] == "both") & (merged["content_hash"] != merged["content_hash_old"])]
    new = merged[merged["_merge"] == "left_only"]
    todo = pd.concat([changed, new])["product_id"].tolist()

    with reading(Path(lake) / EMBEDDINGS, EMBEDDINGS):
        got = _read_embeddings(dt, since, mv, todo) if todo else None
    vecs = _vectors(got, index.d if index is not None else None) if got is not None else None
    if index is None:
        if vecs is None or len(vecs) == 0:
            raise ProductIndexError(f"{EMBEDDINGS} in {lake} has no rows of model version {mv}")
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vecs.shape[1]))
    drop = np.concatenate([gone["faiss_id"].to_numpy(np.int64), changed["faiss_id"].to_numpy(np.int64)])
    if len(drop):
        index.remove_ids(drop)
    ids = old[~old["product_id"].isin(set(gone["product_id"]))].copy()
    if vecs is not None and len(vecs):
        got_ids = got.column("product_id").to_pylist()
        fid = dict(zip(changed["product_id"], changed["faiss_id"].astype("int64"), strict=True))
        fresh = [p for p in got_ids if p not in fid]
        fid.update({p: next_id + i for i, p in enumerate(fresh)})   # changed products keep their faiss id
        next_id += len(fresh)
        index.add_with_ids(vecs, np.array([fid[p] for p in got_ids], dtype=np.int64))
        ids = pd.concat([ids[~ids["product_id"].isin(fid)],
                         pd.DataFrame({"faiss_id": [fid[p] for p in got_ids], "product_id": got_ids})])
    ids = ids.drop(columns="content_hash").merge(rows, on="product_id", how="inner")
    ids = ids.astype({"faiss_id": "int64"}).sort_values("faiss_id").reset_index(drop=True)
    stats = IndexStats(mv, version, int(index.ntotal), "full" if current is None else "incremental",
                       added=len(new), replaced=len(changed), removed=len(gone))
    if index.ntotal != len(ids):
        raise ProductIndexError(f"index update went wrong: {index.ntotal} vectors for {len(ids)} ids; "
                                "rebuild with --full")
    stats.seconds = round(time.perf_counter() - t0, 3)
    meta = dict(asdict(stats), next_id=next_id, dim=int(index.d), metric="inner_product",
                index_type="IndexIDMap2(IndexFlatIP)", built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    stats.path = str(_write(lake, index, ids, meta))
    log.info("index %s: %d products (%s: +%d added, %d replaced, -%d removed) at %s v%d in %.2f s", mv,
             stats.count, stats.mode, stats.added, stats.replaced, stats.removed, EMBEDDINGS, version, stats.seconds)
    return stats


def refresh_index(lake: str | Path, model_version: str, count=None) -> str:
    """The enrich job's ``index`` stage: update the run's model version index and return a note for the run
    message. The index is derived data that a search rebuilds when it is behind, so a failure here is logged
    and noted, never a reason to fail a run whose tables are committed."""
    try:
        stats = update_index(lake, model_version)
    except ProductIndexError as e:   # nothing to index (every row quarantined): not an error of the index
        log.warning("index not updated: %s", e)
        return f"index: not updated ({e})"[:500]
    except Exception as e:
        log.exception("index update for %s failed; `catalog-enrich index` rebuilds it", model_version)
        return f"index: failed ({type(e).__name__}: {e})"[:500]
    if count is not None:   # the stage's progress line: products added, replaced or removed
        count(stats.added + stats.replaced + stats.removed, "products")
    _drop_retired(lake)
    return (f"index: {stats.count} products at product_embeddings v{stats.table_version} ({stats.mode}: "
            f"+{stats.added}, ~{stats.replaced}, -{stats.removed})")


def _drop_retired(lake: str | Path) -> None:
    """Remove the indexes of model versions the table no longer holds (after a re-embedding with a new model
    every product moved on; an index of the old version would only take disk space: 1.5 GB per million)."""
    root = Path(lake) / "_index"
    live = {index_dir(lake, v).name for v in model_versions(lake)}
    for folder in (p for p in root.iterdir() if p.is_dir() and p.name not in live):
        log.info("index: removing %s (no product has that model version any more)", folder)
        shutil.rmtree(folder, ignore_errors=True)
