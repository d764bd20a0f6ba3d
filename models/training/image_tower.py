"""A new image tower for a champion encoder, trained against its locked text space (issue 18).

The shipped encoder's image tower (a 1.6M-parameter ViT at 64 px, three epochs) reads the 60x80 fashion
photos poorly: its image-only linear probe is 0.686 against 0.946 for text. This module trains a convolutional
tower instead (any timm architecture by name, random init), on the whole photo fitted into an (H, W) box (no
square crop cutting the shoes off), with strong augmentation and a schedule long enough to converge:

* e-CLIP: symmetric InfoNCE between the image embedding and the champion's **own text embedding** of the title
  (computed once; identical titles masked out of the negatives). The text tower is copied and stays locked, so
  every text embedding the job writes, and everything built on them (the pair scorer, the heads' text side,
  adult recognition, the taxonomy fallback), stays exactly what it was;
* ZhichunRoad multitask: an articleType classifier on the image embedding beside the contrastive loss (train
  labels only); the classifier is dropped, the embedding keeps what it taught. Optionally (``--aux-weight``) one
  classifier more for each of the photo's other labels (colour and usage by default), so that a heavier
  articleType loss does not teach the embedding to forget what the photo says beside the type.

Checkpoints are written after every epoch (``--work``); a rerun with the same ``--work`` resumes. Usage (the
reproduce command of the model card)::

    python -m models.training.image_tower --data /work/shared/data/fashion --work ~/image-tower \\
        --arch regnetx_002 --epochs 16
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.arch import ENSEMBLE_KEY, FIT_PREPROCESS
from models.core.io import cache_root
from models.images import normalise_batch
from models.training.data import TrainData, encode_labels

__all__ = ["ImageTowerConfig", "augment", "aux_labels", "main", "tower_config", "train_image_tower"]

log = logging.getLogger(__name__)

WHITE = 255


@dataclass(frozen=True)
class ImageTowerConfig:
    """Everything that shapes an image-tower run; recorded in the manifest."""

    arch: str = "regnetx_002"
    image_hw: tuple[int, int] = (80, 60)
    epochs: int = 16
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    category_weight: float = 1.0
    label_smoothing: float = 0.1
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 4.6052
    shift: int = 4                # random translation in pixels (white border)
    jitter: float = 0.2           # brightness / contrast jitter (relative)
    drop_rate: float = 0.2        # dropout before the projection
    seed: int = 0
    max_steps: int | None = None  # stop early (tests, smoke runs)
    bf16: bool = False            # bf16 autocast for the tower's forward and backward (CPUs with AMX, GPUs)
    aux_weight: float = 0.0       # weight of the other labels' classifiers (0: articleType only)
    aux_columns: tuple[str, ...] = ("baseColour", "usage")
    aux_min_count: int = 5        # a value becomes a class of its classifier from this many train products on

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"ImageTowerConfig.batch_size must be >= 2 (a contrastive batch needs negatives), "
                             f"got {self.batch_size}")
        if self.epochs < 1 or self.category_weight < 0 or self.aux_weight < 0:
            raise ValueError("ImageTowerConfig needs epochs >= 1, category_weight >= 0 and aux_weight >= 0")


def tower_config(champion_cfg: dict[str, Any], arch: str, image_hw: tuple[int, int],
                 drop_rate: float = 0.0) -> dict[str, Any]:
    """The champion's architecture with its vision tower replaced by a timm ``arch`` (random init, average pooling,
    a linear projection to the shared embedding) at ``image_hw``; the text tower is the champion's. A champion
    made of several towers (``vision_ensemble``) gives one new tower."""
    cfg = json.loads(json.dumps(champion_cfg))
    cfg.pop(ENSEMBLE_KEY, None)
    cfg["vision_cfg"] = {"timm_model_name": arch, "timm_model_pretrained": False, "timm_pool": "avg",
                         "timm_proj": "linear", "timm_drop": drop_rate, "image_size": list(image_hw)}
    return cfg


PREPROCESS = FIT_PREPROCESS      # the whole photo fitted into (H, W) on white


def augment(x: Any, gen: Any, shift: int, jitter: float) -> Any:
    """Random flip, translation (white border) and brightness / contrast jitter of a (B, 3, H, W) float batch in
    0-255."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), value=float(WHITE))
        dx, dy = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=gen))
        x = padded[:, :, dy:dy + h, dx:dx + w]
    if jitter > 0:
        gain = 1 + jitter * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        offset = 100 * jitter * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
        x = ((x - mean) * gain + mean + offset).clamp(0, 255)
    return x


def aux_labels(rows: Any, columns: tuple[str, ...], min_count: int = 5) -> tuple[np.ndarray, list[list[str]]]:
    """(N, K) int64 class indices of each product's ``columns`` (-1: missing, or a value with fewer than
    ``min_count`` products in ``rows``), and each column's classes. A column the rows lack is an error."""
    import pandas as pd

    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"the products have no column {', '.join(map(repr, missing))} for the auxiliary labels; "
                         f"they have {', '.join(map(str, rows.columns))}")
    out = np.full((len(rows), len(columns)), -1, dtype=np.int64)
    classes: list[list[str]] = []
    for j, col in enumerate(columns):
        vals = [None if pd.isna(v) else str(v).strip() for v in rows[col]]            # missing: no label
        counts = Counter(v for v in vals if v)                                         # blank: no label
        out[:, j], kept = encode_labels(vals, sorted(v for v, c in counts.items() if c >= min_count))
        classes.append(kept)
    return out, classes


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _save_checkpoint(ckpt: Path, parts: dict[str, Any], gen: Any, state: dict[str, Any]) -> None:
    """Write the training state atomically (a crash mid-write leaves the previous checkpoint)."""
    import torch

    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save({**{k: v.state_dict() for k, v in parts.items()}, "gen": gen.get_state(),
                "state": json.dumps(state)}, tmp)
    tmp.replace(ckpt)


def _load_checkpoint(ckpt: Path, parts: dict[str, Any], gen: Any) -> dict[str, Any]:
    """Restore what :func:`_save_checkpoint` wrote (tensors only: ``weights_only``); returns the loop state."""
    import torch

    saved = torch.load(ckpt, weights_only=True)
    other = sorted(set(parts) ^ (set(saved) - {"gen", "state"}))
    if other:
        raise ValueError(f"the checkpoint {ckpt} was written by a run with other parts ({', '.join(other)}: "
                         f"--aux-weight on one side only?); resume with the same options, or use a fresh --work")
    for k, v in parts.items():
        v.load_state_dict(saved[k])
    gen.set_state(saved["gen"])
    state: dict[str, Any] = json.loads(saved["state"])
    log.info("resumed from %s at epoch %d (step %d)", ckpt, state["epoch"], state["step"])
    return state


def _losses(visual: Any, head: Any, logit_scale: Any, x: Any, text: Any, groups: Any, y: Any,
            cfg: ImageTowerConfig, aux_heads: Any = None, aux_y: Any = None) -> tuple[Any, Any, float, Any]:
    """One batch's (contrastive loss, category loss, category accuracy, auxiliary loss): the tower's forward
    under bf16 autocast where ``cfg.bf16``, the losses in fp32. The auxiliary loss is the mean over the other
    labels' classifiers (``aux_heads``, one per column of ``aux_y``) of their cross-entropy; 0 without them."""
    import torch
    import torch.nn.functional as F

    from models.training.losses import clip_loss

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        z = visual(x)
    z = F.normalize(z.float(), dim=-1)
    clip = clip_loss(z, text, logit_scale, groups, cfg.max_logit_scale)
    aux = z.sum() * 0.0
    if aux_y is not None:
        terms = [F.cross_entropy(h(z * 10.0), aux_y[:, j], ignore_index=-1, label_smoothing=cfg.label_smoothing)
                 for j, h in enumerate(aux_heads) if bool((aux_y[:, j] >= 0).any())]
        if terms:
            aux = torch.stack(terms).mean()
    if cfg.category_weight > 0 and bool((y >= 0).any()):
        cat_logits = head(z * 10.0)
        cat = F.cross_entropy(cat_logits, y, ignore_index=-1, label_smoothing=cfg.label_smoothing)
        return clip, cat, float((cat_logits.argmax(1) == y)[y >= 0].float().mean()), aux
    return clip, z.sum() * 0.0, 0.0, aux


def _aux_parts(aux: tuple[np.ndarray, list[int]] | None, cfg: ImageTowerConfig, n: int, dim: int
               ) -> tuple[Any, Any]:
    """(one linear classifier per auxiliary column, the (n, K) labels as a tensor), or (no classifiers, None) where
    the run learns no other labels."""
    import torch
    from torch import nn

    if aux is None or cfg.aux_weight <= 0:
        return nn.ModuleList(), None
    if aux[0].shape != (n, len(aux[1])):
        raise ValueError(f"the auxiliary labels must be ({n}, {len(aux[1])}), got {aux[0].shape}")
    return (nn.ModuleList(nn.Linear(dim, max(int(k), 1)) for k in aux[1]),
            torch.from_numpy(np.ascontiguousarray(aux[0], dtype=np.int64)))


def train_image_tower(model: Any, data: TrainData, text_emb: np.ndarray, cfg: ImageTowerConfig,
                      work: Path | None = None, aux: tuple[np.ndarray, list[int]] | None = None) -> dict[str, Any]:
    """Train ``model.visual`` (everything else frozen) on ``data`` against the fixed, L2-normalised ``text_emb``
    (N, D) of its titles. ``aux``: the other labels, (N, K) class indices (-1: none) and each column's number of
    classes, learnt with weight ``cfg.aux_weight``. Resumes from ``work/checkpoint.pt`` when present; returns
    steps, samples, seconds and the per-epoch history."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.requires_grad_(False)
    visual = model.visual.to(memory_format=torch.channels_last).requires_grad_(True)
    head = nn.Linear(text_emb.shape[1], max(int(data.n_classes), 1))
    aux_heads, aux_y = _aux_parts(aux, cfg, len(data), text_emb.shape[1])
    # A module holding the temperature, so that the checkpoint saves every part the same way.
    temp = nn.ParameterDict({"logit_scale": nn.Parameter(torch.tensor(cfg.init_logit_scale))})
    opt = torch.optim.AdamW([{"params": list(visual.parameters()) + list(head.parameters())
                              + list(aux_heads.parameters()), "weight_decay": cfg.weight_decay},
                             {"params": list(temp.parameters()), "weight_decay": 0.0}], lr=cfg.lr)
    parts = {"visual": visual, "head": head, "temp": temp, "opt": opt}
    if aux_y is not None:
        parts["aux_heads"] = aux_heads
    n = len(data)
    per_epoch = max(1, n // cfg.batch_size)   # a catalog smaller than a batch still trains
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(per_epoch * cfg.epochs, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_fraction * total))
    ckpt = work / "checkpoint.pt" if work else None
    state: dict[str, Any] = ({"epoch": 0, "step": 0, "seconds": 0.0, "history": []}
                             if ckpt is None or not ckpt.is_file() else _load_checkpoint(ckpt, parts, gen))
    pixels = torch.from_numpy(data.pixels).permute(0, 3, 1, 2)          # (N, 3, H, W) uint8 view
    text = torch.from_numpy(np.ascontiguousarray(text_emb, dtype=np.float32))
    labels = torch.from_numpy(data.labels if data.labels is not None else np.full(n, -1, dtype=np.int64))
    groups = torch.from_numpy(data.groups) if data.groups is not None else None
    pp = model.visual.preprocess_cfg
    mean, std = tuple(pp["mean"]), tuple(pp["std"])
    step = state["step"]
    for epoch in range(state["epoch"], cfg.epochs):
        if step >= total:
            break
        visual.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        sums = {"clip": 0.0, "category": 0.0, "aux": 0.0, "acc": 0.0, "batches": 0}
        for b in range(min(per_epoch, total - step)):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = normalise_batch(augment(pixels[idx].float(), gen, cfg.shift, cfg.jitter), mean, std)
            clip, cat, acc, aux_loss = _losses(visual, head, temp["logit_scale"], x, text[idx],
                                               None if groups is None else groups[idx], labels[idx], cfg,
                                               aux_heads, None if aux_y is None else aux_y[idx])
            sums["acc"] += acc
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _schedule(step, total, warmup)
            opt.zero_grad(set_to_none=True)
            (clip + cfg.category_weight * cat + cfg.aux_weight * aux_loss).backward()
            opt.step()
            step += 1
            sums["clip"] += clip.item()
            sums["category"] += cat.item()
            sums["aux"] += aux_loss.item()
            sums["batches"] += 1
        k = max(sums["batches"], 1)
        row = {"epoch": epoch, "step": step, "clip": round(sums["clip"] / k, 4),
               "category": round(sums["category"] / k, 4), "train_acc": round(sums["acc"] / k, 4),
               **({"aux": round(sums["aux"] / k, 4)} if aux_y is not None else {}),
               "seconds": round(time.perf_counter() - t0, 1)}
        state["history"].append(row)
        state["seconds"] += row["seconds"]
        state["epoch"], state["step"] = epoch + 1, step
        log.info("epoch %d: %s", epoch, row)
        if ckpt is not None:
            _save_checkpoint(ckpt, parts, gen, state)
    visual.eval()
    model.requires_grad_(False)
    return {"steps": state["step"], "samples": state["step"] * cfg.batch_size, "seconds": state["seconds"],
            "history": state["history"]}


def champion_text_embeddings(encoder: Any, titles: tuple[str, ...], cache: Path | None) -> np.ndarray:
    """The champion's L2-normalised text embedding of every title (cached: the MiniLM pass costs minutes)."""
    if cache is not None and cache.is_file():
        emb = np.load(cache)
        if emb.shape[0] == len(titles):
            return emb
    emb = encoder.embed_texts(list(titles))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, emb)
    return emb


def build_candidate(champion_dir: Path, cfg: ImageTowerConfig) -> tuple[Any, dict[str, Any]]:
    """(model, model config): the new image tower (seeded random init) with the champion's text tower loaded."""
    from models.arch import build_clip
    from models.training.pipeline import stored_state

    champ_cfg, champ_state = stored_state(champion_dir)
    model_cfg = tower_config(champ_cfg, cfg.arch, cfg.image_hw, cfg.drop_rate)
    model = build_clip(model_cfg, PREPROCESS, seed=cfg.seed)
    text_state = {k: v for k, v in champ_state.items() if k.startswith("text.")}
    missing, unexpected = model.load_state_dict(text_state, strict=False)
    if unexpected:
        raise ValueError(f"the champion's text tower does not fit: unexpected {unexpected[:5]}")
    # The champion's fine-tuned text layers are stored again with the new version (the package's are not them).
    model.stored_text_keys = frozenset(k for k in text_state if k.startswith("text.transformer."))
    if "logit_scale" in champ_state:
        model.logit_scale.data.copy_(champ_state["logit_scale"])
    return model, model_cfg


def _card(cfg: ImageTowerConfig, champion: str, split: Any, result: dict[str, Any],
          cand: dict[str, float], champ: dict[str, float], params: int, bf16: dict[str, Any]) -> str:
    from models.encoders import IMAGE_BF16_FLOOR, IMAGE_BF16_KEY, image_bf16_holds
    from models.training.card import model_card

    h, w = cfg.image_hw
    bf16_note = (f" Under bf16 autocast on a CPU (its serving form) the image embeddings of the "
                 f"{bf16.get('photos', 0)} valid photos keep a cosine of at least {bf16.get('cosine_min', 0):.5f} "
                 f"to the fp32 ones (median {bf16.get('cosine_median', 0):.5f}), "
                 + ("so the enrich job runs this tower in bf16 where its --precision resolves to bf16."
                    if image_bf16_holds({IMAGE_BF16_KEY: bf16}) else
                    f"under the {IMAGE_BF16_FLOOR} floor: the enrich job runs this tower in fp32 on a CPU."))

    aux_note = (f" Beside it one classifier each for {', '.join(cfg.aux_columns)} on the same embedding (the mean "
                f"of their cross-entropies, weight {cfg.aux_weight}; values with at least {cfg.aux_min_count} train "
                f"products), dropped after training too." if cfg.aux_weight > 0 else "")
    return model_card(
        title=f"catalog-minilm-{cfg.arch}: a convolutional image tower for the fashion catalog",
        summary=(f"The shipped default model: a {params / 1e6:.1f}M-parameter `{cfg.arch}` image tower (timm, "
                 f"random init, trained here) that reads the whole photo fitted into a {w}x{h} box on white (nothing "
                 f"cropped{'; the 60x80 fashion photos are upsampled' if h > 80 else ''}), aligned to the text tower "
                 f"of `{champion}`, which it carries unchanged: every text embedding is that version's, bit for bit."),
        training=(f"e-CLIP: symmetric InfoNCE between the image embedding and the champion's fixed text embedding of "
                  f"the title (learned temperature, clamped; identical titles masked out of the negatives). "
                  f"ZhichunRoad multitask: an articleType classifier on the image embedding (cross-entropy, weight "
                  f"{cfg.category_weight}, label smoothing {cfg.label_smoothing}), train labels only, dropped after "
                  f"training.{aux_note} Augmentation: horizontal flips, shifts of up to {cfg.shift} px on a white "
                  f"border, brightness and contrast jitter {cfg.jitter}. AdamW lr {cfg.lr}, weight decay "
                  f"{cfg.weight_decay}, {cfg.warmup_fraction:.0%} warm-up then cosine decay, batch "
                  f"{cfg.batch_size}, {cfg.epochs} epochs{', bf16 autocast' if cfg.bf16 else ''}: {result['steps']} "
                  f"steps, {result['samples']} samples in {result['seconds'] / 60:.1f} min on 2 CPU cores."),
        data=(f"`fashion/` of the project's research data (Kaggle \"Fashion Product Images (Small)\", Myntra; "
              f"research licence, not redistributed): {split.snapshot}. Split by a hash of product_id "
              f"(sha256, bucket < 10 of 100 = valid): {len(split.train)} train, {len(split.valid)} valid products; "
              f"the model never saw the valid split."),
        evaluation=("On the valid split, with the protocol of the champion's card (retrieval gallery = the first "
                    f"{int(cand['gallery_size'])} valid products; linear probe on "
                    f"{int(cand.get('probe_train_items', 0))} random train products, accuracy on every valid "
                    "product). The champion's figures are those "
                    "recorded in its manifest (same split, same protocol, its own photo geometry)." + bf16_note),
        columns={f"champion `{champion}`": champ, "this model": cand},
        reproduce=(f"python -m models.training.image_tower --data /work/shared/data/fashion --work DIR --arch "
                   f"{cfg.arch} --epochs {cfg.epochs} --batch {cfg.batch_size} --lr {cfg.lr} --category-weight "
                   f"{cfg.category_weight} --seed {cfg.seed} --champion {champion} --image-hw "
                   f"{cfg.image_hw[0]}x{cfg.image_hw[1]}{' --bf16' if cfg.bf16 else ''}"
                   + (f" --aux-weight {cfg.aux_weight} --aux-columns {','.join(cfg.aux_columns)}"
                      if cfg.aux_weight > 0 else "")),
        limitations=(f"Tiny photos (60x80{', upsampled to the box' if h > 80 else ''}): good for type and colour, "
                     "not for fine detail. The text tower is the champion's (English only; see its card). Fashion "
                     "titles are templated, so text metrics are optimistic for free-form seller titles."),
    )


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--image-hw must read HxW (two whole numbers), got {text!r}") from None
    if h < 16 or w < 16:
        raise SystemExit(f"--image-hw must be at least 16x16, got {text!r}")
    return h, w


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the fashion folder (products.parquet + images/)")
    p.add_argument("--work", required=True, help="folder for the checkpoint (a rerun resumes from it)")
    p.add_argument("--store", default=None, help="model store root (default: the store shipped in models/store)")
    p.add_argument("--champion", default=None, help="the version whose text tower is kept (default: current)")
    p.add_argument("--cache-dir", default=None)
    d = ImageTowerConfig()
    p.add_argument("--arch", default=d.arch, help="a timm architecture name (random init)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--category-weight", type=float, default=d.category_weight)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--image-hw", default="x".join(map(str, d.image_hw)),
                   help="the (H)x(W) box each photo is fitted into, e.g. 120x90 (default %(default)s)")
    p.add_argument("--bf16", action="store_true", help="train under bf16 autocast (fast on CPUs with AMX)")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight,
                   help="weight of a classifier for each of --aux-columns beside articleType's (default 0: none)")
    p.add_argument("--aux-columns", default=",".join(d.aux_columns),
                   help="the products' label columns the auxiliary classifiers learn (default %(default)s)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-promote", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from models.encoders import IMAGE_BF16_KEY, image_bf16_holds, load_encoder, measure_image_bf16
    from models.store import current_version, promote, read_manifest, store_root, version_dir
    from models.training.evaluate import EvalConfig, SelectionMetric, evaluate
    from models.training.fashion import load_fashion
    from models.training.pipeline import in_memory_encoder, same_embeddings, stored_preprocess

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ImageTowerConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                           category_weight=args.category_weight, seed=args.seed, max_steps=args.max_steps,
                           image_hw=_hw(args.image_hw), bf16=args.bf16, aux_weight=args.aux_weight,
                           aux_columns=tuple(c.strip() for c in args.aux_columns.split(",") if c.strip()))
    root = store_root(args.store)
    champion = args.champion or current_version(root)
    if not champion:
        raise SystemExit(f"no --champion given and no current version in {root}")
    champ_dir = version_dir(root, champion)
    split = load_fashion(args.data, size=cfg.image_hw, cache_dir=args.cache_dir)
    log.info("train %d valid %d classes %d; champion %s", len(split.train), len(split.valid), len(split.classes),
             champion)
    cache = Path(args.cache_dir) if args.cache_dir else cache_root()
    digest = hashlib.sha256(("\n".join(split.train.titles) + champion).encode()).hexdigest()[:12]
    champ_enc = load_encoder(str(champ_dir), "cpu")
    text_emb = champion_text_embeddings(champ_enc, split.train.titles, cache / f"text-{digest}.npy")
    model, model_cfg = build_candidate(champ_dir, cfg)
    work = Path(args.work).expanduser()
    aux = None
    if cfg.aux_weight > 0:
        try:
            y_aux, aux_classes = aux_labels(split.train_rows, cfg.aux_columns, cfg.aux_min_count)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        aux = (y_aux, [len(c) for c in aux_classes])
        log.info("auxiliary labels: %s", dict(zip(cfg.aux_columns, map(len, aux_classes), strict=True)))
    result = train_image_tower(model, split.train, text_emb, cfg, work, aux=aux)
    torch.set_grad_enabled(False)
    ecfg = EvalConfig()
    cand = evaluate(in_memory_encoder(model, model_cfg), split.train, split.valid, ecfg)
    champ = read_manifest(champ_dir).get("metrics", {}).get("valid", {})
    params = sum(p.numel() for p in model.visual.parameters())
    metrics = {"valid": cand, "champion_valid": champ, "champion": champion,
               "selection_metric": SelectionMetric().name, "selection_score": SelectionMetric()(cand)}
    from models.store import save_version, trained_state_dict

    pp = stored_preprocess(model)
    bf16 = measure_image_bf16(model, split.valid.pixels)
    extra = {"base_architecture": f"catalog-minilm-{cfg.arch}", "languages": ["en"], "text_tower_of": champion,
             "train_config": {k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in dataclasses.asdict(cfg).items()},
             "training": {"steps": result["steps"], "samples": result["samples"],
                          "seconds": round(result["seconds"], 1), "history": result["history"]},
             IMAGE_BF16_KEY: bf16}
    log.info("image tower under bf16 autocast on a CPU: %s (%s)", bf16,
             "holds, runs bf16 where the job's precision is" if image_bf16_holds(extra) else "stays fp32")
    card = _card(cfg, champion, split, result, cand, champ, params, bf16)
    version = save_version(root, f"catalog-minilm-{cfg.arch.replace('_', '')}-fashion", model_cfg, pp,
                           trained_state_dict(model), training_data=split.snapshot, metrics=metrics, extra=extra,
                           card=card)
    stored = load_encoder(str(root / version), "cpu")
    if not same_embeddings(stored, in_memory_encoder(model, model_cfg), split.valid):
        log.error("the stored version %s does not reproduce the trained model's embeddings", version)
        return 1
    titles = list(split.valid.titles[:64])
    if not np.allclose(stored.embed_texts(titles), champ_enc.embed_texts(titles), atol=1e-6):
        log.error("the stored version %s does not keep the champion's text embeddings", version)
        return 1
    if not args.no_promote:
        promote(root, version)
    log.info("saved %s in %s%s: %s", version, root, "" if args.no_promote else " (now current)",
             {k: round(v, 4) for k, v in cand.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
