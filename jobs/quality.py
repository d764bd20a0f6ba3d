"""Quality gates: Great Expectations suites on the catalog snapshot (input) and on the written tables (output).

    spark-submit dist/catalog_enrich_main.py quality input  --catalog PATH --lake DIR --run-id ID
    spark-submit dist/catalog_enrich_main.py quality output --lake DIR --run-id ID
    python -m jobs.quality {input,output} ...          (the same, with a local Spark)

The input gate runs before the enrich job and stops a snapshot that is broken as a whole (most ids missing,
titles empty, a row count far from the last published run's); single bad rows are the enrich job's business
(quarantine). The output gate runs after it and audits the current version of every table in
:data:`schemas.expectations.OUTPUT_CHECKS` that exists; :mod:`jobs.lake.publish` publishes exactly the audited
versions if it passed. Each gate writes ``<lake>/_reports/<run_id>/gate-<suite>.json`` (the verdict: tables,
versions, failed expectations, notes) and HTML data docs under ``<lake>/_reports/<run_id>/data_docs/<suite>/``.

Exit status: 0 passed, 3 failed (0 with ``--exit-zero``: the DAG reads the verdict instead, so that its
retries are spent on crashes, not on a deterministic failure), 2 unusable input, 1 any other error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.core.errors import EXIT_BLOCKED, CatalogEnrichError
from schemas.expectations import INPUT_CHECKS, OUTPUT_CHECKS, Expect, GateThresholds, TableChecks  # noqa: E402

__all__ = ["GateConfig", "Verdict", "key_expectations", "main", "parse_args", "run_input_gate", "run_output_gate"]

log = logging.getLogger("jobs.quality")   # the module name, also under python -m

EXIT_FAILED = EXIT_BLOCKED   # a failed verdict blocks publication (models.core.errors)


@dataclass(frozen=True)
class GateConfig:
    suite: str                     # input | output
    lake: str
    run_id: str
    catalog: str | None = None     # input suite only
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    exit_zero: bool = False


@dataclass
class Verdict:
    suite: str
    run_id: str
    success: bool
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data_docs: str | None = None
    validated_at: str = ""

    def write(self, lake: str | Path) -> Path:
        from jobs.lake.publish import report_dir, write_json

        path = report_dir(lake, self.run_id) / f"gate-{self.suite}.json"
        write_json(path, json.loads(json.dumps(asdict(self), default=str)))
        return path


def key_expectations(keys: tuple[str, ...]) -> list[Expect]:
    """Not-null and unique on a table's key columns (from its TableSpec)."""
    out = [Expect("ExpectColumnValuesToNotBeNull", {"column": k}, f"key column {k} is never null") for k in keys]
    if len(keys) == 1:
        out.append(Expect("ExpectColumnValuesToBeUnique", {"column": keys[0]}, "one row per key"))
    elif keys:
        out.append(Expect("ExpectCompoundColumnsToBeUnique", {"column_list": list(keys)}, "one row per key"))
    return out


def _with_derived(df, checks: TableChecks):
    from pyspark.sql import functions as F

    return df.select("*", *[F.expr(sql).alias(name) for name, sql in checks.derived.items()])


def _validate(session, name: str, df, checks: TableChecks, keys: tuple[str, ...], params: dict[str, Any]) -> dict:
    """Validate the table-scope and run-scope expectations of one table; a verdict entry."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    df = _with_derived(df, checks).persist(StorageLevel.MEMORY_AND_DISK)  # every expectation scans it
    try:
        table_scoped = key_expectations(keys) if checks.key_checks else []
        table_scoped += [e for e in checks.expectations if e.scope == "table"]
        results = [session.validate(name, df, table_scoped, params)] if table_scoped else []
        run_scoped = [e for e in checks.expectations if e.scope == "run"]
        if run_scoped and "run_id" in df.columns:
            results.append(session.validate(f"{name}.this_run", df.where(F.col("run_id") == params["run_id"]),
                                            run_scoped, params))
        elif run_scoped:
            results.append(_note_only(f"{name}.this_run", "table has no run_id column: run-scoped checks skipped"))
    finally:
        df.unpersist()
    ok = all(r.success for r in results)
    return {"status": "passed" if ok else "failed", "checks": [asdict(r) for r in results]}


def _note_only(name: str, note: str):
    from jobs.lake.gx_suites import CheckResult

    return CheckResult(name, True, notes=[note])


def _finish(session, verdict: Verdict, lake: str) -> Verdict:
    index = session.finish()
    verdict.data_docs = str(index) if index else None
    verdict.validated_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    path = verdict.write(lake)
    log.info("%s gate of run %s %s; verdict %s, data docs %s", verdict.suite, verdict.run_id,
             "passed" if verdict.success else "FAILED", path, verdict.data_docs)
    return verdict


def _session(lake: str, run_id: str, suite: str):
    from jobs.lake.gx_suites import GxSession
    from jobs.lake.publish import report_dir

    docs = report_dir(lake, run_id) / "data_docs" / suite
    if docs.exists():  # a re-run of the gate replaces the pages of the previous attempt
        import shutil

        shutil.rmtree(docs)
    return GxSession(docs)


def run_input_gate(spark, cfg: GateConfig) -> Verdict:
    """Validate the catalog snapshot ``cfg.catalog`` (conformed by the enrich job's reader)."""
    from jobs.lake.publish import read_pointer
    from jobs.lake.runlog import run_counts
    from jobs.stages.validate import read_catalog

    if not cfg.catalog:
        raise ValueError("the input gate needs a catalog (--catalog)")
    t = cfg.thresholds
    params: dict[str, Any] = {**t.params(), "run_id": cfg.run_id}
    verdict = Verdict("input", cfg.run_id, True, params=params)
    pointer = read_pointer(cfg.lake)
    previous = run_counts(cfg.lake, pointer["run_id"]) if pointer else None
    if previous and previous.get("read"):
        params["previous_rows"] = previous["read"]
        params["row_count_min"] = math.ceil(previous["read"] * t.row_count_min_ratio)
        params["row_count_max"] = math.floor(previous["read"] * t.row_count_max_ratio)
    else:
        verdict.notes.append("no published run to compare with: the row-count band is not checked")
    session = _session(cfg.lake, cfg.run_id, "input")
    catalog = read_catalog(spark, cfg.catalog)
    entry = _validate(session, "catalog", catalog, INPUT_CHECKS, (), params)
    verdict.tables["catalog"] = dict(entry, path=cfg.catalog, publish=False)
    verdict.success = entry["status"] == "passed"
    return _finish(session, verdict, cfg.lake)


def _read_at(spark, path: Path, version: int, spec):
    from deltalake import DeltaTable

    files = DeltaTable(str(path), version=version).file_uris()
    if spec is not None:
        return spark.read.schema(spec.schema).parquet(*files) if files else spark.createDataFrame([], spec.schema)
    return spark.read.parquet(*files) if files else None


def run_output_gate(spark, cfg: GateConfig) -> Verdict:
    """Audit the current version of every checked table; see the module doc."""
    from deltalake import DeltaTable

    from jobs.lake.publish import DISCARDED, PUBLICATION, read_verdict, report_dir
    from jobs.lake.runlog import run_counts
    from schemas.tables import TABLES

    rdir = report_dir(cfg.lake, cfg.run_id)
    earlier = read_verdict(cfg.lake, cfg.run_id)
    if earlier is not None and ((rdir / PUBLICATION).exists() or (rdir / DISCARDED).exists()):
        # The run was published or discarded: the tables have moved on, its verdict stands.
        log.info("run %s was already published or discarded; keeping its verdict", cfg.run_id)
        kept = {f.name: earlier.get(f.name) for f in fields(Verdict) if f.name in earlier}
        return Verdict(**kept)

    t = cfg.thresholds
    params: dict[str, Any] = {**t.params(), "run_id": cfg.run_id,
                              "norm_min": 1.0 - t.norm_tolerance, "norm_max": 1.0 + t.norm_tolerance}
    verdict = Verdict("output", cfg.run_id, True, params=params)
    counts = run_counts(cfg.lake, cfg.run_id)
    if counts is None:
        verdict.success = False
        verdict.notes.append(f"enrichment_runs has no row for run {cfg.run_id}: the enrich job did not run")
    else:
        params["enriched"] = counts.get("enriched")
    session = _session(cfg.lake, cfg.run_id, "output")
    for name, checks in OUTPUT_CHECKS.items():
        path = Path(cfg.lake) / name
        entry: dict[str, Any] = {"publish": checks.publish}
        if not DeltaTable.is_deltatable(str(path)):
            verdict.tables[name] = dict(entry, status="skipped", note="table does not exist (yet)")
            continue
        spec = TABLES.get(name)
        version = DeltaTable(str(path)).version()
        df = _read_at(spark, path, version, spec)
        if df is None:
            verdict.tables[name] = dict(entry, status="skipped", version=version,
                                        note="empty table without a TableSpec in schemas.tables")
            continue
        keys = spec.keys if spec is not None else ()
        entry.update(_validate(session, name, df, checks, keys, params), version=version)
        if spec is None:
            entry["note"] = "no TableSpec in schemas.tables: key checks skipped"
        verdict.tables[name] = entry
        verdict.success &= entry["status"] == "passed"
    return _finish(session, verdict, cfg.lake)


def parse_args(argv: list[str] | None = None) -> GateConfig:
    p = argparse.ArgumentParser(prog="catalog-enrich quality", description=__doc__.split("\n\n")[0])
    p.add_argument("suite", choices=("input", "output"))
    p.add_argument("--lake", default="lake")
    p.add_argument("--run-id", required=True, help="the enrich run the gate belongs to")
    p.add_argument("--catalog", help="catalog snapshot (input suite)")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 when the suite fails (the verdict file says)")
    p.add_argument("--max-quarantine-rate", type=float, default=GateThresholds.max_quarantine_rate)
    p.add_argument("--max-cluster-size", type=int, default=GateThresholds.max_cluster_size)
    p.add_argument("--norm-tolerance", type=float, default=GateThresholds.norm_tolerance)
    p.add_argument("--row-count-band", default=f"{GateThresholds.row_count_min_ratio},"
                   f"{GateThresholds.row_count_max_ratio}", help="LO,HI ratios to the last published row count")
    p.add_argument("--category-labels", help="file with the category label set, one label per line")
    a = p.parse_args(argv)
    if a.suite == "input" and not a.catalog:
        p.error("the input suite needs --catalog")
    try:
        lo, hi = (float(x) for x in a.row_count_band.split(","))
    except ValueError:
        p.error(f"--row-count-band must be LO,HI (two numbers), not {a.row_count_band!r}")
    labels = None
    if a.category_labels:
        labels = tuple(x.strip() for x in Path(a.category_labels).read_text().splitlines() if x.strip())
    thresholds = GateThresholds(row_count_min_ratio=lo, row_count_max_ratio=hi, norm_tolerance=a.norm_tolerance,
                                max_quarantine_rate=a.max_quarantine_rate, max_cluster_size=a.max_cluster_size,
                                category_labels=labels)
    return GateConfig(a.suite, a.lake, a.run_id, a.catalog, thresholds, a.exit_zero)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from jobs.runtime.exits import fail
    from jobs.runtime.spark_session import build_session

    cfg = parse_args(argv)
    try:
        spark = build_session(f"catalog-enrich-quality-{cfg.suite}")
        verdict = (run_input_gate if cfg.suite == "input" else run_output_gate)(spark, cfg)
    except CatalogEnrichError as e:
        return fail(e)
    for name, t in verdict.tables.items():
        failed = [f["why"] or f["expectation"] for c in t.get("checks", []) for f in c["failed"]]
        print(f"  {name:<22}{t['status']:<8}{'; '.join(failed) or t.get('note', '')}")
    print(f"{cfg.suite} gate of run {cfg.run_id}: {'passed' if verdict.success else 'FAILED'}; "
          f"data docs {verdict.data_docs}")
    return 0 if verdict.success or cfg.exit_zero else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
