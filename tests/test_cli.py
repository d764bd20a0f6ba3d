"""The command line and the preflight checks (no Spark needed)."""

from __future__ import annotations

from jobs import cli
from jobs.runtime import preflight
from schemas.tables import TABLES


def test_tables_lists_every_table_and_column(capsys):
    assert cli.main(["tables"]) == 0
    out = capsys.readouterr().out
    for spec in TABLES.values():
        assert f"{spec.name}  (key: {', '.join(spec.keys)})" in out
        for col in spec.columns:
            assert col.name in out


def test_unknown_command(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_preflight_names_the_problem(monkeypatch):
    assert preflight.python_problem((3, 9)).startswith("Python 3.9 is not supported")
    assert preflight.python_problem((3, 11)) is None
    monkeypatch.setenv("JAVA_HOME", "/nonexistent-jdk")
    assert preflight.java_problem() == (
        "Spark needs Java 17 or 21 (JAVA_HOME=/nonexistent-jdk has no bin/java): install a JDK "
        "(apt-get install openjdk-17-jre-headless) or set JAVA_HOME.")


def _lake(tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    lake = tmp_path / "lake"
    write_deltalake(str(lake / "product_categories"), pd.DataFrame({
        "product_id": ["a", "b", "c"], "category": ["Mugs", "Mugs", "Caps"], "confidence": [0.9, 0.4, 0.8]}))
    write_deltalake(str(lake / "product_adult_flags"), pd.DataFrame({
        "product_id": ["a", "b", "c"], "is_adult": [False, True, False]}))
    return lake


def test_query_runs_sql_over_the_delta_tables(tmp_path, capsys):
    lake = _lake(tmp_path)
    sql = ("SELECT c.category, count(*) AS n, avg(a.is_adult::int) AS adult_rate FROM product_categories c "
           "JOIN product_adult_flags a USING (product_id) GROUP BY 1 ORDER BY n DESC")
    assert cli.main(["query", sql, "--lake", str(lake), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["category,n,adult_rate", "Mugs,2,0.5", "Caps,1,0.0"]


def test_query_errors_name_the_tables(tmp_path, capsys):
    lake = _lake(tmp_path)
    assert cli.main(["query", "SELECT * FROM nope", "--lake", str(lake)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "tables in" in err and "product_categories" in err
    assert cli.main(["query", "SELECT 1", "--lake", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
