"""The ``catalog-enrich`` command: the jobs and table documentation without typing spark-submit.

    catalog-enrich enrich [enrich options]   run the enrich job (same options as jobs/enrich.py)
    catalog-enrich tables                    print every output table's columns and keys
    catalog-enrich query "SQL" [--lake DIR]  SQL over the Delta tables (DuckDB; no Spark needed)
"""

from __future__ import annotations

import sys

__all__ = ["main", "describe_tables"]


def describe_tables() -> str:
    from schemas.tables import TABLES

    lines = []
    for spec in TABLES.values():
        lines.append(f"{spec.name}  (key: {', '.join(spec.keys)})")
        lines.append(f"  {spec.doc}")
        for c in spec.columns:
            lines.append(f"    {c.name:<16}{c.type.simpleString():<16}{c.doc}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "enrich":
        from jobs.enrich import main as enrich_main

        return enrich_main(rest)
    if command == "query":
        from jobs.query import main as query_main

        return query_main(rest)
    if command == "tables":
        print(describe_tables())
        return 0
    print(f"error: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
