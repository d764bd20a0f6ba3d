"""The synthetic catalog of ``bench/enrich_e2e.py``: products with drawn JPEGs and planted duplicate listings.

A planted duplicate is a second listing of a product, written differently: its title reworded by
:func:`relist_title` (words reordered, one dropped, another case, other punctuation), the same brand, category
and description, a price within 3%, and the same image (half the time byte for byte, else re-encoded at another
JPEG quality). The pairs go to ``planted_pairs.csv`` beside the catalog, so the benchmark can say how many of
them the job's clusters (and the plain loop's) recover.
"""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

__all__ = ["changed_copy", "make_catalog", "plant_duplicates", "planted_pairs", "recovered", "relist_title"]

_SEPARATORS = (" ", " - ", ", ", " | ", " / ")


def relist_title(title: str, rng: random.Random, keep: frozenset[str] = frozenset()) -> str:
    """Another seller's title for the same product: two or three of reorder (a word moved to the end), drop
    (one word that is not in ``keep``), case (lower, upper or title case) and punctuation (parentheses, commas
    and dashes removed, the words joined by another separator). Never empty; never the input unchanged."""
    words = [w for w in re.split(r"\s+-\s+|[\s,()|/]+", title) if w]   # "KE-1234" stays one word
    ops = rng.sample(["reorder", "drop", "case", "punct"], rng.choice([2, 3]))
    if "reorder" in ops and len(words) > 2:
        words.append(words.pop(rng.randrange(len(words) - 1)))
    if "drop" in ops:
        droppable = [i for i, w in enumerate(words) if w not in keep]
        if len(droppable) > 2:
            words.pop(rng.choice(droppable))
    if "case" in ops:
        words = [getattr(w, rng.choice(["lower", "upper", "title"]))() for w in words]
    sep = rng.choice(_SEPARATORS[1:]) if "punct" in ops else " "
    out = sep.join(words)
    return out if out.strip() and out != title else title + " NEW"


def plant_duplicates(rows: list[dict], n_pairs: int, rng: random.Random, id_prefix: str = "D"
                     ) -> list[tuple[dict, dict]]:
    """``(original, relisting)`` pairs for ``n_pairs`` distinct products of ``rows`` (product dicts with
    ``product_id``, ``title``, ``brand``, ``price``, ``image_uri``; ``model`` when present is never dropped from
    the title). Relistings get new ids ``<id_prefix><7 digits>`` and their own ``image_uri`` (None where the
    original has no image); ``rows`` is left as it is."""
    if not 0 <= n_pairs <= len(rows):
        raise ValueError(f"n_pairs must lie in [0, {len(rows)}], got {n_pairs}")
    taken = {r["product_id"] for r in rows}
    out = []
    for k, i in enumerate(sorted(rng.sample(range(len(rows)), n_pairs))):
        orig = rows[i]
        pid = f"{id_prefix}{k:07d}"
        if pid in taken:
            raise ValueError(f"relisting id {pid} is taken: pass another id_prefix")
        keep = frozenset({orig["model"]}) if orig.get("model") else frozenset()
        dup = dict(orig, product_id=pid, title=relist_title(orig["title"], rng, keep),
                   price=None if orig.get("price") is None else round(orig["price"] * rng.uniform(0.97, 1.03), 2),
                   image_uri=None if orig.get("image_uri") is None else f"images/{pid}.jpg")
        dup.pop("model", None)
        out.append((orig, dup))
    return out


def make_catalog(out: Path, n: int, image_size: int, duplicates: float = 0.03, seed: int = 11) -> Path:
    """``out/catalog.parquet`` with N listings (about 4% without an image), their JPEGs under ``out/images``, and
    ``out/planted_pairs.csv``: ``round(duplicates * N)`` of the N listings are second listings of another one."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from jobs import make_sample_catalog as s

    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_dup = round(duplicates * n)
    rows = []
    for i in range(n - n_dup):
        ptype = s.TYPES[i % len(s.TYPES)]
        brand, colour, gender = rng.choice(s.BRANDS), rng.choice(list(s.COLOURS)), rng.choice(s.GENDERS)
        model = f"{brand[:2].upper()}-{rng.randint(1000, 99999)}"
        pid = f"B{i:07d}"
        uri = None
        if rng.random() > 0.04:
            img = s._draw(ptype.shape, s.COLOURS[colour], rng).resize((image_size, image_size), Image.BICUBIC)
            uri = f"images/{pid}.jpg"
            (out / uri).write_bytes(s._jpeg(img, 88))
        rows.append(dict(product_id=pid, title=s._title(brand, gender, colour, ptype.name, model, rng),
                         description=s._description(ptype, colour, rng), image_uri=uri, brand=brand,
                         category=ptype.category, price=round(rng.uniform(*ptype.price), 2), currency="EUR",
                         language="en", updated_at=None, model=model))
    pairs = plant_duplicates(rows, n_dup, rng)
    for orig, dup in pairs:
        if dup["image_uri"] is None:
            continue
        data = (out / orig["image_uri"]).read_bytes()
        if rng.random() < 0.5:   # re-encoded: other bytes, another hash, nearly the same pixels
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, format="JPEG", quality=rng.randint(60, 82))
            data = buf.getvalue()
        (out / dup["image_uri"]).write_bytes(data)
    rows += [dup for _, dup in pairs]
    for r in rows:
        r.pop("model", None)
    path = out / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=s.CATALOG_SCHEMA), path)
    with open(out / "planted_pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "relisting_id"])
        w.writerows((o["product_id"], d["product_id"]) for o, d in pairs)
    return path


def planted_pairs(catalog: Path) -> list[tuple[str, str]]:
    """The ``(original, relisting)`` pairs :func:`make_catalog` planted in ``catalog``."""
    with open(catalog.parent / "planted_pairs.csv", newline="") as f:
        return [(r["product_id"], r["relisting_id"]) for r in csv.DictReader(f)]


def recovered(pairs: list[tuple[str, str]], cluster_id: dict[str, str],
              matched: set[tuple[str, str]] | None = None) -> dict[str, int]:
    """How many planted ``pairs`` share a cluster in ``cluster_id`` (product -> cluster) and, with
    ``matched`` (pairs ``a < b``), how many were matched as a pair."""
    out = {"planted": len(pairs),
           "same_cluster": sum(1 for a, b in pairs if a in cluster_id and cluster_id[a] == cluster_id.get(b))}
    if matched is not None:
        out["matched"] = sum(1 for a, b in pairs if (min(a, b), max(a, b)) in matched)
    return out


def changed_copy(catalog: Path, fraction: float, seed: int = 5) -> tuple[Path, int]:
    """A copy of the catalog where ``fraction`` of the products have a new title."""
    import pyarrow.parquet as pq

    df = pq.read_table(catalog).to_pandas()
    rng = random.Random(seed)
    picked = rng.sample(range(len(df)), max(1, round(fraction * len(df))))
    df.loc[picked, "title"] = df.loc[picked, "title"] + " (new season)"
    out = catalog.with_name("catalog_changed.parquet")
    df.to_parquet(out, index=False)
    return out, len(picked)
