"""Decode prefetch in ``udfs.embed.embed_frame``: the shipped model over the sample images, with and without.

    python bench/embed_prefetch.py                       # 128 images, model batch 32, 5 repeats of each
    python bench/embed_prefetch.py --rows 256 --repeats 7

The two settings alternate in one process (the model loaded once, a warm-up call first), so both see the same
machine state; the figure is the median seconds per Arrow batch of ``--rows`` rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "jobs" / "sample_catalog" / "images"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--decode-threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)

    from udfs.embed import EmbedConfig, cached_encoder, embed_frame

    paths = [str(p) for p in sorted(IMAGES.iterdir()) if not p.name.startswith("B-")][: a.rows]
    titles = [f"product {i} {Path(p).stem}" for i, p in enumerate(paths)]
    cfgs = {on: EmbedConfig(batch_size=a.batch_size, device=a.device, decode_threads=a.decode_threads, prefetch=on)
            for on in (False, True)}
    encoder = cached_encoder(cfgs[False])
    embed_frame(titles[: a.batch_size], paths[: a.batch_size], encoder, cfgs[False])  # warm-up
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.repeats):
        for on in (False, True):
            t = time.perf_counter()
            embed_frame(titles, paths, encoder, cfgs[on])
            seconds[on].append(time.perf_counter() - t)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(json.dumps({"rows": len(paths), "batch_size": a.batch_size, "decode_threads": a.decode_threads,
                      "repeats": a.repeats, "median_s_decode_first": round(off, 3),
                      "median_s_prefetch": round(on, 3), "speedup": round(off / on, 3),
                      "all_s": {"decode_first": [round(s, 3) for s in seconds[False]],
                                "prefetch": [round(s, 3) for s in seconds[True]]}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
