"""Photos as sellers post them, read by the embed stage's own functions with the shipped encoder: a 3:4 product
photo on a white square canvas, cut out on a transparent background (black under it) and stored on its side with an
EXIF orientation all embed as the photo itself (EVALUATION.md, "Photos as sellers post them")."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models.images as images
from bench.seller_photos import KINDS, as_before

SAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "sample_catalog" / "images"
# the ways of posting a photo that the benchmark measures (bench/seller_photos.py), by a short name
POSTED = {"square canvas": "on a white square canvas, 4x the size",
          "transparent cut-out": "cut out on transparency (PNG)",
          "on its side": "stored on its side with an EXIF orientation (JPEG)"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(catalog photo paths, {kind: paths}): six sample products cut to 3:4 on white, and each posted three ways."""
    out = tmp_path_factory.mktemp("seller_photos")
    catalog: list[str] = []
    kinds: dict[str, list[str]] = {k: [] for k in POSTED}
    for k, src in enumerate(sorted(SAMPLE.glob("P*.jpg"))[:6]):
        img = Image.open(src).convert("RGB")
        w, h = img.size
        arr = np.asarray(img).copy()
        arr[(arr.min(axis=2) >= 215)] = 255     # the sample's light textured background made white, as a catalog's
        photo = Image.fromarray(arr).crop(((w - w * 3 // 4) // 2, 0, (w + w * 3 // 4) // 2, h)).resize((60, 80))
        path = out / f"{k}.jpg"
        photo.save(path, "JPEG", quality=95)
        catalog.append(str(path))
        for kind, name in POSTED.items():
            posted = out / f"{k}-{kind.replace(' ', '-')}"
            posted.write_bytes(KINDS[name](photo, path.read_bytes()))
            kinds[kind].append(str(posted))
    return catalog, kinds


def _image_embeddings(paths: list[str]) -> np.ndarray:
    from udfs.embed import EmbedConfig, cached_encoder, embed_frame

    cfg = EmbedConfig(precision="fp32", decode_threads=1)
    out = embed_frame(["a product"] * len(paths), paths, cached_encoder(cfg), cfg)
    assert all(e is None for e in out["error"])
    return np.stack(out["image_embedding"])


@pytest.mark.parametrize("kind", list(POSTED))
def test_a_photo_posted_as_sellers_post_it_embeds_as_the_photo_itself(photos, kind):
    catalog, kinds = photos
    base = _image_embeddings(catalog)
    cos = (_image_embeddings(kinds[kind]) * base).sum(axis=1)
    assert cos.min() >= 0.95, cos
    # read as before (no orientation, alpha dropped, the canvas fitted whole) the same files were other photos
    with as_before():
        before = (_image_embeddings(kinds[kind]) * base).sum(axis=1)
    assert np.median(before) < 0.9, before


def test_the_job_decodes_a_transparent_png_on_white():
    data = KINDS["cut out on transparency (PNG)"](Image.new("RGB", (6, 8), (255, 255, 255)), b"")
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    assert (np.asarray(images.decode_image(data)) == 255).all()
