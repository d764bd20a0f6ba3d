"""Training the pair scorer: gradient boosting, isotonic calibration on out-of-fold scores, a threshold on valid.

The boosted trees are fitted on every train pair; the calibration maps their log-odds to probabilities and
is fitted on out-of-fold log-odds of the train split (so it sees scores of pairs the trees did not train on);
the decision threshold is the one with the best pair F1 on the pooled valid split. Nothing touches a test split.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.matching.features import FEATURES
from models.matching.scorer import PairScorer, Trees

__all__ = ["ScorerTrainConfig", "best_threshold", "main", "prf", "retrain_scorer", "train_pair_scorer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScorerTrainConfig:
    n_trees: int = 200
    max_depth: int = 3
    learning_rate: float = 0.08
    subsample: float = 0.8
    folds: int = 5
    seed: int = 0


def prf(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 (in [0, 1]) of boolean predictions."""
    labels, predicted = np.asarray(labels, bool), np.asarray(predicted, bool)
    tp = float((labels & predicted).sum())
    p = tp / max(predicted.sum(), 1)
    r = tp / max(labels.sum(), 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold``; ties go to the higher threshold."""
    labels = np.asarray(labels, bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, y = np.asarray(scores)[order], labels[order]
    tp = np.cumsum(y)
    k = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
    f1 = np.where(last, 2 * tp / (k + labels.sum()), -1.0)
    i = int(np.argmax(f1))
    return float(s[i]), float(f1[i])


def _to_trees(gb, n_features: int) -> Trees:
    roots, feat, thr, left, right, value = [], [], [], [], [], []
    offset = 0
    for est in gb.estimators_[:, 0]:
        t = est.tree_
        roots.append(offset)
        leaf = t.children_left < 0
        feat.append(np.where(leaf, 0, t.feature))
        thr.append(np.where(leaf, 0.0, t.threshold))
        left.append(np.where(leaf, -1, t.children_left + offset))
        right.append(np.where(leaf, -1, t.children_right + offset))
        value.append(t.value[:, 0, 0])
        offset += t.node_count
    trees = Trees(np.asarray(roots, np.int64), np.concatenate(feat).astype(np.int64), np.concatenate(thr),
                  np.concatenate(left).astype(np.int64), np.concatenate(right).astype(np.int64),
                  np.concatenate(value).astype(np.float64), float(gb.learning_rate))
    if int(trees.feature.max(initial=0)) >= n_features:
        raise ValueError("boosted trees use more features than given")
    return trees


def _fit_trees(x: np.ndarray, y: np.ndarray, cfg: ScorerTrainConfig) -> Trees:
    from sklearn.ensemble import GradientBoostingClassifier

    # init="zero": the log-odds are the sum of the trees alone, so the JSON needs no prior term.
    gb = GradientBoostingClassifier(n_estimators=cfg.n_trees, max_depth=cfg.max_depth,
                                    learning_rate=cfg.learning_rate, subsample=cfg.subsample, init="zero",
                                    random_state=cfg.seed)
    gb.fit(x, y)
    trees = _to_trees(gb, x.shape[1])
    if not np.allclose(trees.raw(x[:512]), gb.decision_function(x[:512]), atol=1e-6):
        raise RuntimeError("converted trees disagree with scikit-learn's decision function")
    return trees


def train_pair_scorer(train: pd.DataFrame, valid: pd.DataFrame, cfg: ScorerTrainConfig = ScorerTrainConfig(),
                      meta: dict[str, Any] | None = None) -> PairScorer:
    """Fit a :class:`PairScorer` on ``train`` (the :data:`FEATURES` columns and ``label``); choose its
    threshold on ``valid``. Both frames usually come from :func:`models.matching.data.featurize`."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import StratifiedKFold

    for name, df in (("train", train), ("valid", valid)):
        missing = [c for c in (*FEATURES, "label") if c not in df.columns]
        if missing:
            raise ValueError(f"{name} pairs lack the columns {missing}")
        if df["label"].nunique() != 2:
            raise ValueError(f"{name} pairs need both matches and non-matches")
    x, y = train[list(FEATURES)].to_numpy(np.float64), train["label"].to_numpy(int)
    oof = np.zeros(len(x))
    folds = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
    for fit_idx, held_idx in folds.split(x, y):
        oof[held_idx] = _fit_trees(x[fit_idx], y[fit_idx], cfg).raw(x[held_idx])
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof, y)
    trees = _fit_trees(x, y, cfg)
    draft = PairScorer(FEATURES, trees, np.asarray(iso.X_thresholds_, np.float64),
                       np.asarray(iso.y_thresholds_, np.float64), 0.5)
    vy = valid["label"].to_numpy(int)
    vs = draft.score(valid)
    threshold, _ = best_threshold(vy, vs)
    metrics = {f"valid_{k}": v for k, v in prf(vy, vs >= threshold).items()}
    metrics["valid_brier"] = float(np.mean((vs - vy) ** 2))
    metrics["train_pairs"], metrics["valid_pairs"] = float(len(train)), float(len(valid))
    log.info("pair scorer: threshold %.3f, valid P %.3f R %.3f F1 %.3f, Brier %.4f", threshold,
             metrics["valid_precision"], metrics["valid_recall"], metrics["valid_f1"], metrics["valid_brier"])
    info = {"config": asdict(cfg), "metrics": metrics, **(meta or {})}
    return PairScorer(FEATURES, trees, draft.calib_x, draft.calib_y, threshold, info)


def retrain_scorer(data_dir: str, store: Path | None = None, encoder_ref: str = "default",
                   cache_dir: Path | None = None, cfg: ScorerTrainConfig = ScorerTrainConfig(),
                   promote: bool = True) -> dict[str, Any]:
    """Retrain on the benchmarks' train splits with ``encoder_ref``'s title embeddings; save the candidate;
    promote it when its pooled valid F1 beats the current scorer's on the same pairs. Returns a summary."""
    from models.encoders import load_encoder
    from models.matching.artifact import DEFAULT_SCORER_STORE, load_scorer, promote_scorer, save_scorer
    from models.matching.data import BENCHMARKS, TitleVectors, featurize, load_pairs, offer_candidate_pairs
    from models.store import ModelIntegrityError

    root = store or DEFAULT_SCORER_STORE
    enc = load_encoder(encoder_ref, "cpu")
    vectors = TitleVectors(enc.embed_texts, enc.version, cache_dir)
    wdc = BENCHMARKS["wdc_products"].splits
    # Besides the benchmarks' labelled pairs, the blocking candidates among the WDC offers of each split:
    # the pairs the scorer meets in the job (mostly near-identical products), labelled by their clusters.
    train = pd.concat([featurize(load_pairs(data_dir, b.name, b.splits[0]), vectors) for b in BENCHMARKS.values()]
                      + [featurize(offer_candidate_pairs(data_dir, wdc[0], vectors), vectors)])
    valid = pd.concat([featurize(load_pairs(data_dir, b.name, b.splits[1]), vectors) for b in BENCHMARKS.values()]
                      + [featurize(offer_candidate_pairs(data_dir, wdc[1], vectors), vectors)])
    meta = {"encoder_version": enc.version, "training_data": {b.name: list(b.splits) for b in BENCHMARKS.values()}
            | {"wdc_products_blocked": list(wdc)}}
    cand = train_pair_scorer(train, valid, cfg, meta)
    f1 = cand.meta["metrics"]["valid_f1"]
    try:
        champ = load_scorer(root)
        vs = champ.score(valid)
        champ_f1 = prf(valid["label"], champ.is_match(vs))["f1"]
    except (ModelIntegrityError, ValueError) as e:  # no current scorer, or one for other features
        log.info("no usable current pair scorer (%s)", e)
        champ, champ_f1 = None, -1.0
    version = save_scorer(root, cand, training_data=str(data_dir), metrics=cand.meta["metrics"])
    promoted = bool(promote and f1 > champ_f1)
    if promoted:
        promote_scorer(root, version)
    return {"version": version, "valid_f1": float(f1), "champion": champ.version if champ else None,
            "champion_valid_f1": float(champ_f1), "promoted": promoted}


def main(argv: list[str] | None = None) -> int:
    """``python -m models.matching.train --data DIR [--store DIR] [--no-promote]``: retrain and save a scorer."""
    import argparse
    import json
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m models.matching.train", description=main.__doc__)
    ap.add_argument("--data", required=True, help="the matching data folder (shared/data/matching)")
    ap.add_argument("--store", default=None, help="scorer store root (default: the shipped models/store/scorers)")
    ap.add_argument("--model", default="default", help="encoder for the title embeddings")
    ap.add_argument("--cache", default=None, help="title-embedding cache folder")
    ap.add_argument("--no-promote", action="store_true", help="save the candidate without making it current")
    a = ap.parse_args(argv)
    out = retrain_scorer(a.data, Path(a.store) if a.store else None, a.model, Path(a.cache) if a.cache else None,
                         promote=not a.no_promote)
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
