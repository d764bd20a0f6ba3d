"""SQL over the lake without Spark: every Delta table under ``--lake`` is a view in an in-memory DuckDB.

    catalog-enrich query "SELECT category, count(*) AS n FROM product_categories GROUP BY 1 ORDER BY n DESC"

The tables are read through the ``deltalake`` package (the files of the current Delta version only, as Arrow
datasets, so DuckDB pushes filters and projections down); nothing can be written through this connection.
Inside Spark jobs, :func:`register_spark_views` gives the same names as temporary views.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["connect", "main", "query", "register_spark_views"]


def _tables(lake: Path) -> dict[str, Path]:
    """Delta tables under ``lake`` by name: the known output tables, plus any other Delta folder."""
    if not lake.is_dir():
        raise FileNotFoundError(f"lake {lake} does not exist (run the enrich job first, or pass --lake)")
    return {p.name: p for p in sorted(lake.iterdir()) if (p / "_delta_log").is_dir() and p.name.isidentifier()}


def connect(lake: str | Path, latest: bool = False):
    """A DuckDB connection with one view per Delta table of ``lake``: the published version of each table
    when the lake is published through the quality gates (:mod:`jobs.publish`), else (or with ``latest``) the
    newest version."""
    import duckdb
    from deltalake import DeltaTable

    from jobs.publish import read_pointer

    pointer = None if latest else read_pointer(lake)
    con = duckdb.connect(":memory:")
    for name, path in _tables(Path(lake)).items():
        version = (pointer or {}).get("tables", {}).get(name)
        # Table names come from folder names that are valid identifiers, never from the query text.
        con.register(name, DeltaTable(str(path), version=version).to_pyarrow_dataset())
    return con


def query(lake: str | Path, sql: str, latest: bool = False):
    """The result of ``sql`` over the lake's tables as a pandas DataFrame."""
    return connect(lake, latest).execute(sql).fetch_df()


def register_spark_views(spark, lake) -> list[str]:
    """Every output table of ``lake`` (a :class:`jobs.lakehouse.Lake`) as a Spark temporary view."""
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
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except duckdb.Error as e:
        tables = ", ".join(_tables(Path(args.lake)))
        print(f"error: {str(e).splitlines()[0]}\n(tables in {args.lake}: {tables})", file=sys.stderr)
        return 2
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
