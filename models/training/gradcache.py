"""Gradient caching (GradCache, Gao et al. 2021): a contrastive batch larger than what fits through a tower.

The loss couples every pair of the batch, so it cannot be split into independent micro-batches. GradCache
splits the work instead: (1) embed every chunk without a graph, (2) compute the full-batch loss on those
embeddings and its gradient with respect to them, (3) re-run each chunk with a graph and backpropagate the
cached embedding gradient. The parameter gradients equal those of the plain full-batch step; memory is that
of one chunk. The towers must be deterministic between passes (no dropout, augmentation done beforehand).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["grad_cached_backward", "plain_backward"]

Embed = Callable[[torch.Tensor], torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _embed_no_grad(fn: Embed, x: torch.Tensor, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(c) for c in x.split(chunk)])


def grad_cached_backward(embed_image: Embed, embed_text: Embed, loss_fn: Loss, images: torch.Tensor,
                         texts: torch.Tensor, chunk: int) -> float:
    """Accumulate into ``.grad`` the gradients of ``loss_fn(embed_image(images), embed_text(texts))``.

    ``loss_fn`` may use parameters of its own (the logit scale, a category head): their gradients are
    accumulated directly in step (2). Returns the loss value.
    """
    if images.shape[0] <= chunk:
        return plain_backward(embed_image, embed_text, loss_fn, images, texts)
    img = _embed_no_grad(embed_image, images, chunk).requires_grad_()
    txt = _embed_no_grad(embed_text, texts, chunk).requires_grad_()
    loss = loss_fn(img, txt)
    loss.backward()
    for x, g in zip(images.split(chunk), img.grad.split(chunk), strict=True):
        embed_image(x).backward(g)
    for x, g in zip(texts.split(chunk), txt.grad.split(chunk), strict=True):
        out = embed_text(x)
        if out.requires_grad:  # a locked text tower with a frozen projection has nothing to train
            out.backward(g)
    return float(loss.detach())


def plain_backward(embed_image: Embed, embed_text: Embed, loss_fn: Loss, images: torch.Tensor,
                   texts: torch.Tensor) -> float:
    """The reference full-batch step (one graph through both towers)."""
    loss = loss_fn(embed_image(images), embed_text(texts))
    loss.backward()
    return float(loss.detach())
