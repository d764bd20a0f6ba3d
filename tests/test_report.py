"""The run report on hand-made lakes (no Spark): missing and empty tables say so, seller text is escaped,
charts and numbers come from the tables. The full page in a browser is checked in test_search_report.py."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from jobs import cli
from jobs.read.report import SECTIONS, build_report


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


@pytest.fixture()
def lake(tmp_path):
    lake = tmp_path / "lake"
    (lake / "_reports").mkdir(parents=True)
    (lake / "_reports" / "r9.json").write_text(json.dumps({
        "run_id": "r9", "status": "succeeded", "model_version": "m", "model_description": "m",
        "counts": {"read": 5, "enriched": 4, "unchanged": 0, "quarantined": 1},
        "timings": {"validate": 1.5, "embed": 12.25, "index": 0.5, "total": 15.0}, "message": "ok"}))
    write_deltalake(str(lake / "product_categories"), pa.table({
        "product_id": ["a", "b", "c", "d"],
        "category": ["Mugs", "Mugs", "<script>alert(1)</script>", "Caps"],
        "confidence": [0.95, 0.15, 0.55, 0.99], "method": ["head:h1"] * 4}))
    write_deltalake(str(lake / "product_adult_flags"), pa.table({
        "product_id": pa.array([], pa.string()), "is_adult": pa.array([], pa.bool_()),
        "score": pa.array([], pa.float64()), "reasons": pa.array([], pa.list_(pa.string()))}))
    return lake


def test_sections_from_the_tables_that_exist(lake):
    run_id, page = build_report(lake)                      # the latest run: the only summary there is
    assert run_id == "r9"
    assert [m for m in re.findall(r'<section id="([a-z]+)">', page)] == list(SECTIONS)
    cats = _section(page, "categories")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in cats and "<script>alert" not in page
    assert cats.index(">Mugs<") < cats.index(">Caps<")      # most products first
    assert ">2</text>" in cats                              # Mugs' count is printed at its bar
    hist = _section(page, "confidence")
    assert "category confidence (top-1) (4 values)" in hist
    assert "[0.15, 0.20): 1" in hist and "[0.95, 1.00): 2" in hist   # 0.99 and 0.95 share the top bin
    assert "product_adult_flags is empty." in hist and "product_adult_flags is empty." in _section(page, "adult")
    for sid, table in (("attributes", "product_attributes"), ("clusters", "product_clusters"),
                       ("duplicates", "product_clusters"), ("quarantine", "quarantine")):
        assert f"No {table} table in this lake yet" in _section(page, sid)
    timings = _section(page, "timings")
    assert ">embed</text>" in timings and "12.25 s" in timings and "Total 15.0 s" in timings
    assert "nothing to compare with" in _section(page, "changes")


def test_report_command_writes_the_page(lake, capsys):
    assert cli.main(["report", "--lake", str(lake), "--run-id", "r9"]) == 0
    path = lake / "_reports" / "r9.html"
    assert capsys.readouterr().out.strip() == str(path)
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert cli.main(["report", "--lake", str(lake), "--run-id", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_changes_compare_with_the_previous_succeeded_run(lake):
    import datetime as dt

    t = [dt.datetime(2026, 11, d, 2, tzinfo=dt.timezone.utc) for d in (18, 19, 20)]
    counts = pa.map_(pa.string(), pa.int64())
    timings = pa.map_(pa.string(), pa.float64())
    write_deltalake(str(lake / "enrichment_runs"), pa.table({
        "run_id": ["r7", "r8", "r9"], "status": ["succeeded", "failed", "succeeded"],
        "model_version": ["m", "m", "m"], "catalog": ["c", "c", "c"], "started_at": t, "finished_at": t,
        "counts": pa.array([[("read", 4), ("enriched", 4)], [], [("read", 5), ("enriched", 4)]], counts),
        "timings": pa.array([[("embed", 10.0)], [], [("embed", 12.25)]], timings),
        "message": ["", "boom", ""]}))
    changes = _section(build_report(lake, "r9")[1], "changes")
    assert "Previous run: r7" in changes and "same model" in changes        # r8 failed: not the baseline
    assert "<td>read (count)</td><td>5</td><td>4</td><td>1</td>" in changes
    assert "<td>embed (seconds)</td><td>12.25</td><td>10</td><td>2.25</td>" in changes
    assert "nothing to compare with" in _section(build_report(lake, "r7")[1], "changes")


def test_a_missing_browser_skips_locally_and_fails_under_ci(tmp_path, monkeypatch):
    from tests.browser import chromium

    monkeypatch.setenv("PATH", str(tmp_path))           # no browser on this PATH
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set but no chromium is installed"):
        chromium()
