"""The labelled product pairs under ``shared/data/matching`` in one form, with their title embeddings.

Each benchmark becomes a frame of pairs with ``left_*``/``right_*`` record columns (``id``, ``title``,
``brand``, ``price``, ``currency``) and ``label``, mapped onto the catalog's own fields: only the fields a
catalog row has are used, so the scorer sees in training what it sees in the enrich job. Title embeddings
come from the shipped encoder and are cached on disk per encoder version (embedding 13k titles on two
CPU cores takes minutes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.matching.features import pair_features, prepare
from models.matching.text import with_part_number

__all__ = ["BENCHMARKS", "LSPC_CATEGORIES", "Benchmark", "TitleVectors", "clean_lspc_title", "default_cache_dir",
           "featurize", "load_lspc", "load_offers", "load_pairs", "offer_candidate_pairs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str                   # relative to the data folder; "{split}" is filled for one-file-per-split sets
    title: str
    brand: str | None = None
    price: str | None = None
    currency: str | None = None
    splits: tuple[str, str] = ("train", "valid")   # (train split, valid split)
    ditto_f1: float | None = None                  # published Ditto test F1 (Li et al., VLDB 2021)
    mpn: str | None = None                         # the records' manufacturer part number (read only when asked)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("abt_buy", "er_magellan/abt_buy.parquet", "name", price="price", ditto_f1=89.33),
    Benchmark("amazon_google", "er_magellan/amazon_google.parquet", "title", "manufacturer", "price",
              ditto_f1=75.58),
    Benchmark("walmart_amazon", "er_magellan/walmart_amazon_structured.parquet", "title", "brand", "price",
              ditto_f1=86.76, mpn="modelno"),
    Benchmark("wdc_products", "wdc_products/wdcproducts80cc20rnd000un_{split}.parquet", "title", "brand", "price",
              "priceCurrency", splits=("train_medium", "valid_medium")),
)}


def _record_id(*parts) -> str:
    return hashlib.sha1("\x1f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()[:16]


def load_pairs(data_dir: str | os.PathLike, name: str, split: str, mpn: bool = False) -> pd.DataFrame:
    """Pairs of one benchmark split: ``left_id, left_title, left_brand, left_price, left_currency`` (and the
    same for ``right_``), ``label`` and, for WDC Products, ``left_cluster``/``right_cluster``.

    ``mpn``: where the benchmark's records carry a part number (Walmart-Amazon's ``modelno``), each title reads
    as the enrich job's matching reads a catalog row with that number in its optional ``mpn`` column
    (:func:`models.matching.text.with_part_number`), and the number is given as ``left_mpn``/``right_mpn`` (the
    job's same-part-number rule reads it); the other benchmarks are loaded as without it."""
    try:
        b = BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None
    root = Path(data_dir)
    out = {}
    if "{split}" in b.path:  # WDC Products: one file per split, columns named <field>_left / <field>_right
        df = pd.read_parquet(root / b.path.format(split=split))
        for side in ("left", "right"):
            out[f"{side}_id"] = df[f"id_{side}"].astype(str)
            for field, col in (("title", b.title), ("brand", b.brand), ("price", b.price), ("currency", b.currency)):
                out[f"{side}_{field}"] = df[f"{col}_{side}"] if col else None
            out[f"{side}_cluster"] = df[f"cluster_id_{side}"].astype(str)
    else:
        df = pd.read_parquet(root / b.path)
        df = df[df["split"] == split].reset_index(drop=True)
        if df.empty:
            raise ValueError(f"{b.name} has no split {split!r}")
        fields = (("title", b.title), ("brand", b.brand), ("price", b.price), ("currency", b.currency))
        numbered = bool(mpn and b.mpn)
        for side in ("left", "right"):
            for field, col in fields + ((("mpn", b.mpn),) if numbered else ()):
                vals = df[f"{side}_{col}"] if col else pd.Series([None] * len(df))
                out[f"{side}_{field}"] = vals.where(vals.astype(str).str.strip() != "", None) if col else vals
            out[f"{side}_id"] = [f"{side[0]}:{_record_id(s)}" for s in df[f"{side}_serialized"]]
            if numbered:   # as a catalog row with the mpn column: the number beside the title, and in it
                out[f"{side}_title"] = pd.Series([with_part_number(t, m) for t, m in zip(
                    out[f"{side}_title"], out[f"{side}_mpn"], strict=True)], dtype=object)
    pairs = pd.DataFrame(out)
    pairs["label"] = df["label"].astype(int).to_numpy()
    pairs.insert(0, "dataset", name)
    return pairs


# The WDC LSPC v2 training pairs (``er_magellan/wdc_lspc_v2_<category>.parquet``): crawled offer titles of four
# categories, labelled through shared product identifiers. Training data only: their valid splits are not reported.
LSPC_CATEGORIES = ("computers", "cameras", "watches", "shoes")
_LSPC_NOISE = re.compile(r'"@[A-Za-z]{2}(?:-[A-Za-z]+)?|"|\bNull\b')


def clean_lspc_title(text: object) -> str:
    """An LSPC title as a listing's title: the quotes, language tags (``"@en``) and ``Null`` placeholders of the
    crawl left out, separators that start or end it dropped, whitespace collapsed."""
    s = " ".join(_LSPC_NOISE.sub(" ", "" if text is None else str(text)).split())
    return s.strip(" ,-|")


def load_lspc(data_dir: str | os.PathLike, category: str, split: str = "train_medium") -> pd.DataFrame:
    """LSPC v2 pairs of one category and split in :func:`load_pairs`' form (title only: the crawl has no brand or
    price fields); pairs with a side left empty by the cleaning are dropped."""
    if category not in LSPC_CATEGORIES:
        raise ValueError(f"unknown LSPC category {category!r}; known: {', '.join(LSPC_CATEGORIES)}")
    df = pd.read_parquet(Path(data_dir) / "er_magellan" / f"wdc_lspc_v2_{category}.parquet")
    df = df[df["split"] == split].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"LSPC {category} has no split {split!r}")
    out: dict[str, object] = {"dataset": f"lspc_{category}"}
    for side in ("left", "right"):
        titles = df[f"{side}_title"].map(clean_lspc_title)
        out[f"{side}_id"] = [f"{side[0]}:{_record_id(category, t)}" for t in titles]
        out[f"{side}_title"] = titles
        for field in ("brand", "price", "currency"):
            out[f"{side}_{field}"] = None
    pairs = pd.DataFrame(out)
    pairs["label"] = df["label"].astype(int).to_numpy()
    return pairs[(pairs["left_title"] != "") & (pairs["right_title"] != "")].reset_index(drop=True)


def load_offers(data_dir: str | os.PathLike, split: str = "valid_medium") -> pd.DataFrame:
    """The WDC Products offers of one split's pairs: ``id, title, brand, price, currency, cluster``."""
    pairs = load_pairs(data_dir, "wdc_products", split)
    sides = [pairs[[f"{s}_id", f"{s}_title", f"{s}_brand", f"{s}_price", f"{s}_currency", f"{s}_cluster"]]
             .set_axis(["id", "title", "brand", "price", "currency", "cluster"], axis=1) for s in ("left", "right")]
    return pd.concat(sides).drop_duplicates("id").sort_values("id").reset_index(drop=True)


def default_cache_dir() -> Path:
    """Where title embeddings for the matching benchmarks are cached (:func:`models.core.io.cache_root`)."""
    from models.core.io import cache_root

    return cache_root() / "matching"


class TitleVectors:
    """Title -> L2-normalised embedding, computed with ``embed`` and cached under ``cache_dir/<version>``."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], version: str, cache_dir: Path | None = None,
                 batch_size: int = 128):
        self.embed, self.version, self.batch_size = embed, version, batch_size
        self.path = (cache_dir or default_cache_dir()) / version.replace("/", "_").replace(":", "_") / "titles.parquet"
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.is_file():
            cached = pd.read_parquet(self.path)
            self.vectors = {t: np.asarray(v, np.float32)
                            for t, v in zip(cached["title"], cached["vector"], strict=True)}

    def ensure(self, titles: Iterable[str]) -> None:
        todo = sorted({t for t in titles if t not in self.vectors})
        if not todo:
            return
        log.info("embedding %d titles with %s (cache: %s)", len(todo), self.version, self.path)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            for t, v in zip(chunk, self.embed(chunk), strict=True):
                self.vectors[t] = np.asarray(v, np.float32)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        titles_all = sorted(self.vectors)
        tmp = self.path.with_suffix(".tmp")
        pd.DataFrame({"title": titles_all, "vector": [self.vectors[t].tolist() for t in titles_all]}).to_parquet(tmp)
        os.replace(tmp, self.path)

    def matrix(self, titles: Iterable[str]) -> np.ndarray:
        titles = [_title(t) for t in titles]
        self.ensure(titles)
        return np.stack([self.vectors[t] for t in titles]) if titles else np.zeros((0, 0), np.float32)


def _title(t) -> str:
    return "" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)


def _records(pairs: pd.DataFrame, side: str) -> list:
    cache: dict[str, object] = {}
    out = []
    cols = [f"{side}_{f}" for f in ("id", "title", "brand", "price", "currency")]
    mpn = pairs[f"{side}_mpn"] if f"{side}_mpn" in pairs else pd.Series([None] * len(pairs), index=pairs.index)
    for (rid, title, brand, price, currency), number in zip(pairs[cols].itertuples(index=False, name=None), mpn,
                                                             strict=True):
        if rid not in cache:
            cache[rid] = prepare({"title": title, "brand": brand, "price": price, "currency": currency,
                                  "mpn": number})
        out.append(cache[rid])
    return out


def featurize(pairs: pd.DataFrame, vectors: TitleVectors | Mapping[str, np.ndarray],
              text_cosine: np.ndarray | None = None) -> pd.DataFrame:
    """The pair features of :func:`load_pairs` rows (plus ``dataset`` and ``label``). ``text_cosine``: the
    pairs' title cosines computed elsewhere (the job embeds the plain title, not the one a part number was
    written into), instead of embedding these titles with ``vectors``."""
    if text_cosine is None:
        if isinstance(vectors, TitleVectors):
            a, b = vectors.matrix(pairs["left_title"]), vectors.matrix(pairs["right_title"])
        else:
            a = np.stack([vectors[_title(t)] for t in pairs["left_title"]])
            b = np.stack([vectors[_title(t)] for t in pairs["right_title"]])
        text_cosine = (a * b).sum(axis=1) if len(pairs) else np.zeros(0)
    feats = pair_features(_records(pairs, "left"), _records(pairs, "right"), text_cosine)
    feats.insert(0, "dataset", pairs["dataset"].to_numpy())
    feats["label"] = pairs["label"].to_numpy()
    return feats


def offer_candidate_pairs(data_dir: str | os.PathLike, split: str, vectors: TitleVectors, cfg=None) -> pd.DataFrame:
    """The blocking candidates among one split's WDC Products offers, labelled by their ``cluster_id``.

    These pairs follow the distribution the scorer meets in the job (nearest neighbours, mostly hard
    negatives), which the benchmark's own pair selection does not; every pair of offers is labelled
    through the clusters, so no candidate is unlabelled.
    """
    from models.matching.blocking import BlockingConfig, candidate_pairs

    offers = load_offers(data_dir, split)
    cand = candidate_pairs(offers["id"], vectors.matrix(offers["title"]), offers["title"].fillna("").tolist(),
                           cfg or BlockingConfig())
    r = offers.set_index("id")
    cols: dict[str, object] = {"dataset": "wdc_products_blocked"}
    for side, col in (("left", "a"), ("right", "b")):
        sub = r.loc[cand[col].to_numpy()]
        cols[f"{side}_id"] = cand[col].to_numpy()
        for f in ("title", "brand", "price", "currency", "cluster"):
            cols[f"{side}_{f}"] = sub[f].to_numpy()
    pairs = pd.DataFrame(cols)
    pairs["label"] = (pairs["left_cluster"] == pairs["right_cluster"]).astype(int)
    return pairs
