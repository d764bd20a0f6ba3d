"""Search and the run report after a real enrich run (fake encoder, a third of the shipped sample catalog with
all its broken rows, to keep the module's Spark time down), then a table update that leaves the index stale;
the report page is loaded in headless Chromium."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import cli, enrich
from jobs.read.index import load_index
from jobs.read.report import SECTIONS
from tests.browser import chromium
from tests.conftest import SAMPLE

pytestmark = pytest.mark.spark

FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("search")
    sample = base / "catalog"
    shutil.copytree(SAMPLE, sample)
    catalog = pq.read_table(sample / "catalog.parquet")
    df = catalog.to_pandas()
    # Products P00001-P00120 (several planted duplicate clusters among them) and every broken row.
    keep = ~df["product_id"].fillna("").str.match(r"P\d+$") | (df["product_id"] <= "P00120")
    df = df[keep]
    pq.write_table(catalog.from_pandas(df, schema=catalog.schema, preserve_index=False), sample / "catalog.parquet")
    lake = base / "lake"
    logger, records = logging.getLogger("jobs"), _Records()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    try:
        assert enrich.main(["--catalog", str(sample / "catalog.parquet"), "--lake", str(lake), *FAKE,
                            "--attributes", "none", "--run-id", "r1"]) == 0
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    return SimpleNamespace(lake=lake, sample=sample, catalog=df.drop_duplicates("product_id", keep="last"),
                           log=records.lines)


def _embeddings(lake):
    emb = DeltaTable(str(lake / "product_embeddings")).to_pandas()
    return emb.set_index("product_id")


def test_enrich_writes_the_index_and_logs_progress(runs):
    emb = _embeddings(runs.lake)
    idx = load_index(runs.lake, "fake-1")
    assert idx.table_version == DeltaTable(str(runs.lake / "product_embeddings")).version()
    assert set(idx.ids["product_id"]) == set(emb.index)
    for pid in emb.index[:5]:
        assert np.allclose(idx.vector(pid), emb.loc[pid, "embedding"], atol=1e-6)
    run = DeltaTable(str(runs.lake / "enrichment_runs")).to_pandas().set_index("run_id").loc["r1"]
    assert "index" in dict(run["timings"])
    assert f"index: {len(emb)} products at product_embeddings v" in run["message"]
    done = [line for line in runs.log if line.startswith("stage ") and " done in " in line]
    for stage in ("validate", "select changed", "embed", "heads", "commit", "match", "index"):
        assert any(line.startswith(f"stage {stage} done in ") and "/s" in line for line in done), stage


def test_similar_agrees_with_a_brute_force_scan(runs, capsys):
    emb = _embeddings(runs.lake)
    pid = emb.index[7]
    assert cli.main(["similar", pid, "--lake", str(runs.lake), "--k", "5", "--format", "json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    scores = np.stack(emb["embedding"].to_numpy()) @ np.asarray(emb.loc[pid, "embedding"])
    others = np.delete(scores, emb.index.get_loc(pid))
    want = np.sort(others)[::-1][:5]
    assert len(got) == 5 and pid not in [g["product_id"] for g in got]
    assert np.allclose([g["score"] for g in got], want, atol=1e-4)
    for g in got:
        assert abs(scores[emb.index.get_loc(g["product_id"])] - g["score"]) < 1e-4
        assert g["title"] == runs.catalog.set_index("product_id").loc[g["product_id"], "title"]


def test_search_finds_a_product_by_its_title_and_image(runs, capsys):
    cat = runs.catalog.set_index("product_id")
    no_image = cat[cat["image_uri"].isna()].index.intersection(_embeddings(runs.lake).index)[0]
    base = ["--lake", str(runs.lake), "--k", "3", "--format", "json", *FAKE]
    assert cli.main(["search", cat.loc[no_image, "title"], *base]) == 0
    top = json.loads(capsys.readouterr().out.splitlines()[0])
    assert top["product_id"] == no_image and top["score"] == pytest.approx(1.0, abs=1e-4)

    # A product with an image: text and image together fuse like the product's own embedding.
    pid = cat[cat["image_uri"].notna()].index.intersection(_embeddings(runs.lake).index)[0]
    image = runs.sample / cat.loc[pid, "image_uri"]
    assert cli.main(["search", cat.loc[pid, "title"], "--image", str(image), *base]) == 0
    top = json.loads(capsys.readouterr().out.splitlines()[0])
    assert top["product_id"] == pid and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert cli.main(["search", "--image", str(runs.sample / "images" / "B-not-an-image.jpg"), *base]) == 2
    assert "--image" in capsys.readouterr().err


class _Sections(HTMLParser):
    """Ids of the rendered sections, their text, and the images with the browser's decode mark."""

    def __init__(self):
        super().__init__()
        self.text: dict[str, list[str]] = {}
        self.images: list[dict[str, str | None]] = []
        self.current: str | None = None
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a.get("id")
            self.text[self.current] = []
        elif tag == "img":
            self.images.append({**a, "section": self.current})
        elif tag == "body":
            self.body = a

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.text[self.current].append(data)


def test_report_renders_every_section_in_chromium(runs, tmp_path):
    page = runs.lake / "_reports" / "r1.html"
    assert page.exists()
    dom = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    parsed = _Sections()
    parsed.feed(dom)
    assert parsed.body.get("data-loaded") == "1"            # the page's load handler ran in the browser
    assert list(parsed.text) == list(SECTIONS)
    text = {sid: " ".join(parts) for sid, parts in parsed.text.items()}
    for sid, heading in SECTIONS.items():
        assert heading in text[sid]
    # Duplicate clusters are shown with their images, every one decoded by the browser.
    dup_images = [im for im in parsed.images if im["section"] == "duplicates"]
    assert dup_images and all(im["src"].startswith("data:image/jpeg;base64,") for im in dup_images)
    assert all(im.get("data-decoded") == "1" for im in parsed.images)
    clusters = DeltaTable(str(runs.lake / "product_clusters")).to_pandas()
    largest = clusters[clusters["cluster_size"] >= 2].sort_values(["cluster_size", "cluster_id"],
                                                                    ascending=[False, True]).iloc[0]
    assert f"cluster {largest['cluster_id']}: {largest['cluster_size']} products" in text["duplicates"]
    # Quarantine reasons of this run, from the table; timings of every stage; the change against r1.
    quarantine = DeltaTable(str(runs.lake / "quarantine")).to_pandas()
    for reason in set(quarantine.loc[quarantine["run_id"] == "r1", "reason_code"]):
        assert reason in text["quarantine"]
    for stage in ("validate", "embed", "match", "index"):
        assert stage in text["timings"]
    assert "nothing to compare with" in text["changes"]            # the first run (two runs: test_report.py)
    categories = DeltaTable(str(runs.lake / "product_categories")).to_pandas()["category"].value_counts()
    assert categories.index[0] in text["categories"]


def test_a_table_update_after_the_run_is_picked_up_by_the_next_search(runs, capsys):
    """Spark wrote the table; a later commit (here a deltalake merge replacing one vector) leaves the index
    behind: the next search updates it from the files that commit added and answers from the new vectors."""
    emb = _embeddings(runs.lake)
    a, b = emb.index[0], emb.index[1]
    row = DeltaTable(str(runs.lake / "product_embeddings")).to_pyarrow_table(filters=[("product_id", "=", a)])
    row = row.set_column(row.schema.get_field_index("embedding"), "embedding",
                         pa.array([emb.loc[b, "embedding"].tolist()], row.schema.field("embedding").type))
    row = row.set_column(row.schema.get_field_index("content_hash"), "content_hash", pa.array(["changed"]))
    (DeltaTable(str(runs.lake / "product_embeddings"))
     .merge(row, predicate="t.product_id = s.product_id", source_alias="s", target_alias="t")
     .when_matched_update_all().execute())
    assert cli.main(["similar", b, "--lake", str(runs.lake), "--k", "1", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert "updating it" in err and "incremental: +0, ~1, -0" in err
    top = json.loads(out.splitlines()[0])
    assert top["product_id"] == a and top["score"] == pytest.approx(1.0, abs=1e-5)   # now b's twin


def test_report_command_rewrites_the_run_report(runs, capsys):
    path = runs.lake / "_reports" / "r1.html"
    path.unlink()
    assert cli.main(["report", "--lake", str(runs.lake)]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert "catalog-enrich run r1" in path.read_text()


def test_heartbeat_reports_spark_tasks_while_a_stage_runs(spark, caplog):
    import time

    from jobs.runtime.progress import StageProgress, heartbeat

    def slow(rows):
        time.sleep(1.5)
        return rows

    with caplog.at_level(logging.INFO, logger="jobs.runtime.progress"), heartbeat(spark, "demo", interval=0.5):
        spark.sparkContext.parallelize(range(4), 2).mapPartitions(slow).count()
    beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage demo: running for")]
    assert any("Spark tasks" in b and "/2 done" in b for b in beats), beats
    progress = StageProgress("x")
    assert progress.describe(2.0) == ""
    progress.count(50, "products")
    assert progress.describe(2.0) == ": 50 products, 25.0 products/s"


@pytest.mark.slow
def test_similar_finds_the_same_kind_first_with_the_shipped_model(default_sample_run, capsys):
    """The shipped default model on the whole sample (conftest's shared run, whose index stage built the index):
    most products' nearest neighbour has the product's own seller category, far above chance (91% with the
    encoder shipped on 2026-11-30, 81% with the one before; chance, the sum of squared category shares, is about
    9%)."""
    import pandas as pd

    from jobs.read.index import choose_model_version
    from jobs.read.search import similar

    lake = default_sample_run / "lake"
    catalog = pd.read_parquet(default_sample_run / "catalog" / "catalog.parquet")
    kind = catalog.drop_duplicates("product_id", keep="last").set_index("product_id")["category"]
    idx = load_index(lake, choose_model_version(lake))
    ids = idx.ids["product_id"].tolist()
    assert len(ids) == len(_embeddings(lake))
    nearest = [similar(idx, p, 1)[0][0] for p in ids]
    same = float(np.mean([kind[p] == kind[q] for p, q in zip(ids, nearest, strict=True)]))
    chance = float((kind[ids].value_counts(normalize=True) ** 2).sum())
    assert same >= 0.7 and same > 5 * chance, (same, chance)
    assert cli.main(["similar", "P00042", "--lake", str(lake), "--k", "3", "--format", "json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # A navy handbag: a handbag first, then bags (navy backpacks come before handbags of other colours).
    assert got[0]["category"] == kind["P00042"] == "Accessories > Bags > Handbags"
    assert all(g["category"].startswith("Accessories > Bags > ") for g in got)
    assert (lake / "_reports" / "s1.html").exists()
