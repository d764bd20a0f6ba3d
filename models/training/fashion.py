"""The shipped default model: contrastive pre-training on the fashion catalog (Myntra, research data).

Usage (the reproduce command of the model card)::

    python -m models.training.fashion --data /work/shared/data/fashion --epochs 2 --batch 128 --double-at 1 \\
        --max-steps 330 --seed 0

The data stays where it is (never copied into the repository); decoded images are cached under
``--cache-dir`` (default ``~/.cache/catalog-enrich``) so that a rerun skips decoding.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.core.io import cache_root
from models.digest import sha256_file
from models.store import trained_state_dict
from models.training.card import model_card
from models.training.config import BatchSchedule, TrainConfig, text_tower
from models.training.data import TrainData, decode_all, encode_labels, group_ids, split_of
from models.training.evaluate import EvalConfig, SelectionMetric, evaluate
from models.training.pipeline import (
    candidate_config,
    in_memory_encoder,
    same_embeddings,
    save_candidate,
    stored_state,
    train_candidate,
)
from models.training.trainer import TrainResult

__all__ = ["FashionSplit", "load_fashion", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FashionSplit:
    train: TrainData
    valid: TrainData
    classes: list[str]
    snapshot: str          # "products.parquet sha256:..." recorded in the manifest
    train_rows: pd.DataFrame | None = None   # the products behind ``train`` / ``valid``, same order, all columns
    valid_rows: pd.DataFrame | None = None



def load_fashion(root: str | Path, size: int | tuple[int, int] = 64,
                 cache_dir: str | Path | None = None) -> FashionSplit:
    """Products with a decodable image, split 90/10 by a hash of product_id; labels = articleType. ``size``: the
    side of a centre square, or an (H, W) box the whole photo is fitted into."""
    root = Path(root)
    table = root / "products.parquet"
    digest = sha256_file(table)
    df = pd.read_parquet(table).sort_values("product_id", kind="stable").reset_index(drop=True)
    # "trim": photos decoded since plain margins that pad a photo to another shape are cut (models.images)
    tag = size if isinstance(size, int) else f"fit{size[0]}x{size[1]}-trim"
    cache = (Path(cache_dir) if cache_dir else cache_root()) / f"fashion-{digest[:12]}-{tag}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            pixels, ok = z["pixels"], z["ok"]
    else:
        log.info("decoding %d images (cached afterwards in %s)", len(df), cache)
        pixels, ok = decode_all([root / p for p in df["image_path"]], size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, pixels=pixels, ok=ok)
    df, pixels = df[ok].reset_index(drop=True), pixels[ok]
    labels, classes = encode_labels(df["articleType"].tolist())
    # Identical titles are the fashion data's stand-in for a duplicate cluster: such pairs are no negatives.
    groups = group_ids([" ".join(str(t).lower().split()) for t in df["title"]])[:, None]
    data = TrainData(pixels, tuple(str(t) for t in df["title"]), groups, labels, len(classes))
    is_valid = np.array([split_of(str(p)) == "valid" for p in df["product_id"]])
    tr, va = np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    return FashionSplit(data.subset(tr), data.subset(va), classes, f"{table.name} sha256:{digest}",
                        df.iloc[tr].reset_index(drop=True), df.iloc[va].reset_index(drop=True))


REPRODUCE = ("python -m models.training.fashion --data /work/shared/data/fashion "
             "--epochs {epochs} --batch {batch} --double-at {double_at} --max-steps {max_steps} --seed {seed} "
             "--category-weight {category_weight} --lr {lr} --text-lr {text_lr} --warmup-steps {warmup} "
             "--text-proj {text_proj}{unlock}{init}")


def _labels_note(cfg: TrainConfig) -> str:
    if cfg.category_weight <= 0:
        return "No category labels were used in training."
    return (f"ZhichunRoad multitask pre-training: a shared linear articleType classifier on the image and the text "
            f"embeddings (cross-entropy, weight {cfg.category_weight}) trained beside the contrastive loss, on the "
            f"train split's labels only; the classifier itself is dropped, the embeddings keep what it taught.")


def _text_side(cfg: TrainConfig) -> str:
    if cfg.lock_text:
        return "MiniLM locked (its pooled features computed once), only the text projection trains on the text side"
    return (f"MiniLM's top {cfg.unlocked_text_layers} transformer layer(s) fine-tuned with the text projection "
            f"(the layers below stay frozen)")


PROJ_TEXT = {"mlp": "a trained 2-layer MLP projection",
             "linear": "a trained linear projection that started as the identity"}


def _card(cfg: TrainConfig, args: argparse.Namespace, split: FashionSplit, result: TrainResult,
          cand: dict[str, float], base: dict[str, float], probe_train: int) -> str:
    sched = ", ".join(f"epoch {e}: {cfg.schedule.batch_size(e)}" for e in range(cfg.epochs))
    return model_card(
        title="catalog-tiny-minilm, contrastively pre-trained on the fashion catalog",
        summary=(f"The shipped default model: the `catalog-tiny-minilm` architecture (a 1.6M-parameter ViT at 64 px "
                 f"trained from scratch, and the {'frozen' if cfg.lock_text else 'partly fine-tuned'} MiniLM text "
                 f"tower with {PROJ_TEXT[args.text_proj]}), "
                 "aligned e-CLIP style on product titles and photos."),
        training=(f"Symmetric InfoNCE with a learned, clamped temperature; identical titles masked out of the "
                  f"negatives (the fashion data has no duplicate-cluster ids); {_text_side(cfg)}; batch-size schedule "
                  f"({sched}); AdamW lr {cfg.lr} (text projection {cfg.text_lr}), cosine decay, "
                  f"{cfg.warmup_steps} warm-up steps; random horizontal flips. {result.steps} steps, "
                  f"{result.samples} samples in {result.seconds / 60:.1f} min on 2 CPU cores "
                  f"({result.samples_per_s:.0f} samples/s). " + _labels_note(cfg)
                  + (f" Continued from the weights of `{args.init_from}` (its own card says how it was trained)."
                     if args.init_from else "")),
        data=(f"`fashion/` of the project's research data (Kaggle \"Fashion Product Images (Small)\", Myntra; "
              f"research licence, not redistributed): {split.snapshot}. Split by a hash of product_id "
              f"(sha256, bucket < 10 of 100 = valid): {len(split.train)} train, {len(split.valid)} valid products; "
              f"the model never saw the valid split."),
        evaluation=(f"On the valid split. Retrieval: gallery = the first {int(cand['gallery_size'])} valid products "
                    f"by product_id; a hit is any gallery item with the query's own title (identical titles embed "
                    f"identically). Linear probe: articleType ({len(split.classes)} classes), logistic regression on "
                    f"standardised embeddings of {probe_train} random train products, accuracy on all "
                    f"{len(split.valid)} valid products. Baseline: the same architecture without contrastive "
                    f"pre-training (`builtin:catalog-tiny-minilm`: seeded random image tower, frozen MiniLM, identity "
                    f"text projection)."),
        columns={"baseline (untrained)": base, "this model": cand},
        reproduce=REPRODUCE.format(epochs=args.epochs, batch=args.batch, double_at=args.double_at,
                                   max_steps=args.max_steps, seed=args.seed,
                                   category_weight=args.category_weight, lr=args.lr, text_lr=args.text_lr,
                                   warmup=args.warmup_steps, text_proj=args.text_proj,
                                   unlock=(f" --unlock-text-layers {args.unlock_text_layers}"
                                           if args.unlock_text_layers else ""),
                                   init=f" --init-from {args.init_from}" if args.init_from else ""),
        limitations=("Tiny images (60x80 photos at 64 px) and a tiny image tower: good for coarse type and colour, "
                     "not for fine detail. Fashion titles are templated (\"Brand Gender Colour Type\"), so text "
                     "metrics are optimistic for free-form seller titles. English only (see Languages)."),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the fashion folder (products.parquet + images/)")
    p.add_argument("--store", default=None, help="model store root (default: the store shipped in models/store)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--prepare-only", action="store_true", help="decode and cache the images, then stop")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--double-at", default="2", help="comma-separated epochs at which the batch doubles")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None,
                   help="continue training from this store version's weights (same architecture)")
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate of the image tower")
    p.add_argument("--text-lr", type=float, default=TrainConfig.text_lr, help="peak learning rate of the text side")
    p.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    p.add_argument("--category-weight", type=float, default=0.0,
                   help="ZhichunRoad multitask: weight of an articleType classification loss beside the contrastive "
                        "loss (0 = contrastive only)")
    p.add_argument("--text-proj", default="mlp", choices=("mlp", "linear"),
                   help="text projection on the locked MiniLM: a 2-layer MLP, or a linear map that starts as the "
                        "identity (the untrained baseline's text space)")
    p.add_argument("--unlock-text-layers", type=int, default=0,
                   help="fine-tune MiniLM's top N transformer layers (at the text learning rate); 0 = MiniLM locked")
    p.add_argument("--checkpoint", default=None, help="raw weights written right after training / reused")
    p.add_argument("--no-promote", action="store_true")
    return p


def _train(args: argparse.Namespace, split):
    """(model, model config, train config, result): trained now, or reloaded from ``--checkpoint``."""
    from safetensors.torch import load_file, save_file

    from models.arch import build_clip
    from models.store import store_root

    double_at = tuple(int(x) for x in args.double_at.split(",") if x.strip())
    cfg = TrainConfig(epochs=args.epochs, max_steps=args.max_steps, schedule=BatchSchedule(args.batch, double_at),
                      chunk_size=512, seed=args.seed, category_weight=args.category_weight, lr=args.lr,
                      text_lr=args.text_lr, warmup_steps=args.warmup_steps, **text_tower(args.unlock_text_layers))
    model_cfg = candidate_config(text_proj=args.text_proj)
    if args.checkpoint and Path(args.checkpoint).is_file():
        model = build_clip(model_cfg, seed=args.seed)
        model.load_state_dict(load_file(args.checkpoint), strict=False)
        result = TrainResult(**json.loads(Path(args.checkpoint + ".json").read_text()))
        return model, model_cfg, cfg, result
    titles_digest = hashlib.sha256("\n".join(split.train.titles).encode()).hexdigest()[:12]
    cache = (Path(args.cache_dir) if args.cache_dir else cache_root()) / f"minilm-{titles_digest}.npy"
    init = None
    if args.init_from:
        from models.store import version_dir

        given = Path(args.init_from)
        vdir = given if given.is_dir() else version_dir(store_root(None), args.init_from)
        _, init = stored_state(vdir)
    model, result = train_candidate(model_cfg, split.train, cfg, seed=args.seed, feature_cache=cache,
                                    init_state=init)
    if args.checkpoint:
        save_file(trained_state_dict(model), args.checkpoint)
        Path(args.checkpoint + ".json").write_text(json.dumps(
            {"steps": result.steps, "samples": result.samples, "seconds": result.seconds}))
    return model, model_cfg, cfg, result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    split = load_fashion(args.data, cache_dir=args.cache_dir)
    log.info("train %d valid %d classes %d", len(split.train), len(split.valid), len(split.classes))
    if args.prepare_only:
        return 0
    import torch

    from models.encoders import load_encoder
    from models.store import promote, store_root

    model, model_cfg, cfg, result = _train(args, split)
    log.info("trained %d steps in %.0f s (%.1f samples/s)", result.steps, result.seconds, result.samples_per_s)
    ecfg = EvalConfig()
    torch.set_grad_enabled(False)
    cand = evaluate(in_memory_encoder(model, model_cfg), split.train, split.valid, ecfg)
    base = evaluate(load_encoder("builtin:catalog-tiny-minilm", "cpu"), split.train, split.valid, ecfg)
    metrics = {"valid": cand, "baseline_valid": base, "selection_metric": SelectionMetric().name,
               "selection_score": SelectionMetric()(cand)}
    card = _card(cfg, args, split, result, cand, base, min(ecfg.probe_train, len(split.train)))
    root = store_root(args.store)
    version = save_candidate(root, "catalog-tiny-minilm-fashion", model, model_cfg, cfg, result, metrics,
                             split.snapshot, card)
    stored = load_encoder(f"store:{version}" if args.store is None else str(root / version), "cpu")
    if not same_embeddings(stored, in_memory_encoder(model, model_cfg), split.valid):
        log.error("the stored version %s does not reproduce the trained model's embeddings", version)
        return 1
    if not args.no_promote:
        promote(root, version)
    log.info("saved %s in %s%s", version, root, "" if args.no_promote else " (now current)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
