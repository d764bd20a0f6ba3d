"""Training losses: symmetric InfoNCE with false-negative masking, category classification and masked-LM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MlmHead", "category_loss", "clip_loss", "false_negative_mask", "mask_tokens"]


def false_negative_mask(groups: torch.Tensor | None) -> torch.Tensor | None:
    """(B, B) bool mask of pairs to drop from the negatives: same id in any column of ``groups`` (B, K).

    An id of -1 means "no group". The diagonal (the positive pair) is never masked. Two listings of the same
    product by different sellers (same duplicate cluster) are not a negative pair: e-CLIP masks them out.
    """
    if groups is None:
        return None
    if groups.dim() == 1:
        groups = groups[:, None]
    same = (groups[:, None, :] == groups[None, :, :]) & (groups[:, None, :] >= 0)
    mask = same.any(dim=-1)
    mask.fill_diagonal_(False)
    return mask if bool(mask.any()) else None


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              groups: torch.Tensor | None = None, max_logit_scale: float = 4.6052) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised ``image`` and ``text`` (B, D) with a learned temperature.

    ``logit_scale`` is the log of the inverse temperature; it is clamped at ``max_logit_scale`` so that the
    softmax cannot become arbitrarily sharp. Pairs flagged by :func:`false_negative_mask` are set to -inf.
    """
    scale = logit_scale.clamp(max=max_logit_scale).exp()
    logits = scale * image @ text.t()
    mask = false_negative_mask(groups)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    target = torch.arange(image.shape[0], device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def category_loss(head: nn.Module, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a shared linear head on both embeddings; label -1 (unknown) is ignored."""
    if not bool((labels >= 0).any()):
        return image.sum() * 0.0
    logits = torch.cat([head(image), head(text)])
    return F.cross_entropy(logits, torch.cat([labels, labels]), ignore_index=-1)


class MlmHead(nn.Module):
    """BERT-style masked-LM head: transform + decoder tied to the word embeddings (no extra vocab matrix)."""

    def __init__(self, word_embeddings: nn.Embedding):
        super().__init__()
        dim = word_embeddings.embedding_dim
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.word_embeddings = word_embeddings
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))
        return h @ self.word_embeddings.weight.t() + self.bias


def mask_tokens(ids: torch.Tensor, mask_id: int, vocab_size: int, special: torch.Tensor, p: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: of ``p`` of the non-special tokens, 80% -> [MASK], 10% -> random, 10% unchanged.

    Returns ``(masked_ids, labels)`` with label -100 where no prediction is asked for.
    """
    probs = torch.full(ids.shape, p)
    probs[special] = 0.0
    chosen = torch.bernoulli(probs, generator=generator).bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    out = ids.clone()
    to_mask = chosen & torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool()
    out[to_mask] = mask_id
    to_rand = chosen & ~to_mask & torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool()
    out[to_rand] = torch.randint(vocab_size, ids.shape, generator=generator)[to_rand]
    return out, labels
