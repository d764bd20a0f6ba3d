"""The driver-side part of the retrain job (no Spark): decode, split, train, evaluate both models, decide.

Kept apart from :mod:`jobs.retrain` so that the job file stays a thin read -> transform -> commit script.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.arch import pixel_geometry
from models.store import ModelIntegrityError, current_version, promote, store_root
from models.training.card import model_card
from models.training.config import BatchSchedule, TrainConfig, text_tower
from models.training.data import TrainData, decode_all, encode_labels, group_ids, split_of
from models.training.evaluate import EvalConfig, SelectionMetric, evaluate
from models.training.pipeline import (
    candidate_config,
    in_memory_encoder,
    save_candidate,
    stored_state,
    train_candidate,
)

__all__ = ["build_data", "retrain_pair_scorer", "train_and_compare"]

log = logging.getLogger(__name__)

BASELINE = "builtin:catalog-tiny-minilm"


def build_data(pdf: Any, paths: list[Path], size: int | tuple[int, int], valid_percent: int,
               classes: list[str] | None = None) -> tuple[TrainData, TrainData, list[str]]:
    """Decode images at ``size`` (a centre square's side, or an (H, W) box: :func:`models.arch.pixel_geometry`);
    drop undecodable ones; split train/valid by a hash of product_id."""
    pixels, ok = decode_all(paths, size)
    if not ok.any():
        raise ValueError("no catalog image could be read: check --image-root")
    keep = np.flatnonzero(ok)
    titles = [str(t) for t in pdf["title"]]
    norm_titles = [" ".join(t.lower().split()) for t in titles]
    cols = [group_ids(norm_titles)]  # identical titles: never negatives of each other
    if "cluster_id" in pdf.columns:
        cols.insert(0, group_ids(pdf["cluster_id"].tolist()))  # e-CLIP: same duplicate cluster, no negative
    groups = np.stack(cols, axis=1)
    cats = pdf["category"].tolist() if "category" in pdf.columns else [None] * len(pdf)
    labels, classes = encode_labels(cats, classes)
    data = TrainData(pixels, tuple(titles), groups, labels, len(classes)).subset(keep)
    ids = [str(pdf["product_id"].iloc[i]) for i in keep]
    valid = np.array([split_of(i, valid_percent) == "valid" for i in ids])
    # Gallery order = product-id order, so both models see the same fixed gallery.
    order = np.argsort(np.asarray(ids), kind="stable")
    tr, va = order[~valid[order]], order[valid[order]]
    if len(tr) < 2 or len(va) < 2:
        raise ValueError(f"too few products with images to train and evaluate ({len(tr)} train, {len(va)} valid)")
    return data.subset(tr), data.subset(va), classes


def _arch(cfg: Any) -> dict[str, Any]:
    if cfg.arch_config:
        return json.loads(Path(cfg.arch_config).read_text())
    return candidate_config()


def _start(cfg: Any, root: Path) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(architecture, weights to continue from or None, how the candidate starts) for the training step."""
    if cfg.from_champion:
        v = current_version(root)
        if v:
            # Verified: a tampered champion fails the run here, before any training.
            return (*stored_state(root / v), f"continued from `store:{v}`")
        log.info("--from-champion: the store has no champion; the candidate starts from a fresh image tower")
    return _arch(cfg), None, "fresh image tower"


def image_tower_config(cfg: Any) -> Any:
    """The :class:`~models.training.image_tower.ImageTowerConfig` of a retrain run's ``--image-tower`` options: the
    recipe's category weight and learning rate unless given (a given 0 switches the category loss off)."""
    from models.training.image_tower import ImageTowerConfig

    more: dict[str, Any] = {"lr": cfg.lr} if cfg.lr else {}
    if cfg.category_weight is not None:
        more["category_weight"] = cfg.category_weight
    return ImageTowerConfig(arch=cfg.image_tower, image_hw=tuple(cfg.image_hw), epochs=cfg.epochs,
                            batch_size=max(cfg.batch, 2), seed=cfg.seed, max_steps=cfg.steps, bf16=cfg.bf16, **more)


def _new_image_tower(cfg: Any, root: Path, pdf: Any, paths: list[Path], champ: Any) -> tuple[Any, ...]:
    """A fresh image tower (``cfg.image_tower``, a timm architecture) trained against the locked text tower of
    the champion (``champ``, its loaded encoder; :mod:`models.training.image_tower`): (model, model config, its
    training config, result, how it started, (train, valid, classes))."""
    from models.training.image_tower import build_candidate, champion_text_embeddings, train_image_tower
    from models.training.trainer import TrainResult

    champion = current_version(root)
    if not champion:
        raise ValueError(f"--image-tower trains against the champion's text tower, and {root} has no current "
                         "version: promote one first")
    icfg = image_tower_config(cfg)
    split = build_data(pdf, paths, icfg.image_hw, cfg.valid_percent)
    model, model_cfg = build_candidate(root / champion, icfg)
    text_emb = champion_text_embeddings(champ, split[0].titles, None)
    out = train_image_tower(model, split[0], text_emb, icfg)
    result = TrainResult(steps=out["steps"], samples=out["samples"], seconds=out["seconds"],
                         history=out["history"])
    return model, model_cfg, icfg, result, f"new {cfg.image_tower} image tower on `store:{champion}`'s text", split


def _champion(root: Path) -> tuple[str, str]:
    """(reference, version label) of the model to beat."""
    v = current_version(root)
    return (str(root / v), f"store:{v}") if v else (BASELINE, BASELINE)


def train_and_compare(cfg: Any, pdf: Any, paths: list[Path], snapshot: str, row: dict[str, Any]) -> int:
    from models.encoders import load_encoder, measure_image_bf16

    root = store_root(cfg.model_store)
    row["model_store"] = str(root)
    # Loaded (and verified) once, before training: a new image tower trains against its text tower, and every
    # candidate is compared with it.
    champ_ref, champ_label = _champion(root)
    champ = load_encoder(champ_ref, "cpu")
    if cfg.image_tower:
        model, model_cfg, tcfg, result, start, (train, valid, classes) = _new_image_tower(cfg, root, pdf, paths,
                                                                                          champ)
    else:
        model_cfg, init_state, start = _start(cfg, root)
        train, valid, classes = build_data(pdf, paths, pixel_geometry(model_cfg), cfg.valid_percent)
        tcfg = TrainConfig(epochs=cfg.epochs, max_steps=cfg.steps,
                           schedule=BatchSchedule(max(cfg.batch, 2), cfg.double_at), seed=cfg.seed,
                           warmup_steps=min(100, max((cfg.steps or 100) // 10, 1)),
                           category_weight=cfg.category_weight or 0.0, **text_tower(cfg.unlock_text_layers),
                           **({"lr": cfg.lr} if cfg.lr else {}))
        model, result = train_candidate(model_cfg, train, tcfg, seed=cfg.seed, init_state=init_state)
    size = pixel_geometry(model_cfg)
    row["train_items"], row["valid_items"] = len(train), len(valid)
    row["train_seconds"], row["samples_per_s"] = result.seconds, result.samples_per_s
    ecfg = EvalConfig(gallery_size=cfg.gallery_size, probe_train=cfg.probe_train)
    cand = evaluate(in_memory_encoder(model, model_cfg), train, valid, ecfg)

    if champ.pixel_geometry != size:  # the champion may use another geometry: same products, its own pixels
        # The split is recomputed from the same rows and ids, so both models see the same products.
        ctrain, cvalid, _ = build_data(pdf, paths, champ.pixel_geometry, cfg.valid_percent, classes)
    else:
        ctrain, cvalid = train, valid
    base = evaluate(champ, ctrain, cvalid, ecfg)
    metric = SelectionMetric()
    c_score, b_score = metric(cand), metric(base)
    better = c_score > b_score + cfg.min_improvement
    row.update(selection_metric=metric.name, candidate_score=c_score, champion_score=b_score,
               candidate_metrics={k: float(v) for k, v in cand.items()},
               champion_metrics={k: float(v) for k, v in base.items()}, champion_version=champ_label)
    card = model_card(
        title="catalog encoder retrained on the catalog",
        summary=f"Candidate of retrain run `{cfg.run_id}`, compared with `{champ_label}`.",
        training=(f"{start}; {result.steps} steps, {result.samples} samples, {result.seconds:.0f} s "
                  f"({result.samples_per_s:.0f} samples/s); config: {tcfg}."),
        data=f"{snapshot}; {len(train)} train / {len(valid)} held-out products (hash of product_id).",
        evaluation=(f"Held-out split; selection metric {metric.name}: candidate {c_score:.4f}, champion "
                    f"{b_score:.4f}; {'promoted' if better else 'not promoted'}."),
        columns={champ_label: base, "candidate": cand},
        reproduce="spark-submit jobs/retrain.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                              (("catalog", cfg.catalog), ("lake", cfg.lake))),
        limitations="English text tower (MiniLM). Evaluated on the catalog's own held-out products only.",
    )
    metrics = {"valid": cand, "champion_valid": base, "champion": champ_label, "selection_metric": metric.name,
               "selection_score": c_score}
    version = save_candidate(root, "catalog-retrain", model, model_cfg, tcfg, result, metrics, snapshot, card,
                             image_bf16=measure_image_bf16(model, valid.pixels))
    row["candidate_version"] = f"store:{version}"
    heads_note = train_heads(root, version, in_memory_encoder(model, model_cfg), train, valid, classes, snapshot)
    if not better:
        row["status"] = "kept_champion"
        row["message"] = f"candidate {c_score:.4f} <= champion {b_score:.4f} + {cfg.min_improvement}; {heads_note}"
        return 0
    try:
        promote(root, version)
    except ModelIntegrityError as e:
        row["message"] = f"promotion refused: {e}"
        log.error("%s", row["message"])
        return 1
    row["status"], row["promoted"] = "promoted", True
    row["message"] = f"candidate {c_score:.4f} > champion {b_score:.4f}; {heads_note}"
    return 0


def retrain_pair_scorer(cfg: Any) -> str:
    """Retrain the pair scorer with the (possibly new) champion's title embeddings; promote it if its valid F1
    beats the current scorer's. Returns a one-line summary for the run's message."""
    from models.matching.train import retrain_scorer

    ref, label = _champion(store_root(cfg.model_store))
    out = retrain_scorer(cfg.matching_data, Path(cfg.scorer_store) if cfg.scorer_store else None, ref)
    log.info("pair scorer retrained with %s: %s", label, out)
    return (f"pair scorer {out['version']} valid F1 {out['valid_f1']:.4f} vs {out['champion_valid_f1']:.4f}: "
            f"{'promoted' if out['promoted'] else 'kept'}")


def train_heads(root: Path, version: str, encoder: Any, train: TrainData, valid: TrainData, classes: list[str],
                snapshot: str) -> str:
    """A category head on the candidate's embeddings, from the catalog's seller categories, stored for the
    candidate's version (the enrich job picks it when it runs that encoder). Returns a note for the run row."""
    from models.heads.bundle import HeadBundle, save_heads
    from models.heads.metrics import accuracy_f1
    from models.heads.train import HeadTrainConfig, fit_head
    from models.training.evaluate import embed_data

    if train.labels is None or len(np.unique(train.labels[train.labels >= 0])) < 2:
        return "no category head (fewer than two seller categories)"
    tr_img, tr_txt = embed_data(encoder, train)
    va_img, va_txt = embed_data(encoder, valid)
    d = tr_txt.shape[1]
    hcfg = HeadTrainConfig(ema_decay=0.99, fgm_eps=0.5, rdrop_alpha=1.0, clean_labels=len(train) >= 1000,
                           clean_weight=0.3, lexical_all_rows=True, image_dropout=0.1, prior_adjustment=True)
    head = fit_head(np.concatenate([tr_txt, tr_img], axis=1), train.labels, classes, hcfg, name="category",
                    inputs="text+image", text_slice=slice(0, d), image_slice=slice(d, 2 * d))
    m = accuracy_f1(valid.labels, head.predict(va_txt, va_img).argmax(axis=1))
    hv = save_heads(root, "heads-catalog", HeadBundle(version, head), training_data=snapshot,
                    metrics={"category_valid": m},
                    card=(f"# Head bundle {{version}}\n\nCategory head ({len(classes)} seller categories) for encoder "
                          f"`{version}`; held-out accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} "
                          f"on {m['n']} products.\n"))
    log.info("category head %s: held-out accuracy %.3f", hv, m["accuracy"])
    return f"category head {hv} (held-out accuracy {m['accuracy']:.3f})"
