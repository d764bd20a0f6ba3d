"""Great Expectations 1.x mechanics of the quality gates: suites from :mod:`schemas.expectations`, validation of
Spark DataFrames, and HTML data docs.

One ephemeral context per gate run (no ``gx/`` project folder to keep in sync): suites and results live in
memory, and the data docs site is written to the run's report folder. Analytics are off (there is no network
here, and a gate must not wait for one) and so are progress bars (they flood the Spark driver's log).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.expectations import Expect, Param

__all__ = ["CheckResult", "GxSession", "resolve"]

log = logging.getLogger(__name__)

SITE = "run"


@dataclass
class CheckResult:
    """The outcome of one table (or one table's run-scoped rows) under its suite."""

    name: str
    success: bool
    evaluated: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def resolve(expect: Expect, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The expectation's kwargs with its :class:`Param` values filled in; None when one has no value."""
    out = {}
    for key, value in expect.kwargs.items():
        if isinstance(value, Param):
            if params.get(value.name) is None:
                return None
            value = params[value.name]
        out[key] = value
    return out


class GxSession:
    """A Great Expectations context whose data docs go to ``docs_dir``."""

    def __init__(self, docs_dir: Path):
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.docs_dir = Path(docs_dir)
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            data_docs_sites={SITE: {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }},
        )
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.source = self.context.data_sources.add_spark("spark")

    def build_suite(self, name: str, expectations: list[Expect], params: Mapping[str, Any]):
        """A suite of ``expectations`` with parameters filled in; notes for those skipped for lack of a value."""
        suite = self.gx.ExpectationSuite(name=name)
        notes = []
        for e in expectations:
            kwargs = resolve(e, params)
            if kwargs is None:
                missing = ", ".join(p for p in e.params() if params.get(p) is None)
                notes.append(f"skipped {e.type} ({e.why}): no value for {missing}")
                continue
            cls = getattr(self.gx.expectations, e.type)
            suite.add_expectation(cls(**kwargs, meta={"why": e.why}))
        return self.context.suites.add(suite), notes

    def validate(self, name: str, df, expectations: list[Expect], params: Mapping[str, Any]) -> CheckResult:
        """Validate a Spark DataFrame; the result is added to the data docs."""
        suite, notes = self.build_suite(name, expectations, params)
        if not suite.expectations:
            return CheckResult(name, True, notes=notes + ["no expectation to evaluate"])
        asset = self.source.add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe("whole")
        vd = self.context.validation_definitions.add(self.gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = self.context.checkpoints.add(self.gx.Checkpoint(
            name=name, validation_definitions=[vd], result_format={"result_format": "SUMMARY"},
            actions=[self.gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[SITE])]))
        outcome = checkpoint.run(batch_parameters={"dataframe": df})
        result = next(iter(outcome.run_results.values()))
        failed = [_describe(r) for r in result.results if not r.success]
        return CheckResult(name, bool(result.success), len(result.results), failed, notes)

    def finish(self) -> Path | None:
        """Drop the docs site's bundled fonts and tutorial images (4 MB per run; the pages link none of them
        but the favicon) and return the index page."""
        static = self.docs_dir / "static"
        shutil.rmtree(static / "fonts", ignore_errors=True)
        for img in (static / "images").glob("*"):
            if img.name != "favicon.ico":
                img.unlink()
        index = self.docs_dir / "index.html"
        return index if index.is_file() else None


def _describe(r) -> dict[str, Any]:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}
    res = r.result or {}
    out: dict[str, Any] = {"expectation": cfg.type, "kwargs": kwargs, "why": (cfg.meta or {}).get("why", "")}
    for key in ("observed_value", "unexpected_count", "unexpected_percent", "partial_unexpected_list"):
        if key in res and res[key] not in (None, []):
            out[key] = res[key]
    if r.exception_info and r.exception_info.get("raised_exception"):
        out["exception"] = str(r.exception_info.get("exception_message"))[:500]
    return out
