"""Helpers of the reliability tests: run the enrich job as a real subprocess, snapshot and check a lake.

The job runs as ``python -m jobs.cli enrich`` in its own process group (so the test can SIGKILL it, and clean
up its JVM and Python workers, without touching pytest), with the fast fake encoder on a slice of the sample
catalog, ``local[2]`` and two shuffle partitions.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "jobs" / "sample_catalog"
FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:", "--attributes", "none"]
RUN_ID = "rel-1"
# Columns that hold wall-clock times: equal content, different instants.
VOLATILE = {"updated_at", "quarantined_at", "started_at", "finished_at", "timings"}

# Every place the enrich job may be killed, in the order a run reaches them (models.core.faults.checkpoint names;
# ``/2`` is a table's second commit in the run). Points inside a Spark task (inspect_batch, embed_batch) kill
# the driver from a Python worker. Each one must be reached on the test slice: a kill that does not happen fails
# the test.
KILL_POINTS = (
    "start", "written:enrichment_runs", "committed:enrichment_runs", "run_started", "inspect_batch", "validated",
    "selected", "embed_batch", "embedded", "heads_scored", "written:product_embeddings",
    "committed:product_embeddings", "written:quarantine", "committed:quarantine", "written:product_categories",
    "committed:product_categories", "written:product_attributes", "committed:product_attributes",
    "written:product_adult_flags", "committed:product_adult_flags", "tables_committed", "written:product_matches",
    "committed:product_matches", "written:product_clusters", "committed:product_clusters", "matched",
    "written:enrichment_runs/2", "committed:enrichment_runs/2", "run_recorded",
)


def full_mode() -> bool:
    """``CATALOG_ENRICH_RELIABILITY=full``: every kill point and many fuzz examples (the long run)."""
    return os.environ.get("CATALOG_ENRICH_RELIABILITY", "").lower() == "full"


def chain_mode() -> bool:
    """``CATALOG_ENRICH_RELIABILITY=chain``: one lake killed at every point in turn (each repeat dies at the
    next point), then finished: every kill point in about a third of the full run's time."""
    return os.environ.get("CATALOG_ENRICH_RELIABILITY", "").lower() == "chain"


def make_slice(dst: Path, good: int = 30) -> Path:
    """``good`` clean products of the sample catalog plus every planted broken row (missing ids, a duplicate,
    empty titles, missing/truncated/non-image photos, URIs leaving the image root)."""
    table = pq.read_table(SAMPLE / "catalog.parquet")
    df = table.to_pandas()
    bad = df["product_id"].isna() | df["product_id"].str.startswith("B") | df["product_id"].duplicated(keep=False)
    rows = pd.concat([df[~bad].head(good), df[bad]])
    path = dst / "catalog.parquet"
    dst.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.from_pandas(rows, schema=table.schema, preserve_index=False), path)
    return path


@dataclass
class JobResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def job_env(extra: dict[str, str] | None = None, master: str = "local[2]") -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        # Workers must import this checkout's code (not an installed copy), with the tests' interpreter.
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])]),
        "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_MASTER": master,
        # Two tasks and two shuffle partitions: the slice is tiny, and the machine has two cores.
        "PYSPARK_SUBMIT_ARGS": "--conf spark.sql.shuffle.partitions=2 --conf spark.default.parallelism=2 "
                               "--conf spark.ui.enabled=false --driver-memory 1g pyspark-shell",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CATALOG_ENRICH_LOG": "WARNING",
    })
    for key in ("CATALOG_ENRICH_KILL_AT", "CATALOG_ENRICH_TASK_FAULTS", "CATALOG_ENRICH_FAULT_LOG"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def with_matching() -> bool:
    """The match stage is half of a job run's time: the default run leaves it out (``--matching none``)."""
    return full_mode() or chain_mode()



def enrich_args(catalog: Path, lake: Path, run_id: str | None = RUN_ID) -> list[str]:
    """The job's arguments; ``run_id=None`` leaves ``--run-id`` out, as the nightly path does (a new id)."""
    return ["enrich", "--catalog", str(catalog), "--image-root", str(SAMPLE), "--lake", str(lake),
            *(["--run-id", run_id] if run_id is not None else []), *FAKE,
            *([] if with_matching() else ["--matching", "none"])]


def start_job(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish_job(proc: subprocess.Popen, timeout: float = 900, started: float | None = None) -> JobResult:
    """Wait for the job, then make sure nothing of its process group (JVM, Python workers) outlives it."""
    t = started or time.perf_counter()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"enrich job timed out after {timeout} s:\n{err[-4000:]}") from None
    _reap_group(proc.pid)
    return JobResult(proc.returncode, out, err, time.perf_counter() - t)


def _reap_group(pgid: int) -> None:
    # A killed driver's JVM exits when its stdin closes; do not wait for that before the next run starts.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def run_job(args: list[str], env: dict[str, str], timeout: float = 900) -> JobResult:
    t = time.perf_counter()
    return finish_job(start_job(args, env), timeout, t)


# -- the lake as data ---------------------------------------------------------------------------------------
def _freeze(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def tables(lake: Path) -> list[str]:
    return sorted(p.name for p in lake.iterdir() if (p / "_delta_log").is_dir()) if lake.is_dir() else []


def lake_state(lake: Path, drop: frozenset[str] = frozenset()) -> dict[str, list]:
    """Every table's rows as the ``deltalake`` reader sees them, without wall-clock columns (and ``drop``),
    sorted."""
    from deltalake import DeltaTable

    state, gone = {}, VOLATILE | drop
    for name in tables(lake):
        rows = DeltaTable(str(lake / name)).to_pyarrow_table().to_pylist()
        state[name] = sorted((tuple(sorted((k, _freeze(_steady(k, v))) for k, v in r.items() if k not in gone))
                              for r in rows), key=repr)
    return state


def run_records(lake: Path) -> dict[str, dict]:
    """``enrichment_runs`` by run id."""
    from deltalake import DeltaTable

    rows = DeltaTable(str(lake / "enrichment_runs")).to_pyarrow_table().to_pylist()
    return {r["run_id"]: dict(r, counts=dict(r["counts"] or [])) for r in rows}


def output_state(lake: Path, run_id: str) -> dict[str, list]:
    """What a run left for readers, comparable across run ids: every per-product table without its run_id
    (and wall-clock) columns, and the quarantine rows of ``run_id`` alone (the quarantine logs every run's
    rejections, an abandoned run's included). ``enrichment_runs`` is left out: see :func:`check_resumed_runs`."""
    from deltalake import DeltaTable

    state = lake_state(lake, drop=frozenset({"run_id"}))
    del state["enrichment_runs"]
    rows = DeltaTable(str(lake / "quarantine")).to_pyarrow_table(filters=[("run_id", "=", run_id)]).to_pylist()
    state["quarantine"] = sorted((tuple(sorted((k, _freeze(v)) for k, v in r.items() if k not in VOLATILE | {"run_id"}))
                                  for r in rows), key=repr)
    return state


def check_resumed_runs(lake: Path, reference: Path, interrupted: set[str], finished: str) -> None:
    """After runs were killed (``interrupted``, those that got as far as recording themselves) and a later run
    ``finished``: no run is left ``running``; each interrupted one is ``abandoned`` with an end time and a
    message naming the run that found it, or ``succeeded`` when it was killed after recording its success; the
    finished run accounts for the rows as the uninterrupted reference run did, its products enriched or, when
    an interrupted run succeeded, unchanged."""
    runs = run_records(lake)
    assert not [r for r in runs.values() if r["status"] == "running"], runs
    assert runs.keys() == interrupted | {finished}, (sorted(runs), interrupted, finished)
    done_before = {i for i in interrupted if runs[i]["status"] == "succeeded"}
    for rid in interrupted - done_before:
        r = runs[rid]
        assert r["status"] == "abandoned" and r["finished_at"] is not None, r
        marker = re.match(r"abandoned: still running when run (\S+) started with the lake lock free", r["message"])
        assert marker and marker[1] in runs.keys() - {rid}, r   # named by the run that found it (a later one)
    ref = next(iter(run_records(reference).values()))["counts"]
    got = runs[finished]["counts"]
    assert runs[finished]["status"] == "succeeded"
    assert {k: got[k] for k in ("read", "valid", "quarantined")} == {k: ref[k] for k in ("read", "valid",
                                                                                        "quarantined")}
    assert (got["enriched"], got["unchanged"]) == ((0, ref["enriched"]) if done_before else (ref["enriched"], 0))


# What a run's index refresh did ("(full: +30, ~0, -0)") depends on whether a crashed earlier try of the run
# had refreshed it already; where the index ended ("30 products at product_embeddings v1") does not.
_INDEX_WORK = re.compile(r"(index: \d+ products at \S+ v\d+) \([^)]*\)")


def _steady(column: str, value):
    return _INDEX_WORK.sub(r"\1", value) if column == "message" and isinstance(value, str) else value


def check_readable(lake: Path) -> dict[str, int]:
    """What any reader may rely on, at any moment (also right after a crash): each table's log names only
    files that exist, its keys are unique. Returns the number of orphan data files (written, never committed:
    invisible to readers) per table."""
    from deltalake import DeltaTable

    from schemas.tables import TABLES

    orphans = {}
    for name in tables(lake):
        dt = DeltaTable(str(lake / name))
        live = {os.path.normpath(u.removeprefix("file://")) for u in dt.file_uris()}
        assert all(os.path.isfile(p) for p in live), f"{name}: the log names a missing file"
        on_disk = {os.path.normpath(str(p)) for p in (lake / name).rglob("*.parquet")}
        orphans[name] = len(on_disk - _ever_added(lake / name))
        spec = TABLES.get(name)
        if spec is not None:
            keys = dt.to_pyarrow_table(columns=list(spec.keys)).to_pylist()
            assert len(keys) == len({tuple(k.values()) for k in keys}), f"{name}: duplicate keys {spec.keys}"
    return orphans


def _ever_added(table: Path) -> set[str]:
    """Files some version of the log added (removed ones stay on disk for time travel until a vacuum)."""
    import json
    from urllib.parse import unquote

    added = set()
    for commit in (table / "_delta_log").glob("*.json"):
        for line in commit.read_text().splitlines():
            add = json.loads(line).get("add") if line.strip() else None
            if add:
                added.add(os.path.normpath(str(table / unquote(add["path"]))))
    return added


def check_accounted(lake: Path, catalog: Path, run_id: str = RUN_ID) -> dict[str, int]:
    """The run succeeded and every catalog row is in exactly one place: enriched, unchanged or quarantined."""
    from deltalake import DeltaTable

    from jobs.lake.runlog import run_rows

    rows = run_rows(lake, "enrichment_runs", [run_id])
    assert len(rows) == 1 and rows[0]["status"] == "succeeded", rows
    c = rows[0]["counts"]
    n = pq.read_metadata(catalog).num_rows
    assert c["read"] == n == c["enriched"] + c["unchanged"] + c["quarantined"], c
    emb = DeltaTable(str(lake / "product_embeddings")).to_pyarrow_table(columns=["product_id"]).num_rows
    qua = DeltaTable(str(lake / "quarantine")).to_pyarrow_table(
        columns=["run_id"], filters=[("run_id", "=", run_id)]).num_rows
    assert qua == c["quarantined"] and emb == c["enriched"] + c["unchanged"], (emb, qua, c)
    return dict(c)
