"""The published pointer on real Delta tables written by the ``deltalake`` package (no Spark): publishing needs
a passing verdict, never moves backwards, discards only the failed run's commits, and rolls back."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from jobs.lake import publish as pub
from jobs.lake.lakehouse import app_id_for


def commit(lake, table, run_id, ids):
    """A commit tagged the way the table layer tags it (the app id names the table and the run)."""
    write_deltalake(str(lake / table), pd.DataFrame({"product_id": ids, "run_id": [run_id] * len(ids)}),
                    mode="overwrite", commit_properties=CommitProperties(
                        custom_metadata={"catalog_enrich.app_id": app_id_for(table, run_id)}))
    return DeltaTable(str(lake / table)).version()


def verdict(lake, run_id, success, **versions):
    path = pub.report_dir(lake, run_id) / "gate-output.json"
    tables = {t: {"publish": True, "status": "passed" if success else "failed", "version": v}
              for t, v in versions.items()}
    tables["enrichment_runs"] = {"publish": False, "status": "passed", "version": 3}
    pub.write_json(path, {"suite": "output", "run_id": run_id, "success": success, "tables": tables,
                          "data_docs": str(path.parent / "data_docs" / "output" / "index.html")})


def ids_at(lake, table, version=None):
    return sorted(DeltaTable(str(lake / table), version=version).to_pandas()["product_id"])


def test_publish_needs_a_passing_verdict_and_is_idempotent(tmp_path):
    lake = tmp_path / "lake"
    v1 = commit(lake, "product_embeddings", "r1", ["a", "b"])
    with pytest.raises(pub.PublishError, match="run r1 has no output verdict"):
        pub.publish(lake, "r1")
    verdict(lake, "r1", True, product_embeddings=v1)
    first = pub.publish(lake, "r1")
    assert first["tables"] == {"product_embeddings": v1} and first["previous_run_id"] is None
    assert pub.publish(lake, "r1") == first
    assert json.loads((lake / pub.POINTER).read_text()) == first
    assert ids_at(lake, "product_embeddings", pub.published_version(lake, "product_embeddings")) == ["a", "b"]
    with pytest.raises(pub.PublishError, match="product_clusters has no published version"):
        pub.open_published(lake, "product_clusters")


def test_a_stale_or_superseded_run_never_moves_the_pointer_back(tmp_path):
    lake = tmp_path / "lake"
    v1 = commit(lake, "product_embeddings", "r1", ["a"])
    verdict(lake, "r1", True, product_embeddings=v1)
    v2 = commit(lake, "product_embeddings", "r2", ["a", "b"])
    verdict(lake, "r2", True, product_embeddings=v2)
    pub.publish(lake, "r2")
    with pytest.raises(pub.PublishError, match="audited older versions than the published ones"):
        pub.publish(lake, "r1")
    assert pub.read_pointer(lake)["run_id"] == "r2"
    v3 = commit(lake, "product_embeddings", "r3", ["a", "b", "c"])
    verdict(lake, "r3", True, product_embeddings=v3)
    pub.publish(lake, "r3")
    assert pub.publish(lake, "r2")["run_id"] == "r2"          # superseded: reported, pointer stays
    assert pub.read_pointer(lake)["run_id"] == "r3"


def test_discard_without_publication_undoes_only_the_runs_commits(tmp_path):
    lake = tmp_path / "lake"
    commit(lake, "product_embeddings", "r0", ["old"])                 # written before gates existed
    commit(lake, "product_embeddings", "r1", ["x"])
    v = commit(lake, "product_embeddings", "r1", ["x", "y"])          # a run may commit a table twice
    verdict(lake, "r1", False, product_embeddings=v)
    with pytest.raises(pub.GateBlocked, match=r"run r1 blocked by the output gate \(failed: product_embeddings\)"):
        pub.finalize(lake, "r1")
    assert ids_at(lake, "product_embeddings") == ["old"]
    assert pub.read_pointer(lake) is None
    record = pub.discard(lake, "r1")                                  # idempotent: the record is kept
    assert record["restored"] == {"product_embeddings": {"from": v, "to": v - 2}}
    assert DeltaTable(str(lake / "product_embeddings")).version() == v + 1


def test_discard_refuses_to_restore_over_another_writer(tmp_path):
    lake = tmp_path / "lake"
    v = commit(lake, "product_embeddings", "r1", ["x"])
    verdict(lake, "r1", False, product_embeddings=v)
    commit(lake, "product_embeddings", "other", ["z"])
    with pytest.raises(pub.PublishError, match="moved from the audited version 0 to 1: another writer"):
        pub.discard(lake, "r1")


def test_rollback_publishes_an_earlier_run_and_restores_its_data(tmp_path):
    lake = tmp_path / "lake"
    v1 = commit(lake, "product_embeddings", "r1", ["a"])
    verdict(lake, "r1", True, product_embeddings=v1)
    pub.publish(lake, "r1")
    v2 = commit(lake, "product_embeddings", "r2", ["a", "bad"])
    verdict(lake, "r2", True, product_embeddings=v2)
    pub.publish(lake, "r2")
    pointer = pub.rollback(lake, "r1")
    assert pointer["tables"] == {"product_embeddings": v1} and pointer["rolled_back_from"] == "r2"
    assert ids_at(lake, "product_embeddings") == ["a"]                   # the latest state too
    with pytest.raises(pub.PublishError, match="run r9 was never published"):
        pub.rollback(lake, "r9")


def test_cli_reports_blocked_runs_with_exit_code_3(tmp_path, capsys):
    lake = tmp_path / "lake"
    v = commit(lake, "product_embeddings", "r1", ["x"])
    verdict(lake, "r1", False, product_embeddings=v)
    assert pub.main(["finalize", "--lake", str(lake), "--run-id", "r1"]) == 3
    assert "blocked: run r1" in capsys.readouterr().err
    assert pub.main(["status", "--lake", str(lake)]) == 0
    assert "nothing published yet" in capsys.readouterr().out
    # The run created the table with its first commit: there is no earlier version, so it is emptied.
    assert ids_at(lake, "product_embeddings") == [] and ids_at(lake, "product_embeddings", v) == ["x"]
