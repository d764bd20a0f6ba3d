"""The ``catalog-enrich`` command: the jobs and table documentation without typing spark-submit.

    catalog-enrich enrich [enrich options]   run the enrich job (same options as jobs/enrich.py)
    catalog-enrich retrain [retrain options] run the retrain job (same options as jobs/retrain.py)
    catalog-enrich quality input|output ...  run a quality gate (see jobs/quality.py)
    catalog-enrich publish status|publish|discard|finalize|rollback ...
                                             the published state of the lake (see jobs/lake/publish.py)
    catalog-enrich tables                    print every output table's columns and keys
    catalog-enrich query "SQL" [--lake DIR]  SQL over the Delta tables (DuckDB; no Spark needed)
    catalog-enrich similar PRODUCT_ID [--k 10] [--lake DIR] [--format table|json]
                                             the products nearest to a product (faiss index, no Spark)
    catalog-enrich search "TEXT" [--image PATH] [--k 10] [--lake DIR]
                                             the products nearest to a text and/or image query
    catalog-enrich index [--lake DIR] [--full]
                                             bring the similarity index up to the embeddings table
    catalog-enrich report [--lake DIR] [--run-id ID]
                                             (re)write a run's HTML report, lake/_reports/<run_id>.html

query, similar, search, index and report exit with 2 for a request they refuse or cannot answer, and with 4
for a damaged lake (one line naming the table, or the index, and the repair).
"""

from __future__ import annotations

import sys

from models.core.errors import EXIT_OK, EXIT_UNUSABLE

__all__ = ["main", "describe_tables"]

# Subcommands that are a job's main(argv); imported only when chosen (they pull Spark, torch, GE).
_JOBS = {"enrich": "jobs.enrich", "retrain": "jobs.retrain", "quality": "jobs.quality", "publish": "jobs.lake.publish",
         "query": "jobs.read.query", "report": "jobs.read.report"}
# Subcommands of jobs.read.search's main(argv, command).
_SEARCH = ("similar", "search", "index")


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
        return EXIT_OK if args else EXIT_UNUSABLE
    command, rest = args[0], args[1:]
    if command in _JOBS:
        import importlib

        return importlib.import_module(_JOBS[command]).main(rest)
    if command in _SEARCH:
        from jobs.read import search

        return search.main(rest, command)
    if command == "tables":
        print(describe_tables())
        return EXIT_OK
    print(f"error: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return EXIT_UNUSABLE


if __name__ == "__main__":
    raise SystemExit(main())
