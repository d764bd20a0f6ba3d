"""The DAGs run by Airflow (``dag.test()``, SQLite metadata database) with real spark-submit jobs on the sample
catalog, from the packaged zip, with the fast fake encoder (the shipped model works the same way but adds a
minute of model loading per Python worker; tests/test_enrich.py covers it)."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest

from jobs.lake import publish as pub
from jobs.package import ARCHIVE, LAUNCHER, build_zip
from tests.conftest import SAMPLE

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.slow]

UTC = dt.timezone.utc
T1 = dt.datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
T2 = T1 + dt.timedelta(days=1)


def run_id(prefix: str, t: dt.datetime) -> str:
    return f"{prefix}-{t:%Y%m%dT%H%M%SZ}"


@pytest.fixture()
def deployment(tmp_path, monkeypatch):
    """What an operator sets up: the built artifact, a Spark connection and the settings variable."""
    dist = tmp_path / "dist"
    build_zip(dist)
    lake = tmp_path / "lake"
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("AIRFLOW_VAR_CATALOG_ENRICH", json.dumps({
        "catalog": str(SAMPLE / "catalog.parquet"), "lake": str(lake), "model": "fake:",
        "enrich_args": ["--encoder-loader", "models.testing:load_fake_encoder"],
        "application": str(dist / LAUNCHER), "py_files": str(dist / ARCHIVE),
        "spark_conf": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
                       "spark.default.parallelism": "4", "spark.driver.memory": "1g"},
    }))
    # The jobs must import the project from the zip: nothing else on the Python path, and not run from the repo.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    return lake


@pytest.fixture(autouse=True)
def fail_fast(dagbag):
    """The shipped tasks retry 3 times with 5 minutes of backoff, doubling: here a failing task must fail its test
    at once, with its error in the log, instead of sleeping for half an hour (a CI run once timed out so)."""
    saved = {(d.dag_id, t.task_id): t.retries for d in dagbag.dags.values() for t in d.tasks}
    for d in dagbag.dags.values():
        for t in d.tasks:
            t.retries = 0
    yield
    for d in dagbag.dags.values():
        for t in d.tasks:
            t.retries = saved[(d.dag_id, t.task_id)]


def states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def test_nightly_dag_publishes_a_good_run_and_blocks_a_bad_one(spark, airflow_db, dagbag, deployment):
    from jobs.lake.lakehouse import Lake
    from schemas.tables import ENRICHMENT_RUNS, PRODUCT_EMBEDDINGS

    lake, dag = deployment, dagbag.dags["catalog_enrich_nightly"]
    good = dag.test(logical_date=T1)
    assert str(good.state) == "success", states(good)
    pointer = pub.read_pointer(lake)
    assert pointer["run_id"] == run_id("enrich", T1)
    published = pub.open_published(lake, "product_embeddings").to_pandas()
    assert len(published) == 332 and published["run_id"].eq(run_id("enrich", T1)).all()
    reports = lake / "_reports" / run_id("enrich", T1)
    assert (reports / "data_docs" / "input" / "index.html").is_file()
    assert (reports / "data_docs" / "output" / "index.html").is_file()

    # A bad write for the next interval: one product's embedding turns NaN (as a broken model would make it).
    bad_id = run_id("enrich", T2)
    row = published.iloc[0]
    vec = [math.nan] + [float(x) for x in row["embedding"][1:]]
    tables = Lake(spark, lake)
    tables.upsert(PRODUCT_EMBEDDINGS, spark.createDataFrame(
        [(row["product_id"], row["model_version"], vec, vec, None, "changed", bad_id, T2)], PRODUCT_EMBEDDINGS.schema),
        bad_id)
    counts = {"read": 345, "valid": 333, "enriched": 1, "unchanged": 331, "quarantined": 13}
    tables.upsert(ENRICHMENT_RUNS, spark.createDataFrame(
        [(bad_id, "succeeded", row["model_version"], "catalog", T2, T2, counts, {}, "")], ENRICHMENT_RUNS.schema),
        bad_id, step=2)
    # The gates and publication run for real; the enrich job is marked done (its write is the one above).
    bad = dag.test(logical_date=T2, mark_success_pattern=r"^(input_gate|input_ok|enrich)$")
    assert str(bad.state) == "failed"
    assert states(bad)["output_gate"] == "success" and states(bad)["publish"] == "failed"
    assert pub.read_pointer(lake) == pointer                      # nothing published
    readers_see = pub.open_published(lake, "product_embeddings").to_pandas()
    assert np.isfinite(np.stack(readers_see["embedding"])).all()
    assert (lake / "_reports" / bad_id / "discarded.json").is_file()
    verdict = pub.read_verdict(lake, bad_id)
    assert verdict["tables"]["product_embeddings"]["status"] == "failed"


def test_retrain_dag_reembeds_only_after_a_promotion(spark, airflow_db, dagbag, deployment):
    from airflow.models.dagrun import DagRun

    from jobs.retrain import record_run

    lake, dag = deployment, dagbag.dags["catalog_enrich_retrain"]
    # Runs whose retraining already finished (re-runs of a week): the DAG goes straight to the decision.
    for t, status in ((T1, "promoted"), (T2, "kept_champion")):
        record_run(spark, str(lake), {"run_id": run_id("retrain", t), "status": status,
                                      "promoted": status == "promoted", "candidate_version": "store:cand-1"})
    promoted = dag.test(logical_date=T1)
    assert states(promoted) == {"settings": "success", "train_or_skip": "success", "retrain": "skipped",
                                "promoted": "success", "trigger_reembedding": "success", "keep_champion": "skipped"}
    triggered = DagRun.find(dag_id="catalog_enrich_nightly", run_id=f"reembed__{promoted.run_id}")
    assert len(triggered) == 1 and triggered[0].conf["retrain_run_id"] == run_id("retrain", T1)

    kept = dag.test(logical_date=T2)
    assert states(kept)["keep_champion"] == "success" and states(kept)["trigger_reembedding"] == "skipped"
    assert DagRun.find(dag_id="catalog_enrich_nightly", run_id=f"reembed__{kept.run_id}") == []
