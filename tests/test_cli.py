"""The command line and the preflight checks (no Spark needed)."""

from __future__ import annotations

from jobs import cli, preflight
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
