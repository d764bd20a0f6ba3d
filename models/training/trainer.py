"""The contrastive training loop (e-CLIP) with optional ZhichunRoad multitask losses.

One optimiser step per batch; the batch may be far larger than what goes through a tower at once thanks to
gradient caching (:mod:`models.training.gradcache`). With a locked text tower the MiniLM features are computed
once before training (the tower never changes), so an epoch costs little more than the image tower.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.training.config import TrainConfig
from models.training.data import TrainData
from models.training.gradcache import grad_cached_backward
from models.training.losses import MlmHead, category_loss, clip_loss, mask_tokens

__all__ = ["TrainResult", "Trainer", "pixels_to_tensor", "text_features", "tokenize_all"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def pixels_to_tensor(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 normalised, as :func:`models.images.to_model_array`."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def tokenize_all(tokenizer: Any, titles: tuple[str, ...] | list[str], context_length: int) -> torch.Tensor:
    out = tokenizer(list(titles), padding="longest", truncation=True, max_length=context_length,
                    return_tensors="pt")
    return out["input_ids"]


def _pooled(text_tower: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The text tower's pooled output before its projection."""
    mask = (ids != text_tower.config.pad_token_id).long()
    return text_tower.pooler(text_tower.transformer(input_ids=ids, attention_mask=mask), mask)


def text_features(text_tower: nn.Module, ids: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Pooled features of a frozen text tower for all ``ids`` (computed once: the tower does not train)."""
    with torch.inference_mode():
        return torch.cat([_pooled(text_tower, c) for c in ids.split(batch)]).clone()


def unlock_top_layers(text_tower: nn.Module, n: int) -> None:
    """Freeze the HF text tower except its top ``n`` transformer layers (open_clip's ``lock`` needs a layer
    attribute name that its BERT entry lacks). The embeddings, lower layers and pooler stay as shipped."""
    layers = getattr(getattr(text_tower.transformer, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"cannot unlock layers of {type(text_tower.transformer).__name__}: no encoder.layer list")
    if not 0 < n <= len(layers):
        raise ValueError(f"unlocked_text_layers must be in 1..{len(layers)}, got {n}")
    for p in text_tower.transformer.parameters():
        p.requires_grad = False
    for layer in layers[len(layers) - n:]:
        for p in layer.parameters():
            p.requires_grad = True


class Trainer:
    """Trains ``model`` (an open_clip ``CustomTextCLIP`` with an HF text tower) on :class:`TrainData`."""

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: TrainConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        pp = model.visual.preprocess_cfg
        self.mean, self.std = tuple(pp["mean"]), tuple(pp["std"])
        self.context_length = int(getattr(model, "context_length", 64) or 64)
        text = model.text
        if cfg.lock_text:
            text.lock(0, freeze_layer_norm=True)
        elif cfg.unlocked_text_layers:
            unlock_top_layers(text, cfg.unlocked_text_layers)
        self.category_head: nn.Module | None = None
        self.mlm_head: MlmHead | None = None

    # -- towers as functions of a tensor batch, so that gradient caching can re-run them per chunk --
    def _embed_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(x), dim=-1)

    def _embed_text_features(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.text.proj(feats), dim=-1)

    def _embed_text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.text(ids), dim=-1)

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        named = [(f"model.{n}", p) for n, p in self.model.named_parameters()]
        for head_name, head in (("category", self.category_head), ("mlm", self.mlm_head)):
            if head is not None:
                named += [(f"{head_name}.{n}", p) for n, p in head.named_parameters()
                          if not n.startswith("word_embeddings")]
        seen: set[int] = set()
        for name, p in named:
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr = cfg.text_lr if name.startswith(("model.text.", "mlm.")) else cfg.lr
            # No decay on gains, biases and the temperature: decaying them only hurts.
            wd = cfg.weight_decay if p.ndim >= 2 else 0.0
            groups.setdefault((lr, wd), []).append(p)
        return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd, "base_lr": lr}
                                  for (lr, wd), ps in groups.items()])

    def _plan(self, n: int) -> list[tuple[int, int]]:
        """(epoch, batch_size) per step; a batch never exceeds the data (tiny catalogs)."""
        plan: list[tuple[int, int]] = []
        for epoch in range(self.cfg.epochs):
            bs = min(self.cfg.schedule.batch_size(epoch), n)
            plan += [(epoch, bs)] * (n // bs)
        return plan[: self.cfg.max_steps] if self.cfg.max_steps is not None else plan

    def _lr_factor(self, step: int, total: int) -> float:
        warm = min(self.cfg.warmup_steps, max(total // 10, 1))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

    def fit(self, data: TrainData, features: torch.Tensor | None = None) -> TrainResult:
        """Train on ``data``; ``features``: the locked text tower's pooled features of ``data.titles`` when
        already known (:func:`text_features`), to skip that pass."""
        cfg, model = self.cfg, self.model
        torch.manual_seed(cfg.seed)
        if data.labels is not None and cfg.category_weight > 0 and data.n_classes > 0:
            self.category_head = nn.Linear(model.text.output_dim, data.n_classes)
        if cfg.mlm_weight > 0:
            self.mlm_head = MlmHead(model.text.transformer.get_input_embeddings())
        ids = tokenize_all(self.tokenizer, data.titles, self.context_length)
        if cfg.lock_text:
            texts = features if features is not None else text_features(model.text, ids)
        else:
            texts = ids
        embed_text = self._embed_text_features if cfg.lock_text else self._embed_text_ids
        groups = None if data.groups is None or not cfg.mask_false_negatives else torch.from_numpy(data.groups)
        labels = None if data.labels is None else torch.from_numpy(data.labels)
        plan = self._plan(len(data))
        opt = self._optimizer()
        result = TrainResult()
        model.train()
        model.text.transformer.eval()  # no dropout: gradient caching needs identical passes
        gen = torch.Generator().manual_seed(cfg.seed)
        t0, epoch_seen, order, pos = time.perf_counter(), -1, np.arange(0), 0
        for step, (epoch, bs) in enumerate(plan):
            if epoch != epoch_seen:
                order, pos, epoch_seen = np.random.default_rng(cfg.seed + epoch).permutation(len(data)), 0, epoch
            idx = torch.from_numpy(np.sort(order[pos: pos + bs]))
            pos += bs
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * self._lr_factor(step, len(plan))
            loss = self._step(data, idx, texts, embed_text, groups, labels, ids, gen)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():  # CLIP clamps the stored scale too, not only its use in the loss
                model.logit_scale.clamp_(0, cfg.max_logit_scale)
            result.steps, result.samples = step + 1, result.samples + bs
            rec = {"step": step, "epoch": epoch, "batch": bs, "loss": loss,
                   "logit_scale": float(model.logit_scale.detach().exp())}
            result.history.append(rec)
            if step % cfg.log_every == 0 or step == len(plan) - 1:
                log.info("step %d/%d epoch %d batch %d loss %.4f scale %.1f (%.0f samples/s)", step + 1, len(plan),
                         epoch, bs, loss, rec["logit_scale"], result.samples / (time.perf_counter() - t0))
        result.seconds = time.perf_counter() - t0
        model.eval()
        return result

    def _step(self, data: TrainData, idx: torch.Tensor, texts: torch.Tensor, embed_text: Any,
              groups: torch.Tensor | None, labels: torch.Tensor | None, ids: torch.Tensor,
              gen: torch.Generator) -> float:
        cfg = self.cfg
        images = pixels_to_tensor(data.pixels[idx.numpy()], self.mean, self.std)
        if cfg.hflip:  # augmentation before gradient caching: both passes must see the same pixels
            flip = torch.rand(images.shape[0], generator=gen) < 0.5
            images[flip] = images[flip].flip(-1)
        g = None if groups is None else groups[idx]
        lab = None if labels is None else labels[idx]

        def loss_fn(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
            loss = clip_loss(img, txt, self.model.logit_scale, g, cfg.max_logit_scale)
            if self.category_head is not None and lab is not None:
                loss = loss + cfg.category_weight * category_loss(self.category_head, img, txt, lab)
            return loss

        loss = grad_cached_backward(self._embed_image, embed_text, loss_fn, images, texts[idx], cfg.chunk_size)
        if self.mlm_head is not None:
            loss += self._mlm_backward(ids[idx], gen)
        return loss

    def _mlm_backward(self, ids: torch.Tensor, gen: torch.Generator) -> float:
        """Masked-LM on the unlocked text tower, chunk by chunk (its loss is a plain mean: no coupling)."""
        tok, text, total = self.tokenizer, self.model.text, 0.0
        special = (ids == tok.pad_token_id) | (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
        masked, targets = mask_tokens(ids, tok.mask_token_id, len(tok), special, self.cfg.mlm_probability, gen)
        n = ids.shape[0]
        for m, t in zip(masked.split(self.cfg.chunk_size), targets.split(self.cfg.chunk_size), strict=True):
            if not bool((t >= 0).any()):
                continue
            attn = (m != text.config.pad_token_id).long()
            hidden = text.transformer(input_ids=m, attention_mask=attn).last_hidden_state
            logits = self.mlm_head(hidden)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), t.view(-1), ignore_index=-100)
            (self.cfg.mlm_weight * loss * m.shape[0] / n).backward()
            total += float(loss.detach()) * m.shape[0] / n
        return self.cfg.mlm_weight * total
