"""Shared fixtures: one SparkSession for the whole test run, and scratch lakes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "jobs" / "sample_catalog"

# Spark's Python workers must run the interpreter of the tests, not whatever 'python3' is on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def pyspark_zips() -> list[str]:
    """The two archives (``pyspark.zip``, the py4j zip) inside the installed pyspark package, which spark-submit
    puts first on a Python process's path; the test is skipped where pyspark is not pip-installed with them."""
    import pyspark

    zips = sorted(str(p) for p in (Path(pyspark.__file__).parent / "python" / "lib").glob("*.zip"))
    if len(zips) != 2:
        pytest.skip(f"pyspark is not pip-installed with its two archives here: {zips}")
    return zips


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from jobs.runtime.spark_session import build_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = build_session("catalog-enrich-tests", conf={
        # Two cores here: two local tasks, and tiny shuffles so small test tables stay fast.
        "spark.master": "local[2]",
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "4",
        # No UI: parallel test runs would fight over port 4040, and nobody looks at it.
        "spark.ui.enabled": "false",
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.driver.memory": "3g",  # as a local run of the job gets (LOCAL_DEFAULTS)
    })
    yield session
    session.stop()


@pytest.fixture()
def lake(spark, tmp_path):
    from jobs.lake.lakehouse import Lake

    return Lake(spark, tmp_path / "lake")


@pytest.fixture(scope="session")
def default_sample_run(spark, tmp_path_factory):
    """The enrich job with everything shipped (default encoder, heads, attribute extractor, pair scorer) run
    once over a copy of the sample catalog: the tests of each stage's real-model output read this one lake."""
    import shutil

    from jobs import enrich

    root = tmp_path_factory.mktemp("sample-default")
    shutil.copytree(SAMPLE, root / "catalog")
    code = enrich.main(["--catalog", str(root / "catalog" / "catalog.parquet"), "--lake", str(root / "lake"),
                        "--run-id", "s1", "--batch-size", "32"])
    assert code == 0
    return root
