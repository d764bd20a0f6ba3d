"""Photos as sellers post them, read by the embed stage's own functions with the shipped encoder: a 3:4 product
photo on a white square canvas, cut out on a transparent background (black under it) and stored on its side with an
EXIF orientation all embed as the photo itself (EVALUATION.md, "Photos as sellers post them")."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import models.images as images

SAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "sample_catalog" / "images"


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> str:
    img.save(path, fmt, **kw)
    return str(path)


def _cut_out(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    clear = arr.min(axis=2) >= 235
    rgba = np.dstack([np.where(clear[..., None], 0, arr), np.where(clear, 0, 255)]).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def _exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(catalog photo paths, {kind: paths}): six sample products cut to 3:4 on white, and each posted three ways."""
    out = tmp_path_factory.mktemp("seller_photos")
    catalog, kinds = [], {"square canvas": [], "transparent cut-out": [], "on its side": []}
    for k, src in enumerate(sorted(SAMPLE.glob("P*.jpg"))[:6]):
        img = Image.open(src).convert("RGB")
        w, h = img.size
        arr = np.asarray(img).copy()
        arr[(arr.min(axis=2) >= 215)] = 255     # the sample's light textured background made white, as a catalog's
        photo = Image.fromarray(arr).crop(((w - w * 3 // 4) // 2, 0, (w + w * 3 // 4) // 2, h)).resize((60, 80))
        catalog.append(_save(photo, out / f"{k}.jpg", "JPEG", quality=95))
        big = photo.resize((240, 320), Image.BICUBIC)
        kinds["square canvas"].append(_save(ImageOps.pad(big, (320, 320), color="white"), out / f"{k}-sq.jpg",
                                            "JPEG", quality=90))
        kinds["transparent cut-out"].append(_save(_cut_out(photo), out / f"{k}-cut.png", "PNG"))
        kinds["on its side"].append(_save(photo.transpose(Image.Transpose.ROTATE_90), out / f"{k}-side.jpg", "JPEG",
                                          quality=95, exif=_exif(6)))
    return catalog, kinds


def _image_embeddings(paths: list[str]) -> np.ndarray:
    from udfs.embed import EmbedConfig, cached_encoder, embed_frame

    cfg = EmbedConfig(precision="fp32", decode_threads=1)
    out = embed_frame(["a product"] * len(paths), paths, cached_encoder(cfg), cfg)
    assert all(e is None for e in out["error"])
    return np.stack(out["image_embedding"])


@pytest.mark.parametrize("kind", ["square canvas", "transparent cut-out", "on its side"])
def test_a_photo_posted_as_sellers_post_it_embeds_as_the_photo_itself(photos, kind, monkeypatch):
    catalog, kinds = photos
    base = _image_embeddings(catalog)
    cos = (_image_embeddings(kinds[kind]) * base).sum(axis=1)
    assert cos.min() >= 0.95, cos
    # read as before (no orientation, alpha dropped, the canvas fitted whole) the same files were other photos
    monkeypatch.setattr(images, "upright", lambda img: None)
    monkeypatch.setattr(images, "flatten", lambda img, *a, **k: img.convert("RGB"))
    monkeypatch.setattr(images, "trim_to_aspect", lambda img, *a, **k: img)
    before = (_image_embeddings(kinds[kind]) * base).sum(axis=1)
    assert np.median(before) < 0.9, before


def test_the_job_decodes_a_transparent_png_on_white():
    img = _cut_out(Image.new("RGB", (6, 8), (255, 255, 255)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert (np.asarray(images.decode_image(buf.getvalue())) == 255).all()
