"""Product details for people: titles, seller categories and thumbnails of a few products, without Spark.

The output tables hold ids, scores and labels, not titles (the catalog owns those), so search results and the
run report look the products up in the catalog snapshot that the latest run read (``enrichment_runs.catalog``),
with a filter on the ids (Parquet statistics and Delta file skipping keep that cheap on large snapshots).
Thumbnails are read only under the image roots the enrich job allows (:mod:`udfs.images`).
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import pandas as pd

__all__ = ["DETAIL_COLUMNS", "latest_catalog", "product_details", "thumbnail_data_uri"]

log = logging.getLogger(__name__)

DETAIL_COLUMNS = ("product_id", "title", "category", "image_uri")


def latest_catalog(lake: str | Path) -> str | None:
    """The catalog path of the most recent succeeded run in ``enrichment_runs`` (None without one, or with a
    warning when that table is damaged)."""
    from deltalake import DeltaTable

    from jobs.lake.damage import DamagedLakeError, reading

    path = Path(lake) / "enrichment_runs"
    if not DeltaTable.is_deltatable(str(path)):
        return None
    try:
        with reading(path, "enrichment_runs"):
            runs = DeltaTable(str(path)).to_pandas(columns=["status", "catalog", "finished_at"])
    except DamagedLakeError as e:  # titles are a courtesy: results are shown with ids only
        log.warning("%s (product titles are left out)", e)
        return None
    runs = runs[runs["status"] == "succeeded"].sort_values("finished_at")
    return str(runs["catalog"].iloc[-1]) if len(runs) else None


def product_details(catalog: str | Path | None, product_ids: list[str]) -> pd.DataFrame:
    """``DETAIL_COLUMNS`` of ``product_ids`` from a Parquet or Delta catalog (the latest row of a repeated id);
    an empty frame when the catalog is unknown or unreadable (the caller shows ids only)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    empty = pd.DataFrame(columns=list(DETAIL_COLUMNS))
    if catalog is None or not product_ids:
        return empty
    try:
        path = Path(catalog)
        if (path / "_delta_log").is_dir():
            from deltalake import DeltaTable

            dataset = DeltaTable(str(path)).to_pyarrow_dataset()
        else:
            dataset = ds.dataset(str(path), format="parquet")
        cols = [c for c in (*DETAIL_COLUMNS, "updated_at") if c in dataset.schema.names]
        got = dataset.to_table(columns=cols, filter=ds.field("product_id").isin(pa.array(product_ids))).to_pandas()
    except Exception as e:  # a moved or deleted snapshot must not break a search
        log.warning("could not read product details from %s: %s", catalog, e)
        return empty
    if "updated_at" in got:
        got = got.sort_values("updated_at", na_position="first")
    got = got.drop_duplicates("product_id", keep="last")
    for c in DETAIL_COLUMNS:
        if c not in got:
            got[c] = None
    return got[list(DETAIL_COLUMNS)].reset_index(drop=True)


def thumbnail_data_uri(image_uri: str | None, image_root: str | None, size: int = 96) -> str | None:
    """A small JPEG of the product image as a ``data:`` URI (a page that needs no file next to it), or None
    when the image is missing, not allowed, or not decodable."""
    from PIL import Image

    from models.images import decode_image
    from udfs.images import ImagePolicy, read_image_bytes, resolve_image_uri

    if not image_uri:
        return None
    policy = ImagePolicy(image_root=image_root)
    resolved = resolve_image_uri(image_uri, policy)
    if resolved.path is None:
        return None
    try:
        img = decode_image(read_image_bytes(resolved.path, policy.max_bytes), size, policy.max_pixels)
    except (OSError, ValueError):
        return None
    img.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
