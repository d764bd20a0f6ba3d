"""Models verified on the driver before any Spark work: a damaged or tampered artifact ends the enrich job with
exit 2 and one line on stderr, within seconds, before the lake is touched (issue 16). Every model folder is a
copy under tmp_path; the shipped store is never modified."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jobs import enrich
from models import store
from tests.conftest import REPO, SAMPLE

FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:"]
SHIPPED_ENCODER = store.DEFAULT_STORE / store.current_version(store.DEFAULT_STORE)


def _copy(vdir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "models" / vdir.name   # the same name: a genuine version, moved
    shutil.copytree(vdir, dst)
    return dst


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_with_manifest(vdir: Path, name: str, data: bytes) -> None:
    """Replace a file and its checksum in the manifest: only the digest in the folder's name can tell."""
    from models.digest import sha256_file

    (vdir / name).write_bytes(data)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(vdir / name)
    (vdir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_flipped_byte_in_the_encoder_weights_fails_at_once_in_one_line(tmp_path):
    """As a user runs it (its own process, default logging): exit 2, one line, no Spark, no table."""
    model = _copy(SHIPPED_ENCODER, tmp_path)
    _flip_byte(model / "model.safetensors")
    lake = tmp_path / "lake"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYSPARK_PYTHON=sys.executable)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "enrich", "--catalog", str(SAMPLE / "catalog.parquet"),
                           "--lake", str(lake), "--model", str(model), "--run-id", "t1"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    elapsed = time.perf_counter() - t
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: encoder refused: {model / 'model.safetensors'}: sha256 does not match")
    assert "Restore the folder from a trusted copy" in lines[0] and "--model" in lines[0]
    assert "Traceback" not in proc.stderr and "Java" not in proc.stderr
    assert elapsed < 20          # the import and the check; the job it replaced failed after 35 s of Spark work
    assert not any(lake.glob("*/_delta_log")), "the refused run touched no table, not even enrichment_runs"


def test_weights_and_manifest_rewritten_in_a_store_folder_are_refused(tmp_path, capsys):
    """NaN weights in a valid container, with a manifest rewritten to match, under the genuine version name: the
    run recorded them as ``store:<version>`` and wrote NaN embeddings. Now the name's digest refuses them."""
    from safetensors.numpy import load_file, save

    model = _copy(SHIPPED_ENCODER, tmp_path)
    tensors = {k: np.full_like(v, np.nan) for k, v in load_file(str(model / "model.safetensors")).items()}
    _rewrite_with_manifest(model, "model.safetensors", save(tensors, metadata={"format": "pt"}))
    lake = tmp_path / "lake"
    code = enrich.main(["--catalog", str(SAMPLE / "catalog.parquet"), "--lake", str(lake), "--model", str(model),
                        "--run-id", "t2"])
    err = capsys.readouterr().err
    assert code == 2
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert f"error: encoder refused: {model}: the digest in its name ({model.name[-10:]}) does not match" in lines[0]
    assert not any(lake.glob("*/_delta_log"))


def _current(kind: str) -> Path:
    root = store.DEFAULT_STORE / kind
    return root / (store.current_version(root) or store.list_versions(root)[-1])


@pytest.mark.parametrize("role, flag, vdir, weights", [
    ("head bundle", "--heads", _current("heads"), "model.safetensors"),
    ("attribute extractor", "--attributes", _current("attributes"), "model.safetensors"),
    ("pair scorer", "--matching", _current("scorers"), "scorer.json"),
])
def test_a_damaged_head_extractor_or_scorer_fails_before_any_work(tmp_path, capsys, role, flag, vdir, weights):
    model = _copy(vdir, tmp_path)
    _flip_byte(model / weights)
    lake = tmp_path / "lake"
    others = {"--heads": "none", "--attributes": "none", "--matching": "none"}
    others[flag] = str(model)
    t = time.perf_counter()
    code = enrich.main(["--catalog", str(SAMPLE / "catalog.parquet"), "--lake", str(lake), "--run-id", "t3", *FAKE,
                        *[x for kv in others.items() for x in kv]])
    elapsed = time.perf_counter() - t
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {role}" in err and str(model / weights) in err and flag in err
    assert elapsed < 10
    assert not any(lake.glob("*/_delta_log"))


def test_the_driver_check_covers_every_shipped_model_and_is_cheap():
    from jobs.stages.model_check import verify_run_models

    t = time.perf_counter()
    checked = verify_run_models(enrich.parse_args([]))
    elapsed = time.perf_counter() - t
    assert {k: Path(v).parent.name for k, v in checked.items()} == {
        "encoder": "store", "head bundle": "heads", "attribute extractor": "attributes", "pair scorer": "scorers",
        "pair cross-encoder": "cross"}
    assert elapsed < 5   # about 0.2 s here
