"""An image tower made of several towers of one architecture that answer together.

Two image towers trained against the same locked text tower embed photos into the same joint space, and they err
on different photos (the shipped regnetx_002 and a second one trained with colour and usage classifiers beside
it: cosine 0.67 between their embeddings of a valid photo). The normalised mean of their unit embeddings reads
the type better than either: the image-only linear probe on the fashion valid split rose from 0.821 and 0.846 to
0.853 (EVALUATION.md). A store version says so with ``vision_ensemble: N`` in its ``model_cfg``
(:func:`models.arch.build_clip`); its weights hold ``visual.members.<i>.*`` for each tower.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ImageEnsemble"]


class ImageEnsemble(nn.Module):
    """``members`` (image towers taking the same input) as one tower: the mean of their L2-normalised outputs.

    The mean is not normalised again here: the encoder normalises what any tower returns, and training code
    that reads the raw output sees a vector whose length says how much the members agree."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an image ensemble needs at least two towers, got {len(members)}")
        sizes = {str(getattr(m, "image_size", None)) for m in members}
        if len(sizes) != 1:
            raise ValueError(f"the towers of an image ensemble must take one input size, got {sorted(sizes)}")
        self.members = nn.ModuleList(members)
        self.image_size = getattr(members[0], "image_size", None)
        self.output_dim = getattr(members[0], "output_dim", None)
        self.preprocess_cfg: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [nn.functional.normalize(m(x).float(), dim=-1) for m in self.members]
        return torch.stack(outs).mean(dim=0)

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        for m in self.members:
            m.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in self.members:
            m.set_grad_checkpointing(enable)
