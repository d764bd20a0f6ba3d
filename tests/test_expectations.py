"""The declared expectations: every one names a real Great Expectations class with valid arguments, and every
parameter it needs has a source (no Spark here)."""

from __future__ import annotations

import re

import great_expectations as gx
import pytest

from jobs.lake.gx_suites import resolve
from jobs.quality import key_expectations
from schemas.expectations import (
    CHECKED_OUTPUT_TABLES,
    INPUT_CHECKS,
    OUTPUT_CHECKS,
    Expect,
    GateThresholds,
    Param,
)
from schemas.tables import TABLES

# Parameters the gates compute per run (jobs.quality) rather than take from GateThresholds.
RUN_PARAMS = {"run_id": "r", "norm_min": 0.999, "norm_max": 1.001, "enriched": 3, "row_count_min": 1,
              "row_count_max": 9}


def _all():
    yield INPUT_CHECKS, list(INPUT_CHECKS.expectations)
    for checks in OUTPUT_CHECKS.values():
        keys = TABLES[checks.table].keys if checks.table in TABLES else ()
        yield checks, key_expectations(keys) + list(checks.expectations)


@pytest.mark.parametrize("checks,expectations", list(_all()), ids=lambda x: getattr(x, "table", ""))
def test_every_expectation_builds_with_its_parameters(checks, expectations):
    params = {**GateThresholds(category_labels=("a", "b")).params(), **RUN_PARAMS}
    for e in expectations:
        kwargs = resolve(e, params)
        assert kwargs is not None, f"{checks.table}: {e.type} lacks a value for {e.params()}"
        built = getattr(gx.expectations, e.type)(**kwargs)  # pydantic validates the arguments
        assert built.expectation_type == re.sub(r"(?<!^)(?=[A-Z])", "_", e.type).lower()
    assert all(name.startswith("_") for name in checks.derived), "derived columns must not shadow table columns"


def test_a_missing_parameter_skips_the_expectation_not_the_suite():
    e = Expect("ExpectColumnValuesToBeInSet", {"column": "category", "value_set": Param("category_labels")}, "why")
    assert resolve(e, GateThresholds().params()) is None      # no label set configured
    assert resolve(e, GateThresholds(category_labels=("shoes",)).params()) == {
        "column": "category", "value_set": ["shoes"]}


def test_published_tables_are_data_products_not_run_logs():
    assert "product_embeddings" in CHECKED_OUTPUT_TABLES and "quarantine" in CHECKED_OUTPUT_TABLES
    assert "enrichment_runs" not in CHECKED_OUTPUT_TABLES


def test_keys_come_from_the_table_spec():
    single = key_expectations(("product_id",))
    assert [e.type for e in single] == ["ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeUnique"]
    pair = key_expectations(("run_id", "row_id"))
    assert pair[-1].type == "ExpectCompoundColumnsToBeUnique" and pair[-1].kwargs["column_list"] == ["run_id", "row_id"]


def test_scope_is_checked():
    with pytest.raises(ValueError, match="scope must be 'table' or 'run'"):
        Expect("ExpectTableRowCountToEqual", {"value": 1}, "why", scope="everything")
