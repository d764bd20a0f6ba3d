"""Training throughput of the shipped architecture: samples/s per batch size (median of 3 optimiser steps).

    python bench/train_throughput.py [--batches 64,128,256] [--chunk 512] [--threads N]

Synthetic data: random 64-px images and random pooled text features, so the figure is the cost of a training
step with a locked text tower (image tower forward/backward, InfoNCE, text projection, AdamW) without the
one-off MiniLM feature pass. Runs in well under 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="64,128,256")
    p.add_argument("--chunk", type=int, default=512, help="gradient-cache chunk size")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from models.arch import build_clip
    from models.training.config import TrainConfig
    from models.training.data import TrainData
    from models.training.pipeline import candidate_config, load_tokenizer
    from models.training.trainer import Trainer

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg_model = candidate_config()
    model = build_clip(cfg_model)
    trainer = Trainer(model, load_tokenizer(cfg_model["text_cfg"]), TrainConfig(chunk_size=a.chunk))
    opt = trainer._optimizer()
    sizes = [int(b) for b in a.batches.split(",")]
    n = max(sizes)
    rng = np.random.default_rng(0)
    data = TrainData(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), tuple(f"t{i}" for i in range(n)))
    feats = torch.randn(n, 384)
    gen = torch.Generator().manual_seed(0)
    model.train()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, chunk {a.chunk}")
    print("batch  samples/s (median of %d)  step s" % a.repeats)
    for bs in sizes:
        idx = torch.arange(bs)
        trainer._step(data, idx, feats, trainer._embed_text_features, None, None, idx, gen)  # warm-up
        opt.zero_grad(set_to_none=True)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            trainer._step(data, idx, feats, trainer._embed_text_features, None, None, idx, gen)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{bs:5d}  {bs / med:10.1f}                 {med:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
