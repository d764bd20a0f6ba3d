"""Frozen training configuration: passed explicitly to the training loop, never an argparse namespace."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BatchSchedule", "TrainConfig", "text_tower"]


@dataclass(frozen=True)
class BatchSchedule:
    """Batch size per epoch: ``base``, doubled at each epoch listed in ``double_at`` (e-CLIP's batch-size schedule).

    Large contrastive batches converge slowly from scratch; starting small and growing the batch gives many cheap
    updates early and many hard negatives late.
    """

    base: int = 128
    double_at: tuple[int, ...] = ()
    max_size: int = 1 << 16

    def __post_init__(self) -> None:
        if self.base < 2:
            raise ValueError(f"BatchSchedule.base must be >= 2 (a contrastive batch needs negatives), got {self.base}")
        if any(e < 0 for e in self.double_at):
            raise ValueError(f"BatchSchedule.double_at must hold epochs >= 0, got {self.double_at}")

    def batch_size(self, epoch: int) -> int:
        doublings = sum(1 for e in self.double_at if e <= epoch)
        return min(self.base << doublings, self.max_size)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run; recorded in the model's manifest."""

    epochs: int = 1
    max_steps: int | None = None          # stop early after this many optimiser steps (tests, smoke runs)
    schedule: BatchSchedule = field(default_factory=BatchSchedule)
    chunk_size: int = 256                 # gradient-cache chunk: the largest sub-batch that goes through a tower
    lr: float = 1e-3
    text_lr: float = 1e-4                 # for the text projection / unlocked text layers
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_logit_scale: float = 4.6052       # ln(100), as CLIP: keeps the temperature from collapsing
    lock_text: bool = True                # True: MiniLM frozen, only its projection trains (features precomputed)
    unlocked_text_layers: int = 0         # with lock_text=False: how many top transformer layers train (0 = all)
    mask_false_negatives: bool = True     # drop same-cluster / same-group pairs from the negatives
    category_weight: float = 0.0          # ZhichunRoad multitask: category classification beside contrastive
    mlm_weight: float = 0.0               # ZhichunRoad multitask: masked-LM on the text tower (needs lock_text=False)
    mlm_probability: float = 0.15
    hflip: bool = True                    # random horizontal flip of product photos (shapes are symmetric)
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"TrainConfig.epochs must be >= 0, got {self.epochs}")
        if self.chunk_size < 1:
            raise ValueError(f"TrainConfig.chunk_size must be >= 1, got {self.chunk_size}")
        if self.mlm_weight > 0 and self.lock_text:
            raise ValueError("TrainConfig.mlm_weight > 0 needs lock_text=False: a masked-LM loss on a frozen "
                             "text tower trains nothing")
        if self.category_weight < 0 or self.mlm_weight < 0:
            raise ValueError("TrainConfig loss weights must be >= 0")


def text_tower(unlock_layers: int) -> dict[str, object]:
    """The :class:`TrainConfig` text-tower fields for ``--unlock-text-layers N`` (the fashion script and the
    retrain job): N > 0 fine-tunes MiniLM's top N layers, 0 keeps it frozen (only the projection trains)."""
    return {"lock_text": unlock_layers <= 0, "unlocked_text_layers": max(unlock_layers, 0)}
