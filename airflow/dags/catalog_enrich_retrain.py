"""Weekly retraining: train a candidate, promote it only if it beats the champion, then re-embed the catalog.

``retrain`` spark-submits jobs/retrain.py, which saves the candidate to the model store, moves the store's
``current`` pointer only when the candidate wins on the held-out split, and appends a ``model_runs`` row.
``promoted`` reads that row: after a promotion it triggers the nightly enrichment DAG, whose run embeds
every product again with the new current version (a product is recomputed when its model version changes).

Re-running a week does not train twice: ``train_or_skip`` finds the finished ``model_runs`` row of the run
and goes straight to ``promoted``; the triggered enrichment run has a fixed id, so it is triggered once.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task
from catalog_enrich_common import DEFAULT_ARGS, SETTINGS_VARIABLE, CatalogSparkSubmitOperator, resolve_settings

DAG_ID = "catalog_enrich_retrain"
ENRICH_DAG_ID = "catalog_enrich_nightly"


@task(task_id="settings", retries=0)
def settings(**context):
    from airflow.sdk import Variable

    raw = Variable.get(SETTINGS_VARIABLE, default={}, deserialize_json=True)
    return resolve_settings(raw, context, prefix="retrain", pin_model=False)  # the job compares with the champion


@task.branch(task_id="train_or_skip", retries=0)
def train_or_skip(**context):
    from jobs.lake.runlog import retrain_outcome

    s = context["ti"].xcom_pull(task_ids="settings")
    done = retrain_outcome(s["lake"], s["run_id"])
    return "promoted" if done is not None and done["status"] != "failed" else "retrain"


@task.branch(task_id="promoted", retries=0, trigger_rule="none_failed_min_one_success")
def promoted(**context):
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.lake.runlog import retrain_outcome

    s = context["ti"].xcom_pull(task_ids="settings")
    row = retrain_outcome(s["lake"], s["run_id"])
    if row is None or row["status"] == "failed":
        raise AirflowFailException(f"retrain run {s['run_id']} left no successful model_runs row: "
                                   f"{(row or {}).get('message')}")
    context["ti"].xcom_push(key="candidate", value=row["candidate_version"])
    return "trigger_reembedding" if row["promoted"] else "keep_champion"


with DAG(
    dag_id=DAG_ID,
    description="Retrain the catalog encoder weekly; re-embed the catalog after a promotion",
    schedule=os.environ.get("CATALOG_ENRICH_RETRAIN_SCHEDULE", "0 3 * * 0"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    dagrun_timeout=timedelta(hours=24),
    tags=["catalog-enrich"],
    doc_md=__doc__,
) as dag:
    resolved = settings()
    branch = train_or_skip()
    retrain = CatalogSparkSubmitOperator(task_id="retrain", command="retrain", execution_timeout=timedelta(hours=12))
    decide = promoted()
    reembed = TriggerDagRunOperator(
        task_id="trigger_reembedding",
        trigger_dag_id=ENRICH_DAG_ID,
        trigger_run_id="reembed__{{ run_id }}",  # one re-embedding run per retrain run, however often re-run
        conf={"reason": "model promoted", "retrain_run_id": "{{ ti.xcom_pull(task_ids='settings')['run_id'] }}",
              "model": "{{ ti.xcom_pull(task_ids='promoted', key='candidate') }}"},
        skip_when_already_exists=True,
        wait_for_completion=False,
    )
    keep = EmptyOperator(task_id="keep_champion")
    resolved >> branch >> [retrain, decide]
    retrain >> decide >> [reembed, keep]
