"""The attribute-value gold sets (OA-Mine, AE-110K, WDC PAVE) as products, and a leak-free train/valid split.

Each dataset is a ``<name>_products.parquet`` (title, description) and a long-format
``<name>_attribute_values.parquet`` (one row per product, attribute and value; ``is_na`` marks an attribute that
the annotators looked for and did not find). Only train splits are here; the test splits are withheld, so the
valid split is carved from train:

* ``train_0.2`` (OA-Mine, AE-110K) and WDC's small ``train`` are subsets of the large train split under other
  product ids (or the same ids, for WDC). Products are grouped by their normalised text; a group goes to valid
  or train as a whole, decided by a hash of its canonical id (the smallest product id among its rows in the
  large split), and the subset's copies are dropped: a duplicate never sits on both sides of the split.
* Attribute names are mapped through :data:`ALIASES` (the same attribute under another name in another dataset)
  in training, in the extractor's output and in the evaluation alike.

No torch here: the driver and the evaluation report import this cheaply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from models.attributes.normalise import Normaliser

__all__ = [
    "ALIASES", "DATASETS", "Dataset", "Product", "canonical_attribute", "category_schemas", "data_snapshot",
    "hash_side", "load_all", "load_dataset", "normalised_gold", "normaliser_for", "split_products", "wdc_descriptions",
]

log = logging.getLogger(__name__)

# Short name -> (file prefix, the large train split). WDC PAVE is its "all attributes" variant with the values as
# written in the text (the normalised variants rewrite values, which a span extractor cannot produce).
DATASETS: dict[str, tuple[str, str]] = {
    "oa_mine": ("oa_mine", "train"),
    "ae_110k": ("ae_110k", "train"),
    "wdc_pave": ("wdc_pave_all_attributes", "train_large"),
}
# The same attribute named differently across datasets; no product carries both names (checked on the data).
ALIASES: dict[str, str] = {"Brand Name": "Brand", "Color(s)": "Color"}
VALID_FRACTION = 0.2


def canonical_attribute(name: str) -> str:
    return ALIASES.get(name, name)


@dataclass(frozen=True)
class Product:
    dataset: str
    product_id: str
    category: str
    title: str
    description: str | None
    # canonical attribute -> gold values as written in the data; an empty tuple means n/a (absent)
    gold: dict[str, tuple[str, ...]] = field(hash=False, compare=False)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: list[Product]
    valid: list[Product]
    stats: dict[str, int]


def _norm_text(s: str | None) -> str:
    return re.sub(r"\s+", " ", (s or "").strip().lower())


def hash_side(dataset: str, key: str, fraction: float) -> bool:
    """Whether ``key`` falls in the ``fraction`` side of a split named by ``dataset`` (a hash: stable everywhere)."""
    h = hashlib.sha256(f"{dataset}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def data_snapshot(root: str | Path) -> str:
    """A short digest of the files the datasets come from (recorded in the model manifest)."""
    from models.digest import sha256_files

    root = Path(root)
    files = [root / f"{prefix}_{kind}.parquet" for prefix, _ in DATASETS.values()
             for kind in ("products", "attribute_values")]
    return "attributes sha256:" + sha256_files(files)[:16]


def category_schemas(products: Iterable[Product]) -> dict[str, set[str]]:
    """Per category, every attribute annotated on one of its products."""
    out: dict[str, set[str]] = {}
    for p in products:
        out.setdefault(p.category, set()).update(p.gold)
    return out


def load_dataset(root: str | Path, name: str) -> pd.DataFrame:
    """One row per product of every split: product columns plus ``gold`` (canonical attribute -> values)."""
    if name not in DATASETS:
        raise ValueError(f"unknown attribute dataset {name!r}; known: {', '.join(DATASETS)}")
    prefix, _ = DATASETS[name]
    root = Path(root)
    products = pd.read_parquet(root / f"{prefix}_products.parquet")
    values = pd.read_parquet(root / f"{prefix}_attribute_values.parquet")
    gold: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(dict)
    for split, pid, attr, value, is_na in values[["split", "product_id", "attribute", "value", "is_na"]].itertuples(
            index=False):
        slot = gold[(split, pid)].setdefault(canonical_attribute(attr), [])
        if not is_na and isinstance(value, str) and value.strip() and value not in slot:
            slot.append(value)
    products = products.sort_values(["split", "row_in_split"], kind="stable").reset_index(drop=True)
    products["gold"] = [{a: tuple(v) for a, v in gold.get((s, p), {}).items()}
                        for s, p in zip(products["split"], products["product_id"], strict=True)]
    return products


def split_products(frame: pd.DataFrame, name: str, fraction: float = VALID_FRACTION) -> Dataset:
    """Deterministic train/valid split of one dataset's products, duplicates kept on one side (module doc)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"valid fraction must be in (0, 1), got {fraction}")
    main_split = DATASETS[name][1]
    keys = [f"{_norm_text(t)}\x1f{_norm_text(d)}" for t, d in zip(frame["title"], frame["description"], strict=True)]
    frame = frame.assign(group_key=keys, in_main=frame["split"] == main_split)
    canonical: dict[str, str] = {}
    for key, group in frame.groupby("group_key", sort=False):
        rows = group[group["in_main"]] if group["in_main"].any() else group
        canonical[key] = str(min(rows["product_id"].astype(str)))
    # Copies from the subset splits of a text the large split also has: the same product, dropped.
    keys_in_main = set(frame.loc[frame["in_main"], "group_key"])
    dropped = frame[~frame["in_main"] & frame["group_key"].isin(keys_in_main)]
    kept = frame.drop(index=dropped.index)
    train: list[Product] = []
    valid: list[Product] = []
    for row in kept.itertuples(index=False):
        p = Product(name, str(row.product_id), str(row.category), str(row.title),
                    row.description if isinstance(row.description, str) and row.description.strip() else None,
                    dict(row.gold))
        (valid if hash_side(name, canonical[row.group_key], fraction) else train).append(p)
    stats = {"rows": len(frame), "duplicates_dropped": len(dropped), "train": len(train), "valid": len(valid)}
    log.info("%s: %s", name, json.dumps(stats))
    return Dataset(name, train, valid, stats)


def load_all(root: str | Path, fraction: float = VALID_FRACTION, names: tuple[str, ...] | None = None
             ) -> dict[str, Dataset]:
    """Every dataset, split; raises FileNotFoundError naming the missing file."""
    root = Path(root)
    out = {}
    for name in names or tuple(DATASETS):
        prefix, _ = DATASETS[name]
        for kind in ("products", "attribute_values"):
            path = root / f"{prefix}_{kind}.parquet"
            if not path.is_file():
                raise FileNotFoundError(f"attribute data: {path} is missing (expected under --data {root})")
        out[name] = split_products(load_dataset(root, name), name, fraction)
    return out


NORMALISED_PREFIX = "wdc_pave_all_attributes_normalized"


def normalised_gold(root: str | Path) -> dict[str, dict[str, tuple[str, ...]]]:
    """WDC PAVE's normalised gold per product id (its large train split): canonical attribute -> values."""
    values = pd.read_parquet(Path(root) / f"{NORMALISED_PREFIX}_attribute_values.parquet")
    values = values[values["split"] == DATASETS["wdc_pave"][1]]
    gold: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for pid, attr, value, is_na in values[["product_id", "attribute", "value", "is_na"]].itertuples(index=False):
        slot = gold[str(pid)].setdefault(canonical_attribute(attr), [])
        if not is_na and isinstance(value, str) and value.strip() and value not in slot:
            slot.append(value)
    return {pid: {a: tuple(v) for a, v in g.items()} for pid, g in gold.items()}


def wdc_descriptions(data: str | Path) -> dict[tuple[str, str], str]:
    """(category, attribute) -> the WDC PAVE attribute description, where the data ships one."""
    import pandas as pd

    path = Path(data) / "wdc_pave_attribute_descriptions.csv"
    if not path.is_file():
        return {}
    d = pd.read_csv(path, sep=";")
    out = {}
    for c, a, text in zip(d["Category"], d["Attribute"], d["Human_Description"], strict=True):
        if isinstance(text, str) and text.strip():
            # "The 'Width' attribute refers to ..." -> the part after "refers to"
            t = text.split("refers to", 1)[-1].strip().rstrip(".")
            out[(str(c), str(a))] = t[:160]
    return out


def normaliser_for(data: str | Path, datasets: dict[str, Dataset]) -> Normaliser | None:
    """WDC PAVE's normalisation rules, plus what its train split's normalised gold shows (None without them)."""
    from models.attributes.normalise import Normaliser

    path = Path(data) / "wdc_pave_attribute_descriptions.csv"
    if not path.is_file() or "wdc_pave" not in datasets:
        return None
    norm = Normaliser.from_descriptions(path)
    gold = normalised_gold(data)

    def pairs():
        for p in datasets["wdc_pave"].train:
            g = gold.get(p.product_id, {})
            for a, vals in p.gold.items():
                if len(vals) == 1 and len(g.get(a, ())) == 1:
                    yield a, vals[0], g[a][0]

    return norm.learn(pairs())
