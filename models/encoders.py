"""Aligned image and text encoders: preprocess -> forward -> postprocess.

:func:`load_encoder` turns a model reference (:mod:`models.refs`) into an :class:`Encoder` whose
``embed_texts`` and ``embed_images`` run under ``torch.inference_mode()`` on the chosen device and return
L2-normalised float32 NumPy arrays on the CPU.

Precision (:mod:`models.precision`): on CUDA both towers run under bf16 autocast unless fp32 is asked. On a CPU
the text tower runs in bf16 where ``bf16`` is asked or ``auto`` finds AVX-512 BF16/AMX (measured on such a CPU:
2.9x the titles/s of fp32 on one thread, embedding cosine to fp32 >= 0.9999). The image tower follows it into bf16
on a CPU only where its version's manifest records a measurement that holds the 0.999 cosine floor
(:func:`measure_image_bf16`, written when a tower is trained, or later by ``python -m
models.training.image_precision``). In the job (a precision given) its BatchNorms are folded into the convolutions,
it runs channels-last (:func:`serving_form`: 1.8x the photos/s of the stored form, the same outputs), and its stem
and first stage run in fp32 under the autocast too (:func:`early_layers_fp32`): so served, the shipped tower,
trained in fp32, holds its embeddings in bf16 (lowest cosine 0.99989 over the fashion valid photos; 0.9986 with every
layer in bf16, which is why it ran fp32 until 2026-12-07).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.images import box_hw, normalise_batch, to_model_array
from models.refs import (
    CONFIG_DIR,
    MINILM_PLACEHOLDER,
    RANDOM_SEED,
    ModelRef,
    parse_model_ref,
    text_tower_path,
)

__all__ = ["IMAGE_BF16_FLOOR", "Encoder", "fuse", "image_bf16_holds", "load_encoder", "measure_image_bf16",
           "early_layers_fp32", "pick_device", "serving_form", "tower_precisions"]

log = logging.getLogger(__name__)

# No model hub at run time: transformers and huggingface_hub must only read local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pick_device(requested: str | None = None) -> str:
    import torch

    if requested and requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def fuse(text: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """The fused product embedding: the normalised mean of the two unit vectors (text alone without image)."""
    if image is None:
        return text
    v = text + image
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


class Encoder:
    """An open_clip model plus its tokenizer and image preprocessing."""

    def __init__(self, model: Any, tokenize: Any, ref: ModelRef, device: str, context_length: int,
                 precision: str | None = None, image_bf16_on_cpu: bool = False):
        self.model = model
        self.ref = ref
        self.device = device
        self._tokenize = tokenize
        self.context_length = context_length
        pp = model.visual.preprocess_cfg
        size = pp["size"]
        # (H, W) of the model input; ``image_size`` is its long side (what a JPEG is draft-decoded to at least).
        self.image_hw = box_hw(size)
        self.image_size = max(self.image_hw)
        # ``shortest``: centre square (the ViT towers); ``longest``: the whole photo fitted into (H, W).
        self.resize_mode = str(pp.get("resize_mode") or "shortest")
        self.fill = int(pp.get("fill_color", 255))   # the canvas of the ``longest`` geometry
        self.mean, self.std = tuple(pp["mean"]), tuple(pp["std"])
        self.max_batch = 256   # texts per forward pass in embed_texts
        self.text_precision, self.image_precision = tower_precisions(precision, device, image_bf16_on_cpu)

    @property
    def pixel_geometry(self) -> int | tuple[int, int]:
        """What training and evaluation decode photos to for this encoder: the side of a centre square, or the
        (H, W) box a whole photo is fitted into (:func:`models.training.data.decode_all`)."""
        return self.image_hw if self.resize_mode == "longest" else self.image_size

    @property
    def version(self) -> str:
        return self.ref.version

    def _autocast(self, precision: str) -> contextlib.AbstractContextManager:
        from models.precision import autocast

        return autocast(precision, self.device)

    def _finish(self, x: Any) -> np.ndarray:
        import torch

        x = torch.nn.functional.normalize(x.float(), dim=-1)
        return x.cpu().numpy().astype(np.float32, copy=False)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, computed ``max_batch`` texts at a time: one forward pass over a whole
        taxonomy (30k names) held every layer's activations at once and needed 19 GB."""
        import torch

        texts = list(texts)
        parts = []
        for start in range(0, len(texts), self.max_batch):
            ids = self._tokenize(texts[start:start + self.max_batch])
            with torch.inference_mode(), self._autocast(self.text_precision):
                parts.append(self._finish(self.model.encode_text(ids.to(self.device, non_blocking=True))))
        if not parts:
            # The width of the joint space: open_clip's ViT and text towers name it output_dim (its timm towers
            # do not).
            dim = getattr(self.model.visual, "output_dim", 0) or getattr(self.model.text, "output_dim", 0)
            return np.zeros((0, int(dim)), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def preprocess(self, img: Any) -> np.ndarray:
        if self.resize_mode == "longest":
            return to_model_array(img, self.image_hw, self.mean, self.std, "longest", self.fill)
        return to_model_array(img, self.image_size, self.mean, self.std)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a (n, 3, H, W) float32 batch produced by :meth:`preprocess`."""
        import torch

        x = torch.from_numpy(pixels)
        if self.device.startswith("cuda"):
            x = x.pin_memory()
        with torch.inference_mode(), self._autocast(self.image_precision):
            return self._finish(self.model.encode_image(x.to(self.device, non_blocking=True)))

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.embed_pixels(np.stack([self.preprocess(im) for im in images]))


def tower_precisions(precision: str | None, device: str, image_bf16_on_cpu: bool = False) -> tuple[str, str]:
    """(text, image) tower precision for ``precision`` (None, auto, fp32, bf16) on ``device``. ``None`` is the
    library's default: bf16 on CUDA, fp32 on a CPU (training and evaluation code); the enrich job passes its
    ``--precision`` (default ``auto``). On a CPU the image tower follows the text tower into bf16 only when
    ``image_bf16_on_cpu``: its model was measured to hold its embeddings there (:func:`image_bf16_holds`)."""
    from models.precision import resolve_precision

    cuda = device.startswith("cuda")
    if precision is None:
        p = "bf16" if cuda else "fp32"
    else:
        p = resolve_precision(precision, device)
    return p, (p if cuda or image_bf16_on_cpu else "fp32")


IMAGE_BF16_KEY = "image_bf16_on_cpu"   # in a version's manifest: the measurement that lets its tower run bf16
IMAGE_BF16_FLOOR = 0.999               # issue 21's floor: every embedding's cosine to its fp32 one
# What a measurement measured (:func:`serving_form`), recorded beside its figures.
SERVING_FORM = "folded, channels-last, stem and first stage fp32"


def image_bf16_holds(manifest: dict) -> bool:
    """Whether a stored version's image tower may run under bf16 autocast on a CPU: its manifest records a
    measurement (:func:`measure_image_bf16`) whose lowest cosine to the fp32 embeddings reaches the floor. A
    version without one (every tower trained before 2026-12-05) stays fp32."""
    m = manifest.get(IMAGE_BF16_KEY)
    return isinstance(m, dict) and float(m.get("cosine_min", 0.0)) >= IMAGE_BF16_FLOOR


def measure_image_bf16(model: Any, pixels: np.ndarray, batch: int = 64) -> dict[str, Any]:
    """Embed ``pixels`` ((N, H, W, 3) uint8 photos, already fitted to the tower's box: the held-out photos of its
    training) with ``model``'s image tower in its serving form, fp32 and under bf16 autocast on the CPU; returns
    the cosines between the two (min, 1st percentile, median) and the photo count, what :func:`image_bf16_holds`
    reads from a manifest."""
    import copy

    import torch

    visual = copy.deepcopy(model.visual).cpu().eval()
    serving_form(visual)
    mean, std = visual.preprocess_cfg["mean"], visual.preprocess_cfg["std"]
    cos = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = normalise_batch(torch.from_numpy(pixels[i:i + batch]).permute(0, 3, 1, 2).float(), mean, std)
            a = torch.nn.functional.normalize(visual(x).float(), dim=-1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                b = torch.nn.functional.normalize(visual(x).float(), dim=-1)
            cos.append((a * b).sum(-1))
    # A photo the tower maps to NaN in either precision counts as cosine 0: it does not hold.
    c = np.nan_to_num(torch.cat(cos).numpy(), nan=0.0) if cos else np.ones(0, dtype=np.float32)
    if not len(c):
        return {"photos": 0, "cosine_min": 0.0, "serving_form": SERVING_FORM}
    return {"photos": int(len(c)), "cosine_min": round(float(c.min()), 6),
            "cosine_p1": round(float(np.percentile(c, 1)), 6), "cosine_median": round(float(np.median(c)), 6),
            "serving_form": SERVING_FORM}


def _hf_tokenizer(path: str, context_length: int):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)

    def tokenize(texts: list[str]):
        # Pad to the longest text of the batch, not to the context length: titles are short.
        out = tok(texts, padding="longest", truncation=True, max_length=context_length, return_tensors="pt")
        return out["input_ids"]

    return tokenize


def _resolve_text_cfg(text_cfg: dict) -> dict:
    cfg = dict(text_cfg)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if cfg.get(key) == MINILM_PLACEHOLDER:
            cfg[key] = text_tower_path()
    return cfg


def _create(ref: ModelRef, device: str):
    import open_clip
    import torch

    if ref.kind == "builtin":
        open_clip.add_model_config(CONFIG_DIR)
        cfg = json.loads((CONFIG_DIR / f"{ref.name}.json").read_text())
        text_cfg = _resolve_text_cfg(cfg["text_cfg"])
        text_cfg["hf_model_pretrained"] = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = open_clip.create_model(ref.name, text_cfg=text_cfg, device=device)
        return model, text_cfg
    if ref.kind == "store":
        from pathlib import Path

        from models.arch import load_model

        return load_model(Path(ref.name), device)
    if ref.kind == "local":
        cfg_path = os.path.join(ref.name, "open_clip_config.json")
        with open(cfg_path) as f:
            text_cfg = json.load(f)["model_cfg"]["text_cfg"]
        model = open_clip.create_model(f"local-dir:{ref.name}", device=device, weights_only=True)
        return model, text_cfg
    if ref.kind == "hf-hub":
        model = open_clip.create_model(f"hf-hub:{ref.name}", device=device, weights_only=True)
        return model, open_clip.get_model_config(ref.name) or {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = open_clip.create_model(ref.name, pretrained=ref.tag, device=device, weights_only=True)
    return model, (open_clip.get_model_config(ref.name) or {}).get("text_cfg", {})


def _quiet_partial_init(record: logging.LogRecord) -> bool:
    return "initialized partially" not in record.getMessage()


def load_encoder(ref: str | ModelRef | None = None, device: str | None = None,
                 precision: str | None = None) -> Encoder:
    """Build the encoder for ``ref`` on ``device`` (``None``/``auto``: CUDA when available) at ``precision``
    (:func:`tower_precisions`). ``precision=None`` gives the model as stored (training, evaluation, checks); a
    precision, as the enrich job passes its ``--precision``, gives the serving form too (:func:`serving_form`)."""
    import open_clip
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # open_clip warns at root level that a config "initialized partially" whenever towers load separately.
    logging.getLogger().addFilter(_quiet_partial_init)
    mref = ref if isinstance(ref, ModelRef) else parse_model_ref(ref)
    dev = pick_device(device)
    try:
        model, text_cfg = _create(mref, dev)
    except (RuntimeError, OSError) as e:
        raise RuntimeError(f"could not load model {mref.version!r}: {e}") from e
    model.eval()
    ctx = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        tokenize = _hf_tokenizer(_resolve_text_cfg(text_cfg)["hf_tokenizer_name"], ctx)
    else:
        tokenize = open_clip.get_tokenizer(mref.name if mref.kind != "local" else "ViT-B-32", context_length=ctx)
    enc = Encoder(model, tokenize, mref, dev, ctx, precision, _image_bf16_on_cpu(mref))
    if precision is not None:   # the job's encoder (it passes its --precision): the serving form
        serving_form(model.visual)
        if enc.text_precision == "bf16":   # the text tower only ever runs under bf16 autocast
            from models.precision import cast_linears

            cast_linears(model.text)
    log.info("loaded model %s on %s (text tower %s, image tower %s)", mref.description, dev, enc.text_precision,
             enc.image_precision)
    return enc


def _image_bf16_on_cpu(mref: ModelRef) -> bool:
    """A store version's measured permission to run its image tower in bf16 on a CPU (:func:`image_bf16_holds`);
    False for every other kind of model."""
    if mref.kind != "store":
        return False
    from models.store import read_manifest

    return image_bf16_holds(read_manifest(Path(mref.name)))


def serving_form(visual: Any) -> int:
    """A convolutional image tower in the enrich job's inference form: each BatchNorm that follows a convolution
    (timm's ``ConvNormAct``) folded into the convolution's weights and bias, and the channels-last layout
    (oneDNN's preferred one on a CPU). The same embeddings within float rounding (cosine > 0.99999) at 1.4-1.5x
    the photos/s of the stored form on one core (BatchNorm took a third of the tower's time). Only for inference:
    the folded tower has no BatchNorm statistics left to train. The first layers of each tower (the stem and the first
    stage) always run in fp32, under bf16 autocast too (:func:`early_layers_fp32`).
    Returns the number of BatchNorms folded; a ViT (one convolution, no BatchNorm) is left as it is."""
    import torch

    convs = sum(isinstance(m, torch.nn.Conv2d) for m in visual.modules())
    if convs <= 1:
        return 0
    folded = 0
    with torch.no_grad():
        for m in visual.modules():
            conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                    and bn.track_running_stats and not bn.training):
                continue
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight = torch.nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
            conv.bias = torch.nn.Parameter(shift, requires_grad=False)
            # timm's BatchNormAct2d applies its dropout and activation after the norm: they stay
            m.bn = torch.nn.Sequential(getattr(bn, "drop", torch.nn.Identity()),
                                       getattr(bn, "act", torch.nn.Identity()))
            folded += 1
    visual.to(memory_format=torch.channels_last)
    early_layers_fp32(visual)
    return folded


@functools.cache
def _fp32_module() -> type:
    import torch

    class Fp32(torch.nn.Module):
        """``inner`` run in fp32 whatever autocast is on."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False):
                return self.inner(x.float())

    return Fp32


def early_layers_fp32(visual: Any) -> int:
    """Wrap the first layers of each convolutional tower in ``visual`` (an open_clip timm tower's ``trunk``: its
    children up to the second one that holds a convolution, the stem and the first stage of a RegNet) so that they
    run in fp32 under bf16 autocast as well; the rest of the tower follows the autocast. The first layers, at full
    resolution and next to the pixels, are where bf16 loses a convolutional tower's embeddings. The shipped
    ``regnetx_002`` over the 3,574 fashion valid photos (AVX-512 BF16 EPYC, one thread, 2026-12-07), lowest cosine
    to fp32 and photos/s against fp32:

    * all in bf16: 0.9985, 1.55x;
    * the stem in fp32: 0.9996, 1.47x; the heads on bf16 embeddings: 2 products of 3,574 change category on titles
      cut to the brand, whose macro-F1 moves 0.48 points (issue 21 allows 0.2);
    * the stem and the first stage in fp32 (this): 0.99989; every head metric within 0.08 points.

    Returns the number of layers wrapped (none on a second call)."""
    import torch

    wrapper = _fp32_module()
    wrapped = 0
    for tower in list(visual.modules()):
        trunk = getattr(tower, "trunk", None)
        if not isinstance(trunk, torch.nn.Module):
            continue
        with_convs = 0
        for name, child in list(trunk.named_children()):
            if with_convs >= 2 or isinstance(child, wrapper):
                break
            with_convs += any(isinstance(m, torch.nn.Conv2d) for m in child.modules())
            setattr(trunk, name, wrapper(child))
            wrapped += 1
    return wrapped
