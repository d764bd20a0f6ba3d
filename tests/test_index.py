"""The similarity index and the search commands on small Delta tables written with the deltalake package
(no Spark): incremental updates against a brute-force search, staleness, and the errors users meet."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from jobs import cli
from jobs.read.index import ProductIndexError, load_index, update_index

DIM = 16
SCHEMA = pa.schema([("product_id", pa.string()), ("model_version", pa.string()),
                    ("embedding", pa.list_(pa.float32())), ("content_hash", pa.string())])


def _rows(ids, model="m1", seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return pa.Table.from_pydict({"product_id": list(ids), "model_version": [model] * len(ids),
                                 "embedding": [list(map(float, r)) for r in v],
                                 "content_hash": [f"h{seed}-{i}" for i in ids]}, schema=SCHEMA)


def _write(lake, table, mode="append"):
    write_deltalake(str(lake / "product_embeddings"), table, mode=mode)


def _brute(lake, query, k, model="m1"):
    df = DeltaTable(str(lake / "product_embeddings")).to_pandas()
    df = df[df["model_version"] == model]
    scores = np.stack(df["embedding"].to_numpy()) @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return list(df["product_id"].to_numpy()[order]), scores[order]


def _merge(lake, table):
    (DeltaTable(str(lake / "product_embeddings"))
     .merge(table, predicate="t.product_id = s.product_id", source_alias="s", target_alias="t")
     .when_matched_update_all().when_not_matched_insert_all().execute())


def test_incremental_update_adds_replaces_and_removes(tmp_path):
    lake = tmp_path / "lake"
    _write(lake, _rows([f"p{i:02d}" for i in range(20)]))
    first = update_index(lake)
    assert (first.mode, first.count, first.added, first.table_version) == ("full", 20, 20, 0)
    ids_before = load_index(lake, "m1").ids.set_index("product_id")["faiss_id"]

    changed = _rows(["p03", "p20"], seed=7)        # p03 gets a new vector and hash, p20 is new
    _merge(lake, changed)
    DeltaTable(str(lake / "product_embeddings")).delete("product_id = 'p05'")
    stats = update_index(lake)
    assert (stats.mode, stats.added, stats.replaced, stats.removed, stats.count) == ("incremental", 1, 1, 1, 20)

    idx = load_index(lake, "m1")
    assert idx.table_version == DeltaTable(str(lake / "product_embeddings")).version()
    assert idx.faiss_id("p05") is None
    assert np.allclose(idx.vector("p03"), np.asarray(changed.column("embedding")[0].as_py()), atol=1e-6)
    # Unchanged products keep their faiss id; the index answers like a brute-force scan of the table.
    kept = idx.ids.set_index("product_id")["faiss_id"]
    assert (kept[ids_before.index.drop("p05")] == ids_before.drop("p05")).all()
    for q in ("p03", "p20", "p11"):
        want_ids, want_scores = _brute(lake, idx.vector(q), 5)
        got = idx.search(idx.vector(q), 5)[0]
        assert [g[0] for g in got] == want_ids
        assert np.allclose([g[1] for g in got], want_scores, atol=1e-5)


def test_up_to_date_index_is_not_rewritten_and_full_rebuild_agrees(tmp_path):
    lake = tmp_path / "lake"
    _write(lake, _rows(["a", "b", "c"]))
    update_index(lake)
    _merge(lake, _rows(["b"], seed=3))
    update_index(lake)
    current = (lake / "_index" / "m1" / "CURRENT").read_text()
    assert update_index(lake).mode == "up-to-date"
    assert (lake / "_index" / "m1" / "CURRENT").read_text() == current
    incremental = load_index(lake, "m1")
    assert update_index(lake, full=True).mode == "full"
    rebuilt = load_index(lake, "m1")
    for pid in "abc":
        assert np.allclose(incremental.vector(pid), rebuilt.vector(pid))
    assert len([p for p in (lake / "_index" / "m1").iterdir() if p.is_dir()]) == 2   # live + previous only


def test_model_versions_are_indexed_apart(tmp_path):
    lake = tmp_path / "lake"
    _write(lake, _rows(["a", "b", "c"], model="big"))
    _write(lake, _rows(["d", "e"], model="small:v/2", seed=1))
    assert update_index(lake).model_version == "big"                     # the version most products have
    small = update_index(lake, "small:v/2")
    assert small.count == 2 and (lake / "_index" / "small_v_2").is_dir()
    assert set(load_index(lake, "small:v/2").ids["product_id"]) == {"d", "e"}
    with pytest.raises(ProductIndexError, match=r"no embeddings of model version 'nope'.*big \(3 products\)"):
        update_index(lake, "nope")


def test_missing_and_empty_tables_are_clear_errors(tmp_path, capsys):
    assert cli.main(["similar", "a", "--lake", str(tmp_path / "none")]) == 2
    assert "no product_embeddings table in" in capsys.readouterr().err
    lake = tmp_path / "lake"
    _write(lake, SCHEMA.empty_table())
    assert cli.main(["similar", "a", "--lake", str(lake)]) == 2
    assert "is empty: no product was enriched yet" in capsys.readouterr().err


def test_similar_updates_a_stale_index_and_names_unknown_products(tmp_path, capsys):
    lake = tmp_path / "lake"
    _write(lake, _rows([f"p{i}" for i in range(8)]))
    assert cli.main(["index", "--lake", str(lake)]) == 0
    assert "8 products at product_embeddings v0 (full" in capsys.readouterr().out
    _merge(lake, _rows(["p1"], seed=9))            # the table moves on after the index was written

    assert cli.main(["similar", "p1", "--lake", str(lake), "--k", "3", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert "the index reflects product_embeddings v0, the table is at v1: updating it" in err
    got = [json.loads(line) for line in out.splitlines()]
    want_ids, want_scores = _brute(lake, np.asarray(_rows(["p1"], seed=9).column("embedding")[0].as_py()), 4)
    assert [g["product_id"] for g in got] == want_ids[1:]          # itself first in the scan, left out here
    assert np.allclose([g["score"] for g in got], want_scores[1:], atol=1e-4)
    assert [g["rank"] for g in got] == [1, 2, 3]

    assert cli.main(["similar", "nope", "--lake", str(lake)]) == 2
    assert "product 'nope' is not in the index of m1 (8 products)" in capsys.readouterr().err


def test_search_needs_the_model_of_the_table(tmp_path, capsys):
    lake = tmp_path / "lake"
    _write(lake, _rows(["a", "b"], model="m1"))
    assert cli.main(["search", "red shoes", "--lake", str(lake)]) == 2
    assert "model version 'm1', which names no model reference: pass --model REF" in capsys.readouterr().err
    fake = ["--model", "fake:", "--encoder-loader", "models.testing:load_fake_encoder"]
    assert cli.main(["search", "red shoes", "--lake", str(lake), *fake]) == 2
    assert "--model fake: is model version 'fake-1', but the index holds 'm1'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["search", "--lake", str(lake)])
    assert "give a query text, --image PATH, or both" in capsys.readouterr().err


def test_the_job_stage_retires_indexes_of_versions_the_table_left(tmp_path):
    from jobs.read.index import refresh_index

    lake = tmp_path / "lake"
    _write(lake, _rows(["a", "b"], model="old"))
    assert refresh_index(lake, "old").startswith("index: 2 products at product_embeddings v0 (full")
    _write(lake, _rows(["a", "b"], model="new", seed=2), mode="overwrite")   # every product re-embedded
    assert "(full: +2, ~0, -0)" in refresh_index(lake, "new")
    assert sorted(p.name for p in (lake / "_index").iterdir()) == ["new"]
    note = refresh_index(lake, "gone")                       # a failure is a note, not an exception
    assert note.startswith("index: not updated (no embeddings of model version 'gone'")
