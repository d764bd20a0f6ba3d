"""Hostile rows through the real enrich job (real Spark, real Delta tables, the fake encoder).

A sliver PNG beside good rows, titles made only of invisible characters, text columns over their caps, and
catalogs with nothing to enrich: the good rows are enriched, every bad one is quarantined with its reason,
and an empty catalog is reported as such.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from PIL import Image

from jobs import enrich
from jobs.stages.validate import MAX_TEXT_CHARS, RAW_PREFIX_CHARS

pytestmark = pytest.mark.spark

FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:", "--attributes", "none",
        "--matching", "none", "--heads", "none"]
SCHEMA = pa.schema([("product_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
                    ("image_uri", pa.string()), ("brand", pa.string()), ("category", pa.string()),
                    ("price", pa.float64()), ("currency", pa.string()), ("language", pa.string())])

INVISIBLE_TITLES = {
    "hangul-filler": "\u3164", "braille-blank": "\u2800\u2800", "marks-alone": "\u0301\u0308",
    "zero-width": "\u200b\u200d\u2060", "choseong-jungseong-fillers": "\u115f\u1160", "halfwidth-filler": "\uffa0",
    "variation-selectors": "\ufe0f\U000e0100", "mixed": " \u3164\u2800\u200b\u0301\t", "tags": "\U000e0041",
}
# Visible text beside invisible characters is a title.
VISIBLE_TITLES = {"filler-and-word": "\u3164Shoe", "decomposed-e": "e\u0301", "thai": "\u0e01\u0e34"}
OVER_CAP = {"description": "long-description", "brand": "long-brand", "category": "long-category",
            "currency": "long-currency", "language": "long-language", "image_uri": "long-uri"}


def write_catalog(folder, rows: list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def run_job(catalog, lake, run_id: str) -> int:
    return enrich.main(["--catalog", str(catalog), "--lake", str(lake), "--run-id", run_id, *FAKE])


def rows_of(lake, name):
    return DeltaTable(str(lake / name)).to_pandas()


@pytest.fixture()
def hostile_catalog(tmp_path):
    images = tmp_path / "catalog"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(images / "ok.png")
    Image.new("L", (1, 150_000), 200).save(images / "sliver.png", optimize=True)  # a few hundred bytes
    rows = [{"product_id": "good-image", "title": "Red mug", "image_uri": "ok.png", "price": 3.0},
            {"product_id": "good-text", "title": "Blue scarf", "description": "Wool."},
            {"product_id": "good-at-caps", "title": "Cap", **{c: "x" * n for c, n in MAX_TEXT_CHARS.items()
                                                            if c not in ("product_id", "image_uri")}},
            {"product_id": "sliver", "title": "Thin thing", "image_uri": "sliver.png"}]
    rows += [{"product_id": pid, "title": t} for pid, t in {**INVISIBLE_TITLES, **VISIBLE_TITLES}.items()]
    rows += [{"product_id": pid, "title": "Too much", column: "y" * (MAX_TEXT_CHARS[column] + 1)}
             for column, pid in OVER_CAP.items()]
    rows.append({"product_id": "z" * (MAX_TEXT_CHARS["product_id"] + 1), "title": "Long id"})
    return write_catalog(images, rows)


def test_hostile_rows_are_quarantined_and_the_good_ones_enriched(spark, hostile_catalog, tmp_path, capsys):
    lake = tmp_path / "lake"
    assert run_job(hostile_catalog, lake, "hostile") == 0
    enriched = set(rows_of(lake, "product_embeddings")["product_id"])
    assert enriched == {"good-image", "good-text", "good-at-caps", *VISIBLE_TITLES}
    q = rows_of(lake, "quarantine").set_index("product_id")
    assert q.loc["sliver", "reason_code"] == "image_aspect_ratio"
    assert q.loc["sliver", "detail"] == \
        "image of 1x150000 pixels: the long side is 150000 times the short one (at most 20)"
    for pid in INVISIBLE_TITLES:
        assert q.loc[pid, "reason_code"] == "empty_title", pid
    for column, pid in OVER_CAP.items():
        cap = MAX_TEXT_CHARS[column]
        assert q.loc[pid, "reason_code"] == "text_too_long", pid
        assert q.loc[pid, "detail"] == f"{column} of {cap + 1} characters (at most {cap:,})"
    long_id = "z" * (MAX_TEXT_CHARS["product_id"] + 1)
    assert q.loc[long_id, "detail"] == f"product_id of 513 characters (at most {MAX_TEXT_CHARS['product_id']:,})"
    assert len(q) == 1 + len(INVISIBLE_TITLES) + len(OVER_CAP) + 1
    assert "succeeded" in capsys.readouterr().out


def test_an_empty_catalog_is_reported_and_exits_2(spark, tmp_path, capsys):
    catalog = write_catalog(tmp_path / "empty", [])
    lake = tmp_path / "lake"
    assert run_job(catalog, lake, "empty-1") == 2
    captured = capsys.readouterr()
    assert "catalog-enrich run empty-1 empty" in captured.out
    assert "  empty catalog       catalog has no rows: nothing was enriched" in captured.out
    assert captured.err.strip() == ("error: run empty-1: catalog has no rows: nothing was enriched "
                                    "(recorded as status 'empty')")
    runs = rows_of(lake, "enrichment_runs").set_index("run_id")
    assert runs.loc["empty-1", "status"] == "empty"
    assert runs.loc["empty-1", "message"].startswith("catalog has no rows: nothing was enriched; ")


def test_a_catalog_with_every_row_quarantined_is_reported_as_empty(spark, tmp_path, capsys):
    catalog = write_catalog(tmp_path / "bad", [{"product_id": "a", "title": "\u3164"},
                                               {"product_id": "b", "title": "\u2800"}])
    lake = tmp_path / "lake"
    assert run_job(catalog, lake, "all-bad") == 2
    assert "catalog has no valid rows: all 2 were quarantined" in capsys.readouterr().err
    runs = rows_of(lake, "enrichment_runs").set_index("run_id")
    assert runs.loc["all-bad", "status"] == "empty"
    # The rows are still accounted for: both are in quarantine.
    assert sorted(rows_of(lake, "quarantine")["reason_code"]) == ["empty_title", "empty_title"]


def test_the_raw_record_keeps_a_bounded_prefix_of_an_over_cap_value(spark, tmp_path):
    huge = 300_000                                   # far over the description cap: a feed gone wrong
    within = "w" * MAX_TEXT_CHARS["description"]     # at the cap: kept whole
    brand_over = MAX_TEXT_CHARS["brand"] + 5         # just over a cap smaller than the prefix
    rows = [{"product_id": "huge", "title": "Too much", "description": "y" * huge, "brand": "b" * brand_over},
            {"product_id": "bad-price", "title": "Mug", "description": within, "brand": "Acme", "price": -1.0},
            {"product_id": "good", "title": "Blue scarf"}]
    catalog = write_catalog(tmp_path / "cut", rows)
    lake = tmp_path / "lake"
    assert run_job(catalog, lake, "cut") == 0
    q = rows_of(lake, "quarantine").set_index("product_id")
    assert q.loc["huge", "reason_code"] == "text_too_long"
    raw = q.loc["huge", "raw_record"]
    assert len(raw) < 2 * RAW_PREFIX_CHARS + 500
    record = json.loads(raw)
    assert record["description"] == "y" * RAW_PREFIX_CHARS + f"[... {huge - RAW_PREFIX_CHARS} characters cut]"
    cap = MAX_TEXT_CHARS["brand"]
    assert record["brand"] == "b" * cap + f"[... {brand_over - cap} characters cut]"
    assert (record["product_id"], record["title"], record["price"]) == ("huge", "Too much", None)
    # A row within the caps keeps its raw record whole.
    assert q.loc["bad-price", "reason_code"] == "invalid_price"
    assert json.loads(q.loc["bad-price", "raw_record"]) == {
        "product_id": "bad-price", "title": "Mug", "description": within, "image_uri": None, "brand": "Acme",
        "category": None, "price": -1.0, "currency": None, "language": None, "updated_at": None, "mpn": None}
