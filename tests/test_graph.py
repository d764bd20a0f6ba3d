"""Spark connected components (large-star/small-star) against a plain union-find, and the giant guard."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.stages.graph import connected_components, guarded_components
from models.matching.cluster import ClusterConfig, cluster

pytestmark = pytest.mark.spark


def union_find(edges: list[tuple[str, str]]) -> dict[str, str]:
    """The reference: node -> smallest node of its component (written independently of the code under test)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {n: root(n) for n in parent}


def spark_components(spark, edges: list[tuple[str, str]]) -> dict[str, str]:
    df = spark.createDataFrame(edges, "src string, dst string")
    return {r["node"]: r["component"] for r in connected_components(df).components.collect()}


def _name(i: int) -> str:
    return f"n{i:04d}"


graphs = st.integers(min_value=2, max_value=60).flatmap(lambda n: st.lists(
    st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=2 * n))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graphs)
def test_components_equal_union_find_on_random_graphs(spark, pairs):
    edges = [(_name(a), _name(b)) for a, b in pairs]
    expected = {n: c for n, c in union_find(edges).items()
                if any(n in e for e in edges if e[0] != e[1])}  # nodes with only a self-loop have no edge
    assert spark_components(spark, edges) == expected


@pytest.mark.parametrize("n", [2, 17, 150])
def test_long_chains_in_shuffled_order(spark, n):
    order = list(range(n))
    random.Random(n).shuffle(order)  # ids along the chain are not sorted: the worst case for label passing
    edges = [(_name(order[i]), _name(order[i + 1])) for i in range(n - 1)]
    assert spark_components(spark, edges) == union_find(edges)
    assert set(spark_components(spark, edges).values()) == {_name(0)}


def test_many_components_stars_and_cycles(spark):
    rng = random.Random(5)
    edges = []
    for c in range(30):
        members = [_name(c * 40 + i) for i in range(rng.randint(2, 40))]
        shape = c % 3
        if shape == 0:    # star around a non-minimal centre
            edges += [(members[-1], m) for m in members[:-1]]
        elif shape == 1:  # cycle
            edges += [(members[i], members[(i + 1) % len(members)]) for i in range(len(members))]
        else:             # random tree
            edges += [(members[i], members[rng.randrange(i)]) for i in range(1, len(members))]
    rng.shuffle(edges)
    assert spark_components(spark, edges) == union_find(edges)


def test_guard_matches_the_in_memory_clusters(spark):
    rng = random.Random(11)
    edges = []
    for i in range(39):  # a chain of 40 with strong and weak links, plus small groups
        edges.append((_name(i), _name(i + 1), rng.choice([0.95, 0.98, 0.995, 0.6])))
    edges += [(_name(100), _name(101), 0.7), (_name(102), _name(101), 0.8)]
    # guarded_components is the guard alone: compare it with the in-memory rules without the coherence steps
    cfg = ClusterConfig(max_size=4, strict_thresholds=(0.9, 0.97), min_score=0.0, margin=None, linkage=None)
    df = spark.createDataFrame(edges, "src string, dst string, score double")
    comp, report = guarded_components(df, cfg.max_size, cfg.strict_thresholds)
    got = {r["node"]: (r["component"], r["guard"]) for r in comp.collect()}
    nodes = sorted({e[0] for e in edges} | {e[1] for e in edges})
    ref = cluster(nodes, [e[0] for e in edges], [e[1] for e in edges], [e[2] for e in edges], cfg)
    assert got == {n: (ref.cluster_id[n], ref.guard[n]) for n in nodes}
    assert report["oversized_components"] == 1
    assert report["guarded_products"] == 40
    assert report["dissolved_products"] == sum(g == "dissolved" for g in ref.guard.values())
    assert got[_name(101)] == (_name(100), None)


def test_driver_clusters_equal_the_spark_clusters(spark, seed=3):
    """The match stage clusters a small graph on the driver (jobs.stages.matching._driver_components): the same
    rows and report as the Spark path (coherence, the guard with an oversized component, the linkage split)."""
    from jobs.stages.graph import coherent_edges, split_components
    from jobs.stages.matching import _driver_components

    rng = random.Random(seed)
    edges = [(_name(i), _name(i + 1), rng.choice([0.95, 0.98, 0.995, 0.6, 0.3])) for i in range(30)]   # a giant
    for g in range(12):   # small groups: pairs, triangles, chains, with weak and strong links
        members = [_name(200 + 10 * g + k) for k in range(rng.randint(2, 5))]
        edges += [(members[i], members[j], round(rng.uniform(0.2, 1.0), 3))
                  for i in range(len(members)) for j in range(i + 1, len(members)) if rng.random() < 0.7]
    cfg = ClusterConfig(max_size=6, strict_thresholds=(0.9, 0.97))   # default coherence margin and linkage
    df = spark.createDataFrame(edges, "src string, dst string, score double")
    linked = coherent_edges(df, cfg.min_score, cfg.margin)
    comp, report = guarded_components(linked, cfg.max_size, cfg.strict_thresholds)
    comp = split_components(comp, linked, cfg.linkage, cfg.complete_groups)
    want = sorted(tuple(r) for r in comp.select("node", "component", "guard").collect())

    import pandas as pd

    got_comp, got_report = _driver_components(spark, pd.DataFrame(edges, columns=["src", "dst", "score"]), cfg)
    got = sorted(tuple(r) for r in got_comp.select("node", "component", "guard").collect())
    assert got == want
    assert {k: got_report[k] for k in ("oversized_components", "guarded_products", "dissolved_products")} == \
        {k: report[k] for k in ("oversized_components", "guarded_products", "dissolved_products")}
    assert report["oversized_components"] >= 1                 # the guard was exercised
    assert len({c for _, c, _ in want}) > 3                     # and the graph had several clusters
