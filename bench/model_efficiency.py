"""How close each model stage comes to what this CPU can do: GEMM peak, FLOPs per product, achieved fraction.

    python bench/model_efficiency.py [--threads N] [--repeats 3] [--device cpu] [--int8] [--json FILE]

One process, one run. First the machine's peak (best of 5): a 2048 x 2048 matrix product in float32 (and in
bfloat16, marked "emulated" where the CPU has no AVX-512 BF16 or AMX), and the MiniLM feed-forward shape (4096
tokens x 384 -> 1536) as a float32 ``nn.Linear`` and as a dynamically quantised int8 one. Then each shipped model
on the sample catalog (`jobs/sample_catalog`, 345 products with their photos), called the way the job calls it,
tokenisation and decoding included: the encoder's text tower (`embed_texts`, titles sorted by length, 64 a pass),
its image tower (`embed_pixels`, 64 preprocessed photos a pass; channels-last on a CPU, as the job loads it), each
in fp32 and, where the CPU has AVX-512 BF16 or AMX, under bf16 autocast (with the embeddings' cosine to fp32), the
open-attribute extractor (`extract`, titles +
descriptions, the seller category) and the pair cross-encoder (`logits` on neighbouring listings). FLOPs are
counted by ``torch.utils.flop_counter`` on one pass (matrix products, convolutions, attention); the achieved
GFLOP/s is those FLOPs over the median time, and the fraction is of the better of the two float32 peaks (of the
bf16 or int8 peak for those rows).

``--int8`` adds the dynamically quantised (int8 weights and activations, per-channel) variant of the
transformer models with how far its outputs move: the text embeddings' cosine to float32, the extractor's
values that change, the cross-encoder's largest probability change. The job does not use int8: see BENCHMARKS.md
for why.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "jobs" / "sample_catalog"


def _runs(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of ``repeats`` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after one warm-up call, and the last result."""
    times, out = _runs(fn, repeats)
    return statistics.median(times), out


def flops_of(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def int8_dynamic(module: Any) -> Any:
    """``module`` with its ``nn.Linear`` layers dynamically quantised (int8, per-channel weights)."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def best(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` calls after a warm-up: a peak is what the machine can do, not its median."""
    return min(_runs(fn, repeats)[0])


def peaks(repeats: int) -> dict[str, float]:
    """GFLOP/s of the matrix products the models are made of, on this process's threads (best of ``repeats``)."""
    import torch

    from models.precision import cpu_has_bf16

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"fp32 matmul 2048": 2 * n**3 / best(lambda: a @ b, repeats) / 1e9}
    ab, bb = a.bfloat16(), b.bfloat16()
    if cpu_has_bf16():
        out["bf16 matmul 2048"] = 2 * n**3 / best(lambda: ab @ bb, repeats) / 1e9
    else:   # emulated: one small product is enough to show it, a 2048 one takes a minute
        m = 512
        out["bf16 matmul 512 (emulated)"] = 2 * m**3 / best(lambda: ab[:m, :m] @ bb[:m, :m], 1) / 1e9
    rows, d_in, d_out = 4096, 384, 1536
    lin, x = torch.nn.Linear(d_in, d_out), torch.randn(rows, d_in)
    flops = 2 * rows * d_in * d_out
    with torch.inference_mode():
        out["fp32 linear 4096x384->1536"] = flops / best(lambda: lin(x), repeats) / 1e9
        q = int8_dynamic(torch.nn.Sequential(lin))
        out["int8 dynamic linear 4096x384->1536"] = flops / best(lambda: q(x), repeats) / 1e9
    return out


def sample() -> dict[str, list[Any]]:
    import pandas as pd
    from PIL import Image

    cat = pd.read_parquet(SAMPLE / "catalog.parquet")
    texts = lambda col: [v if isinstance(v, str) else None for v in cat[col]]   # noqa: E731
    images = []
    for uri in cat["image_uri"]:
        if not isinstance(uri, str):
            continue
        try:
            with Image.open(SAMPLE / uri) as im:
                images.append(im.convert("RGB"))
        except OSError:      # the sample plants broken and missing photos: the job quarantines them
            continue
    return {"titles": texts("title"), "descriptions": texts("description"), "categories": texts("category"),
            "images": images, "records": cat[["title", "brand", "price"]].sort_values("title").to_dict("records")}


def _image_batches(enc: Any, pixels: Any, batch: int) -> Any:
    import numpy as np

    return np.concatenate([enc.embed_pixels(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def row(stage: str, precision: str, items: int, unit: str, flops: int, seconds: float, peak: float) -> dict:
    achieved = flops / seconds / 1e9
    return {"stage": stage, "precision": precision, "items": items, "unit": unit,
            "gflop_per_item": flops / items / 1e9, "items_per_s": items / seconds,
            "gflops": achieved, "fraction_of_peak": achieved / peak}


def measure(a: argparse.Namespace, peak: dict[str, float]) -> tuple[list[dict], list[str]]:
    import numpy as np

    from models.attributes import load_extractor
    from models.encoders import load_encoder
    from models.matching.cross import load_cross, serialize

    data = sample()
    # as the job's embed UDF does: titles sorted by length, 64 a pass (a pass is padded to its longest title)
    titles = sorted((t or "" for t in data["titles"]), key=len)
    fp32 = max(peak["fp32 matmul 2048"], peak["fp32 linear 4096x384->1536"])
    bf16_peak = peak.get("bf16 matmul 2048")
    int8_peak = peak["int8 dynamic linear 4096x384->1536"]
    rows, notes = [], []

    precisions = ["fp32"] + (["bf16"] if bf16_peak else [])
    peak_of = lambda p: {"bf16": bf16_peak, "int8": int8_peak}.get(p) or fp32   # noqa: E731
    text_base = image_base = text_flops = image_flops = None
    for precision in precisions:
        # the job's encoder at this precision (models.encoders.load_encoder: the serving form); its image tower's
        # bf16 is measured here although the job keeps that tower fp32 on a CPU
        enc = load_encoder("default", device=a.device, precision=precision)
        enc.max_batch = a.batch
        enc.image_precision = precision
        pixels = np.stack([enc.preprocess(im) for im in data["images"]])
        texts_fn = functools.partial(enc.embed_texts, titles)
        images_fn = functools.partial(_image_batches, enc, pixels, a.batch)
        if text_flops is None:
            text_flops, image_flops = flops_of(texts_fn), flops_of(images_fn)
        geometry = "x".join(map(str, pixels.shape[2:]))
        s, text_emb = timed(texts_fn, a.repeats)
        rows.append(row(f"text tower ({enc.version})", precision, len(titles), "product", text_flops, s,
                        peak_of(precision)))
        s, image_emb = timed(images_fn, a.repeats)
        rows.append(row(f"image tower {geometry}", precision, len(pixels), "photo", image_flops, s, peak_of(precision)))
        if text_base is None:
            text_base, image_base = text_emb, image_emb
        else:
            for tower, x, y in (("text", text_base, text_emb), ("image", image_base, image_emb)):
                cos = (x * y).sum(1)
                notes.append(f"{tower} tower {precision}: embedding cosine to fp32 min {cos.min():.5f}, "
                             f"median {np.median(cos):.5f}")
    if a.int8:
        enc = load_encoder("default", device=a.device, precision="fp32")
        enc.model.text = int8_dynamic(enc.model.text)
        s, q_emb = timed(lambda: enc.embed_texts(titles), a.repeats)
        cos = (np.asarray(text_base) * np.asarray(q_emb)).sum(1)
        rows.append(row("text tower", "int8", len(titles), "product", text_flops, s, int8_peak))
        notes.append(f"text tower int8: embedding cosine to fp32 min {cos.min():.4f}, median {np.median(cos):.4f}")

    args = (data["titles"], data["descriptions"], data["categories"])
    base = None
    for precision in precisions + (["int8"] if a.int8 else []):
        ex = load_extractor("default", device=a.device, precision="fp32" if precision == "int8" else precision)
        if precision == "int8":
            ex.top = int8_dynamic(ex.top)
        if precision != "int8":   # the flop counter does not see quantised products: int8 does the fp32 work
            f = flops_of(lambda ex=ex: ex.extract(*args))
        s, got = timed(lambda ex=ex: ex.extract(*args), a.repeats)
        ref = {"bf16": bf16_peak, "int8": int8_peak}.get(precision, fp32)
        rows.append(row(f"attribute extractor ({ex.version})", precision, len(titles), "product", f, s, ref or fp32))
        values = [{(e.attribute, e.value) for e in x} for x in got]
        if base is None:
            base = values
        else:
            changed = sum(len(x ^ y) for x, y in zip(base, values, strict=True))
            notes.append(f"attribute extractor {precision}: {changed} of {sum(map(len, base))} extracted values "
                         "differ from fp32 (added or lost)")

    recs = [serialize(r) for r in data["records"]]
    left, right = recs[:-1], recs[1:]
    base_p = None
    for precision in precisions + (["int8"] if a.int8 else []):
        model = load_cross("default", device=a.device, precision="fp32" if precision == "int8" else precision)
        if precision == "int8":
            model.top = int8_dynamic(model.top)
        if precision != "int8":
            f = flops_of(lambda m=model: m.logits(left, right))
        s, logits = timed(lambda m=model: m.logits(left, right), a.repeats)
        ref = {"bf16": bf16_peak, "int8": int8_peak}.get(precision, fp32)
        rows.append(row(f"pair cross-encoder ({model.version})", precision, len(left), "pair", f, s, ref or fp32))
        p = model.probability(logits) if not model.feature_weights else 1 / (1 + np.exp(-logits))
        if base_p is None:
            base_p = p
        else:
            notes.append(f"cross-encoder {precision}: largest probability change {np.abs(p - base_p).max():.3f}")
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64, help="titles or photos per encoder pass (default: the job's 64)")
    p.add_argument("--int8", action="store_true", help="also the dynamically quantised int8 models")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)

    import torch

    from models.precision import cpu_has_bf16

    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"{torch.get_num_threads()} threads, {a.device}, AVX-512 BF16/AMX: {cpu_has_bf16()}")  # noqa: T201
    peak = peaks(max(a.repeats, 5))
    print("| peak | GFLOP/s |\n|---|---:|")  # noqa: T201
    for k, v in peak.items():
        print(f"| {k} | {v:.1f} |")  # noqa: T201
    rows, notes = measure(a, peak)
    print("\n| stage | precision | GFLOP per item | items/s | GFLOP/s | fraction of peak |")  # noqa: T201
    print("|---|---|---:|---:|---:|---:|")  # noqa: T201
    for r in rows:
        print(f"| {r['stage']} | {r['precision']} | {r['gflop_per_item']:.3f} per {r['unit']} | "  # noqa: T201
              f"{r['items_per_s']:.1f} | {r['gflops']:.1f} | {r['fraction_of_peak']:.2f} |")
    for n in notes:
        print(f"- {n}")  # noqa: T201
    if a.json:
        Path(a.json).write_text(json.dumps({"peaks": peak, "stages": rows, "notes": notes}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
