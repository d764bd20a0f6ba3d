"""The read-side commands on a lake from a real enrich run (fake encoder, 40 sample products and every broken
row, then a second run that changes a few titles, so the tables have several versions): ``query`` is read-only
in fact, and a damaged lake (a deleted data file, a truncated log entry, a corrupt index file) ends every
command in one line naming the table and the repair, while queries on intact tables keep working."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import cli, enrich
from jobs.read.query import connect
from tests.conftest import REPO, SAMPLE

pytestmark = pytest.mark.spark

FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:"]
DAMAGED = 4   # the exit status of a damaged lake (README)


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("damage")
    sample = base / "catalog"
    shutil.copytree(SAMPLE, sample)
    catalog = pq.read_table(sample / "catalog.parquet")
    df = catalog.to_pandas()
    df = df[~df["product_id"].fillna("").str.match(r"P\d+$") | (df["product_id"] <= "P00040")]
    lake = base / "lake"
    args = ["--catalog", str(sample / "catalog.parquet"), "--lake", str(lake), *FAKE, "--attributes", "none"]
    pq.write_table(catalog.from_pandas(df, schema=catalog.schema, preserve_index=False), sample / "catalog.parquet")
    assert enrich.main([*args, "--run-id", "r1"]) == 0
    changed = df["product_id"].isin(["P00003", "P00007", "P00011"])
    df.loc[changed, "title"] = df.loc[changed, "title"] + " (new edition)"
    pq.write_table(catalog.from_pandas(df, schema=catalog.schema, preserve_index=False), sample / "catalog.parquet")
    assert enrich.main([*args, "--run-id", "r2"]) == 0
    return SimpleNamespace(lake=lake, catalog=df)


@pytest.fixture()
def lake(built, tmp_path) -> Path:
    """A copy of the built lake that a test may damage."""
    return Path(shutil.copytree(built.lake, tmp_path / "lake"))


def _table(lake: Path, name: str) -> DeltaTable:
    return DeltaTable(str(lake / name))


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _newest_file(lake: Path, name: str) -> Path:
    """A data file that the table's latest commit added (older versions do not hold it)."""
    dt = _table(lake, name)
    older = set(DeltaTable(str(lake / name), version=dt.version() - 1).file_uris())
    added = [u for u in dt.file_uris() if u not in older]
    assert added, f"the latest commit of {name} added no file"
    return Path(added[0].removeprefix("file://"))


def _truncate_last_log_entry(lake: Path, name: str) -> Path:
    entry = lake / name / "_delta_log" / f"{_table(lake, name).version():020d}.json"
    text = entry.read_bytes()
    entry.write_bytes(text[: len(text) // 2])
    return entry


# -- query is read-only ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sql", "says"), [
    ("COPY (SELECT * FROM product_categories) TO '{out}'", "only SELECT queries are allowed"),
    ("SELECT * FROM read_csv('{secret}')", "outside the lake's tables"),
    ("SELECT * FROM read_text('{secret}')", "outside the lake's tables"),
    ("SELECT * FROM read_parquet('{parquet}')", "outside the lake's tables"),
    ("ATTACH '{out}.duckdb' AS other", "only SELECT queries are allowed"),
    ("INSTALL httpfs", "only SELECT queries are allowed"),
    ("LOAD httpfs", "only SELECT queries are allowed"),
    ("SET enable_external_access = true", "only SELECT queries are allowed"),
    ("SELECT 1; COPY (SELECT 1) TO '{out}'", "give exactly one SQL statement (got 2)"),
])
def test_query_refuses_writes_and_reads_outside_the_lake(lake, tmp_path, capsys, sql, says):
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nroot,hunter2\n")
    out = tmp_path / "out.csv"
    parquet = REPO / "jobs" / "sample_catalog" / "catalog.parquet"
    assert cli.main(["query", sql.format(out=out, secret=secret, parquet=parquet), "--lake", str(lake)]) == 2
    captured = capsys.readouterr()
    assert says in _one_line_error(captured.err)
    assert "hunter2" not in captured.out + captured.err and "Mugs" not in captured.out
    assert not out.exists() and not Path(f"{out}.duckdb").exists()


def test_the_connection_itself_is_locked(lake, tmp_path):
    import duckdb

    con = connect(lake)
    out = tmp_path / "out.csv"
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        con.execute(f"COPY (SELECT * FROM product_categories) TO '{out}'")
    with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
        con.execute("SET enable_external_access = true")
    assert not out.exists()


def _readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [re.sub(r"\s+", " ", q) for q in re.findall(r'catalog-enrich query "([^"]+)"', text)]


def test_readme_queries_still_run(lake, capsys):
    queries = _readme_queries()
    assert len(queries) >= 6
    tables = {p.name for p in lake.iterdir() if (p / "_delta_log").is_dir()}
    ran = 0
    for sql in queries:
        if not set(re.findall(r"(?:FROM|JOIN) (\w+)", sql)) <= tables:
            continue   # a table this run does not write (the attribute extractor is off)
        assert cli.main(["query", sql, "--lake", str(lake), "--format", "csv"]) == 0, capsys.readouterr().err
        ran += 1
    assert ran >= 5
    capsys.readouterr()

    join = next(q for q in queries if " JOIN " in q)
    assert cli.main(["query", join, "--lake", str(lake), "--format", "json"]) == 0
    got = {r["category"]: r["products"] for r in map(json.loads, capsys.readouterr().out.splitlines())}
    cats = _table(lake, "product_categories").to_pandas()
    flags = _table(lake, "product_adult_flags").to_pandas()
    want = cats.merge(flags, on="product_id").groupby("category").size().to_dict()
    assert got == want


# -- a damaged table ---------------------------------------------------------------------------------------------
def test_query_names_a_table_with_a_missing_file_and_its_last_good_version(lake, capsys):
    good = _table(lake, "product_categories").version() - 1
    _newest_file(lake, "product_categories").unlink()
    count = "SELECT count(*) AS n FROM product_categories"
    assert cli.main(["query", count, "--lake", str(lake)]) == DAMAGED
    line = _one_line_error(capsys.readouterr().err)
    assert "table product_categories is damaged: data file" in line and "is missing" in line
    assert f"restore its last good version v{good}" in line

    # The other tables still answer, joins included.
    flags = _table(lake, "product_adult_flags").to_pandas()
    sql = "SELECT count(*) AS n, sum(is_adult::int) AS adult FROM product_adult_flags"
    assert cli.main(["query", sql, "--lake", str(lake), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": len(flags), "adult": int(flags["is_adult"].sum())}

    # The repair the line names works.
    _table(lake, "product_categories").restore(good)
    assert cli.main(["query", count, "--lake", str(lake), "--format", "json"]) == 0
    want = len(DeltaTable(str(lake / "product_categories"), version=good).to_pandas())
    assert json.loads(capsys.readouterr().out) == {"n": want}


def test_query_leaves_out_a_table_whose_log_is_truncated(lake, capsys, caplog):
    entry = _truncate_last_log_entry(lake, "product_adult_flags")
    good = int(entry.stem) - 1
    cats = _table(lake, "product_categories").to_pandas()
    sql = "SELECT category, count(*) AS n FROM product_categories GROUP BY 1 ORDER BY 1"
    assert cli.main(["query", sql, "--lake", str(lake), "--format", "csv"]) == 0
    got = capsys.readouterr().out.splitlines()
    want = cats.groupby("category").size().sort_index()
    assert got == ["category,n", *(f"{c},{n}" for c, n in want.items())]
    assert any("table product_adult_flags is damaged" in r.getMessage() for r in caplog.records)

    join = ("SELECT count(*) FROM product_categories c JOIN product_adult_flags a USING (product_id)")
    assert cli.main(["query", join, "--lake", str(lake)]) == DAMAGED
    line = _one_line_error(capsys.readouterr().err)
    assert "table product_adult_flags is damaged: its Delta log cannot be read" in line
    assert f"v{good} is the last good version: move _delta_log/{entry.name} out of" in line

    entry.rename(lake / entry.name)   # the repair the line names
    assert cli.main(["query", join, "--lake", str(lake)]) == 0


def test_similar_and_index_name_a_damaged_embeddings_table(lake, built, capsys):
    pid = "P00012"
    _newest_file(lake, "product_embeddings").unlink()
    for shutil_index in (False, True):
        if shutil_index:   # without an index the command must read the table: the same line
            shutil.rmtree(lake / "_index")
        assert cli.main(["index", "--full", "--lake", str(lake)]) == DAMAGED
        line = _one_line_error(capsys.readouterr().err)
        assert "table product_embeddings is damaged: data file" in line and "restore its last good version" in line
        assert cli.main(["similar", pid, "--lake", str(lake)]) == DAMAGED
        assert "table product_embeddings is damaged" in _one_line_error(capsys.readouterr().err)


def test_index_full_names_a_truncated_embeddings_log(lake, capsys):
    entry = _truncate_last_log_entry(lake, "product_embeddings")
    for command in (["index", "--full"], ["index"], ["similar", "P00012"], ["search", "red shoes", *FAKE]):
        assert cli.main([*command, "--lake", str(lake)]) == DAMAGED
        line = _one_line_error(capsys.readouterr().err)
        assert "table product_embeddings is damaged: its Delta log cannot be read" in line
        assert f"move _delta_log/{entry.name} out of" in line


@pytest.mark.parametrize("damage", ["truncate index.faiss", "garbage ids.parquet", "empty meta.json",
                                    "missing generation"])
def test_a_corrupt_index_file_names_the_rebuild(lake, capsys, damage):
    root = next((lake / "_index").iterdir())
    gen = root / (root / "CURRENT").read_text().strip()
    if damage == "truncate index.faiss":
        data = (gen / "index.faiss").read_bytes()
        (gen / "index.faiss").write_bytes(data[: len(data) // 3])
    elif damage == "garbage ids.parquet":
        (gen / "ids.parquet").write_bytes(b"not parquet at all")
    elif damage == "empty meta.json":
        (gen / "meta.json").write_text("")
    else:
        shutil.rmtree(gen)
    assert cli.main(["similar", "P00012", "--lake", str(lake)]) == DAMAGED
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("error: the similarity index of fake-1") and "is damaged" in line
    assert line.endswith(f"repair: rebuild it with catalog-enrich index --lake {lake} --full")

    assert cli.main(["index", "--full", "--lake", str(lake)]) == 0
    capsys.readouterr()
    assert cli.main(["similar", "P00012", "--lake", str(lake), "--format", "json", "--k", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_similar_without_titles_when_enrichment_runs_is_damaged(lake, capsys, caplog):
    _truncate_last_log_entry(lake, "enrichment_runs")
    assert cli.main(["similar", "P00012", "--lake", str(lake), "--format", "json", "--k", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["title"] is None for r in rows)
    assert any("table enrichment_runs is damaged" in r.getMessage() and "titles are left out" in r.getMessage()
               for r in caplog.records)


# -- the not-found hint ------------------------------------------------------------------------------------------
def test_not_found_hint_builds_no_sql_from_the_id(lake, capsys):
    hostile = "x' OR 1=1; COPY quarantine TO '/tmp/x.csv' --"
    assert cli.main(["similar", hostile, "--lake", str(lake)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "SELECT" not in line and "catalog-enrich query" not in line
    assert "no product with that id was enriched or quarantined" in line

    q = _table(lake, "quarantine").to_pandas()
    enriched = set(_table(lake, "product_embeddings").to_pandas()["product_id"])
    row = q[(q["product_id"].fillna("").str.len() > 0) & ~q["product_id"].isin(enriched)].iloc[0]
    assert cli.main(["similar", row["product_id"], "--lake", str(lake)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"it was quarantined by run {row['run_id']}: {row['reason_code']}" in line and "SELECT" not in line


def test_report_names_a_damaged_table_in_its_section_and_a_damaged_run_log_in_one_line(lake, capsys):
    _newest_file(lake, "product_categories").unlink()
    assert cli.main(["report", "--lake", str(lake), "--run-id", "r2"]) == 0
    page = Path(capsys.readouterr().out.strip()).read_text()
    section = page.split('<section id="categories">', 1)[1].split("</section>", 1)[0]
    assert "table product_categories is damaged: data file" in section and "restore its last good version" in section

    entry = _truncate_last_log_entry(lake, "enrichment_runs")
    assert cli.main(["report", "--lake", str(lake), "--run-id", "r2"]) == DAMAGED
    line = _one_line_error(capsys.readouterr().err)
    assert "table enrichment_runs is damaged" in line and f"move _delta_log/{entry.name} out of" in line
