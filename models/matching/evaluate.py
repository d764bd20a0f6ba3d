"""Evaluate matching on the shared valid splits and write a markdown section.

    python -m models.matching.evaluate --data /work/shared/data/matching --out FILE.md [--scorer REF]

Reports, on valid splits only (test splits are withheld):

* pair precision/recall/F1 of the pair scorer (its one shipped threshold) per benchmark, next to a plain
  baseline (TF-IDF cosine of the titles, threshold tuned on the benchmark's train split) and Ditto's
  published *test* F1;
* blocking pair-completeness (labelled matches among the candidates) and reduction ratio, with each
  benchmark's valid records pooled into one catalog;
* cluster-level pairwise precision/recall/F1 on the WDC Products valid offers, end to end (blocking,
  scoring, clustering) against their ``cluster_id``, next to the same pipeline with the baseline's pairs;
* seller variants: valid records, each against a copy of itself as a seller might list it again (the same
  listing, lower-cased, without its brand and 5% dearer, its words in another order, marketing words added),
  and how many of these pairs the job's scoring matches, beside the baseline.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.matching.artifact import load_scorer
from models.matching.blocking import BlockingConfig, candidate_pairs
from models.matching.cluster import ClusterConfig, cluster, pairwise_prf
from models.matching.data import BENCHMARKS, TitleVectors, featurize, load_offers, load_pairs
from models.matching.features import mark_catalog_reading, match_decisions
from models.matching.scorer import PairScorer
from models.matching.spelling import CatalogSpelling
from models.matching.text import code_spans, lone_number_spans, parse_price
from models.matching.train import best_threshold, prf

__all__ = ["evaluate_all", "main", "to_markdown", "tfidf_baseline", "with_part_numbers"]

log = logging.getLogger(__name__)


class TfidfBaseline:
    """Cosine of word TF-IDF vectors of the titles; the threshold is tuned on train pairs."""

    def __init__(self, train: pd.DataFrame):
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = pd.concat([train["left_title"], train["right_title"]]).fillna("").astype(str)
        self.vec = TfidfVectorizer(sublinear_tf=True, token_pattern=r"(?u)\b\w+\b").fit(texts)
        self.threshold, _ = best_threshold(train["label"].to_numpy(), self.cosine(train["left_title"],
                                                                                  train["right_title"]))

    def cosine(self, left, right) -> np.ndarray:
        a = self.vec.transform(pd.Series(left).fillna("").astype(str))
        b = self.vec.transform(pd.Series(right).fillna("").astype(str))
        return np.asarray(a.multiply(b).sum(axis=1)).ravel()


def tfidf_baseline(base: TfidfBaseline, valid: pd.DataFrame) -> dict[str, float]:
    """The fitted baseline's figures on the ``valid`` pairs (and its threshold, tuned on its train pairs)."""
    out = prf(valid["label"], base.cosine(valid["left_title"], valid["right_title"]) >= base.threshold)
    return {**out, "threshold": base.threshold}


def two_stage(features: np.ndarray, pairs: pd.DataFrame, cross: Any, prefilter: float,
              feats: pd.DataFrame | None = None) -> np.ndarray:
    """The job's score of labelled pairs: the cross-encoder's probability where the feature score reaches
    ``prefilter``, the feature score elsewhere (:func:`udfs.matching.make_score_fn`)."""
    from models.matching.cross import serialize

    out = np.asarray(features, np.float64).copy()
    read = np.flatnonzero(out >= prefilter)
    if len(read):
        sub = pairs.iloc[read]
        side = {s: [serialize({"title": t, "brand": b, "price": p}) for t, b, p in
                    sub[[f"{s}_title", f"{s}_brand", f"{s}_price"]].itertuples(index=False)] for s in ("left", "right")}
        out[read] = cross.score(side["left"], side["right"], None if feats is None else feats.iloc[read])
    return out


def _decided(pairs: pd.DataFrame, feats: pd.DataFrame, scorer: PairScorer, cross: Any = None,
             prefilter: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature scores, scores, matches) of featurised pairs, scored and decided as the job's score step does
    (:func:`udfs.matching.make_score_fn`): the cross-encoder's threshold where it read the pair, the feature
    scorer's without one, and the same listing twice a match either way."""
    f = scorer.score(feats)
    s = f if cross is None else two_stage(f, pairs, cross, prefilter, feats)
    s, match = match_decisions(s, feats, np.flatnonzero(f >= prefilter), scorer, cross)
    return f, s, match


def with_part_numbers(data: str, name: str, split: str, vectors: TitleVectors,
                      plain: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, features) of a benchmark split whose records carry part numbers, read as the job reads a catalog
    with the optional ``mpn`` column: the titles the matching rules and the cross-encoder read hold the number
    (:func:`load_pairs` with ``mpn``), while the title embeddings, which the job computes from the plain title,
    do not. ``plain``: the split's features without the numbers, where the caller has them (else computed)."""
    if plain is None:
        plain = featurize(load_pairs(data, name, split), vectors)
    numbered = load_pairs(data, name, split, mpn=True)
    return numbered, featurize(numbered, vectors, text_cosine=plain["text_cosine"].to_numpy())


def _pair_row(b: Any, valid: pd.DataFrame, feats: pd.DataFrame, scorer: PairScorer, baseline: TfidfBaseline,
              cross: Any, prefilter: float, written: pd.DataFrame) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One benchmark's row: ``valid`` and ``feats`` as the job reads them, ``written`` the same pairs as written
    (the baseline reads those)."""
    f, s, match = _decided(valid, feats, scorer, cross, prefilter)
    y = valid["label"].to_numpy()
    row = {"split": b.splits[1], "pairs": len(valid), "matches": int(y.sum()), "ours": prf(y, match),
           "best_threshold_f1": best_threshold(y, s)[1], "features_only": prf(y, scorer.is_match(f)),
           "baseline": tfidf_baseline(baseline, written), "ditto_test_f1": b.ditto_f1}
    return row, y, s


def _pair_scores(data: str, scorer: PairScorer, vectors: TitleVectors, baselines: dict[str, TfidfBaseline],
                 cross: Any = None, prefilter: float = 0.02, types: Sequence[str] = ()) -> dict[str, Any]:
    """Each benchmark's valid pairs as the job decides them, pooled; a benchmark whose records carry part numbers
    gets a second row read with them (``<name> + mpn``: not pooled, the baseline trained with them too)."""
    rows, pooled_y, pooled_s = {}, [], []
    for b in BENCHMARKS.values():
        valid = load_pairs(data, b.name, b.splits[1])
        # read as the job reads a catalog of the split's records: as that catalog spells them
        spelling = CatalogSpelling.from_titles(_pool_records(valid)["title"], types)
        spelled, feats = as_job_reads(valid, vectors, spelling)
        rows[b.name], y, s = _pair_row(b, spelled, feats, scorer, baselines[b.name], cross, prefilter, valid)
        pooled_y.append(y)
        pooled_s.append(s)
        if b.mpn:   # as with_part_numbers reads them, and spelled: the plain titles' cosine, the numbered titles
            numbered = load_pairs(data, b.name, b.splits[1], mpn=True)
            spelling = CatalogSpelling.from_titles(_pool_records(numbered)["title"], types)
            spelled, feats = as_job_reads(numbered, vectors, spelling, text_cosine=feats["text_cosine"].to_numpy())
            base = TfidfBaseline(load_pairs(data, b.name, b.splits[0], mpn=True))
            rows[f"{b.name} + mpn"] = _pair_row(b, spelled, feats, scorer, base, cross, prefilter, numbered)[0]
    y, s = np.concatenate(pooled_y), np.concatenate(pooled_s)
    bins = np.minimum((s * 10).astype(int), 9)
    ece = sum(abs(y[bins == i].mean() - s[bins == i].mean()) * (bins == i).mean()
              for i in range(10) if (bins == i).any())
    threshold = scorer.threshold if cross is None else cross.threshold
    return {"datasets": rows, "pooled": {**prf(y, s >= threshold), "brier": float(np.mean((s - y) ** 2)),
                                         "ece": float(ece), "pairs": len(y)}}


def _pool_records(valid: pd.DataFrame) -> pd.DataFrame:
    sides = [valid[[f"{s}_id", f"{s}_title", f"{s}_brand", f"{s}_price", f"{s}_currency"]]
             .set_axis(["id", "title", "brand", "price", "currency"], axis=1) for s in ("left", "right")]
    return pd.concat(sides).drop_duplicates("id").reset_index(drop=True)


def _blocking(data: str, vectors: TitleVectors, cfg: BlockingConfig) -> dict[str, Any]:
    out = {}
    for b in BENCHMARKS.values():
        valid = load_pairs(data, b.name, b.splits[1])
        recs = _pool_records(valid)
        t = time.perf_counter()
        cand = candidate_pairs(recs["id"], vectors.matrix(recs["title"]), recs["title"].fillna("").tolist(), cfg)
        seconds = time.perf_counter() - t
        found = set(zip(cand["a"], cand["b"], strict=True))
        pos = valid[valid["label"] == 1]
        keys = [(x, y) if x < y else (y, x) for x, y in zip(pos["left_id"], pos["right_id"], strict=True)]
        n = len(recs)
        out[b.name] = {"records": n, "candidates": len(cand), "pair_completeness": np.mean([k in found for k in keys]),
                       "reduction_ratio": 1.0 - len(cand) / (n * (n - 1) / 2),
                       "lexical_only": int((~cand["blocking"].str.startswith("ann")).sum()), "seconds": seconds}
    return out


def _candidate_pairs_frame(recs: pd.DataFrame, cand: pd.DataFrame) -> pd.DataFrame:
    r = recs.set_index("id")
    cols: dict[str, Any] = {}
    for side, col in (("left", "a"), ("right", "b")):
        sub = r.loc[cand[col].to_numpy()]
        cols[f"{side}_id"] = cand[col].to_numpy()
        for f in ("title", "brand", "price", "currency"):
            cols[f"{side}_{f}"] = sub[f].to_numpy()
    pairs = pd.DataFrame(cols)
    pairs["dataset"], pairs["label"] = "catalog", 0
    return pairs


def as_job_reads(pairs: pd.DataFrame, vectors: TitleVectors, spelling: CatalogSpelling | None,
                 text_cosine: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, features) as the job's score step reads them: the titles as the catalog spells them
    (:class:`models.matching.spelling.CatalogSpelling`, None: as written) for the scorers and the rules, the title
    cosine from the titles as written (the job's stored embeddings), or ``text_cosine`` where the caller has it
    (the plain titles' cosine of pairs whose titles carry a part number)."""
    if spelling is None:
        return pairs, featurize(pairs, vectors, text_cosine=text_cosine)
    if text_cosine is None:
        a, b = vectors.matrix(pairs["left_title"]), vectors.matrix(pairs["right_title"])
        text_cosine = (a * b).sum(axis=1) if len(pairs) else np.zeros(0)
    read = spelling.read_pairs(pairs["left_title"].tolist(), pairs["right_title"].tolist())
    spelled = pairs.assign(left_title=read.left, right_title=read.right)
    return spelled, mark_catalog_reading(featurize(spelled, vectors, text_cosine=text_cosine), read)


def score_candidates(recs: pd.DataFrame, cand: pd.DataFrame, scorer: PairScorer, vectors: TitleVectors,
                     cross: Any = None, prefilter: float = 0.02, spelling: CatalogSpelling | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, matches) of candidate pairs ``cand[a], cand[b]`` over records indexed by ``id``, as the job
    scores and decides them (the two-stage score with ``cross``; the titles as ``spelling`` reads them)."""
    pairs = _candidate_pairs_frame(recs, cand)
    if not len(pairs):
        return np.zeros(0), np.zeros(0, bool)
    pairs, feats = as_job_reads(pairs, vectors, spelling)
    _, s, match = _decided(pairs, feats, scorer, cross, prefilter)
    return s, match


def _wdc_clusters(data: str, scorer: PairScorer, vectors: TitleVectors, bcfg: BlockingConfig,
                  ccfg: ClusterConfig, base: TfidfBaseline, cross: Any = None, types: Sequence[str] = ()
                  ) -> dict[str, Any]:
    split = BENCHMARKS["wdc_products"].splits[1]
    offers = load_offers(data, split)
    truth = dict(zip(offers["id"], offers["cluster"], strict=True))
    cand = candidate_pairs(offers["id"], vectors.matrix(offers["title"]), offers["title"].fillna("").tolist(), bcfg)
    scores, keep = score_candidates(offers, cand, scorer, vectors, cross,
                                    spelling=CatalogSpelling.from_titles(offers["title"], types))
    ours = cluster(offers["id"], cand["a"][keep].tolist(), cand["b"][keep].tolist(), scores[keep], ccfg)
    titles = offers.set_index("id")["title"]
    bcos = base.cosine(titles.loc[cand["a"]].to_numpy(), titles.loc[cand["b"]].to_numpy())
    bkeep = bcos >= base.threshold
    baseline = cluster(offers["id"], cand["a"][bkeep].tolist(), cand["b"][bkeep].tolist(), bcos[bkeep], ccfg)
    sizes = ours.sizes()
    return {"split": split, "offers": len(offers), "true_clusters": int(offers["cluster"].nunique()),
            "candidates": len(cand), "matched_pairs": int(keep.sum()),
            "ours": pairwise_prf(ours.cluster_id, truth), "baseline": pairwise_prf(baseline.cluster_id, truth),
            "predicted_clusters": len(sizes), "largest_cluster": max(sizes.values()),
            "guarded": sum(g is not None for g in ours.guard.values())}


def _mistyped(r: dict[str, Any], words: str) -> dict[str, Any] | None:
    """The record with typing errors in ``words`` ("one" or "two") of its title's words of four or more letters
    (:func:`models.heads.degrade.mistyped`, drawn by the record's id); None where no word can be mistyped."""
    from models.heads.degrade import mistyped

    title = str(r["title"])
    typed = mistyped([title], words, zlib.crc32(str(r["id"]).encode()))[0]
    return None if typed == title else dict(r, title=typed)


# A product listed again the way sellers write it: each of these copies is the same product as its original.
SELLER_VARIANTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "the same listing again": lambda r: dict(r),
    "lower-cased, hyphens as spaces": lambda r: dict(r, title=str(r["title"]).lower().replace("-", " ")),
    "brand left out, price 5% higher": lambda r: dict(r, brand=None, price=parse_price(r["price"]) * 1.05),
    "words in reverse order": lambda r: dict(r, title=" ".join(reversed(str(r["title"]).split()))),
    "'NEW' and '- free shipping' added": lambda r: dict(r, title=f"NEW {r['title']} - free shipping"),
    # words no training copy adds (models.matching.cross_train.SELLER_PREFIXES / SELLER_SUFFIXES): a held-out check
    "'Top Seller!!' and '(limited offer)' added": lambda r: dict(r, title=f"Top Seller!! {r['title']} (limited offer)"),
    "one typo in one word": lambda r: _mistyped(r, "one"),
    "typos in two words": lambda r: _mistyped(r, "two"),
}


def _last_digit_changed(r: dict[str, Any]) -> dict[str, Any] | None:
    """The title's model code (the token mixing letters with the most digits, at least 3) one digit off."""
    codes = code_spans(r["title"], min_digits=3)
    if not codes:
        return None
    m = max(codes, key=lambda m: sum(c.isdigit() for c in m[0]))
    code = m[0]
    i = max(j for j, c in enumerate(code) if c.isdigit())
    other = code[:i] + str((int(code[i]) + 1) % 10) + code[i + 1:]
    return dict(r, title=str(r["title"])[:m.start()] + other + str(r["title"])[m.end():])


def _number_changed(r: dict[str, Any]) -> dict[str, Any] | None:
    """The title's first number standing alone (a version, a size, a count) one higher."""
    lone = lone_number_spans(r["title"])
    if not lone:
        return None
    m = lone[0]
    return dict(r, title=str(r["title"])[:m.start()] + str(int(m[0]) + 1) + str(r["title"])[m.end():])


# Colour words, each swapped for the next: no training copy (cross_train.other_product changes digits only) makes
# another product this way, so this row is held out from --other-share.
COLOUR_SWAPS = ("black", "white", "silver", "red", "blue", "green", "pink", "gray", "grey", "gold", "brown",
                "purple", "yellow", "orange")
_COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOUR_SWAPS) + r")\b", re.IGNORECASE)


def _colour_changed(r: dict[str, Any]) -> dict[str, Any] | None:
    """The title's first colour word swapped for the next one of :data:`COLOUR_SWAPS` (gray and grey both become
    gold: never the same colour again), in the same case."""
    m = _COLOUR_WORD.search(str(r["title"]))
    if m is None:
        return None
    word = m[0].lower()
    i = COLOUR_SWAPS.index(word)
    other = COLOUR_SWAPS[(i + (2 if word == "gray" else 1)) % len(COLOUR_SWAPS)]
    other = other.upper() if m[0].isupper() else other.capitalize() if m[0][0].isupper() else other
    return dict(r, title=str(r["title"])[:m.start()] + other + str(r["title"])[m.end():])


# A near-identical listing of another product: each of these copies is NOT the same product as its original
# (records without a model code, a number or a colour word are left out of that row).
OTHER_PRODUCTS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "another model code (its last digit changed)": _last_digit_changed,
    "another version or size (the title's first lone number + 1)": _number_changed,
    "another colour (the first colour word swapped; held out from training)": _colour_changed,
}


def seller_variants(recs: pd.DataFrame, scorer: PairScorer, vectors: TitleVectors, cross: Any = None,
                    base: TfidfBaseline | None = None,
                    variants: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = SELLER_VARIANTS,
                    catalog: Sequence[object] | None = None, types: Sequence[str] = ()
                    ) -> dict[str, dict[str, float]]:
    """For each variant, the share of the records ``recs`` (``id, title, brand, price, currency``) that the job's
    scoring matches with that copy of itself (``ours``) and that the baseline's threshold passes (``baseline``),
    over the ``records`` that the variant applies to (it returns None for the others). ``catalog``: the titles of
    the catalog the records come from; the job reads the pairs as that catalog with the copies in it spells them
    (None: as written), knowing the product ``types`` (the category head's)."""
    out: dict[str, dict[str, float]] = {}
    for name, change in variants.items():
        pairs = [(r, c) for r in recs.to_dict("records") if (c := change(dict(r))) is not None]
        if not pairs:
            continue
        orig = pd.DataFrame([r for r, _ in pairs])
        copies = pd.DataFrame([dict(c, id=f"{r['id']}~copy") for r, c in pairs])
        both = pd.concat([orig, copies], ignore_index=True)
        cand = pd.DataFrame({"a": orig["id"].to_numpy(), "b": copies["id"].to_numpy()})
        spelling = None if catalog is None else CatalogSpelling.from_titles([*catalog, *copies["title"]], types)
        out[name] = {"ours": float(np.mean(score_candidates(both, cand, scorer, vectors, cross,
                                                            spelling=spelling)[1])),
                     "records": len(pairs)}
        if base is not None:
            out[name]["baseline"] = float(np.mean(base.cosine(orig["title"], copies["title"]) >= base.threshold))
    return out


def _sellers(data: str, scorer: PairScorer, vectors: TitleVectors, baselines: dict[str, TfidfBaseline],
             cross: Any = None, sample: int = 200, types: Sequence[str] = ()) -> dict[str, Any]:
    out, others = {}, {}
    for b in BENCHMARKS.values():
        valid = load_pairs(data, b.name, b.splits[1])
        pool = _pool_records(valid)
        recs = pool.sample(min(sample, len(pool)), random_state=0).reset_index(drop=True)
        titles = pool["title"].tolist()
        out[b.name] = seller_variants(recs, scorer, vectors, cross, baselines[b.name], catalog=titles, types=types)
        others[b.name] = seller_variants(recs, scorer, vectors, cross, baselines[b.name], OTHER_PRODUCTS,
                                         catalog=titles, types=types)
    return {"records": sample, "datasets": out, "other_products": others}


def evaluate_all(data: str, scorer: PairScorer, vectors: TitleVectors, bcfg: BlockingConfig | None = None,
                 ccfg: ClusterConfig | None = None, cross: Any = None, types: Sequence[str] = ()) -> dict[str, Any]:
    """Every figure of the matching report; ``types``: the product types the job's type rule reads (the category
    head's classes: :func:`job_types`)."""
    bcfg, ccfg = bcfg or BlockingConfig(), ccfg or ClusterConfig()
    baselines = {b.name: TfidfBaseline(load_pairs(data, b.name, b.splits[0])) for b in BENCHMARKS.values()}
    return {"scorer": scorer.version, "encoder": vectors.version, "threshold": scorer.threshold,
            "cross": None if cross is None else {"version": cross.version, "threshold": cross.threshold},
            "types": len(types),
            "pairs": _pair_scores(data, scorer, vectors, baselines, cross, types=types),
            "blocking": _blocking(data, vectors, bcfg), "blocking_config": asdict(bcfg),
            "wdc_clusters": _wdc_clusters(data, scorer, vectors, bcfg, ccfg, baselines["wdc_products"], cross, types),
            "cluster_config": asdict(ccfg), "sellers": _sellers(data, scorer, vectors, baselines, cross, types=types)}


def job_types(encoder_version: str) -> tuple[str, ...]:
    """The product types the enrich job's type rule reads for a catalog embedded by ``encoder_version``: the
    category classes of the model store's head bundle for it (none without one)."""
    from models.heads.bundle import find_heads, load_heads
    from models.store import DEFAULT_STORE

    found = find_heads(DEFAULT_STORE, encoder_version)
    bundle = load_heads(found) if found is not None else None
    return tuple(bundle.category.classes) if bundle is not None and bundle.category is not None else ()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def to_markdown(r: dict[str, Any], command: str = "") -> str:
    p = r["pairs"]
    cross = r.get("cross")
    who = (f"Feature scorer `{r['scorer']}` as a first pass (pairs under 0.02 are not read further), then the "
           f"cross-encoder `{cross['version']}` (threshold {cross['threshold']:.3f}, fitted on a calibration slice "
           "of train)" if cross else f"Scorer `{r['scorer']}` (threshold {r['threshold']:.3f}, chosen on the pooled "
           "valid split)")
    lines = [
        "## Product matching: evaluation on the shared valid splits", "",
        f"{who}; title embeddings from `{r['encoder']}`; the type rule reads the {r.get('types', 0)} product types "
        "of the category head. Figures in percent.", "",
        "### Pair-level (labelled valid pairs)", "",
        "| benchmark | split | pairs (matches) | ours P | ours R | ours F1 | ours F1, best threshold | "
        "feature scorer alone F1 | TF-IDF baseline F1 | Ditto F1 (published, *test*) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in p["datasets"].items():
        o = d["ours"]
        ditto = "-" if d["ditto_test_f1"] is None else f"{d['ditto_test_f1']:.1f}"
        lines.append(f"| {name} | {d['split']} | {d['pairs']} ({d['matches']}) | {_pct(o['precision'])} | "
                     f"{_pct(o['recall'])} | **{_pct(o['f1'])}** | {_pct(d['best_threshold_f1'])} | "
                     f"{_pct(d['features_only']['f1'])} | {_pct(d['baseline']['f1'])} | {ditto} |")
    q = p["pooled"]
    how = ("The thresholds never saw these valid pairs" if cross else
           "The threshold was chosen on these valid pairs (pooled), so the F1 figures are slightly optimistic")
    lines += ["", f"Pooled valid ({q['pairs']} pairs): P {_pct(q['precision'])}, R {_pct(q['recall'])}, "
                  f"F1 {_pct(q['f1'])}; calibration: Brier {q['brier']:.4f}, ECE (10 bins) {q['ece']:.4f}.",
              f"{how}; 'best threshold' is the per-benchmark oracle. The baseline's threshold was tuned on train. "
              "Ditto's figures are on the withheld test splits with a fine-tuned RoBERTa, not comparable one to one.",
              *(["A row `<benchmark> + mpn` reads the same pairs with each record's part number written into "
                 "the titles that lack it, as the job reads a catalog with the optional `mpn` column (the title "
                 "embeddings from the plain titles, as the job embeds them); it is not pooled. Ditto's figure for "
                 "it reads that field too."] if any(n.endswith(" + mpn") for n in p["datasets"]) else []),
              "",
              "### Blocking (each benchmark's valid records pooled into one catalog)", "",
              "| benchmark | records | candidates | pair completeness | reduction ratio | not from embeddings | s |",
              "|---|---|---|---|---|---|---|"]
    for name, d in r["blocking"].items():
        lines.append(f"| {name} | {d['records']} | {d['candidates']} | {_pct(d['pair_completeness'])} | "
                     f"{100 * d['reduction_ratio']:.2f} | {d['lexical_only']} | {d['seconds']:.1f} |")
    c = r["wdc_clusters"]
    lines += ["", f"Blocking config: `{r['blocking_config']}`.", "",
              f"### Clusters: WDC Products {c['split']} offers ({c['offers']} offers, {c['true_clusters']} true "
              "clusters), end to end", "",
              "| pipeline | pairwise P | pairwise R | pairwise F1 |", "|---|---|---|---|",
              f"| blocking + {'cross-encoder' if cross else 'pair scorer'} + clustering | "
              f"{_pct(c['ours']['precision'])} | {_pct(c['ours']['recall'])} | "
              f"**{_pct(c['ours']['f1'])}** |",
              f"| blocking + TF-IDF baseline + clustering | {_pct(c['baseline']['precision'])} | "
              f"{_pct(c['baseline']['recall'])} | {_pct(c['baseline']['f1'])} |", "",
              f"{c['candidates']} candidate pairs, {c['matched_pairs']} matched; {c['predicted_clusters']} predicted "
              f"clusters, the largest of {c['largest_cluster']}; {c['guarded']} offers in guarded components "
              f"(cluster config `{r['cluster_config']}`)."]
    sv = r.get("sellers")
    if sv:
        names = list(sv["datasets"])
        lines += ["", f"### Seller variants: each listing against a copy of itself as a seller might write it "
                      f"({sv['records']} valid records of each benchmark)", "",
                  "Share of the pairs matched by the job's scoring, the TF-IDF baseline's in brackets.", "",
                  "| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for variant in next(iter(sv["datasets"].values())):
            cells = [f"{_pct(sv['datasets'][n][variant]['ours'])} ({_pct(sv['datasets'][n][variant].get('baseline'))})"
                     for n in names]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        other = sv.get("other_products", {})
        if other:
            lines += ["", "Near-identical listings of **other** products (the copy's model code, number or colour word "
                          "changed): the share matched, which should be low; the number of records with such a code, "
                          "number or colour word in brackets after the baseline's share ('-': none).", "",
                      "| other product | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for variant in OTHER_PRODUCTS:
                cells = [f"{_pct(other[n][variant]['ours'])} ({_pct(other[n][variant].get('baseline'))}; "
                         f"{other[n][variant]['records']})" if variant in other.get(n, {}) else "-" for n in names]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if command:
        lines += ["", f"Reproduce: `{command}`"]
    return "\n".join(lines) + "\n"


def _load_cross(ref: str | None) -> Any:
    from models.matching.cross import load_cross, resolve_cross
    from models.store import ModelIntegrityError

    if ref == "none":
        return None
    try:
        resolve_cross(ref)
    except ModelIntegrityError:
        if ref in (None, "default"):
            return None   # no shipped cross-encoder: the feature scorer alone
        raise
    return load_cross(ref, device="cpu")


def matching_report(data_root: str | Path, model: str = "default", scorer: str | None = None,
                    pair_model: str | None = "default") -> str:
    """The markdown section of ``python -m jobs.evaluate``: the current scorers on the shared valid splits."""
    from models.encoders import load_encoder

    sc = load_scorer(scorer)
    enc = load_encoder(model, "cpu")
    vectors = TitleVectors(enc.embed_texts, enc.version, None)
    result = evaluate_all(data_root, sc, vectors, cross=_load_cross(pair_model), types=job_types(enc.version))
    return to_markdown(result, f"python -m models.matching.evaluate --data {data_root} --out matching.md")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m models.matching.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="the matching data folder (shared/data/matching)")
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--scorer", default=None, help="scorer version folder, store root or id (default: current)")
    ap.add_argument("--model", default="default", help="encoder for the title embeddings (default: default)")
    ap.add_argument("--cache", default=None, help="title-embedding cache folder")
    ap.add_argument("--pair-model", default="default", help="cross-encoder (default: the store's current; none)")
    a = ap.parse_args(argv)
    from models.encoders import load_encoder

    scorer = load_scorer(a.scorer)
    enc = load_encoder(a.model, "cpu")
    if scorer.meta.get("encoder_version") not in (None, enc.version):
        log.warning("scorer %s was trained on embeddings of %s, evaluating with %s", scorer.version,
                    scorer.meta.get("encoder_version"), enc.version)
    vectors = TitleVectors(enc.embed_texts, enc.version, Path(a.cache) if a.cache else None)
    result = evaluate_all(a.data, scorer, vectors, cross=_load_cross(a.pair_model), types=job_types(enc.version))
    cmd = "python -m models.matching.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(a.out).write_text(to_markdown(result, cmd))
    log.info("wrote %s", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
