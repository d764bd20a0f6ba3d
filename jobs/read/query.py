"""SQL over the lake without Spark: every Delta table under ``--lake`` is a view in an in-memory DuckDB.

    catalog-enrich query "SELECT category, count(*) AS n FROM product_categories GROUP BY 1 ORDER BY n DESC"

The tables are read through the ``deltalake`` package (the files of the current Delta version only, as Arrow
datasets, so DuckDB pushes filters and projections down). Once they are registered the connection is locked:
DuckDB's file system access is off (no ``COPY ... TO``, ``read_csv``, ``ATTACH``, ``INSTALL``), the settings
cannot be changed, and :func:`query` runs one ``SELECT`` (or ``EXPLAIN``) statement only. A damaged table is
left out with a warning, so queries on the other tables still run; a query that names it fails with one line
saying how to repair it (:mod:`jobs.lake.damage`).
Inside Spark jobs, :func:`register_spark_views` gives the same names as temporary views.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from jobs.lake.damage import DamagedLakeError, diagnose
from jobs.runtime.exits import fail
from models.core.errors import EXIT_UNUSABLE, CatalogEnrichError

__all__ = ["QueryRefused", "connect", "damage_of", "main", "query", "register_spark_views"]

log = logging.getLogger(__name__)

# DuckDB names the registered table whose Arrow stream failed, and the table a query names but the
# connection lacks (a damaged table is not registered).
_STREAM_FAILED = re.compile(r"stream registered as '(\w+)' failed")
_NO_TABLE = re.compile(r"Table with name (\w+) does not exist")


class QueryRefused(CatalogEnrichError, ValueError):
    """A query that is not one read-only statement over the lake's tables."""


def _tables(lake: Path) -> dict[str, Path]:
    """Delta tables under ``lake`` by name: the known output tables, plus any other Delta folder."""
    if not lake.is_dir():
        raise FileNotFoundError(f"lake {lake} does not exist (run the enrich job first, or pass --lake)")
    return {p.name: p for p in sorted(lake.iterdir()) if (p / "_delta_log").is_dir() and p.name.isidentifier()}


def _open(lake: str | Path, latest: bool):
    """A locked DuckDB connection with the readable tables registered, the damaged ones by name, and the
    path and version of each table."""
    import duckdb
    from deltalake import DeltaTable

    from jobs.lake.publish import read_pointer

    pointer = None if latest else read_pointer(lake)
    con = duckdb.connect(":memory:")
    damaged: dict[str, DamagedLakeError] = {}
    sources: dict[str, tuple[Path, int | None]] = {}
    for name, path in _tables(Path(lake)).items():
        version = (pointer or {}).get("tables", {}).get(name)
        sources[name] = (path, version)
        try:
            dataset = DeltaTable(str(path), version=version).to_pyarrow_dataset()
        except Exception:  # deltalake raises its own errors for a bad log: see what the damage is
            damage = diagnose(path, name, version)
            if damage is None:
                raise
            log.warning("%s (left out of this query's tables)", damage)
            damaged[name] = damage
            continue
        # Table names come from folder names that are valid identifiers, never from the query text.
        con.register(name, dataset)
    # Lock the connection now that the tables are in: no file system access (COPY TO, read_csv, ATTACH,
    # INSTALL/LOAD), no Python variables as tables, and no setting can be changed back.
    con.execute("SET python_enable_replacements = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, damaged, sources


def connect(lake: str | Path, latest: bool = False):
    """A read-only DuckDB connection with one view per readable Delta table of ``lake``: the published version
    of each table when the lake is published through the quality gates (:mod:`jobs.lake.publish`), else (or with
    ``latest``) the newest version. A damaged table is left out with a logged warning."""
    return _open(lake, latest)[0]


def _single_select(sql: str) -> None:
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryRefused(str(e).strip().splitlines()[0]) from e
    if len(statements) != 1:
        raise QueryRefused(f"give exactly one SQL statement (got {len(statements)})")
    kind = statements[0].type
    if kind not in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN):
        raise QueryRefused(f"only SELECT queries are allowed (got a statement of type {kind.name}): the "
                           "query command reads the lake's tables and writes nothing")


def damage_of(error: Exception, damaged: dict[str, DamagedLakeError],
              sources: dict[str, tuple[Path, int | None]]) -> DamagedLakeError | None:
    """The damaged table behind a DuckDB error of a connection from :func:`_open`, or None: a table the query
    names that was left out as damaged, or a registered table whose files failed to read."""
    missing = _NO_TABLE.search(str(error))
    if missing and missing.group(1) in damaged:
        return damaged[missing.group(1)]
    failed = _STREAM_FAILED.search(str(error))
    if failed and failed.group(1) in sources:
        path, version = sources[failed.group(1)]
        return diagnose(path, failed.group(1), version)
    return None


def query(lake: str | Path, sql: str, latest: bool = False):
    """The result of ``sql``, one read-only statement over the lake's tables, as a pandas DataFrame.
    :class:`QueryRefused` for anything else; :class:`DamagedLakeError` when the query reads a damaged table."""
    import duckdb

    _single_select(sql)
    con, damaged, sources = _open(lake, latest)
    try:
        return con.execute(sql).fetch_df()
    except duckdb.PermissionException as e:
        raise QueryRefused("the query reads or writes files outside the lake's tables, which is not allowed "
                           f"({str(e).strip().splitlines()[0]})") from e
    except duckdb.Error as e:
        damage = damage_of(e, damaged, sources)
        if damage is not None:
            raise damage from e
        raise


def register_spark_views(spark, lake) -> list[str]:
    """Every output table of ``lake`` (a :class:`jobs.lake.lakehouse.Lake`) as a Spark temporary view."""
    from schemas.tables import TABLES

    names = []
    for spec in TABLES.values():
        if lake.exists(spec):
            lake.read(spec).createOrReplaceTempView(spec.name)
            names.append(spec.name)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="catalog-enrich query", description=__doc__.split("\n\n")[0])
    p.add_argument("sql", help="a SQL query; the tables are views named after them (product_categories, ...)")
    p.add_argument("--lake", default="lake", help="folder of the Delta tables (default: ./lake)")
    p.add_argument("--latest", action="store_true",
                   help="read the newest table versions, not the published ones (runs not yet through the gates)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--max-rows", type=int, default=50, help="rows printed in table format (default: 50)")
    args = p.parse_args(argv)
    import duckdb
    import pandas as pd

    try:
        df = query(args.lake, args.sql, args.latest)
    except CatalogEnrichError as e:   # a refused query (2), a damaged table (4)
        return fail(e)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNUSABLE
    except duckdb.Error as e:
        tables = ", ".join(_tables(Path(args.lake)))
        print(f"error: {str(e).splitlines()[0]}\n(tables in {args.lake}: {tables})", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        sys.stdout.write(df.to_json(orient="records", lines=True, force_ascii=False, default_handler=str))
    else:
        with pd.option_context("display.max_rows", args.max_rows, "display.max_columns", 20,
                               "display.width", 160, "display.max_colwidth", 60):
            print(df.to_string(index=False, max_rows=args.max_rows) if len(df) else "(no rows)")
        print(f"({len(df)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
