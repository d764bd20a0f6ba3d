"""Whether the pair cross-encoder holds its valid figures in bfloat16: the same pairs scored in fp32 and in bf16
autocast, pair F1 per benchmark at the model's own threshold, the largest probability difference, and pairs/s.

    python -m models.matching.cross_precision --data ../shared/data/matching [--model default] [--threads 1]
        [--limit N]

``--limit`` scores a random sample of N valid pairs (fixed seed) instead of all 9,758: on a CPU without bf16
instructions bf16 is emulated and runs at a few pairs/s.

The enrich job runs the cross-encoder in bf16 under ``--precision auto`` only because this measured it to hold
(issue 21: metrics within 0.2 points); EVALUATION.md quotes the table this prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["compare", "main"]


def compare(data: str, model_ref: str = "default", threads: int = 0, limit: int = 0) -> dict[str, Any]:
    """Per benchmark ``{fp32: metrics, bf16: metrics}`` on the valid pairs, and the timing of each pass."""
    import torch

    from models.matching.cross import load_cross
    from models.matching.cross_train import CrossTrainConfig, _features, evaluate_valid, load_training_pairs

    if threads:
        torch.set_num_threads(threads)
    _, valid = load_training_pairs(data, CrossTrainConfig(mined_neighbours=0))
    if limit and limit < len(valid):
        valid = valid.sample(limit, random_state=0).reset_index(drop=True)
    feats = _features(valid)
    model = load_cross(model_ref)   # verified and loaded once; each pass sets its precision
    out: dict[str, Any] = {"pairs": len(valid), "threads": torch.get_num_threads(), "version": model.version,
                           "threshold": model.threshold}
    probs = {}
    for precision in ("fp32", "bf16"):
        model.precision = precision
        t = time.perf_counter()
        probs[precision] = model.probability(model.logits(list(valid["a"]), list(valid["b"])), feats)
        seconds = time.perf_counter() - t
        out[precision] = {"metrics": evaluate_valid(valid, probs[precision], model.threshold),
                          "seconds": round(seconds, 1), "pairs_per_s": round(len(valid) / seconds, 1)}
    out["max_abs_prob_diff"] = float(np.max(np.abs(probs["fp32"] - probs["bf16"])))
    out["decisions_changed"] = int(np.sum((probs["fp32"] >= out["threshold"]) != (probs["bf16"] >= out["threshold"])))
    return out


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"`{r['version']}`, {r['pairs']} valid pairs, {r['threads']} torch thread(s):", "",
             "| benchmark | F1 fp32 | F1 bf16 | difference (points) |", "|---|---|---|---|"]
    for name, m in r["fp32"]["metrics"].items():
        b = r["bf16"]["metrics"][name]
        lines.append(f"| {name} | {m['f1']} | {b['f1']} | {b['f1'] - m['f1']:+.1f} |")
    lines += ["", f"pairs/s: fp32 {r['fp32']['pairs_per_s']}, bf16 {r['bf16']['pairs_per_s']} "
              f"({r['bf16']['pairs_per_s'] / r['fp32']['pairs_per_s']:.2f}x); largest probability difference "
              f"{r['max_abs_prob_diff']:.4f}; decisions changed {r['decisions_changed']} of {r['pairs']}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.matching.cross_precision", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the shared matching data folder")
    p.add_argument("--model", default="default", help="cross-encoder reference (default: the shipped one)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--limit", type=int, default=0, help="a random sample of this many valid pairs (0: all)")
    a = p.parse_args(argv)
    sys.stdout.write(to_markdown(compare(a.data, a.model, a.threads, a.limit)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
