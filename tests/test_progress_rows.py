"""Row-level progress of the embed stage: the heartbeat counts the products the model UDF finished."""

from __future__ import annotations

import re

import pytest

from tests.reliability import FAKE, SAMPLE, job_env, make_slice, run_job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

GOOD = 130   # two embed tasks (64 products a task at least)
ROWS = re.compile(r"stage embed: running for \d+ s, ([\d,]+)/([\d,]+) products \(([\d.]+)/s\), Spark tasks")


def test_heartbeat_counts_the_products_done_while_the_embed_stage_runs(tmp_path):
    catalog = make_slice(tmp_path / "catalog", good=GOOD)
    # One core, two embed tasks: they run one after the other, so a heartbeat lands between them (Spark adds a
    # Python worker's accumulator updates when its task ends). Each task holds its first batch for a second, so
    # the heartbeats every 0.2 s see the first task's count however fast the tasks run.
    env = job_env({"CATALOG_ENRICH_LOG": "INFO", "CATALOG_ENRICH_PROGRESS_SECONDS": "0.2",
                   "CATALOG_ENRICH_TASK_HOLD": "embed:1"}, master="local[1]")
    args = ["enrich", "--catalog", str(catalog), "--image-root", str(SAMPLE), "--lake", str(tmp_path / "lake"),
            "--run-id", "progress-1", *FAKE, "--matching", "none"]
    result = run_job(args, env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    counts = [(int(d.replace(",", "")), int(t.replace(",", ""))) for d, t, _ in ROWS.findall(result.stderr)]
    assert counts, result.stderr[-4000:]
    todo = int(re.search(r"(\d+) products new or changed", result.stderr).group(1))
    assert todo >= GOOD and {t for _, t in counts} == {todo}   # the clean products and those with bad images
    assert any(0 < d < todo for d, _ in counts), counts      # a count part of the way, not only 0 or the end
    done = [d for d, _ in counts]
    assert done == sorted(done)
