"""Shared pieces of the catalog-enrich DAGs: settings from one Airflow variable, run ids, the Spark operator.

Cheap to import: Airflow and its Spark provider only; the project's own modules (which pull Spark, deltalake
or torch) are imported inside task callables, at run time, on the worker.

Everything a deployment sets lives in the JSON variable ``catalog_enrich`` (see :class:`Settings` for the
keys and their defaults). The first task of each DAG run resolves it once (the catalog path of the interval,
the model version, the run id) and hands it to the other tasks through XCom, so a run keeps the settings it
started with even if the variable or the model store's ``current`` pointer changes while it runs.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

__all__ = ["DEFAULT_ARGS", "SETTINGS_VARIABLE", "CatalogSparkSubmitOperator", "Settings", "class_archive_env",
           "job_args", "resolve_settings", "run_id_for"]

SETTINGS_VARIABLE = "catalog_enrich"
# Where the project is checked out on the Airflow host (the DAG files live in <home>/airflow/dags).
PROJECT_HOME = Path(os.environ.get("CATALOG_ENRICH_HOME", Path(__file__).resolve().parents[2]))
DIST = PROJECT_HOME / "dist"

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "data-platform",
    "retries": 3,
    "retry_delay": timedelta(minutes=5),
    # A multiplier since Airflow 3 (True would mean 1.0: no growth). Delays of 5-10, 10-20, 20-40 minutes
    # (Airflow adds up to 100% jitter): a busy cluster gets time to recover.
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(hours=1),
}


@dataclass(frozen=True)
class Settings:
    """The keys of the ``catalog_enrich`` variable (JSON); every key is optional."""

    catalog: str = str(PROJECT_HOME / "jobs" / "sample_catalog" / "catalog.parquet")  # may contain {ds}
    lake: str = str(PROJECT_HOME / "lake")
    image_root: str | None = None            # None: the catalog's folder
    model: str | None = None                 # an explicit model reference; None: the store's current version
    model_store: str | None = None           # the shared model store; None: the store inside the package
    spark_conn_id: str = "spark_default"
    spark_conf: dict[str, str] = field(default_factory=dict)          # every job
    enrich_spark_conf: dict[str, str] = field(default_factory=dict)   # the enrich job only (GPU resources)
    retrain_spark_conf: dict[str, str] = field(default_factory=dict)  # the retrain job only
    application: str = str(DIST / "catalog_enrich_main.py")           # built by python -m jobs.package
    py_files: str | None = str(DIST / "catalog_enrich.zip")
    archives: str | None = None              # a packed environment, e.g. ".../env.tar.gz#environment"
    enrich_args: tuple[str, ...] = ()        # extra arguments of jobs/enrich.py (e.g. --batch-size 256)
    gate_args: tuple[str, ...] = ()          # extra arguments of the quality gates (e.g. --max-quarantine-rate)
    retrain_args: tuple[str, ...] = ()       # extra arguments of jobs/retrain.py (e.g. --epochs 2)

    @classmethod
    def from_variable(cls, raw: dict[str, Any] | None) -> Settings:
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"variable {SETTINGS_VARIABLE!r} has unknown keys {unknown}; known: {sorted(known)}")
        for key in ("enrich_args", "gate_args", "retrain_args"):
            if key in raw:
                raw[key] = tuple(str(x) for x in raw[key])
        return cls(**raw)


def run_id_for(prefix: str, context: dict[str, Any]) -> str:
    """A run id derived from the data interval, so that re-running an interval reuses it (and is a no-op).

    Runs without a data interval (triggered with no logical date) fall back to the Airflow run id.
    """
    end = context.get("data_interval_end")
    if end is not None:
        return f"{prefix}-{end.strftime('%Y%m%dT%H%M%SZ')}"
    return f"{prefix}-" + re.sub(r"[^A-Za-z0-9_.-]+|\.\.+", "_", context["dag_run"].run_id)[:100]


def _current_model(store: str) -> str:
    """The folder of the store's current version (pinned for the whole run)."""
    from models.store import current_version, store_root

    root = store_root(store)
    version = current_version(root)
    if version is None:
        raise ValueError(f"model store {root} has no current version: promote one or set 'model'")
    return str(root / version)


def _check_local(what: str, path: str | None) -> None:
    # spark-submit runs on this worker: a missing local artifact would only fail after every retry.
    if path and "://" not in path and not Path(path.split("#")[0]).exists():
        raise ValueError(f"{what} {path} does not exist on this worker: build it with `make dist` "
                         f"(python -m jobs.package) or set {what!r} in the {SETTINGS_VARIABLE!r} variable")


def resolve_settings(raw: dict[str, Any] | None, context: dict[str, Any], prefix: str,
                     pin_model: bool = True) -> dict[str, Any]:
    """The settings of one DAG run: the variable with defaults, the interval's catalog, the run id and, with
    ``pin_model``, the model (the store's current version at the start of the run)."""
    s = Settings.from_variable(raw)
    for what in ("application", "py_files", "archives"):
        _check_local(what, getattr(s, what))
    out = asdict(s)
    out["catalog"] = s.catalog.format(ds=context.get("ds") or "", ds_nodash=context.get("ds_nodash") or "")
    if pin_model:
        out["model"] = s.model or (_current_model(s.model_store) if s.model_store else "default")
    out["run_id"] = run_id_for(prefix, context)
    return out


def job_args(command: str, s: dict[str, Any], try_number: int = 1) -> list[str]:
    """The command line of one job (after the launcher), from a run's resolved settings."""
    lake, run_id = s["lake"], s["run_id"]
    image_root = ["--image-root", s["image_root"]] if s.get("image_root") else []
    if command == "enrich":
        return ["enrich", "--catalog", s["catalog"], "--lake", lake, "--run-id", run_id, "--model", s["model"],
                *image_root, *s["enrich_args"]]
    if command == "quality-input":
        return ["quality", "input", "--catalog", s["catalog"], "--lake", lake, "--run-id", run_id, "--exit-zero",
                *s["gate_args"]]
    if command == "quality-output":
        return ["quality", "output", "--lake", lake, "--run-id", run_id, "--exit-zero", *s["gate_args"]]
    if command == "retrain":
        from jobs.lake.runlog import latest_attempt  # each attempt records its own model_runs row

        store = ["--model-store", s["model_store"]] if s.get("model_store") else []
        return ["retrain", "--catalog", s["catalog"], "--lake", lake, "--run-id", latest_attempt(run_id, try_number),
                *store, *image_root, *s["retrain_args"]]
    raise ValueError(f"unknown job command {command!r}")


def class_archive_env(master: str, deploy_mode: str | None, log: Any) -> dict[str, str]:
    """The environment that starts a local-mode driver JVM on this worker on the class-data-sharing archive, where
    one was built here (``make jvm-cache``; ``jobs/runtime/jvm_cache.py``). {} unless the master is local (the
    archive is recorded by a local-mode run) in client deploy mode; {} with ``CATALOG_ENRICH_JVM_CACHE=0`` or
    without a usable archive (the reason is logged)."""
    if not master.startswith("local") or (deploy_mode or "client") != "client":
        return {}
    from jobs.runtime.jvm_cache import submit_env

    env, problem = submit_env()
    if problem is not None:
        log.info("driver JVM without the class archive: %s", problem)
    else:
        log.info("driver JVM on the class archive (%s)", env["SPARK_SUBMIT_OPTS"])
    return env


class CatalogSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit of one project job, configured at run time from the run's settings (the ``settings``
    task's XCom): connection id, Spark conf, the packaged code (``py_files``/``archives``) and arguments.

    The provider's ``conn_id`` is not a templated field, hence the lookup in :meth:`execute`.
    """

    def __init__(self, *, command: str, settings_task: str = "settings", **kwargs: Any):
        kwargs.setdefault("name", f"catalog-enrich-{command}")
        super().__init__(application="", **kwargs)
        self.command = command
        self.settings_task = settings_task

    def execute(self, context):
        s = context["ti"].xcom_pull(task_ids=self.settings_task)
        per_job = {"enrich": s["enrich_spark_conf"], "retrain": s["retrain_spark_conf"]}.get(self.command, {})
        self._conn_id = s["spark_conn_id"]
        self.conf = {**s["spark_conf"], **per_job}
        self.application = s["application"]
        self.py_files = s["py_files"]
        self._archives = s["archives"]
        self.application_args = job_args(self.command, s, context["ti"].try_number)
        connection = self._get_hook()._connection   # the master and deploy mode the submit will use
        self.env_vars = {**(self.env_vars or {}),
                         **class_archive_env(connection["master"], connection.get("deploy_mode"), self.log)}
        self.log.info("spark-submit %s %s (connection %s)", self.application, " ".join(self.application_args),
                      self._conn_id)
        return super().execute(context)
