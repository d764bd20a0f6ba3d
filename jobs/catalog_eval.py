"""Whole-catalog duplicate detection, scored end to end through the enrich job.

    python -m jobs.catalog_eval --data /work/shared/data/matching --work DIR [--out FILE.md]
        [--datasets walmart_amazon,wdc_products,abt_buy,amazon_google] [--reuse-embeddings]

For each dataset a catalog is built the way ``catalog_dedup/README.md`` says (``product_id`` = record id,
``title``, ``brand``, ``price`` parsed; neither the shop nor the truth is passed), the real enrich job runs on it
(``jobs.enrich.main``, open attributes off; the heads on as by default, since the match stage's type rule reads
the category head's types) and its
``product_clusters`` table is scored pairwise (every pair inside a predicted cluster against every pair inside
a true group) and per cluster (clusters equal to a true group). Beside it: a TF-IDF mutual-nearest-neighbour
baseline on the same records.

The truth groups are split deterministically (a hash of the group id) into a **dev** part, on which
thresholds and clustering settings may be chosen, and a **held-out** part, the one reported. A predicted pair
counts for a part when either of its products is in it (a pair across the parts is a false positive of both).

``--reuse-embeddings`` keeps the lake's ``product_embeddings`` from an earlier run and drops only the
matching tables, so the job re-matches and re-clusters everything without embedding again.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs import enrich
from models.matching.text import parse_price

__all__ = ["DATASETS", "PARTS", "CatalogSet", "baseline_texts", "evaluate", "load_catalog", "main", "part_of",
           "recluster", "run_job", "score_clusters", "sweep", "tfidf_mutual_nn", "to_markdown"]

log = logging.getLogger(__name__)

PARTS = ("dev", "heldout")


@dataclass(frozen=True)
class CatalogSet:
    """A whole catalog with its truth: ``catalog`` (the enrich job's input columns) and ``truth`` (product ->
    true group)."""

    name: str
    catalog: pd.DataFrame
    truth: dict[str, str]


def _walmart_amazon(data: Path) -> CatalogSet:
    r = pd.read_parquet(data / "catalog_dedup" / "walmart_amazon" / "records.parquet")
    cat = pd.DataFrame({"product_id": r["record_id"].astype(str), "title": r["title"],
                        "brand": r["brand"].where(r["brand"].str.strip() != "", None),
                        "price": r["price"].map(parse_price)})
    return CatalogSet("walmart_amazon", cat, dict(zip(cat["product_id"], r["gt_entity_id"].astype(str), strict=True)))


def _wdc_products(data: Path) -> CatalogSet:
    """The 1,000 offers of the WDC Products valid split (500 products, two offers each); the 1,500 train offers
    of the same products are what the scorers may train on, so they are left out."""
    o = pd.read_parquet(data / "wdc_products" / "offers_train_valid.parquet")
    o = o[o["first_seen_in"].astype(str).str.contains("_valid_")]
    ids = "wdc:" + o["offer_id"].astype(str)
    cat = pd.DataFrame({"product_id": ids, "title": o["title"], "brand": o["brand"],
                        "price": o["price"].map(parse_price), "currency": o["priceCurrency"]})
    return CatalogSet("wdc_products", cat, dict(zip(ids, o["cluster_id"].astype(str), strict=True)))


def _magellan(name: str, title: str, brand: str | None):
    """A whole catalog from the records of one ``er_magellan`` benchmark's train and valid pairs (the test
    pairs are withheld): every distinct left and right record once, ``product_id`` = side + a hash of the record,
    truth = the components of the labelled matches of both splits. Withheld catalogs A and B of issue 19 are
    the full record tables of Abt-Buy and Amazon-Google; this is the nearest to them the shared data allows.
    Caveats: the matches of the withheld test pairs are missing from the truth (their pairs count as false
    positives: precision is a lower bound), and the scorers trained on the train pairs."""

    def key(side: str, text: str) -> str:
        return f"{side}:" + hashlib.sha1(text.encode()).hexdigest()[:12]

    def load(data: Path) -> CatalogSet:
        from models.matching.cluster import connected_components

        d = pd.read_parquet(data / "er_magellan" / f"{name}.parquet")
        records: dict[str, dict[str, Any]] = {}
        for side in ("left", "right"):
            for row in d.drop_duplicates(f"{side}_serialized").itertuples(index=False):
                pid = key(side, getattr(row, f"{side}_serialized"))
                records[pid] = {"product_id": pid, "title": getattr(row, f"{side}_{title}"),
                                "brand": (getattr(row, f"{side}_{brand}") or None) if brand else None,
                                "price": parse_price(getattr(row, f"{side}_price"))}
        cat = pd.DataFrame(list(records.values()))
        cat = cat[cat["title"].fillna("").str.strip() != ""].reset_index(drop=True)

        pos = d[d["label"] == 1]
        edges = [(key("left", a), key("right", b)) for a, b in zip(pos["left_serialized"], pos["right_serialized"],
                                                                    strict=True)]
        ids = set(cat["product_id"])
        label = connected_components(ids, [(a, b) for a, b in edges if a in ids and b in ids])
        return CatalogSet(name, cat, {p: label[p] for p in cat["product_id"]})

    return load


DATASETS = {"walmart_amazon": _walmart_amazon, "wdc_products": _wdc_products,
            "abt_buy": _magellan("abt_buy", "name", None),
            "amazon_google": _magellan("amazon_google", "title", "manufacturer")}


def load_catalog(data: str | Path, name: str, mpn: bool = False) -> CatalogSet:
    """``mpn``: give the catalog the job's optional ``mpn`` column from the records' own part numbers (only
    walmart_amazon has them: its ``modelno`` field)."""
    if name not in DATASETS:
        raise ValueError(f"unknown whole-catalog dataset {name!r}: expected one of {sorted(DATASETS)}")
    cs = DATASETS[name](Path(data))
    if not mpn:
        return cs
    if name != "walmart_amazon":
        raise ValueError(f"{name} has no part numbers to give as mpn (only walmart_amazon: its modelno field)")
    r = pd.read_parquet(Path(data) / "catalog_dedup" / "walmart_amazon" / "records.parquet")
    number = dict(zip(r["record_id"].astype(str), r["modelno"].fillna("").astype(str).str.strip(), strict=True))
    cat = cs.catalog.assign(mpn=[number.get(p) or None for p in cs.catalog["product_id"]])
    return CatalogSet(cs.name, cat, cs.truth)


def part_of(group: str) -> str:
    """``dev`` or ``heldout`` for a true group id: a stable hash, the same on every machine and run."""
    return PARTS[hashlib.sha1(str(group).encode()).digest()[0] % 2]


def _pairs(groups: Iterable[list[str]]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for g in groups:
        out.update(combinations(sorted(g), 2))
    return out


def _groups(label: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item, c in label.items():
        out.setdefault(c, []).append(item)
    return out


def score_clusters(predicted: Mapping[str, str], truth: Mapping[str, str], part: str | None = None
                   ) -> dict[str, Any]:
    """Pairwise and cluster-level figures of ``predicted`` (product -> cluster) against ``truth`` (product ->
    group), over the products of one part (``None``: all). Products missing from ``predicted`` are singletons."""
    members = {p for p, g in truth.items() if part is None or part_of(g) == part}
    pred_groups = [g for g in _groups({p: predicted.get(p, p) for p in truth}).values()
                   if len(g) > 1 and members.intersection(g)]
    true_groups = [g for g in _groups({p: truth[p] for p in members}).values() if len(g) > 1]
    pp, tp_ = _pairs(pred_groups), _pairs(true_groups)
    hit = len(pp & tp_)
    p = hit / len(pp) if pp else 0.0
    r = hit / len(tp_) if tp_ else 0.0
    exact = {frozenset(g) for g in pred_groups} & {frozenset(g) for g in true_groups}
    cp = len(exact) / len(pred_groups) if pred_groups else 0.0
    cr = len(exact) / len(true_groups) if true_groups else 0.0
    return {"products": len(members), "true_pairs": len(tp_), "predicted_pairs": len(pp), "precision": p,
            "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "predicted_clusters": len(pred_groups),
            "true_clusters": len(true_groups), "cluster_precision": cp, "cluster_recall": cr,
            "cluster_f1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
            "largest_cluster": max((len(g) for g in pred_groups), default=1),
            "largest_true": max((len(g) for g in true_groups), default=1)}


def _tfidf(texts: list[str]):
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    word = TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\b\w+\b", ngram_range=(1, 2), min_df=1)
    char = TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(3, 5), min_df=2)
    return normalize(hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr())


def _nearest(x, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest other row by cosine and that cosine (exact, chunked sparse products)."""
    nn, cos = np.zeros(x.shape[0], np.int64), np.zeros(x.shape[0])
    xt = x.T.tocsc()
    for s in range(0, x.shape[0], chunk):
        sims = (x[s:s + chunk] @ xt).toarray()
        sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -1.0
        nn[s:s + chunk] = sims.argmax(axis=1)
        cos[s:s + chunk] = sims.max(axis=1)
    return nn, cos


def baseline_texts(cat: pd.DataFrame) -> list[str]:
    """What the baseline reads of each listing: brand, title and, where the catalog has one, the part number."""
    texts = cat["brand"].fillna("").astype(str) + " " + cat["title"].fillna("").astype(str)
    if "mpn" in cat.columns:
        texts = texts + " " + cat["mpn"].fillna("").astype(str)
    return texts.str.strip().tolist()


def tfidf_mutual_nn(cs: CatalogSet) -> dict[str, Any]:
    """The baseline: TF-IDF (word 1-2-grams and character 3-5-grams of brand + title, + the part number where the
    catalog has an ``mpn`` column, as the job gets it) mutual nearest neighbours at or above a cosine threshold
    chosen for pairwise F1 on the dev part; clusters are the mutual pairs."""
    cat = cs.catalog.reset_index(drop=True)
    ids = cat["product_id"].to_numpy()
    nn, cos = _nearest(_tfidf(baseline_texts(cat)))
    mutual = (nn[nn] == np.arange(len(ids))) & (np.arange(len(ids)) < nn)
    a, b, c = ids[mutual], ids[nn[mutual]], cos[mutual]

    def clusters(t: float) -> dict[str, str]:
        keep = c >= t
        return {**{x: min(x, y) for x, y in zip(a[keep], b[keep], strict=True)},
                **{y: min(x, y) for x, y in zip(a[keep], b[keep], strict=True)}}

    grid = np.unique(np.round(np.quantile(c, np.linspace(0, 0.98, 50)), 3)) if len(c) else np.array([1.0])
    dev = [(score_clusters(clusters(t), cs.truth, "dev")["f1"], t) for t in grid]
    best_t = max(dev)[1]
    pred = clusters(best_t)
    return {"threshold": float(best_t), **{p: score_clusters(pred, cs.truth, p) for p in PARTS}}


def read_table(lake: Path, name: str) -> pd.DataFrame:
    """A Delta table of ``lake`` as pandas."""
    from deltalake import DeltaTable

    return DeltaTable(str(lake / name)).to_pandas()


def run_enrich(argv: list[str], what: str) -> float:
    """Run the enrich job in this process (``jobs.enrich.main``) and return its seconds; a failure raises."""
    t = time.perf_counter()
    code = enrich.main(argv)
    if code != 0:
        raise RuntimeError(f"the enrich job failed on {what} (exit code {code})")
    return time.perf_counter() - t


def run_job(cs: CatalogSet, work: Path, reuse_embeddings: bool = False, job_args: tuple[str, ...] = ()
            ) -> dict[str, Any]:
    """Write the catalog under ``work``, run the enrich job on it and return its clusters, matches and time."""
    work.mkdir(parents=True, exist_ok=True)
    path, lake = work / "catalog.parquet", work / "lake"
    cs.catalog.to_parquet(path, index=False)
    if reuse_embeddings and (lake / "product_embeddings").is_dir():
        for table in ("product_matches", "product_clusters"):
            shutil.rmtree(lake / table, ignore_errors=True)
    elif lake.exists():
        shutil.rmtree(lake)
    seconds = run_enrich(["--catalog", str(path), "--lake", str(lake), "--attributes", "none", *job_args], cs.name)
    clusters = read_table(lake, "product_clusters")
    return {"seconds": seconds, "clusters": dict(zip(clusters["product_id"], clusters["cluster_id"], strict=True)),
            "matches": read_table(lake, "product_matches")}


def recluster(nodes: Iterable[str], matches: pd.DataFrame, cfg) -> dict[str, str]:
    """The job's clustering (:func:`models.matching.cluster.cluster`, the rules the Spark job applies) of a
    ``product_matches`` table under another :class:`ClusterConfig`: settings are compared without re-running."""
    from models.matching.cluster import cluster

    return cluster(nodes, matches["product_id_a"].tolist(), matches["product_id_b"].tolist(),
                   matches["score"].to_numpy(), cfg).cluster_id


def sweep(sets: Mapping[str, tuple[CatalogSet, pd.DataFrame]], grid: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Dev-part pairwise F1 (and largest cluster) of each clustering setting in ``grid`` on each dataset's
    stored matches; the mean dev F1 over the datasets chooses the defaults."""
    from models.matching.cluster import ClusterConfig

    rows = []
    for setting in grid:
        cfg = ClusterConfig(**setting)
        row: dict[str, Any] = dict(setting)
        for name, (cs, matches) in sets.items():
            r = score_clusters(recluster(cs.truth, matches, cfg), cs.truth, "dev")
            row[f"{name}_f1"], row[f"{name}_largest"] = r["f1"], r["largest_cluster"]
        row["mean_dev_f1"] = float(np.mean([row[f"{n}_f1"] for n in sets]))
        rows.append(row)
    return pd.DataFrame(rows).sort_values("mean_dev_f1", ascending=False, kind="stable").reset_index(drop=True)


def evaluate(data: str | Path, work: Path, names: Iterable[str], reuse_embeddings: bool = False,
             job_args: tuple[str, ...] = (), mpn: bool = False) -> dict[str, Any]:
    """The enrich job (with ``job_args``) and the baseline on each whole catalog, scored on both parts
    (``mpn``: :func:`load_catalog`'s)."""
    out: dict[str, Any] = {}
    for name in names:
        cs = load_catalog(data, name, mpn)
        job = run_job(cs, work / name, reuse_embeddings, job_args)
        job["matches"].to_parquet(work / name / "matches.parquet", index=False)   # for offline sweeps
        out[name] = {"records": len(cs.catalog), "seconds": job["seconds"],
                     "job": {p: score_clusters(job["clusters"], cs.truth, p) for p in PARTS},
                     "baseline": tfidf_mutual_nn(cs)}
    return out


def _row(label: str, r: Mapping[str, Any]) -> str:
    return (f"| {label} | {r['products']} | {r['true_pairs']} | {r['predicted_pairs']} | {r['precision']:.2f} | "
            f"{r['recall']:.2f} | **{r['f1']:.2f}** | {r['cluster_precision']:.2f} | {r['cluster_recall']:.2f} | "
            f"{r['largest_cluster']} ({r['largest_true']}) |")


def to_markdown(result: Mapping[str, Any], command: str) -> str:
    lines = ["| catalog, part | pipeline | products | true pairs | predicted pairs | P | R | F1 | cluster P | "
             "cluster R | largest cluster (truth's) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result.items():
        for part in ("heldout", "dev"):
            lines.append(_row(f"{name}, {part} | enrich job", r["job"][part]))
            lines.append(_row(f"{name}, {part} | TF-IDF mutual NN (t={r['baseline']['threshold']:.3f})",
                              r["baseline"][part]))
    lines += ["", "Pairwise figures over all pairs inside predicted clusters against all pairs inside true groups; "
              "cluster P/R: predicted clusters (2+ products) equal to a true group. The baseline's threshold is "
              "chosen on the dev part.", "", f"Reproduce: `{command}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m jobs.catalog_eval", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="the matching data folder (shared/data/matching)")
    ap.add_argument("--work", required=True, help="folder for the catalogs and lakes (kept for --reuse-embeddings)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {sorted(DATASETS)}")
    ap.add_argument("--out", default=None, help="markdown file to write (default: log only)")
    ap.add_argument("--reuse-embeddings", action="store_true",
                    help="keep the work lakes' embeddings; re-match and re-cluster only")
    ap.add_argument("--pair-model", default=None, help="the enrich job's --pair-model (default: its own default)")
    ap.add_argument("--mpn", action="store_true",
                    help="give the job the records' own part numbers as its mpn column (walmart_amazon only)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        ap.error(f"--datasets: unknown {unknown}; expected some of {sorted(DATASETS)}")
    work = Path(a.work)
    job_args = ("--pair-model", a.pair_model) if a.pair_model else ()
    if a.mpn and set(names) - {"walmart_amazon"}:
        ap.error("--mpn: only walmart_amazon carries part numbers; name it alone in --datasets")
    result = evaluate(a.data, work, names, a.reuse_embeddings, job_args, a.mpn)
    cmd = "python -m jobs.catalog_eval " + " ".join(argv if argv is not None else sys.argv[1:])
    text = to_markdown(result, cmd)
    (work / "catalog_eval.json").write_text(pd.Series(result).to_json(indent=1))
    if a.out:
        Path(a.out).write_text(text)
    log.info("whole-catalog evaluation:\n%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
