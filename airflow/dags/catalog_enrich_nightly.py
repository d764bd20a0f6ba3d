"""Nightly catalog enrichment: input gate -> enrich -> output gate -> publish (write, audit, publish).

``settings`` resolves the ``catalog_enrich`` variable for this run (run id from the data interval, the
catalog snapshot of the interval, the model store's current version, pinned). ``input_gate`` validates the
snapshot with Great Expectations and ``input_ok`` stops the run if it is broken as a whole. ``enrich``
spark-submits the enrich job, which commits its writes to the Delta tables. ``output_gate`` audits the
new table versions and ``publish`` moves the ``_published`` pointer to them, or, if the audit failed,
restores the tables to the published state and fails the run. Readers follow the pointer, so they never
see a run that has not passed its audit.

Every task is idempotent per data interval: the run id derives from it, the enrich job skips commits whose
run id is already in the Delta log, and publishing a published run is a no-op.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, task
from catalog_enrich_common import DEFAULT_ARGS, SETTINGS_VARIABLE, CatalogSparkSubmitOperator, resolve_settings

DAG_ID = "catalog_enrich_nightly"


@task(task_id="settings", retries=0)
def settings(**context):
    from airflow.sdk import Variable

    raw = Variable.get(SETTINGS_VARIABLE, default={}, deserialize_json=True)
    return resolve_settings(raw, context, prefix="enrich")


@task(task_id="input_ok", retries=0)
def input_ok(**context):
    """Fail (without retries: the verdict will not change) when the input gate failed."""
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.lake.publish import read_verdict

    s = context["ti"].xcom_pull(task_ids="settings")
    verdict = read_verdict(s["lake"], s["run_id"], "input")
    if verdict is None:
        raise AirflowFailException(f"the input gate left no verdict for run {s['run_id']}")
    if not verdict["success"]:
        raise AirflowFailException(f"catalog {s['catalog']} failed the input gate; data docs: {verdict['data_docs']}")
    return verdict["success"]


@task(task_id="publish", retries=0)
def publish(**context):
    """Publish the audited versions, or discard the run and fail when the output gate failed."""
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.lake.publish import GateBlocked, finalize

    s = context["ti"].xcom_pull(task_ids="settings")
    try:
        return finalize(s["lake"], s["run_id"])
    except GateBlocked as e:
        raise AirflowFailException(str(e)) from e


with DAG(
    dag_id=DAG_ID,
    description="Enrich the product catalog nightly; publish only what passes the quality gates",
    schedule=os.environ.get("CATALOG_ENRICH_NIGHTLY_SCHEDULE", "0 2 * * *"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,          # runs write the same tables: one at a time, in order
    default_args=DEFAULT_ARGS,
    dagrun_timeout=timedelta(hours=12),
    tags=["catalog-enrich"],
    doc_md=__doc__,
) as dag:
    resolved = settings()
    input_gate = CatalogSparkSubmitOperator(task_id="input_gate", command="quality-input",
                                            execution_timeout=timedelta(hours=1))
    enrich = CatalogSparkSubmitOperator(task_id="enrich", command="enrich", execution_timeout=timedelta(hours=8))
    output_gate = CatalogSparkSubmitOperator(task_id="output_gate", command="quality-output",
                                             execution_timeout=timedelta(hours=1))
    resolved >> input_gate >> input_ok() >> enrich >> output_gate >> publish()
