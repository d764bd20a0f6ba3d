"""Generate the sample catalog that ships with the project.

Every product, title and image here is synthetic: titles come from templates over invented brands, and
images are drawn procedurally (a silhouette per product type in the product's colour). The catalog holds

* a few hundred valid products across a dozen types, some in German, Japanese and Korean;
* planted duplicate listings: the same product re-listed by another seller with a reworded title, a
  shifted/re-encoded photo and a slightly different price (ground truth in ``duplicates.csv``);
* products without an image (valid: the image is optional);
* broken rows, one per quarantine reason (ground truth in ``broken.csv``).

Usage: ``python -m jobs.make_sample_catalog [--out DIR] [--products N] [--seed S]``.
The output is deterministic for a given seed and Pillow version.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["DEFAULT_SAMPLE_DIR", "main", "generate"]

DEFAULT_SAMPLE_DIR = Path(__file__).resolve().parent / "sample_catalog"
IMAGE_SIZE = 64

BRANDS = ["Northwind", "Kestrel", "Lumen", "Orca", "Tundra", "Vela", "Mosaic", "Fjord", "Aster", "Quill"]
COLOURS = {
    "Black": (25, 25, 28), "White": (236, 236, 232), "Navy Blue": (28, 40, 92), "Red": (196, 32, 38),
    "Green": (46, 130, 64), "Grey": (128, 128, 132), "Brown": (120, 72, 40), "Pink": (232, 120, 170),
    "Yellow": (236, 200, 40), "Purple": (110, 50, 140),
}
GENDERS = ["Men", "Women", "Unisex", "Kids"]


@dataclass(frozen=True)
class ProductType:
    name: str          # the product-type noun used in titles
    category: str      # seller-given category path
    shape: str         # drawing routine
    price: tuple[float, float]


TYPES = [
    ProductType("T-Shirt", "Apparel > Topwear > Tshirts", "tshirt", (8, 30)),
    ProductType("Shirt", "Apparel > Topwear > Shirts", "shirt", (15, 60)),
    ProductType("Jeans", "Apparel > Bottomwear > Jeans", "jeans", (25, 90)),
    ProductType("Dress", "Apparel > Dress > Dresses", "dress", (20, 120)),
    ProductType("Sneakers", "Footwear > Shoes > Casual Shoes", "shoe", (30, 150)),
    ProductType("Handbag", "Accessories > Bags > Handbags", "bag", (20, 200)),
    ProductType("Watch", "Accessories > Watches > Watches", "watch", (40, 400)),
    ProductType("Backpack", "Accessories > Bags > Backpacks", "backpack", (25, 110)),
    ProductType("Sunglasses", "Accessories > Eyewear > Sunglasses", "glasses", (10, 180)),
    ProductType("Cap", "Accessories > Headwear > Caps", "cap", (6, 35)),
    ProductType("Mug", "Home > Kitchen > Mugs", "mug", (5, 25)),
    ProductType("Headphones", "Electronics > Audio > Headphones", "headphones", (20, 300)),
]

# A few listings in other languages: (language, template over brand/colour/type words).
FOREIGN = {
    "de": ({"T-Shirt": "T-Shirt", "Sneakers": "Turnschuhe", "Watch": "Armbanduhr", "Mug": "Tasse"},
           {"Black": "Schwarz", "White": "Weiss", "Red": "Rot", "Green": "Grün", "Navy Blue": "Marineblau"}),
    "ja": ({"T-Shirt": "Tシャツ", "Sneakers": "スニーカー", "Watch": "腕時計", "Mug": "マグカップ"},
           {"Black": "ブラック", "White": "ホワイト", "Red": "レッド", "Green": "グリーン", "Navy Blue": "ネイビー"}),
    "ko": ({"T-Shirt": "티셔츠", "Sneakers": "운동화", "Watch": "손목시계", "Mug": "머그컵"},
           {"Black": "블랙", "White": "화이트", "Red": "레드", "Green": "그린", "Navy Blue": "네이비"}),
}

CATALOG_SCHEMA = pa.schema([
    ("product_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
    ("image_uri", pa.string()), ("brand", pa.string()), ("category", pa.string()),
    ("price", pa.float64()), ("currency", pa.string()), ("language", pa.string()),
    ("updated_at", pa.timestamp("us", tz="UTC")),
])


def _draw(shape: str, colour: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """Draw a product silhouette on a light, slightly textured background."""
    s = IMAGE_SIZE
    bg = tuple(rng.randint(225, 250) for _ in range(3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    c = colour
    dark = tuple(max(0, v - 50) for v in c)
    if shape in ("tshirt", "shirt"):
        d.polygon([(16, 14), (26, 10), (38, 10), (48, 14), (56, 24), (48, 28), (46, 54), (18, 54),
                   (16, 28), (8, 24)], fill=c, outline=dark)
        if shape == "shirt":
            d.line([(32, 12), (32, 54)], fill=dark, width=1)
            for y in (20, 28, 36, 44):
                d.point((34, y), fill=bg)
    elif shape == "jeans":
        d.polygon([(20, 8), (44, 8), (48, 58), (36, 58), (32, 26), (28, 58), (16, 58)], fill=c, outline=dark)
    elif shape == "dress":
        d.polygon([(26, 8), (38, 8), (40, 24), (52, 58), (12, 58), (24, 24)], fill=c, outline=dark)
    elif shape == "shoe":
        d.polygon([(8, 40), (20, 30), (34, 30), (56, 42), (56, 50), (8, 50)], fill=c, outline=dark)
        d.rectangle([8, 48, 56, 52], fill=(240, 240, 240))
    elif shape == "bag":
        d.arc([20, 8, 44, 32], 180, 360, fill=dark, width=3)
        d.rectangle([12, 20, 52, 54], fill=c, outline=dark)
    elif shape == "watch":
        d.rectangle([27, 4, 37, 60], fill=dark)
        d.ellipse([18, 18, 46, 46], fill=c, outline=dark, width=2)
        d.line([(32, 32), (32, 22)], fill=bg, width=2)
        d.line([(32, 32), (39, 34)], fill=bg, width=1)
    elif shape == "backpack":
        d.rounded_rectangle([16, 10, 48, 58], radius=8, fill=c, outline=dark)
        d.rectangle([22, 36, 42, 52], outline=dark)
    elif shape == "glasses":
        d.ellipse([8, 24, 29, 42], fill=c, outline=dark, width=2)
        d.ellipse([35, 24, 56, 42], fill=c, outline=dark, width=2)
        d.line([(29, 30), (35, 30)], fill=dark, width=2)
    elif shape == "cap":
        d.pieslice([14, 16, 50, 52], 180, 360, fill=c, outline=dark)
        d.rectangle([30, 32, 60, 36], fill=dark)
    elif shape == "mug":
        d.rectangle([16, 16, 42, 54], fill=c, outline=dark)
        d.arc([36, 24, 54, 44], 270, 90, fill=dark, width=4)
    elif shape == "headphones":
        d.arc([12, 8, 52, 52], 180, 360, fill=dark, width=4)
        d.rounded_rectangle([8, 30, 20, 50], radius=3, fill=c)
        d.rounded_rectangle([44, 30, 56, 50], radius=3, fill=c)
    else:  # pragma: no cover - every type above has a shape
        raise ValueError(f"unknown shape {shape!r}")
    return img


def _perturb(img: Image.Image, rng: random.Random) -> Image.Image:
    """Another seller's photo of the same product: shifted, rescaled, re-lit."""
    s = IMAGE_SIZE
    scale = rng.uniform(0.85, 1.0)
    w = int(s * scale)
    small = img.resize((w, w), Image.BILINEAR)
    out = Image.new("RGB", (s, s), img.getpixel((0, 0)))
    out.paste(small, (rng.randint(0, s - w), rng.randint(0, s - w)))
    factor = rng.uniform(0.9, 1.1)
    out = out.point(lambda v: max(0, min(255, int(v * factor))))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.6)))


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _title(brand: str, gender: str, colour: str, ptype: str, model: str, rng: random.Random) -> str:
    forms = [
        f"{brand} {gender} {colour} {ptype} {model}",
        f"{brand} {ptype} for {gender} - {colour} ({model})",
        f"{colour} {ptype} by {brand}, {gender}, model {model}",
    ]
    return rng.choice(forms)


def _relist_title(brand: str, gender: str, colour: str, ptype: str, model: str, rng: random.Random) -> str:
    forms = [
        f"NEW {brand.upper()} {ptype.lower()} {colour.lower()} {model} {gender.lower()}",
        f"{gender}'s {colour} {ptype} | {brand} {model} | fast shipping",
        f"{brand} {model} {ptype} ({colour}) - genuine",
        f"{ptype} {brand} {colour} {model.replace('-', '')} {gender}",
    ]
    return rng.choice(forms)


def _description(ptype: ProductType, colour: str, rng: random.Random) -> str:
    bits = [
        f"A {colour.lower()} {ptype.name.lower()} for everyday use.",
        rng.choice(["Easy care.", "Durable build.", "Lightweight.", "Classic fit.", "Gift boxed."]),
        rng.choice(["Ships in 2 days.", "One-year warranty.", "Made from recycled materials.", ""]),
    ]
    return " ".join(b for b in bits if b)


def generate(out: Path, n_products: int = 300, seed: int = 7) -> dict[str, int]:
    """Write ``catalog.parquet``, ``images/``, ``duplicates.csv`` and ``broken.csv`` under ``out``."""
    rng = random.Random(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*"):
        old.unlink()
    rows: list[dict] = []
    dup_rows: list[tuple[str, str]] = []
    t0 = datetime(2026, 10, 1, tzinfo=timezone.utc)

    n_dup_groups = max(1, n_products // 12)
    next_id = 1

    def new_id() -> str:
        nonlocal next_id
        pid = f"P{next_id:05d}"
        next_id += 1
        return pid

    for i in range(n_products):
        ptype = TYPES[i % len(TYPES)]
        brand = rng.choice(BRANDS)
        colour = rng.choice(list(COLOURS))
        gender = rng.choice(GENDERS)
        model = f"{brand[:2].upper()}-{rng.randint(1000, 9999)}"
        price = round(rng.uniform(*ptype.price), 2)
        img = _draw(ptype.shape, COLOURS[colour], rng)
        pid = new_id()
        language = "en"
        title = _title(brand, gender, colour, ptype.name, model, rng)
        lang_pick = rng.random()
        if lang_pick < 0.06 and ptype.name in FOREIGN["de"][0] and colour in FOREIGN["de"][1]:
            language = rng.choice(sorted(FOREIGN))
            words, colours = FOREIGN[language]
            title = f"{brand} {words[ptype.name]} {colours[colour]} {model}"
        has_image = rng.random() > 0.04
        image_uri = None
        if has_image:
            image_uri = f"images/{pid}.jpg"
            (out / image_uri).write_bytes(_jpeg(img, 88))
        rows.append(dict(
            product_id=pid, title=title, description=_description(ptype, colour, rng), image_uri=image_uri,
            brand=brand, category=ptype.category, price=price, currency="EUR", language=language,
            updated_at=t0 + timedelta(hours=i),
        ))
        # Plant duplicate listings of some products (each planted group has 2-3 listings).
        if i < n_dup_groups * 3 and i % 3 == 0 and has_image and language == "en":
            for _ in range(rng.choice([1, 1, 2])):
                did = new_id()
                uri = f"images/{did}.jpg"
                (out / uri).write_bytes(_jpeg(_perturb(img, rng), rng.randint(60, 90)))
                rows.append(dict(
                    product_id=did, title=_relist_title(brand, gender, colour, ptype.name, model, rng),
                    description=_description(ptype, colour, rng), image_uri=uri,
                    brand=rng.choice([brand, brand.upper(), None]), category=ptype.category,
                    price=round(price * rng.uniform(0.93, 1.07), 2), currency="EUR", language="en",
                    updated_at=t0 + timedelta(hours=i, minutes=30),
                ))
                dup_rows.append((did, pid))
            dup_rows.append((pid, pid))

    broken = _broken_rows(out, rows, rng, t0)
    rows.extend(r for r, _ in broken)
    rng.shuffle(rows)
    table = pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA)
    pq.write_table(table, out / "catalog.parquet", compression="zstd")

    with open(out / "duplicates.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "planted_group"])
        w.writerows(sorted(dup_rows))
    with open(out / "broken.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "title", "expected_reason"])
        for r, reason in broken:
            w.writerow([r["product_id"], r["title"], reason])
    return {"rows": len(rows), "broken": len(broken), "duplicate_listings": sum(a != b for a, b in dup_rows)}


def _broken_rows(out: Path, rows: list[dict], rng: random.Random, t0: datetime) -> list[tuple[dict, str]]:
    """One or two rows per quarantine reason; the expected reason code goes to ``broken.csv``."""
    def row(pid: str | None, title: str | None, image_uri: str | None) -> dict:
        return dict(product_id=pid, title=title, description="broken on purpose", image_uri=image_uri,
                    brand="Broken", category="Apparel > Topwear > Tshirts", price=9.99, currency="EUR",
                    language="en", updated_at=t0)

    good = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 10, 10))
    (out / "images" / "B-truncated.jpg").write_bytes(_jpeg(good, 90)[:200])
    (out / "images" / "B-not-an-image.jpg").write_bytes(b"this is a text file, not a JPEG\n")
    (out / "images" / "B-empty.png").write_bytes(b"")
    whole = _jpeg(_draw("mug", (40, 90, 200), rng), 90)
    (out / "images" / "B-cut-short.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # header intact, pixels cut
    first = rows[1]
    return [
        (row(None, "Kestrel Men Black T-Shirt without an id", None), "missing_id"),
        (row("", "Lumen Women Red Dress with an empty id", None), "missing_id"),
        (dict(first, title=first["title"] + " (older copy)", updated_at=t0 - timedelta(days=30)), "duplicate_id"),
        (row("B0001", "   ", None), "empty_title"),
        (row("B0002", None, None), "empty_title"),
        (row("B0003", "Orca Unisex Grey Cap with a missing photo", "images/does-not-exist.jpg"), "image_unreadable"),
        (row("B0004", "Vela Women Pink Handbag with a truncated photo", "images/B-truncated.jpg"),
         "image_undecodable"),
        (row("B0005", "Aster Men Green Shirt whose photo is text", "images/B-not-an-image.jpg"),
         "image_undecodable"),
        (row("B0006", "Quill Kids Yellow Cap with an empty photo file", "images/B-empty.png"),
         "image_undecodable"),
        (row("B0010", "Kestrel Unisex Blue Mug whose photo is cut short", "images/B-cut-short.jpg"),
         "image_undecodable"),
        (row("B0007", "Mosaic Unisex White Mug escaping the image root", "../../../../etc/passwd"),
         "image_uri_not_allowed"),
        (row("B0008", "Fjord Men Navy Blue Watch on a web server", "https://example.com/watch.jpg"),
         "image_uri_not_allowed"),
        (row("B0009", "Tundra Women Black Sneakers elsewhere on disk", "file:///etc/hostname"),
         "image_uri_not_allowed"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_SAMPLE_DIR)
    p.add_argument("--products", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    counts = generate(args.out, args.products, args.seed)
    print(f"wrote {counts['rows']} rows ({counts['duplicate_listings']} planted duplicate listings, "
          f"{counts['broken']} broken rows) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
