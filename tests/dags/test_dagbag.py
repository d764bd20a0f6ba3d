"""The DAG files: they load without errors or heavy imports, with the tasks, schedules and dependencies the
design says; the settings and command lines they build (no Spark here)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.dags.conftest import DAGS

pytestmark = pytest.mark.airflow

NIGHTLY, RETRAIN = "catalog_enrich_nightly", "catalog_enrich_retrain"


def edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_dags_load_with_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {NIGHTLY, RETRAIN}


def test_nightly_dag_shape(dagbag):
    dag = dagbag.dags[NIGHTLY]
    assert edges(dag) == {("settings", "input_gate"), ("input_gate", "input_ok"), ("input_ok", "enrich"),
                          ("enrich", "output_gate"), ("output_gate", "publish")}
    assert dag.timetable.expression == "0 2 * * *" and dag.catchup is False and dag.max_active_runs == 1
    spark_tasks = {t.task_id: t for t in dag.tasks if type(t).__name__ == "CatalogSparkSubmitOperator"}
    assert {k: t.command for k, t in spark_tasks.items()} == {
        "input_gate": "quality-input", "enrich": "enrich", "output_gate": "quality-output"}
    for t in spark_tasks.values():
        assert t.retries == 3 and t.retry_exponential_backoff == 2.0 and t.max_retry_delay == dt.timedelta(hours=1)
    # A failed verdict does not change on retry: the tasks that read verdicts fail at once.
    assert dag.get_task("input_ok").retries == 0 and dag.get_task("publish").retries == 0


def test_retrain_dag_shape(dagbag):
    dag = dagbag.dags[RETRAIN]
    assert edges(dag) == {("settings", "train_or_skip"), ("train_or_skip", "retrain"), ("train_or_skip", "promoted"),
                          ("retrain", "promoted"), ("promoted", "trigger_reembedding"), ("promoted", "keep_champion")}
    assert dag.timetable.expression == "0 3 * * 0" and dag.catchup is False
    assert dag.get_task("promoted").trigger_rule == "none_failed_min_one_success"
    trigger = dag.get_task("trigger_reembedding")
    assert trigger.trigger_dag_id == NIGHTLY and trigger.skip_when_already_exists


def test_dag_files_import_no_spark_torch_or_great_expectations():
    heavy = ("torch", "pyspark", "great_expectations", "deltalake", "jobs", "models")
    code = (f"import json, runpy, sys\nsys.path.insert(0, {str(DAGS)!r})\n"
            f"for name in ('catalog_enrich_nightly', 'catalog_enrich_retrain'):\n"
            f"    runpy.run_path({str(DAGS)!r} + '/' + name + '.py')\n"
            f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _context(end=None, run_id="manual__2026-11-20T02:00:00+00:00"):
    return {"data_interval_end": end, "ds": end.strftime("%Y-%m-%d") if end else None,
            "ds_nodash": end.strftime("%Y%m%d") if end else None, "dag_run": SimpleNamespace(run_id=run_id)}


def test_settings_resolve_run_id_catalog_and_model(tmp_path):
    from catalog_enrich_common import Settings, resolve_settings

    end = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.timezone.utc)
    store = tmp_path / "store"
    (store / "v7").mkdir(parents=True)
    (store / "current").write_text("v7\n")
    built = {"application": str(tmp_path / "main.py"), "py_files": str(tmp_path / "code.zip")}
    for path in built.values():
        open(path, "w").close()
    raw = {"catalog": "/data/catalog/ds={ds}", "lake": "/data/lake", "model_store": str(store),
           "enrich_args": ["--batch-size", 256], **built}
    s = resolve_settings(raw, _context(end), prefix="enrich")
    assert s["run_id"] == "enrich-20261120T020000Z" == resolve_settings(raw, _context(end), "enrich")["run_id"]
    assert s["catalog"] == "/data/catalog/ds=2026-11-20"
    assert s["model"] == str(store / "v7")           # pinned for the whole run
    assert s["enrich_args"] == ("--batch-size", "256")
    assert resolve_settings(built, _context(None), "enrich")["run_id"] == "enrich-manual__2026-11-20T02_00_00_00_00"
    assert resolve_settings(built, _context(end), "enrich")["model"] == "default"
    with pytest.raises(ValueError, match=r"unknown keys \['lakes'\]"):
        Settings.from_variable({"lakes": "/x"})
    with pytest.raises(ValueError, match=r"py_files /nowhere/code.zip does not exist on this worker: build it"):
        resolve_settings(dict(built, py_files="/nowhere/code.zip"), _context(end), "enrich")
    assert resolve_settings(dict(built, py_files="hdfs:///apps/code.zip"), _context(end), "enrich")
    (store / "current").unlink()
    with pytest.raises(ValueError, match="has no current version"):
        resolve_settings(raw, _context(end), "enrich")
    # Retraining does not need a champion in the store (it compares with the untrained builtin then).
    assert resolve_settings(raw, _context(end), "retrain", pin_model=False)["model"] is None


def test_job_command_lines():
    from catalog_enrich_common import Settings, job_args

    s = dict(asdict(Settings()), run_id="enrich-1", catalog="/c", lake="/l",
             model="/store/v7", image_root="/img", model_store="/store", enrich_args=("--batch-size", "8"),
             gate_args=("--max-quarantine-rate", "0.2"), retrain_args=())
    assert job_args("enrich", s) == ["enrich", "--catalog", "/c", "--lake", "/l", "--run-id", "enrich-1",
                                     "--model", "/store/v7", "--image-root", "/img", "--batch-size", "8"]
    assert job_args("quality-output", s) == ["quality", "output", "--lake", "/l", "--run-id", "enrich-1",
                                             "--exit-zero", "--max-quarantine-rate", "0.2"]
    assert job_args("retrain", s, try_number=1)[5:7] == ["--run-id", "enrich-1"]
    assert job_args("retrain", s, try_number=3)[5:7] == ["--run-id", "enrich-1.try3"]
    with pytest.raises(ValueError, match="unknown job command 'train'"):
        job_args("train", s)


def test_a_local_driver_is_started_on_the_class_archive_where_one_was_built(tmp_path, monkeypatch):
    import logging

    from catalog_enrich_common import class_archive_env

    from jobs.runtime import jvm_cache
    from jobs.runtime.machine import local_java_options

    monkeypatch.setenv("CATALOG_ENRICH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    monkeypatch.delenv("CATALOG_ENRICH_JVM_CACHE", raising=False)
    log = logging.getLogger("test")
    assert class_archive_env("local[2]", None, log) == {}                   # none built yet
    archive = jvm_cache.archive_path(local_java_options())
    if archive is None:
        pytest.skip("no java")
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"a stand-in: only its path is used here")
    env = class_archive_env("local[2]", "client", log)
    assert f"-XX:SharedArchiveFile={archive}" in env["SPARK_SUBMIT_OPTS"]
    assert env["SPARK_CONF_DIR"] != "" and not any(Path(env["SPARK_CONF_DIR"]).iterdir())   # an empty conf folder
    assert class_archive_env("spark://host:7077", None, log) == {}           # recorded for a local-mode driver
    assert class_archive_env("local[2]", "cluster", log) == {}
    monkeypatch.setenv("CATALOG_ENRICH_JVM_CACHE", "0")
    assert class_archive_env("local[2]", None, log) == {}
