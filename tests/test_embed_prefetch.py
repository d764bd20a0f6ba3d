"""udfs.embed: image batches run forward while the next images decode, with the same embeddings."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.testing import FakeEncoder
from udfs.embed import EmbedConfig, cached_encoder, embed_frame

SAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "sample_catalog" / "images"


def _sample_paths(n: int) -> list[str | None]:
    files = sorted(SAMPLE.iterdir())
    broken = [str(p) for p in files if p.name.startswith("B-")]
    good = [str(p) for p in files if not p.name.startswith("B-")][: n - len(broken) - 2]
    # Broken images and rows without one spread among the good ones: the model batches skip them.
    return [*good[:5], *broken, None, *good[5:], None, str(SAMPLE / "missing.jpg")]


class _Recorder(FakeEncoder):
    """The fake encoder, slow to preprocess (as a real decode is), recording the order of decodes and forwards."""

    def __init__(self):
        super().__init__(None)
        self.events: list[str] = []
        self.lock = threading.Lock()

    def preprocess(self, img):
        time.sleep(0.02)
        with self.lock:
            self.events.append("decode")
        return super().preprocess(img)

    def embed_pixels(self, pixels):
        with self.lock:
            self.events.append("forward")
        return super().embed_pixels(pixels)


def test_first_image_batch_runs_before_the_last_image_is_decoded():
    paths = _sample_paths(40)
    titles = [f"title {i}" for i in range(len(paths))]
    order = {}
    for prefetch in (False, True):
        enc = _Recorder()
        embed_frame(titles, paths, enc, EmbedConfig(batch_size=4, decode_threads=2, prefetch=prefetch))
        order[prefetch] = enc.events
    last_decode = {k: len(ev) - 1 - ev[::-1].index("decode") for k, ev in order.items()}
    assert order[False].index("forward") > last_decode[False]   # decode everything, then the model
    assert order[True].index("forward") < last_decode[True]     # the model starts while images still decode
    assert order[True].count("forward") == order[False].count("forward") >= 5


@pytest.mark.slow
def test_prefetch_gives_the_same_embeddings_with_the_shipped_model():
    paths = _sample_paths(40)
    titles = [f"product {i} in blue" * (1 + i % 3) for i in range(len(paths))]
    cfg = EmbedConfig(batch_size=8, device="cpu", prefetch=False)
    encoder = cached_encoder(cfg)
    plain = embed_frame(titles, paths, encoder, cfg)
    fetched = embed_frame(titles, paths, encoder, EmbedConfig(batch_size=8, device="cpu", prefetch=True))
    assert fetched["error"] == plain["error"]
    # Details name the same failures (Pillow's messages carry a buffer's address, which differs per call).
    assert [re.sub(r"0x[0-9a-f]+", "", d or "") for d in fetched["error_detail"]] == \
        [re.sub(r"0x[0-9a-f]+", "", d or "") for d in plain["error_detail"]]
    assert plain["error"].count(None) >= 30 and sum(e is not None for e in plain["error"]) >= 3
    for col in ("embedding", "text_embedding", "image_embedding"):
        for a, b in zip(plain[col], fetched[col], strict=True):
            assert (a is None and b is None) or np.array_equal(a, b), col
    assert sum(v is not None for v in plain["image_embedding"]) >= 25
