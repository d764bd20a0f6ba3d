"""Embedding a batch of products: titles and images in, L2-normalised text, image and fused embeddings out.

The enrich job calls :func:`embed_frame` from its model UDF (:func:`udfs.heads.make_embed_heads_udf`), which
applies the heads to the embeddings in the same pass.

The model is loaded once per Python worker (:mod:`udfs.model_cache`); Arrow batches (sized by
``spark.sql.execution.arrow.maxRecordsPerBatch``) are split into model batches of ``batch_size`` rows, so
the two sizes are tuned independently. Images are read and decoded in a thread pool (Pillow releases the
GIL while decoding); each model batch of images runs as soon as it is decoded, while the pool decodes the
next ones. On CPU the model dominates, so the overlap gains little there (``bench/embed_prefetch.py``, 128
sample images on 2 busy cores: 16.3 s against 16.4 s decoding everything first); it matters where the
forward pass is fast (a GPU).

A row whose image cannot be decoded is not dropped: it comes back with ``error`` set and no embeddings, and
the job sends it to quarantine.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from schemas import reasons
from udfs.model_cache import cached, import_object

__all__ = ["EMBED_SCHEMA", "EmbedConfig", "cached_encoder", "embed_frame"]

EMBED_SCHEMA = ("embedding array<float>, text_embedding array<float>, image_embedding array<float>, "
                "error string, error_detail string")
DEFAULT_LOADER = "models.encoders:load_encoder"


@dataclass(frozen=True)
class EmbedConfig:
    model_ref: str = "default"
    batch_size: int = 64               # rows per model forward pass
    device: str | None = None          # None: CUDA when available
    decode_threads: int = 2
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_aspect_ratio: float = 20.0     # long side / short side (models.images.DEFAULT_MAX_ASPECT_RATIO)
    torch_threads: int | None = None   # None: leave torch's default
    loader: str = DEFAULT_LOADER       # "module:function"(model_ref, device, precision) -> encoder
    precision: str | None = None       # auto, fp32 or bf16 (models.encoders.tower_precisions); None: the loader's
    prefetch: bool = True              # run each image batch as soon as it is decoded (False: decode all first)


def cached_encoder(cfg: EmbedConfig):
    """The encoder of ``cfg``, loaded once per worker process."""
    def load():
        if cfg.torch_threads:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        return import_object(cfg.loader)(cfg.model_ref, cfg.device, cfg.precision)

    return cached(("encoder", cfg.loader, cfg.model_ref, cfg.device, cfg.precision), load)


def _pool(threads: int) -> ThreadPoolExecutor:
    # Keyed by pid too: a pool's threads do not survive a fork, so a forked worker must not reuse its parent's.
    return cached(("decode-pool", threads, os.getpid()), lambda: ThreadPoolExecutor(max(1, threads)))


def _decode(path: str, encoder, cfg: EmbedConfig) -> tuple[np.ndarray | None, str | None, str | None]:
    """``(pixels, reason, detail)`` of one image file. Whatever goes wrong with one image (an error of the
    decoder, a resize out of memory) quarantines that image only: the batch and the run go on."""
    from models.images import ImageAspectError, ImageDecodeError, decode_image
    from udfs.images import read_image_bytes

    try:
        data = read_image_bytes(path, cfg.max_bytes)
    except OSError as e:
        return None, reasons.IMAGE_UNREADABLE, f"{type(e).__name__}: {e.strerror or e}"
    except ValueError as e:
        return None, reasons.IMAGE_UNDECODABLE, str(e)
    try:
        img = decode_image(data, target_size=encoder.image_size, max_pixels=cfg.max_pixels,
                           max_aspect=cfg.max_aspect_ratio)
        return encoder.preprocess(img), None, None
    except ImageAspectError as e:
        return None, reasons.IMAGE_ASPECT_RATIO, str(e)
    except ImageDecodeError as e:
        return None, reasons.IMAGE_UNDECODABLE, str(e)
    except MemoryError:
        return None, reasons.IMAGE_UNDECODABLE, "out of memory while preparing the image for the model"
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:  # PIL's errors on bad pixel data
        return None, reasons.IMAGE_UNDECODABLE, f"{type(e).__name__}: {e}"


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _embed_images(paths: list[str | None], encoder, cfg: EmbedConfig) -> tuple[list, dict[int, np.ndarray]]:
    """Decode every image in the pool and embed the decoded ones in model batches of ``batch_size``.

    With ``cfg.prefetch`` all decodes are queued at once and a batch runs forward as soon as its images are
    decoded, while the pool decodes the next ones; without it every image is decoded first. The batches are
    the same either way (the images in row order, ``batch_size`` at a time), so the embeddings are too.
    Returns ``(decoded, image_by_row)``, ``decoded`` being ``_decode``'s triple per row.
    """
    def one(p: str | None):
        return _decode(p, encoder, cfg) if p else (None, None, None)

    pool = _pool(cfg.decode_threads)
    if cfg.prefetch:
        futures = [pool.submit(one, p) for p in paths]
        results: Iterator = (f.result() for f in futures)
    else:
        results = iter(list(pool.map(one, paths)))
    decoded, rows, pending, parts = [], [], [], []
    for i, d in enumerate(results):
        decoded.append(d)
        if d[1] is None and d[0] is not None:
            rows.append(i)
            pending.append(d[0])
            if len(pending) == cfg.batch_size:
                parts.append(encoder.embed_pixels(np.stack(pending)))
                pending = []
    if pending:
        parts.append(encoder.embed_pixels(np.stack(pending)))
    return decoded, (dict(zip(rows, np.concatenate(parts), strict=True)) if parts else {})


def embed_frame(titles: list[str], paths: list[str | None], encoder, cfg: EmbedConfig) -> dict[str, list]:
    """Embed one Arrow batch; pure apart from reading image files. Returns the output columns."""
    n = len(titles)
    decoded, image_by_row = _embed_images(paths, encoder, cfg)
    errors = [d[1] for d in decoded]
    details = [d[2] for d in decoded]
    ok = [i for i in range(n) if errors[i] is None]

    # Batched by length: a batch is padded to its longest title, so similar lengths waste the least compute.
    ok = sorted(ok, key=lambda i: (len(titles[i]), i))
    ok_titles = [titles[i] for i in ok]
    text_parts = [encoder.embed_texts(ok_titles[s]) for s in _chunks(len(ok_titles), cfg.batch_size)]
    text_by_row = dict(zip(ok, np.concatenate(text_parts), strict=True)) if text_parts else {}

    from models.encoders import fuse

    out: dict[str, list] = {k: [None] * n for k in ("embedding", "text_embedding", "image_embedding")}
    for i in ok:
        t, im = text_by_row[i], image_by_row.get(i)
        out["text_embedding"][i] = t
        out["image_embedding"][i] = im
        out["embedding"][i] = fuse(t[None, :], None if im is None else im[None, :])[0]
    out["error"] = errors
    out["error_detail"] = details
    return out
