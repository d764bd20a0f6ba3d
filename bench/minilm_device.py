"""The MiniLM models on an accelerator: GEMM peak, the text tower's products/s and the pair cross-encoder's pairs/s.

    python bench/minilm_device.py [--device cuda] [--pairs DATA/matching] [--repeats 3] [--json FILE]

Made for a lent GPU machine that holds neither the model store nor the packaged MiniLM's checksum: the cost of
a MiniLM pass does not depend on its weights, so the models are built from the MiniLM folder
(:func:`models.refs.text_tower_path`) with untrained heads. Rows:

- the device's peak: an 8192 x 8192 x 8192 matrix product in float32 (TF32 off), TF32 and bfloat16;
- the text tower as the encoder runs it (all six layers, mean pooled): the sample catalog's titles repeated to
  ``--products``, sorted by length, per batch size, float32 and bfloat16 autocast;
- the pair cross-encoder (``[CLS] a [SEP] b [SEP]``, six layers, max 96 word pieces): the valid pairs of the
  matching benchmarks when ``--pairs`` names the data folder (else neighbouring sample listings), per batch size.

FLOPs per item come from ``torch.utils.flop_counter`` on one pass; each row gives the achieved TFLOP/s and its
fraction of the matching peak (float32 rows: of the float32 peak, TF32 being off as in the job). Times include
tokenisation, as the job's do. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _median_seconds(fn: Any, repeats: int, device: str) -> float:
    """:func:`bench.model_efficiency.timed` of ``fn``, waiting for the device's queued work inside each call."""
    import torch

    from bench.model_efficiency import timed

    def call() -> None:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return timed(call, repeats)[0]


def peaks(device: str, repeats: int) -> dict[str, float]:
    """TFLOP/s of an 8192^3 matrix product: fp32 (TF32 off), tf32 and bf16 (2048^3 on a CPU)."""
    import torch

    n = 8192 if device.startswith("cuda") else 2048
    out = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        if name == "tf32" and not device.startswith("cuda"):
            continue
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        s = _median_seconds(lambda a=a, b=b: a @ b, repeats, device)
        out[name] = 2 * n**3 / s / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def _titles(n: int) -> list[str]:
    import pandas as pd

    titles = pd.read_parquet(REPO / "jobs" / "sample_catalog" / "catalog.parquet")["title"].fillna("").tolist()
    return [titles[i % len(titles)] for i in range(n)]


def _pairs(data: str | None, n: int) -> tuple[list[str], list[str], str]:
    from models.matching.cross import serialize

    if data:
        from models.matching.cross_train import CrossTrainConfig, load_training_pairs

        _, va = load_training_pairs(data, CrossTrainConfig(mined_neighbours=0))
        return list(va["a"])[:n], list(va["b"])[:n], "matching valid pairs"
    titles = sorted(_titles(max(n, 2)))
    rows = [serialize({"title": t}) for t in titles]
    return rows[:-1][:n], rows[1:][:n], "neighbouring sample titles"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--pairs", default=None, help="the matching data folder (valid pairs); default: sample titles")
    p.add_argument("--products", type=int, default=20000)
    p.add_argument("--batches", default="64,256,1024")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from bench.model_efficiency import flops_of
    from models.attributes.base import quiet_transformers
    from models.attributes.tagger import load_tower
    from models.matching.cross import CrossEncoder, split_cross
    from models.precision import autocast
    from models.refs import text_tower_path

    quiet_transformers()
    tokenizer, bert = load_tower(text_tower_path())
    bert = bert.float().to(a.device).eval()
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    peak = peaks(a.device, a.repeats)
    print(f"{name}: GEMM peak " + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in peak.items()))  # noqa: T201

    titles = _titles(a.products)
    order = np.argsort([len(t) for t in titles], kind="stable")
    titles = [titles[i] for i in order]

    def embed(batch: int, precision: str, ts: list[str] = titles) -> None:
        with torch.inference_mode(), autocast(precision, a.device):
            for s in range(0, len(ts), batch):
                enc = tokenizer(ts[s:s + batch], padding=True, truncation=True, max_length=64,
                                return_tensors="pt").to(a.device)
                h = bert(**enc).last_hidden_state
                m = enc["attention_mask"][:, :, None].to(h.dtype)
                ((h * m).sum(1) / m.sum(1)).float().cpu()

    left, right, source = _pairs(a.pairs, a.products)
    bottom, top = split_cross(bert, 0)
    cross = CrossEncoder(tokenizer, bottom.to(a.device), top.to(a.device), max_length=96, calibration=(1.0, 0.0),
                         threshold=0.5, device=a.device)

    # FLOPs per item on a spread sample of 512, batched as timed (sorted by length, 64 a pass).
    step = max(1, len(titles) // 512)
    sample = titles[::step]
    text_flops = flops_of(lambda: embed(64, "fp32", sample)) / len(sample)
    step = max(1, len(left) // 512)
    pair_flops = flops_of(lambda: cross.logits(left[::step], right[::step])) / len(left[::step])
    print(f"{len(titles)} titles ({text_flops / 1e9:.2f} GFLOP each); {len(left)} pairs "  # noqa: T201
          f"({pair_flops / 1e9:.2f} GFLOP each)")
    print("| model | batch | precision | items/s | TFLOP/s | of peak |")  # noqa: T201
    print("|---|---|---|---|---|---|", flush=True)  # noqa: T201
    rows = []

    def add(model: str, batch: int, precision: str, items: int, flops: float, seconds: float) -> None:
        ref = peak["bf16"] if precision == "bf16" else peak["fp32"]   # the models run with TF32 off
        rows.append({"model": model, "batch": batch, "precision": precision, "items_per_s": items / seconds,
                     "tflops": flops * items / seconds / 1e12, "fraction": flops * items / seconds / 1e12 / ref})
        r = rows[-1]
        print(f"| {model} | {batch} | {precision} | {r['items_per_s']:,.0f} | {r['tflops']:.2f} | "  # noqa: T201
              f"{100 * r['fraction']:.1f}% |", flush=True)

    for batch in [int(x) for x in a.batches.split(",")]:
        for precision in ("fp32", "bf16"):
            s = _median_seconds(lambda b=batch, pr=precision: embed(b, pr), a.repeats, a.device)
            add("text tower (titles)", batch, precision, len(titles), text_flops, s)
            cross.batch_size, cross.precision = batch, precision
            s = _median_seconds(lambda: cross.logits(left, right), a.repeats, a.device)
            add(f"pair cross-encoder ({source})", batch, precision, len(left), pair_flops, s)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "peak_tflops": peak, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
