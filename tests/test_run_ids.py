"""Run ids checked at the boundary: one rule (``jobs.lake.runlog.check_run_id``) for every entry point, a one-line
error and exit status 2, before anything is written."""

from __future__ import annotations

import pytest

from jobs.lake.runlog import InvalidRunId, check_run_id

FAKE = ["--encoder-loader", "models.testing:load_fake_encoder", "--model", "fake:", "--attributes", "none",
        "--matching", "none"]
BAD = ["../../../../tmp/x/evil", "a/b", "..", ".hidden", "", "a..b", "x" * 129, "run id", "caf\u00e9", "-x",
       "a\nb", "a\\b", "a:b"]


@pytest.mark.parametrize("run_id", ["r1", "20261202T045117Z-abc123", "nightly-manual__2026-10-01T00_00_00",
                                    "a.b_c-d", "x" * 128, "base.try2", "7"])
def test_safe_run_ids_pass(run_id):
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", BAD)
def test_unsafe_run_ids_are_refused(run_id):
    with pytest.raises(InvalidRunId, match=r"^invalid run id .*: use 1-128 letters, digits"):
        check_run_id(run_id)


def test_a_run_id_must_be_a_string():
    with pytest.raises(InvalidRunId, match="expected a string"):
        check_run_id(None)


@pytest.mark.parametrize("run_id", ["../../x/evil", "a/b"])
def test_enrich_refuses_an_unsafe_run_id_before_writing_anything(run_id, tmp_path, capsys):
    from jobs import cli

    lake = tmp_path / "lake"
    code = cli.main(["enrich", "--lake", str(lake), "--run-id", run_id, *FAKE])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: invalid run id {run_id!r}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []   # no lake, no lock file, no report outside the lake


def test_publish_refuses_an_unsafe_run_id(tmp_path, capsys):
    from jobs.lake import publish

    code = publish.main(["publish", "--lake", str(tmp_path / "lake"), "--run-id", "../evil"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: invalid run id '../evil'") and err.count("\n") == 1, err
    with pytest.raises(InvalidRunId):
        publish.report_dir(tmp_path, "x/../../y")


def test_report_refuses_an_unsafe_run_id(tmp_path, capsys):
    from jobs.read import report

    outside = tmp_path / "outside.json"   # what the run id points at, outside the lake
    outside.write_text('{"run_id": "x", "status": "succeeded"}')
    with pytest.raises(InvalidRunId):
        report.write_report(tmp_path / "lake", "../../outside")
    assert not (tmp_path / "outside.html").exists()
    assert report.main(["--lake", str(tmp_path / "lake"), "--run-id", "../../outside"]) == 2
    assert capsys.readouterr().err.startswith("error: invalid run id")
