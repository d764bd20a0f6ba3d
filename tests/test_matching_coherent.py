"""Clustering that does not chain (mutual best match within a margin, average-linkage split) in memory and in
Spark, and the whole-catalog scoring of jobs.catalog_eval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs.catalog_eval import CatalogSet, baseline_texts, part_of, score_clusters, tfidf_mutual_nn
from models.matching.cluster import ClusterConfig, average_linkage, cluster, coherent_edges

# W1's true duplicate is A1; A2 is a near-identical neighbour (one model digit apart) whose own duplicate is W2.
NEIGHBOURS = (["A1", "A2", "A2", "A1"], ["W1", "W1", "W2", "A2"], [0.90, 0.85, 0.95, 0.60])


def test_mutual_best_within_a_margin_keeps_the_duplicates_and_drops_the_neighbour():
    a, b, s = NEIGHBOURS
    assert coherent_edges(a, b, s).tolist() == [True, True, True, True]
    assert coherent_edges(a, b, s, min_score=0.7).tolist() == [True, True, True, False]
    # W1-A2 (0.85) is 0.10 below A2's best (0.95): out with a margin of 0.03, in with 0.12 (W1's best is 0.90).
    assert coherent_edges(a, b, s, margin=0.03).tolist() == [True, False, True, False]
    assert coherent_edges(a, b, s, margin=0.12).tolist() == [True, True, True, False]
    plain = ClusterConfig(min_score=0.0, margin=None, linkage=None)      # every match links: the old rule
    assert set(cluster(["A1", "A2", "W1", "W2"], a, b, s, plain).cluster_id.values()) == {"A1"}
    got = cluster(["A1", "A2", "W1", "W2"], a, b, s, ClusterConfig(margin=0.03, linkage=None))
    assert got.cluster_id == {"A1": "A1", "W1": "A1", "A2": "A2", "W2": "A2"}
    # The shipped defaults (margin 0.4, average linkage 0.3) do not chain them either.
    assert cluster(["A1", "A2", "W1", "W2"], a, b, s).cluster_id == got.cluster_id


def test_average_linkage_splits_a_chain_and_keeps_a_clique():
    # a-b-c-d: a chain whose ends never match; mean cross score {a,b}-{c} = (0 + 0.9) / 2 < 0.6.
    chain = average_linkage(["a", "b", "c", "d"], ["a", "b", "c"], ["b", "c", "d"], [0.9, 0.8, 0.9], 0.6)
    assert chain == {"a": "a", "b": "a", "c": "c", "d": "c"}
    clique = average_linkage(["x", "y", "z"], ["x", "x", "y"], ["y", "z", "z"], [0.9, 0.7, 0.8], 0.6)
    assert clique == {"x": "x", "y": "x", "z": "x"}
    assert average_linkage(["x", "y"], ["x"], ["y"], [0.5], 0.6) == {"x": "x", "y": "y"}
    cfg = ClusterConfig(linkage=0.6)
    assert cluster(["a", "b", "c", "d", "e"], ["a", "b", "c"], ["b", "c", "d"], [0.9, 0.8, 0.9], cfg).cluster_id == {
        "a": "a", "b": "a", "c": "c", "d": "c", "e": "e"}


def test_complete_groups_pair_greedily_and_let_a_group_grow_only_by_listings_matching_every_member():
    # y-z is the best pair; x's best match y is taken and x does not match z, so x pairs with its next match w
    # (a one-to-one matching) instead of joining {y, z} on the strength of x-y alone.
    a, b, s = ["y", "x", "x"], ["z", "y", "w"], [0.95, 0.9, 0.42]
    one = average_linkage(["w", "x", "y", "z"], a, b, s, 0.4, complete_groups=True)
    assert one == {"y": "y", "z": "y", "x": "w", "w": "w"}
    # Without the rule x joins {y, z} at (0.9 + 0) / 2 = 0.45 > 0.42 and w is left alone.
    assert average_linkage(["w", "x", "y", "z"], a, b, s, 0.4) == {"y": "x", "z": "x", "x": "x", "w": "w"}
    # Three listings that all match each other stay one, however unevenly they score (the sample catalog has
    # a planted group scoring 0.97, 0.64 and 0.58).
    trio = average_linkage(["p", "q", "r"], ["p", "p", "q"], ["q", "r", "r"], [0.97, 0.64, 0.58], 0.4,
                           complete_groups=True)
    assert set(trio.values()) == {"p"}
    assert cluster(["w", "x", "y", "z"], a, b, s, ClusterConfig(margin=None, linkage=0.4)).cluster_id == one
    assert ClusterConfig().complete_groups


def test_cluster_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="margin"):
        ClusterConfig(margin=-0.1)
    with pytest.raises(ValueError, match="linkage"):
        ClusterConfig(linkage=0.0)
    with pytest.raises(ValueError, match="min_score"):
        ClusterConfig(min_score=1.5)


def _random_graph(seed: int, n: int = 60, m: int = 150):
    rng = np.random.default_rng(seed)
    nodes = [f"p{i:03d}" for i in range(n)]
    pairs = {tuple(sorted(rng.choice(n, 2, replace=False))) for _ in range(m)}
    a = [nodes[i] for i, _ in pairs]
    b = [nodes[j] for _, j in pairs]
    return nodes, a, b, np.round(rng.uniform(0.3, 1.0, len(a)), 2)   # rounded: ties, as calibrated scores have


@pytest.mark.spark
@pytest.mark.parametrize("seed,complete", [(0, False), (1, False), (2, True), (3, True)])
def test_spark_clustering_equals_the_in_memory_rules(spark, seed, complete):

    from jobs.stages.graph import coherent_edges as spark_coherent
    from jobs.stages.graph import guarded_components, split_components

    nodes, a, b, s = _random_graph(seed)
    cfg = ClusterConfig(max_size=8, strict_thresholds=(0.9,), min_score=0.4, margin=0.15, linkage=0.5,
                        complete_groups=complete)
    want = cluster(nodes, a, b, s, cfg)
    edges = spark.createDataFrame(pd.DataFrame({"src": a, "dst": b, "score": s}))
    kept = spark_coherent(edges, cfg.min_score, cfg.margin)
    assert sorted(kept.select("src", "dst").toPandas().itertuples(index=False, name=None)) == sorted(
        (x, y) for x, y, k in zip(a, b, coherent_edges(a, b, s, cfg.min_score, cfg.margin), strict=True) if k)
    comp, _ = guarded_components(kept, cfg.max_size, cfg.strict_thresholds)
    got = split_components(comp, kept, cfg.linkage, cfg.complete_groups).toPandas()
    got_ids = dict(zip(got["node"], got["component"], strict=True))
    assert got_ids == {n: c for n, c in want.cluster_id.items() if n in got_ids}
    assert all(want.cluster_id[n] == n for n in set(nodes) - set(got_ids))   # nodes without links: singletons
    assert len(set(got_ids.values())) > 1


def test_whole_catalog_scores_count_pairs_across_parts_against_both():
    truth = {f"x{i}": f"g{i // 2}" for i in range(40)}          # 20 true pairs
    parts = {g: part_of(g) for g in set(truth.values())}
    assert set(parts.values()) == {"dev", "heldout"} and part_of("g3") == part_of("g3")
    dev = sorted(g for g, p in parts.items() if p == "dev")
    held = sorted(g for g, p in parts.items() if p == "heldout")
    members = {g: sorted(k for k, v in truth.items() if v == g) for g in parts}
    pred = {m: g for g in dev for m in members[g]}              # every dev pair found
    d0, h0 = members[dev[0]][0], members[held[0]][0]
    pred.update({d0: "mixed", h0: "mixed"})                     # one dev item joined with a held-out one
    r_dev = score_clusters(pred, truth, "dev")
    assert r_dev["true_pairs"] == len(dev) and r_dev["predicted_pairs"] == len(dev)   # dev[0] lost, the mix added
    assert r_dev["precision"] == pytest.approx((len(dev) - 1) / len(dev))
    assert r_dev["recall"] == pytest.approx((len(dev) - 1) / len(dev))
    assert r_dev["cluster_precision"] == pytest.approx((len(dev) - 1) / len(dev)) and r_dev["largest_cluster"] == 2
    r_held = score_clusters(pred, truth, "heldout")
    assert r_held["predicted_pairs"] == 1 and r_held["precision"] == 0.0 and r_held["recall"] == 0.0
    assert score_clusters({}, truth)["predicted_pairs"] == 0


def test_tfidf_baseline_pairs_reworded_listings():
    titles = ["sony bravia kdl-40 tv", "Sony KDL40 Bravia television", "canon eos 5d camera body",
              "Canon EOS-5D body camera", "apple ipod nano 8gb", "ipod nano 8 gb apple", "lonely stapler",
              "kitchen kettle steel", "steel kettle kitchen 2l", "usb cable", "hdmi cable 2m", "mouse pad"]
    ids = [f"r{i:02d}" for i in range(len(titles))]
    groups = ["s", "s", "c", "c", "i", "i", "x", "k", "k", "u", "h", "m"]
    cs = CatalogSet("toy", pd.DataFrame({"product_id": ids, "title": titles, "brand": None}),
                    dict(zip(ids, groups, strict=True)))
    r = tfidf_mutual_nn(cs)
    both = [r[p] for p in ("dev", "heldout")]
    assert sum(x["true_pairs"] for x in both) == 4
    assert sum(x["predicted_pairs"] for x in both) >= 3 and max(x["largest_cluster"] for x in both) == 2


def test_tfidf_baseline_reads_the_part_numbers_the_job_gets():
    """One title twice, two products: with the part numbers the baseline sees two texts, and a missing number adds
    nothing to a listing's text."""
    cat = pd.DataFrame({"product_id": ["a1", "a2", "b1"], "title": ["Energizer lithium batteries"] * 2 + ["Kettle"],
                        "brand": ["Energizer", "Energizer", None]})
    assert baseline_texts(cat) == ["Energizer Energizer lithium batteries"] * 2 + ["Kettle"]
    numbered = baseline_texts(cat.assign(mpn=["EA91BP-4", "EA92BP-4", None]))
    assert numbered == ["Energizer Energizer lithium batteries EA91BP-4", "Energizer Energizer lithium batteries "
                        "EA92BP-4", "Kettle"]


@pytest.mark.spark
def test_the_job_clusters_stored_matches_without_chaining(spark, lake):
    """The match stage's clustering step over a real ``product_matches`` Delta table: with the shipped settings
    W1/A1 and A2/W2 stay apart (plain components chain all four), the ids are the smallest members."""
    import datetime as dt

    from deltalake import DeltaTable

    from jobs.stages.matching import MatchConfig, _write_clusters
    from schemas.tables import PRODUCT_CLUSTERS, PRODUCT_MATCHES

    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    a, b, s = NEIGHBOURS
    rows = [(min(x, y), max(x, y), sc, None, None, None, None, None, None, None, "ann", "v", "sc", "m1", now)
            for x, y, sc in zip(a, b, s, strict=True)]
    lake.ensure(PRODUCT_MATCHES)
    lake.ensure(PRODUCT_CLUSTERS)
    lake.upsert(PRODUCT_MATCHES, spark.createDataFrame(rows, PRODUCT_MATCHES.schema), "m1")
    ids = ["A1", "A2", "W1", "W2", "Z9"]
    universe = spark.createDataFrame([(p, f"v:{p}") for p in ids], "product_id string, matched_hash string")

    def clusters(cfg: MatchConfig, run_id: str) -> dict[str, tuple[str, int]]:
        _write_clusters(spark, lake, universe, run_id, now, cfg)
        t = DeltaTable(str(lake.path(PRODUCT_CLUSTERS))).to_pandas()
        return {r.product_id: (r.cluster_id, r.cluster_size) for r in t.itertuples()}

    got = clusters(MatchConfig(), "c1")
    assert got == {"A1": ("A1", 2), "W1": ("A1", 2), "A2": ("A2", 2), "W2": ("A2", 2), "Z9": ("Z9", 1)}
    plain = MatchConfig(clusters=ClusterConfig(min_score=0.0, margin=None, linkage=None))
    assert {c for c, _ in clusters(plain, "c2").values()} == {"A1", "Z9"}


def test_catalogs_are_built_without_the_shop_or_the_truth(tmp_path):
    from jobs.catalog_eval import load_catalog

    wa = tmp_path / "catalog_dedup" / "walmart_amazon"
    wa.mkdir(parents=True)
    pd.DataFrame({"record_id": ["Walmart:0", "Amazon:7"], "source": ["Walmart", "Amazon"],
                  "source_local_id": ["0", "7"], "title": ["Draper remote", "Draper IR remote"],
                  "modelno": ["121066", ""], "price": ["58.45", ""], "shipweight": ["", ""],
                  "brand": ["Draper", ""], "dimensions": ["", ""], "gt_entity_id": ["g1", "g1"]}
                 ).to_parquet(wa / "records.parquet")
    cs = load_catalog(tmp_path, "walmart_amazon")
    assert list(cs.catalog.columns) == ["product_id", "title", "brand", "price"]
    assert cs.catalog["product_id"].tolist() == ["Walmart:0", "Amazon:7"]
    assert cs.catalog["brand"].tolist() == ["Draper", None]
    assert cs.catalog["price"].iloc[0] == 58.45 and np.isnan(cs.catalog["price"].iloc[1])
    assert cs.truth == {"Walmart:0": "g1", "Amazon:7": "g1"}
    with_numbers = load_catalog(tmp_path, "walmart_amazon", mpn=True)
    assert with_numbers.catalog["mpn"].tolist() == ["121066", None]
    assert with_numbers.catalog.drop(columns="mpn").equals(cs.catalog)
    (tmp_path / "wdc_products").mkdir()
    pd.DataFrame({"offer_id": [11, 12, 13], "cluster_id": [5, 5, 5], "brand": [None, "Seagate", "Seagate"],
                  "title": ["HDD 4TB ST4000NE001", "Seagate IronWolf 4TB", "IronWolf 4TB NAS"],
                  "description": [None, None, None], "price": ["$154.10", None, None],
                  "priceCurrency": ["USD", None, None],
                  "first_seen_in": ["wdcproducts80cc20rnd000un_valid_small", "wdcproducts80cc20rnd000un_valid_small",
                                    "wdcproducts80cc20rnd000un_train_small"]}
                 ).to_parquet(tmp_path / "wdc_products" / "offers_train_valid.parquet")
    wdc = load_catalog(tmp_path, "wdc_products")
    # Only the valid split's offers: the train offers of the same products are what the scorers learn from.
    assert wdc.catalog["product_id"].tolist() == ["wdc:11", "wdc:12"] and wdc.catalog["price"].iloc[0] == 154.10
    assert wdc.truth == {"wdc:11": "5", "wdc:12": "5"}
    with pytest.raises(ValueError, match="unknown whole-catalog dataset"):
        load_catalog(tmp_path, "beer")
    with pytest.raises(ValueError, match="no part numbers"):
        load_catalog(tmp_path, "wdc_products", mpn=True)


def test_magellan_catalogs_hold_each_record_once_with_the_labelled_matches_as_truth(tmp_path):
    from jobs.catalog_eval import load_catalog

    (tmp_path / "er_magellan").mkdir()
    ser = {"s1": "COL name VAL sony kdl-40", "s2": "COL name VAL canon eos 5d", "t1": "COL name VAL sony kdl40 tv",
           "t2": "COL name VAL canon 5d body", "t3": "COL name VAL nikon d90"}
    rows = [("train", 1, "s1", "t1"), ("train", 0, "s1", "t2"), ("valid", 1, "s2", "t2"), ("valid", 0, "s2", "t3")]
    pd.DataFrame({"split": [r[0] for r in rows], "row_in_split": range(4), "label": [r[1] for r in rows],
                  "left_name": [ser[r[2]][12:] for r in rows], "left_description": "", "left_price": "$10",
                  "right_name": [ser[r[3]][12:] for r in rows], "right_description": "", "right_price": "",
                  "left_serialized": [ser[r[2]] for r in rows], "right_serialized": [ser[r[3]] for r in rows]}
                 ).to_parquet(tmp_path / "er_magellan" / "abt_buy.parquet")
    cs = load_catalog(tmp_path, "abt_buy")
    assert len(cs.catalog) == 5 and cs.catalog["product_id"].is_unique
    assert sorted(cs.catalog["title"]) == sorted(v[12:] for v in ser.values())
    by_title = dict(zip(cs.catalog["title"], cs.catalog["product_id"], strict=True))
    t = {k: cs.truth[by_title[v[12:]]] for k, v in ser.items()}
    assert t["s1"] == t["t1"] and t["s2"] == t["t2"] and len({t["s1"], t["s2"], t["t3"]}) == 3
    assert cs.catalog["price"].notna().sum() == 2      # the two left records carry "$10"


def test_truth_gap_reading_counts_matches_by_kind_and_the_shops_model_numbers():
    """bench/catalog_truth_gaps.py: a false match whose records carry the same model number reads as a likely
    gap of the truth; one with different model numbers, or a model number the other title lacks, as different."""
    import pandas as pd

    from bench.catalog_truth_gaps import reading, table

    assert reading("dcs1100", "dcs1100", "", "") == "same model number"
    assert reading("zt5030310m", "zt5030110m", "", "") == "different"
    assert reading("tsg6843r", "", "", "pioneertsg6843r6x8speakers") == "same model number"
    assert reading("abc", "", "", "abc speaker") == "unknown"                  # too short to look for
    assert reading("", "", "x", "y") == "unknown"
    records = pd.DataFrame({
        "record_id": ["W:1", "A:1", "A:2", "A:3", "A:4"], "source": ["W", "A", "A", "A", "A"],
        "modelno": ["TS-G6843R", "TS-G6843R", "", "ZT-50303", "ZT-50301"],
        "title": ["Pioneer TS-G6843R", "Pioneer TS G6843R speakers", "PIONEER TS-G6843R 6 X 8", "Zotac", "Zotac"],
        "gt_entity_id": ["g1", "g1", "A:2", "A:3", "A:4"]})
    matches = pd.DataFrame({"product_id_a": ["A:1", "A:1", "A:3", "A:2"], "product_id_b": ["W:1", "A:2", "A:4", "W:1"],
                            "score": [0.9, 0.95, 0.97, 0.5]})
    t = table(records, matches, min_score=0.6)
    assert t.loc["true", "same model number"] == 1
    assert t.loc["false, within one shop", "same model number"] == 1        # A:1 / A:2: a gap of the truth
    assert t.loc["false, within one shop", "different"] == 1                # two Zotac cards one digit apart
    assert "false, across the shops" not in t.index                         # the 0.5 match is under min_score
    assert t["matches"].sum() == 3
