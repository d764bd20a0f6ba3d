"""MatchStats.as_dict: the run summary's flat dict of the matching stage (no Spark needed)."""

from __future__ import annotations

from jobs.stages.matching import ClusterStats, MatchStats, PairStats


def _stats(pairs: PairStats, clustering: ClusterStats) -> MatchStats:
    return MatchStats(mode="incremental", products=5, queries=0, scorer_version="s1", threshold=0.7,
                      prepare_seconds=0.1, pairs=pairs, clustering=clustering, clustering_seconds=0.2, seconds=0.4)


def test_a_quiet_run_lists_no_blocking_or_guard_numbers():
    got = _stats(PairStats(), ClusterStats(cc_rounds=0, cluster_rows_written=0, clusters=2, clustered_products=4,
                                           largest_cluster=2)).as_dict()
    assert got == {"mode": "incremental", "products": 5, "queries": 0, "scorer_version": "s1", "threshold": 0.7,
                   "prepare_seconds": 0.1, "candidates": 0, "matches_written": 0, "matches_removed": 0,
                   "cc_rounds": 0, "cluster_rows_written": 0, "clusters": 2, "clustered_products": 4,
                   "largest_cluster": 2, "clustering_seconds": 0.2, "seconds": 0.4}


def test_a_searching_run_lists_every_number_in_the_summary_order():
    pairs = PairStats(candidates=9, matches_written=3, matches_removed=1, cells=2, centroid_seconds=0.01,
                      largest_cell=4, searched_cells=2, blocking_seconds=0.5, scoring_seconds=0.3,
                      cross_pairs=6)
    clustering = ClusterStats(cc_rounds=3, cluster_rows_written=5, clusters=1, clustered_products=3,
                              largest_cluster=3, oversized_components=0, guarded_products=0, dissolved_products=0)
    got = _stats(pairs, clustering).as_dict()
    assert list(got) == ["mode", "products", "queries", "scorer_version", "threshold", "prepare_seconds", "cells",
                         "centroid_seconds", "candidates", "largest_cell", "searched_cells", "blocking_seconds",
                         "matches_written", "scoring_seconds", "cross_pairs", "matches_removed", "cc_rounds",
                         "oversized_components", "guarded_products", "dissolved_products", "cluster_rows_written",
                         "clusters", "clustered_products", "largest_cluster", "clustering_seconds", "seconds"]
    assert (got["candidates"], got["largest_cell"], got["cc_rounds"], got["dissolved_products"]) == (9, 4, 3, 0)
    assert got["cross_pairs"] == 6
