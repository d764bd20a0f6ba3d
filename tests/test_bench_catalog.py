"""The benchmarks' helpers (bench/e2e_catalog.py: the duplicate planting; bench/common.py: the bytecode): no Spark, no
models."""

from __future__ import annotations

import random

import pytest

from bench.e2e_catalog import plant_duplicates, recovered, relist_title


def _rows(n: int) -> list[dict]:
    return [dict(product_id=f"B{i:07d}", title=f"Kestrel Shirts for Men - Red (KE-{1000 + i})", brand="Kestrel",
                 price=10.0 + i, image_uri=None if i % 5 == 0 else f"images/B{i:07d}.jpg", model=f"KE-{1000 + i}")
            for i in range(n)]


def test_plants_the_asked_number_of_pairs_with_unique_ids():
    rows = _rows(50)
    pairs = plant_duplicates(rows, 7, random.Random(3))
    assert len(pairs) == 7
    originals = [o["product_id"] for o, _ in pairs]
    assert len(set(originals)) == 7   # seven distinct products, each relisted once
    ids = [r["product_id"] for r in rows] + [d["product_id"] for _, d in pairs]
    assert len(ids) == len(set(ids))
    assert len(rows) == 50 and all("model" in r for r in rows)   # the input is left as it was


def test_a_relisting_is_the_same_product_written_differently():
    for orig, dup in plant_duplicates(_rows(30), 10, random.Random(5)):
        assert dup["title"] != orig["title"]
        assert orig["model"].lower() in dup["title"].lower()   # never the word dropped (its case may change)
        assert dup["brand"] == orig["brand"] and "model" not in dup
        assert abs(dup["price"] - orig["price"]) <= 0.03 * orig["price"] + 0.01
        assert (dup["image_uri"] is None) == (orig["image_uri"] is None)
        assert dup["image_uri"] != orig["image_uri"] or dup["image_uri"] is None


def test_relist_title_never_returns_the_input():
    rng = random.Random(0)
    for title in ["Kestrel Men Red Shirts KE-1234", "Shirts", "A B"]:
        for _ in range(20):
            out = relist_title(title, rng)
            assert out.strip() and out != title


def test_plant_duplicates_refuses_more_pairs_than_rows():
    with pytest.raises(ValueError, match="n_pairs must lie in"):
        plant_duplicates(_rows(3), 4, random.Random(0))


def test_recovered_counts_pairs_in_one_cluster_and_matched_pairs():
    pairs = [("B1", "D1"), ("B2", "D2"), ("B3", "D3")]
    clusters = {"B1": "B1", "D1": "B1", "B2": "B2", "D2": "D2"}
    assert recovered(pairs, clusters, {("B1", "D1"), ("B2", "D2")}) == {"planted": 3, "same_cluster": 1,
                                                                        "matched": 2}
    assert recovered(pairs, clusters) == {"planted": 3, "same_cluster": 1}


def test_the_cold_runs_find_the_checkouts_bytecode_written():
    """bench.common.compile_project writes a missing module's bytecode (also where PYTHONDONTWRITEBYTECODE is set,
    as some containers do), and a second call finds nothing left to compile."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    import schemas.reasons

    cached = Path(importlib.util.cache_from_source(schemas.reasons.__file__))
    cached.unlink(missing_ok=True)
    root = Path(__file__).resolve().parents[1]
    call = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from bench.common import compile_project; print(compile_project())")
    env = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": ""}
    first = subprocess.run([sys.executable, "-c", call, str(root)], env=env, capture_output=True, text=True, check=True)
    assert int(first.stdout.split()[-1]) >= 1 and cached.is_file()
    again = subprocess.run([sys.executable, "-c", call, str(root)], env=env, capture_output=True, text=True, check=True)
    assert int(again.stdout.split()[-1]) == 0
