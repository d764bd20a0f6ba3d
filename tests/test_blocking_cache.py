"""The lake's blocking cache: what a full match run fits, an incremental run of the same model and cells reads."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from jobs.lake.blocking_cache import BlockingCache
from jobs.stages.matching import _Blocks
from models.matching.blocking import BlockingConfig

CFG = BlockingConfig(block_size=10)


def _fail():
    raise AssertionError("fitted although the cache holds it")


def test_a_full_run_fits_and_keeps_its_blocks_and_an_incremental_run_reads_them(tmp_path):
    from models.matching.lexical import LexicalSpace

    lake = SimpleNamespace(root=tmp_path)
    rng = np.random.default_rng(0)
    cents, lex = rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    space = LexicalSpace.fit(["red lamp OR-1259", "blue kettle 2 l", "red lamp"], seed=CFG.seed)

    full = _Blocks(lake, "enc-v1", 25, True, CFG)
    assert np.array_equal(full.get("centroids", lambda: cents), cents)
    assert full.lexical_space(lambda: space) is space
    assert np.array_equal(full.get("lexical_centroids", lambda: lex), lex)
    full.save()

    again = _Blocks(lake, "enc-v1", 28, False, CFG)          # 28 products: still 3 cells, the same key
    assert np.array_equal(again.get("centroids", _fail), cents)
    assert np.array_equal(again.get("lexical_centroids", _fail), lex)
    cached = again.lexical_space(_fail)
    assert np.array_equal(cached.idf, space.idf) and cached.seed == space.seed
    titles = ["red lamp OR-1259 new season", "kettle"]
    assert np.array_equal(cached.embed(titles), space.embed(titles))   # the same vectors as the fitted space
    again.save()                                            # nothing fitted: nothing rewritten
    assert len(list((tmp_path / "_blocking").glob("*.npz"))) == 1

    # a full run fits again; another model or number of cells is another key
    assert np.array_equal(_Blocks(lake, "enc-v1", 28, True, CFG).get("centroids", lambda: lex), lex)
    assert _Blocks(lake, "enc-v2", 28, False, CFG).arrays == {}
    assert _Blocks(lake, "enc-v1", 31, False, CFG).arrays == {}


@pytest.mark.parametrize("content", [b"", b"not a numpy archive", None])
def test_a_damaged_cache_means_a_fresh_fit_not_a_failed_run(tmp_path, content, caplog):
    cache = BlockingCache(tmp_path, "enc-v1", CFG, 3)
    cache.root.mkdir()
    if content is None:   # arrays of the wrong kind
        np.savez(cache.path, centroids=np.array(["a", "b"]))
    else:
        cache.path.write_bytes(content)
    assert cache.read() == {}
    assert "fitting the blocks again" in caplog.text
    blocks = _Blocks(SimpleNamespace(root=tmp_path), "enc-v1", 25, False, CFG)
    fitted = np.ones((3, 2), np.float32)
    assert np.array_equal(blocks.get("centroids", lambda: fitted), fitted)
    blocks.save()
    assert np.array_equal(cache.read()["centroids"], fitted)


def test_only_the_newest_keys_are_kept(tmp_path):
    import os

    for i in range(7):
        cache = BlockingCache(tmp_path, f"enc-v{i}", CFG, 3)
        cache.write({"centroids": np.full((3, 2), i, np.float32)})
        os.utime(cache.path, (1_000_000 + i, 1_000_000 + i))
    kept = sorted(p.name for p in (tmp_path / "_blocking").glob("*.npz"))
    assert kept == sorted(BlockingCache(tmp_path, f"enc-v{i}", CFG, 3).path.name for i in range(3, 7))
