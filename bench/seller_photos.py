"""The category head on photos as sellers post them: the report half of the fashion valid split, each photo also
posted on a white and a light grey square canvas (4x the size), on a white 4:3 canvas, with a white border all
round (JPEG), cut out on a transparent background (PNG, black under the transparent pixels, as many exporters
leave it), cut out on a square transparent canvas, and stored on its side with the EXIF orientation that turns it
upright (as phones store photos); decoded as the job decodes them (:func:`models.images.decode_image`), with and
without what the job does since 2026-12-08 (the EXIF orientation applied, :func:`models.images.upright`;
transparency laid over white, :func:`models.images.flatten`; plain margins that pad a photo to another shape cut,
:func:`models.images.trim_to_aspect`).

    python bench/seller_photos.py --fashion /work/shared/data/fashion

Prints one Markdown row per photo kind and reading: the image embedding's cosine to the catalog photo's (median /
5th percentile), then the shipped head bundle's category accuracy on full titles / titles cut to the brand / no
title.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models.images as images  # noqa: E402


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _cut_out(img: Image.Image) -> bytes:
    """The photo as a PNG cut-out: its white background transparent, stored black under the transparency."""
    arr = np.asarray(img.convert("RGB"))
    clear = arr.min(axis=2) >= 240
    rgba = np.dstack([np.where(clear[..., None], 0, arr), np.where(clear, 0, 255)]).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def _on_its_side(img: Image.Image) -> bytes:
    """The photo as a phone stores it: on its side, with the EXIF orientation (6) that turns it upright."""
    tags = Image.Exif()
    tags[0x0112] = 6
    buf = io.BytesIO()
    img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=85, exif=tags.tobytes())
    return buf.getvalue()


def _square(img: Image.Image, fill: str | tuple[int, ...] = "white") -> Image.Image:
    return ImageOps.pad(img, (img.height,) * 2, color=fill)


KINDS: dict[str, Callable[[Image.Image, bytes], bytes]] = {
    "as in the catalog": lambda im, raw: raw,
    "on a white square canvas, 4x the size": lambda im, raw: _jpeg(_square(
        im.resize((im.width * 4, im.height * 4), Image.BICUBIC))),
    "on a light grey (#EEEEEE) square canvas, 4x the size": lambda im, raw: _jpeg(_square(
        im.resize((im.width * 4, im.height * 4), Image.BICUBIC), (238, 238, 238))),
    "on a white 4:3 landscape canvas": lambda im, raw: _jpeg(ImageOps.pad(
        im, (round(im.height * 4 / 3), im.height), color="white")),
    "with a white border of 10% all round": lambda im, raw: _jpeg(ImageOps.expand(
        im, border=(round(im.width * 0.1), round(im.height * 0.1)), fill="white")),
    "cut out on transparency (PNG)": lambda im, raw: _cut_out(im),
    "cut out on a transparent square (PNG)": lambda im, raw: _cut_out(_square(im)),
    "stored on its side with an EXIF orientation (JPEG)": lambda im, raw: _on_its_side(im),
}


@contextmanager
def as_before() -> Iterator[None]:
    """Photos read as before 2026-12-08: EXIF orientation and alpha ignored, the photo fitted whole, margins and
    all."""
    trim, flatten, upright = images.trim_to_aspect, images.flatten, images.upright
    images.trim_to_aspect = lambda img, *a, **k: img   # type: ignore[assignment]
    images.flatten = lambda img, *a, **k: img.convert("RGB")   # type: ignore[assignment]
    images.upright = lambda img: None   # type: ignore[assignment]
    try:
        yield
    finally:
        images.trim_to_aspect, images.flatten, images.upright = trim, flatten, upright   # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fashion", required=True, help="the fashion folder (products.parquet + images/)")
    ap.add_argument("--store", default=None, help="model store root (default: the shipped store)")
    a = ap.parse_args(argv)

    from models.encoders import load_encoder
    from models.heads.bundle import find_heads, load_heads
    from models.heads.degrade import degrade, known_brands
    from models.heads.fashion import dev_half
    from models.store import store_root
    from models.training.fashion import load_fashion

    enc = load_encoder("default", "cpu", "fp32")
    bundle_dir = find_heads(store_root(a.store), enc.version)
    if bundle_dir is None:
        ap.error(f"no head bundle in the store for {enc.version}")
    head = load_heads(bundle_dir).category
    if head is None:
        ap.error(f"the head bundle {bundle_dir} has no category head")
    split = load_fashion(a.fashion, size=enc.pixel_geometry)
    valid = split.valid_rows.reset_index(drop=True)
    rows = valid[~dev_half(valid)].reset_index(drop=True)   # the report half, as models.heads.fashion reports
    titles = rows["title"].astype(str).tolist()
    brands = known_brands(split.train_rows["title"].astype(str).tolist())
    conditions = {"full": titles, "brand": degrade(titles, "brand", 0, brands), "none": [""] * len(titles)}
    text = {k: enc.embed_texts(v) for k, v in conditions.items()}
    gold = rows["articleType"].astype(str).to_numpy()
    classes = np.array(head.classes)
    raws = [(Path(a.fashion) / p).read_bytes() for p in rows["image_path"]]
    photos = [images.decode_image(raw) for raw in raws]

    def embed(data: list[bytes]):
        return enc.embed_images([images.decode_image(d, target_size=enc.image_size) for d in data])

    catalog = embed(raws)
    print(f"{enc.version}, {bundle_dir.name}: {len(rows)} products (report half)\n")
    print("| photos | read | image cosine to the catalog photo, median / 5th percentile | category accuracy, "
          "full titles / cut to the brand / no title |")
    print("|---|---|---|---|")
    for name, post in KINDS.items():
        posted = [post(im, raw) for im, raw in zip(photos, raws, strict=True)]
        for now in (False, True):
            if now:
                e = embed(posted)
            else:
                with as_before():
                    e = embed(posted)
            cos = (e * catalog).sum(axis=1)
            acc = [float(np.mean(classes[head.predict(text[c], e, ts).argmax(axis=1)] == gold))
                   for c, ts in conditions.items()]
            print(f"| {name} | {'now' if now else 'before'} | {np.median(cos):.3f} / {np.quantile(cos, 0.05):.3f} | "
                  + " / ".join(f"{x:.3f}" for x in acc) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
