"""Numeric precision of model inference: ``fp32``, or ``bf16`` autocast where the hardware has it.

``--precision auto`` picks bf16 on a CPU with AVX-512 BF16 or AMX instructions and on a CUDA device that supports
bf16, fp32 elsewhere. A model adopts bf16 only where it was measured to hold its outputs (see EVALUATION.md):
the attribute extractors (the shipped tagger's valid F1 moved -0.07, +0.06 and +0.23 points against fp32, at
2.1-2.5x the products/s on one core) and the pair cross-encoder (valid pair F1 +0.5, 0.0, +0.2 and -0.1 points,
5 of 9,758 decisions changed; ``python -m models.matching.cross_precision``) and the encoder's text tower
(embedding cosine to fp32 >= 0.99997 on fashion valid, the heads' metrics within 0.08 points;
``python bench/encoder_precision.py``). The encoder's image tower runs bf16 on a CPU only where its version records
a measurement that holds issue 21's cosine floor of 0.999 (:func:`models.encoders.image_bf16_holds`): a tower
trained under bf16 autocast (2026-12-05, not shipped) did; the shipped fp32-trained one does with its stem and first
stage in fp32 (lowest cosine 0.99989; 0.9986 all in bf16; :func:`models.encoders.early_layers_fp32`).
On a CPU without bf16 instructions bf16 is emulated and several times slower than fp32 (measured on an AVX2-only
EPYC: 6.8 against 46 GFLOPS for a MiniLM-sized linear layer), which is why ``auto`` asks the CPU first. On a Xeon
with AMX (2026-12-04) a 2048 x 2048 bf16 matrix product ran at 1,446 GFLOP/s on one thread against 203 in fp32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

__all__ = ["PRECISIONS", "autocast", "cast_linears", "cpu_has_bf16", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 on this CPU (Linux: /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str | None, device: str) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (auto/fp32/bf16) on ``device``; an unknown name is an error."""
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if p != "auto":
        return p
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    """bf16 autocast for ``precision == "bf16"``, nothing for fp32."""
    if precision != "bf16":
        yield
        return
    import torch

    with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
        yield


def cast_linears(*modules) -> int:
    """Store the weights and biases of every ``nn.Linear`` in ``modules`` in bf16, for modules that only ever run
    under bf16 autocast. Autocast casts them to bf16 anyway, on every call: its cast cache lasts one autocast
    region and skips frozen parameters. Cast once, the outputs are the same bit for bit, at 1.09-1.14x the
    items/s (text tower, cross-encoder, attribute extractor on an AMX Xeon, one thread). Returns the number of
    layers cast."""
    import torch

    n = 0
    with torch.no_grad():
        for module in modules:
            for m in module.modules():
                if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32:
                    m.weight.data = m.weight.data.to(torch.bfloat16)
                    if m.bias is not None:
                        m.bias.data = m.bias.data.to(torch.bfloat16)
                    n += 1
    return n
