"""Airflow for the DAG tests: a throwaway AIRFLOW_HOME with a SQLite metadata database, the project's DAG
folder, no example DAGs. Set at import, before any test imports Airflow (which reads its config once)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "airflow" / "dags"

# Forced, not defaulted: a test must never write to a real ~/airflow or a developer's AIRFLOW_HOME.
_HOME = tempfile.mkdtemp(prefix="catalog-enrich-airflow-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# Airflow's logging setup gives the root logger a handler on the test's stdout; py4j's INFO line at interpreter
# exit would then be written to a stream pytest has closed ("--- Logging error ---").
logging.getLogger("py4j").setLevel(logging.WARNING)
# Airflow puts a bundle's folder on sys.path so DAG files can import their helper modules; so do the tests.
if str(DAGS) not in sys.path:
    sys.path.append(str(DAGS))


@pytest.fixture(scope="session")
def airflow_db():
    """The metadata database, migrated once per test run (about 15 s)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy(), timeout=300)
    yield Path(_HOME)
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def dagbag():
    """The DAG folder parsed the way Airflow parses a bundle (the folder goes on sys.path for its helpers)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
