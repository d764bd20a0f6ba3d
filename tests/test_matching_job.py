"""The matching job on real Spark and real Delta tables: synthetic embeddings for the incremental logic, and
the enrich job with the shipped model on the sample catalog for the planted duplicates."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import enrich
from jobs.stages.matching import MatchConfig, match_and_cluster
from models.matching.cluster import ClusterConfig
from schemas.tables import PRODUCT_CLUSTERS, PRODUCT_EMBEDDINGS, PRODUCT_MATCHES
from tests.conftest import SAMPLE

pytestmark = pytest.mark.spark

VERSION = "test-encoder-1"
BRANDS = ["Acme", "Zeta", "Nova", "Orbit"]
KINDS = ["Kettle", "Lamp", "Drill", "Blender", "Router"]


def synthetic(n_groups: int = 12, seed: int = 0) -> pd.DataFrame:
    """Products in groups of 1-3 listings of one product: a shared model number, reworded titles and
    embeddings near the group's centre; different groups of one brand and kind look alike otherwise."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        centre = rng.standard_normal(16)
        brand, kind, code = BRANDS[g % 4], KINDS[g % 5], f"{BRANDS[g % 4][:2].upper()}-{1000 + 37 * g}"
        titles = [f"{brand} {kind} {code} steel", f"NEW {brand.upper()} {kind.lower()} {code.replace('-', '')}",
                  f"{kind} by {brand} model {code}"][: 1 + g % 3]
        for i, title in enumerate(titles):
            v = centre + 0.15 * rng.standard_normal(16)
            rows.append({"product_id": f"S{g:03d}{i}", "title": title, "brand": brand, "price": 20.0 + g + 0.3 * i,
                         "currency": "EUR", "vec": (v / np.linalg.norm(v)).astype(np.float32).tolist(), "group": g})
    return pd.DataFrame(rows)


def write_embeddings(spark, lake, df: pd.DataFrame, run_id: str) -> None:
    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    rows = [(r.product_id, VERSION, r.vec, r.vec, None, f"h-{r.title}", run_id, now) for r in df.itertuples()]
    lake.upsert(PRODUCT_EMBEDDINGS, spark.createDataFrame(rows, PRODUCT_EMBEDDINGS.schema), run_id)


def products(spark, df: pd.DataFrame):
    return spark.createDataFrame(df[["product_id", "title", "brand", "price", "currency"]])


def read(lake, spec) -> pd.DataFrame:
    return DeltaTable(str(lake.path(spec))).to_pandas()


def planted(df: pd.DataFrame) -> dict[str, str]:
    """product -> smallest id of its group (the expected cluster id)."""
    first = df.groupby("group")["product_id"].transform("min")
    return dict(zip(df["product_id"], first, strict=True))


def run(spark, lake, df, run_id, cfg: MatchConfig | None = None):
    return match_and_cluster(spark, lake, products(spark, df), run_id, VERSION, cfg or MatchConfig())


def test_full_then_incremental_runs(spark, lake):
    df = synthetic()
    write_embeddings(spark, lake, df, "e1")
    stats = run(spark, lake, df, "m1")
    assert stats["queries"] == len(df) and stats["matches_written"] > 0
    clusters = read(lake, PRODUCT_CLUSTERS).set_index("product_id")
    assert clusters["cluster_id"].to_dict() == planted(df)
    sizes = df.groupby("group")["product_id"].transform("size")
    assert clusters.loc[df["product_id"], "cluster_size"].tolist() == sizes.tolist()
    matches = read(lake, PRODUCT_MATCHES)
    assert (matches["product_id_a"] < matches["product_id_b"]).all()
    assert set(matches["scorer_version"]) == {stats["scorer_version"]} and set(matches["model_version"]) == {VERSION}
    assert (matches["score"] >= stats["threshold"]).all()
    assert matches["model_number_match"].all()
    versions = {s.name: DeltaTable(str(lake.path(s))).version() for s in (PRODUCT_MATCHES, PRODUCT_CLUSTERS)}

    # Nothing changed: nothing is queried and no table gets a commit.
    again = run(spark, lake, df, "m2")
    assert again["queries"] == 0 and again["cluster_rows_written"] == 0
    assert {s.name: DeltaTable(str(lake.path(s))).version() for s in (PRODUCT_MATCHES, PRODUCT_CLUSTERS)} == versions

    # One listing of group 2 (S0020..S0022) is re-listed as a copy of group 7's product: only it is queried,
    # its old pairs go, its new ones come, and the untouched clusters keep their ids.
    moved = "S0021"
    changed = df.copy()
    src = changed[changed["group"] == 7].iloc[0]
    i = changed.index[changed["product_id"] == moved][0]
    changed.loc[i, "title"] = src["title"].upper() + " (relisted)"
    changed.at[i, "vec"] = src["vec"]
    changed.loc[i, ["group", "price"]] = [7, src["price"]]
    write_embeddings(spark, lake, changed[changed["product_id"] == moved], "e3")
    inc = run(spark, lake, changed, "m3")
    assert inc["mode"] == "incremental" and inc["queries"] == 1
    assert inc["matches_removed"] == 2  # S0020-S0021 and S0021-S0022
    matches = read(lake, PRODUCT_MATCHES)
    touching = matches[(matches["product_id_a"] == moved) | (matches["product_id_b"] == moved)]
    assert set(touching["run_id"]) == {"m3"}
    assert set(touching["product_id_a"]) | set(touching["product_id_b"]) == {moved} | set(
        changed.loc[changed["group"] == 7, "product_id"])
    assert set(matches.loc[~matches.index.isin(touching.index), "run_id"]) == {"m1"}
    clusters = read(lake, PRODUCT_CLUSTERS).set_index("product_id")
    assert clusters["cluster_id"].to_dict() == planted(changed)
    rewritten = set(clusters.index[clusters["run_id"] == "m3"])
    assert rewritten == set(changed.loc[changed["group"].isin([2, 7]), "product_id"])


def test_a_lake_matched_before_the_same_listing_rule_is_matched_again_in_full(spark, lake):
    """``scorer_version`` names the decision rules: matches written without the last (before it) make the
    next run match every product again, as a new scorer does, and that run's rows carry the rules."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from models.matching.features import DIFFERENT_PRODUCTS_RULE, SAME_LISTING_RULE, SAME_PART_NUMBER_RULE
    from models.matching.spelling import LEAD_RULE, SPELLING_RULE, type_rule_version

    df = synthetic(n_groups=4)
    write_embeddings(spark, lake, df, "e1")
    first = run(spark, lake, df, "m1")
    assert first["scorer_version"].split("+")[-6:] == [SAME_LISTING_RULE, SAME_PART_NUMBER_RULE, SPELLING_RULE,
                                                       DIFFERENT_PRODUCTS_RULE, type_rule_version(()), LEAD_RULE]
    path = str(lake.path(PRODUCT_MATCHES))
    table = DeltaTable(path).to_pyarrow_table()
    before = first["scorer_version"].rsplit("+", 1)[0]
    i = table.schema.get_field_index("scorer_version")
    write_deltalake(path, table.set_column(i, "scorer_version", pa.array([before] * len(table), pa.string())),
                    mode="overwrite")
    again = run(spark, lake, df, "m2")
    assert again["mode"] == "full" and again["queries"] == len(df)
    assert set(read(lake, PRODUCT_MATCHES)["scorer_version"]) == {first["scorer_version"]}
    assert read(lake, PRODUCT_CLUSTERS).set_index("product_id")["cluster_id"].to_dict() == planted(df)


@pytest.mark.parametrize("with_cross", [False, True], ids=["features", "cross-encoder"])
def test_the_driver_path_writes_what_the_spark_path_writes(spark, tmp_path, with_cross):
    """A catalog under ``driver_products`` is blocked on the driver (and, with the feature scorer alone, scored
    there, its matches and clusters committed by pyarrow): the same candidates, matches, scores and cluster rows
    as the Spark tasks give, with several k-means cells drawn from a sample, full and then incremental; with a
    cross-encoder too, whose pairs both paths send to the Spark workers."""
    from jobs.lake.lakehouse import Lake
    from models.matching.blocking import BlockingConfig

    cross = None
    if with_cross:
        from tests.test_matching_cross import _save_random

        # a random head scores about sigmoid(-0.5) = 0.38: the pairs the cross-encoder reads match, the others not
        cross = str(tmp_path / "store" / _save_random(tmp_path / "store", threshold=0.3))
    df = synthetic(n_groups=40, seed=3)
    blocking = BlockingConfig(block_size=12, sample_per_cell=3, neighbours=3, lexical_neighbours=2)
    out = {}
    for name, bound in (("spark", 0), ("driver", 10_000)):
        lake = Lake(spark, tmp_path / name)
        # with the cross-encoder, pairs beyond one partition's worth go through the Spark join as many do
        cfg = MatchConfig(blocking=blocking, driver_products=bound, driver_cluster_edges=bound, cross=cross,
                          rows_per_partition=100 if cross else MatchConfig.rows_per_partition)
        write_embeddings(spark, lake, df, "e1")
        first = run(spark, lake, df, "m1", cfg)
        changed = df.copy()
        # relisted as another brand's product, brand and title (brands that disagree need the conflict floor)
        changed.loc[changed["product_id"] == "S0021", ["title", "brand"]] = ["Orbit lamp OR-1259 relisted", "Orbit"]
        write_embeddings(spark, lake, changed[changed["product_id"] == "S0021"], "e2")
        second = run(spark, lake, changed, "m2", cfg)
        out[name] = (first, second, read(lake, PRODUCT_MATCHES), read(lake, PRODUCT_CLUSTERS))
    (f_s, s_s, m_s, c_s), (f_d, s_d, m_d, c_d) = out["spark"], out["driver"]
    for key in ("candidates", "matches_written", "matches_removed", "cells", "largest_cell", "searched_cells"):
        assert (f_d[key], s_d[key]) == (f_s[key], s_s[key]), key
    # the pairs the cross-encoder read, counted by an accumulator on either path (none without one)
    assert f_d.get("cross_pairs") == f_s.get("cross_pairs") and s_d.get("cross_pairs") == s_s.get("cross_pairs")
    assert (f_s.get("cross_pairs") or 0) > 0 if with_cross else "cross_pairs" not in f_s
    assert f_s["cells"] > 2 and f_s["candidates"] > f_s["matches_written"] > 0 and s_s["queries"] == 1
    if with_cross:   # the full run's pairs went through the Spark join, the increment's with their listings
        assert f_s["candidates"] > 100 >= s_s["candidates"]
    key = ["product_id_a", "product_id_b"]
    m_s, m_d = m_s.sort_values(key).reset_index(drop=True), m_d.sort_values(key).reset_index(drop=True)
    assert m_d[key + ["blocking", "run_id", "model_number_match", "brand_match"]].equals(
        m_s[key + ["blocking", "run_id", "model_number_match", "brand_match"]])
    for col in ("score", "fused_cosine", "text_cosine", "image_cosine", "token_jaccard", "price_ratio"):
        # the cross-encoder batches the pairs as they arrive: another batch, another last float bit
        atol = 1e-5 if with_cross and col == "score" else 1e-6
        assert np.allclose(m_d[col].astype(float), m_s[col].astype(float), atol=atol, equal_nan=True), col
    # the driver's timestamps are the run's, as the clusters' (written by Spark) are
    assert set(m_d.loc[m_d["run_id"] == "m2", "updated_at"]) == set(c_d.loc[c_d["run_id"] == "m2", "updated_at"])
    cols = ["product_id", "cluster_id", "cluster_size", "guard", "matched_hash", "run_id"]
    assert c_d.sort_values("product_id")[cols].reset_index(drop=True).equals(
        c_s.sort_values("product_id")[cols].reset_index(drop=True))
    # Both full runs kept the same blocks (the incremental runs read them): one key, the same arrays
    caches = [sorted((tmp_path / name / "_blocking").glob("*.npz")) for name in ("spark", "driver")]
    assert [len(c) for c in caches] == [1, 1] and caches[0][0].name == caches[1][0].name
    with np.load(caches[0][0]) as a, np.load(caches[1][0]) as b:
        assert set(a.files) == set(b.files) == {"centroids", "lexical_idf", "lexical_centroids"}
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
        assert a["centroids"].shape[0] + a["lexical_centroids"].shape[0] == f_s["cells"] == s_s["cells"]


def test_pair_cosines_sum_each_pairs_products_left_to_right_in_any_slice():
    from jobs.stages.matching import _pair_cosines

    rng = np.random.default_rng(3)
    rows = [rng.standard_normal(8).astype(np.float32) for _ in range(6)]
    pdf = pd.DataFrame({"embedding": rows, "text_embedding": [None if i == 2 else r for i, r in enumerate(rows)],
                        "image_embedding": [None] * 6})
    ia, ib = np.array([0, 1, 2, 3, 5, 4, 0]), np.array([1, 2, 3, 4, 0, 4, 5])
    got = _pair_cosines(pdf, ia, ib, chunk=3)

    def left_to_right(x, y):
        total = np.float32(0)
        for p in (x * y).astype(np.float32):
            total = np.float32(total + p)
        return total

    expected = np.array([left_to_right(rows[a], rows[b]) for a, b in zip(ia, ib, strict=True)], np.float32)
    assert np.array_equal(got["fused_cosine"], expected)
    text = expected.copy()
    text[[1, 2]] = np.nan   # row 2 has no text embedding
    assert np.array_equal(got["text_cosine"], text, equal_nan=True)
    assert np.isnan(got["image_cosine"]).all() and len(_pair_cosines(pdf, ia[:0], ib[:0])["fused_cosine"]) == 0


def test_the_driver_candidates_are_distinct_sorted_and_name_every_pass_that_found_them():
    from jobs.stages.matching import _labelled_pairs

    found = pd.DataFrame([("p2", "p9", "lexical"), ("p1", "p3", "model_number"), ("p2", "p9", "ann"),
                          ("p1", "p3", "ann"), ("p2", "p9", "lexical"), ("p1", "p10", "model_number"),
                          ("p2", "p9", "model_number")], columns=["a", "b", "_pass"])
    got = _labelled_pairs(found)
    assert list(got.columns) == ["a", "b", "blocking"]
    assert list(got.itertuples(index=False, name=None)) == [
        ("p1", "p10", "model_number"), ("p1", "p3", "ann+model_number"), ("p2", "p9", "ann+lexical+model_number")]
    assert _labelled_pairs(found.iloc[:0]).empty


def test_cluster_ids_are_stable_when_everything_is_matched_again(spark, lake):
    df = synthetic(seed=3)
    write_embeddings(spark, lake, df, "e1")
    run(spark, lake, df, "m1")
    before = read(lake, PRODUCT_CLUSTERS).set_index("product_id")["cluster_id"].to_dict()
    stats = run(spark, lake, df, "m2", MatchConfig(full=True))
    assert stats["mode"] == "full" and stats["queries"] == len(df) and stats["cluster_rows_written"] == 0
    assert read(lake, PRODUCT_CLUSTERS).set_index("product_id")["cluster_id"].to_dict() == before


def test_giant_components_are_cut_and_reported(spark, lake):
    df = synthetic(n_groups=9, seed=5)
    write_embeddings(spark, lake, df, "e1")
    cfg = MatchConfig(clusters=ClusterConfig(max_size=2, strict_thresholds=(0.999999,)))
    stats = run(spark, lake, df, "m1", cfg)
    # One embedding cell and one lexical cell (the two blocking passes), each searched once.
    assert stats["cells"] == 2 and stats["largest_cell"] == len(df) and stats["searched_cells"] == 2
    n_big = int((df.groupby("group").size() > 2).sum())
    assert n_big > 0 and stats["oversized_components"] == n_big
    clusters = read(lake, PRODUCT_CLUSTERS)
    assert clusters["cluster_size"].max() <= 2
    assert stats["guarded_products"] == 3 * n_big == clusters["guard"].notna().sum()


# -- the enrich job with the shipped model on the sample catalog ---------------------------------------------

@pytest.fixture()
def sample_run(default_sample_run):
    """The enrich job (default model, match stage included) run once over a copy of the sample catalog."""
    return default_sample_run


def _clusters(lake) -> pd.DataFrame:
    return DeltaTable(str(lake / "product_clusters")).to_pandas()


@pytest.mark.slow
def test_planted_duplicates_share_clusters_and_nothing_else(sample_run):
    truth = pd.read_csv(SAMPLE / "duplicates.csv")
    clusters = _clusters(sample_run / "lake")
    embedded = set(DeltaTable(str(sample_run / "lake" / "product_embeddings")).to_pandas()["product_id"])
    assert set(clusters["product_id"]) == embedded
    multi = clusters[clusters["cluster_size"] > 1]
    found = sorted(sorted(g) for _, g in multi.groupby("cluster_id")["product_id"])
    expected = sorted(sorted(g) for _, g in truth.groupby("planted_group")["product_id"])
    assert len(expected) == 24
    assert found == expected
    # Each cluster is named after its smallest member.
    smallest = multi.groupby("cluster_id")["product_id"].min()
    assert (smallest.index == smallest.to_numpy()).all()


@pytest.mark.slow
def test_sample_rerun_changes_nothing(sample_run, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(sample_run / "lake", lake)
    names = ("product_embeddings", "product_matches", "product_clusters")  # quarantine logs every run
    versions = {n: DeltaTable(str(lake / n)).version() for n in names}
    code = enrich.main(["--catalog", str(sample_run / "catalog" / "catalog.parquet"), "--lake", str(lake),
                        "--run-id", "s2"])
    assert code == 0
    assert {n: DeltaTable(str(lake / n)).version() for n in names} == versions


@pytest.mark.slow
def test_sample_changed_listing_leaves_its_cluster_and_the_others_keep_their_ids(sample_run, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(sample_run / "lake", lake)
    catalog = tmp_path / "catalog"
    shutil.copytree(sample_run / "catalog", catalog)
    truth = pd.read_csv(SAMPLE / "duplicates.csv")
    target = truth.loc[truth["product_id"] != truth["planted_group"], "product_id"].iloc[0]
    table = pq.read_table(catalog / "catalog.parquet")
    df = table.to_pandas()
    df.loc[df["product_id"] == target, "title"] = "Handmade ceramic vase, unique piece"
    pq.write_table(table.from_pandas(df, schema=table.schema, preserve_index=False), catalog / "catalog.parquet")
    before = _clusters(lake).set_index("product_id")
    assert enrich.main(["--catalog", str(catalog / "catalog.parquet"), "--lake", str(lake), "--run-id", "s3"]) == 0
    after = _clusters(lake).set_index("product_id")
    assert after.loc[target, "cluster_id"] == target and after.loc[target, "cluster_size"] == 1
    group = truth.loc[truth["product_id"] == target, "planted_group"].iloc[0]
    others = set(truth.loc[truth["planted_group"] == group, "product_id"]) - {target}
    unaffected = before.index.difference(list(others | {target}))
    assert (after.loc[unaffected, "cluster_id"] == before.loc[unaffected, "cluster_id"]).all()
    assert set(after.index[after["run_id"] == "s3"]) == others | {target}
    matches = DeltaTable(str(lake / "product_matches")).to_pandas()
    assert not ((matches["product_id_a"] == target) | (matches["product_id_b"] == target)).any()


def test_a_listing_with_a_typo_is_scored_as_the_catalog_spells_it(spark, tmp_path):
    """A seller's copy of a listing with one word mistyped ("Blendr") is read as the catalog writes that word: the
    job stores the pair with the score of the same copy written correctly, and one cluster holds both."""
    from jobs.lake.lakehouse import Lake

    df = synthetic()
    original = df[df["title"].str.contains("Blender") & df["title"].str.endswith("steel")].iloc[0]
    scores = {}
    for typed in ("Blender", "Blendr"):
        copy = dict(original, product_id="COPY", title=original["title"].replace("Blender", typed), price=None)
        catalog = pd.concat([df, pd.DataFrame([copy])], ignore_index=True)
        lake = Lake(spark, tmp_path / typed)
        write_embeddings(spark, lake, catalog, "e1")
        run(spark, lake, catalog, "m1")
        m = read(lake, PRODUCT_MATCHES)
        pair = m[(m["product_id_a"] == original["product_id"]) & (m["product_id_b"] == "COPY")
                 | (m["product_id_b"] == original["product_id"]) & (m["product_id_a"] == "COPY")]
        assert len(pair) == 1, typed
        clusters = read(lake, PRODUCT_CLUSTERS).set_index("product_id")["cluster_id"]
        assert clusters["COPY"] == clusters[original["product_id"]]
        scores[typed] = float(pair["score"].iloc[0])
    assert scores["Blendr"] == pytest.approx(scores["Blender"])
