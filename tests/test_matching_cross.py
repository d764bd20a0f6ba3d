"""The cross-encoder pair scorer and the lexical blocking pass: serialisation, the store round trip and its
refusals, lexical vectors, and both inside the real Spark match stage (synthetic embeddings, real Delta tables)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from models.matching.cross import cross_info, load_cross, serialize
from models.matching.lexical import LexicalSpace
from models.store import WEIGHTS_FILE, ModelIntegrityError


def test_serialize_keeps_codes_and_numbers_and_leaves_out_what_is_missing():
    assert serialize({"title": "Sony  KDL-40EX500\n40\" LCD", "brand": "Sony", "price": "$1,299.00"}) == \
        'title: Sony KDL-40EX500 40" LCD ; brand: Sony ; price: 1299.00'
    assert serialize({"title": "kettle", "brand": None, "price": float("nan")}) == "title: kettle"
    assert serialize({"title": None}) == "title: "


def _save_random(root, threshold: float, seed: int = 0) -> str:
    """A cross-encoder with a randomly initialised head (no training): the plumbing, not the quality."""
    import torch

    from models.attributes.tagger import load_tower
    from models.matching.cross import CrossEncoder, split_cross
    from models.matching.cross_train import CrossTrainConfig, save_cross
    from models.refs import text_tower_path

    torch.manual_seed(seed)
    tok, bert = load_tower(text_tower_path())
    bottom, top = split_cross(bert, 4)
    model = CrossEncoder(tok, bottom, top, max_length=64, calibration=(1.5, -0.5), threshold=threshold)
    metrics = {"calibration": {"a": 1.5, "b": -0.5, "pairs": 0, "matches": 0, "f1": 0.0, "threshold": threshold}}
    facts = {"train_pairs": 0, "train_matches": 0, "train_seconds": 0.0, "trained_parameters": 1}
    return save_cross(model, root, CrossTrainConfig(bottom_layers=4, max_length=64, epochs=0),
                      {"metrics": metrics, "facts": facts}, training_data="none (test)")


@pytest.fixture(scope="module")
def random_cross(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross-store")
    return root / _save_random(root, threshold=0.0)


def test_store_round_trip_scores_in_batches_like_one_by_one(random_cross):
    model = load_cross(str(random_cross))
    a = ["title: acme kettle ac-1000 ; price: 20.00", "title: zeta lamp", "title: nova drill nv-20 ; brand: nova"]
    b = ["title: acme steel kettle ac1000", "title: zeta desk lamp ze-3", "title: orbit router"]
    batch = model.score(a, b)
    assert batch.shape == (3,) and ((batch > 0) & (batch < 1)).all()
    one = np.array([model.score([x], [y])[0] for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(batch, one, atol=1e-5)   # padding to the batch's length changes nothing
    version, threshold = cross_info(str(random_cross))
    assert version == model.version and version.startswith("store:pair-cross-minilm-") and threshold == 0.0


def test_bf16_scores_follow_fp32_and_an_unknown_precision_is_refused(random_cross):
    from models.matching.cross import CrossEncoder

    a = ["title: acme kettle ac-1000 ; price: 20.00", "title: zeta lamp", "title: nova drill nv-20 ; brand: nova"]
    b = ["title: acme steel kettle ac1000", "title: zeta desk lamp ze-3", "title: orbit router"]
    fp32 = load_cross(str(random_cross), precision="fp32")
    bf16 = load_cross(str(random_cross), precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    p32, p16 = fp32.score(a, b), bf16.score(a, b)
    assert not np.array_equal(p32, p16)                  # bf16 really ran: the numbers move a little
    np.testing.assert_allclose(p16, p32, atol=0.05)      # and only a little
    assert load_cross(str(random_cross), precision="auto").precision in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision"):
        CrossEncoder(None, None, None, max_length=8, calibration=(1.0, 0.0), threshold=0.5, precision="int4")


def test_the_score_step_loads_the_cross_encoder_in_the_jobs_precision(random_cross):
    from udfs.matching import CrossSpec, _cross

    for precision in ("fp32", "bf16"):
        model = _cross(CrossSpec(str(random_cross), threads=1, precision=precision))
        assert model.precision == precision and model.version == load_cross(str(random_cross)).version


def test_a_tampered_or_foreign_cross_encoder_is_refused(random_cross, tmp_path):
    import shutil

    bad = tmp_path / random_cross.name
    shutil.copytree(random_cross, bad)
    data = bytearray((bad / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 1
    (bad / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError):
        load_cross(str(bad))
    with pytest.raises(ModelIntegrityError, match="cannot resolve"):
        load_cross(str(tmp_path / "nothing-here"))


def test_lexical_vectors_follow_tfidf_cosines():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from models.matching.text import tokens

    titles = ["Acme steel kettle AC-1000 1.7 l", "ACME kettle ac1000 steel", "Zeta desk lamp ZE-33 LED",
              "zeta LED desk lamp ze33", "Nova cordless drill NV-20", "Orbit wifi router OR-7 dual band", ""]
    space = LexicalSpace.fit(titles * 20, dims=512)
    y = space.embed(titles)
    assert y.shape == (7, 512) and np.allclose(np.linalg.norm(y[:6], axis=1), 1.0) and not y[6].any()
    np.testing.assert_array_equal(y, space.embed(titles))   # the projection is drawn from the seed
    sims = y[:6] @ y[:6].T
    exact = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True).fit_transform(
        [" ".join(tokens(t)) for t in titles[:6]])
    exact = (exact @ exact.T).toarray()
    off = ~np.eye(6, dtype=bool)
    assert np.abs(sims[off] - exact[off]).mean() < 0.1
    assert sims[0, 1] > max(sims[0, 2:]) and sims[2, 3] > max(sims[2, [0, 1, 4, 5]])


def test_gram_hashing_is_scikit_learns_bucket_for_bucket():
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.utils.murmurhash import murmurhash3_32

    from models.matching.lexical import hashed_grams, murmur3_32

    rng = np.random.default_rng(3)
    # every UTF-8 length from 0 to 24 bytes: one- to four-byte characters, so each tail length of the hash is met
    alphabet = ["a", "Z", "7", "-", "é", "ß", "東", "☃", "🎉", "\U0001f6ff"]
    keys = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 7)))) for _ in range(3000)]
    keys = [k.encode("utf-8") for k in keys]
    assert len({len(k) for k in keys}) > 15
    np.testing.assert_array_equal(murmur3_32(keys), [murmurhash3_32(k, seed=0) for k in keys])
    words = ["kettle", "lamp", "ac-1000", "ze33", "é", "东西", "🎉x"]
    texts = ["Sony KDL-40EX500 40\" LCD", "", "a", "x  y\tz\nw", "Ünïcödé 東京 ☃ 🎉 kettle", "OR-1259 12.5mm OR-1259",
             *(" ".join(rng.choice(words, size=int(rng.integers(0, 9)))) for _ in range(500))]
    for bits in (8, 15):
        ours = hashed_grams(texts, bits)
        theirs = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 3), n_features=2 ** bits, alternate_sign=False,
                                   norm=None, lowercase=False).transform(texts)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        for part in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(ours, part), getattr(theirs, part))
    assert hashed_grams([], 15).shape == (0, 2 ** 15)


def test_lexical_vectors_are_made_without_importing_scikit_learn():
    """The job's driver builds them in every match stage: scikit-learn's import took 0.6-0.8 s of a cold increment."""
    import subprocess
    import sys

    code = ("import sys; from models.matching.lexical import LexicalSpace; "
            "s = LexicalSpace.fit(['acme kettle', 'zeta lamp']); v = s.embed(['acme kettle 2']); "
            "assert v.shape == (1, 256); print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.spark
def test_lexical_pass_finds_listings_the_embeddings_put_apart(spark, lake):
    import pandas as pd
    from pyspark.sql import functions as F

    from jobs.stages.matching import _Blocks, _candidates, _universe, _with_embeddings
    from models.matching.blocking import BlockingConfig
    from tests.test_matching_job import VERSION, products, synthetic, write_embeddings

    df = synthetic(n_groups=8)
    # Two listings of one product without a model number, whose embeddings point in opposite directions.
    v = np.zeros(16, np.float32)
    v[0] = 1.0
    extra = [{"product_id": "X1", "title": "Handmade walnut serving board large oiled", "brand": "Woodly",
              "price": 30.0, "currency": "EUR", "vec": v.tolist(), "group": 100},
             {"product_id": "X2", "title": "handmade walnut serving board, large, oiled", "brand": "Woodly",
              "price": 31.0, "currency": "EUR", "vec": (-v).tolist(), "group": 100}]
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    write_embeddings(spark, lake, df, "e1")
    flagged = _with_embeddings(lake, _universe(lake, products(spark, df), VERSION).withColumn("in_query", F.lit(True)),
                               VERSION)

    def candidates(cfg: BlockingConfig) -> pd.DataFrame:
        cand, both, counters = _candidates(spark, flagged, len(df), True, cfg, _Blocks(lake, VERSION, len(df), True,
                                                                                       cfg))
        out = cand.toPandas().set_index(["a", "b"])
        both.unpersist()
        return out, counters

    off, _ = candidates(BlockingConfig(lexical_neighbours=0))
    assert ("X1", "X2") not in off.index
    on, counters = candidates(BlockingConfig())
    assert on.loc[("X1", "X2"), "blocking"] == "lexical"
    assert on.loc[("X1", "X2"), "text_cosine"] == pytest.approx(-1.0)   # cosines computed for the pair
    assert counters.cells == 2   # one embedding cell and one lexical cell for 20 products
    # Every pair the embeddings or model numbers found is still there, with the same cosines.
    kept = off.index.intersection(on.index)
    assert len(kept) == len(off)
    np.testing.assert_allclose(on.loc[kept, "fused_cosine"], off.loc[kept, "fused_cosine"], atol=1e-6)


@pytest.mark.spark
def test_match_stage_scores_with_the_cross_encoder(spark, lake, random_cross):
    from deltalake import DeltaTable

    from jobs.stages.matching import MatchConfig, match_and_cluster
    from models.matching.features import DIFFERENT_PRODUCTS_RULE, SAME_LISTING_RULE, SAME_PART_NUMBER_RULE
    from models.matching.spelling import LEAD_RULE, SPELLING_RULE, type_rule_version
    from schemas.tables import PRODUCT_MATCHES
    from tests.test_matching_job import VERSION, products, synthetic, write_embeddings

    df = synthetic(n_groups=8)
    write_embeddings(spark, lake, df, "e1")
    stats = match_and_cluster(spark, lake, products(spark, df), "m1", VERSION,
                              MatchConfig(cross=str(random_cross), cross_prefilter=0.5, torch_threads=1))
    model = load_cross(str(random_cross))
    assert stats["scorer_version"].split("+")[1:] == [model.version, SAME_LISTING_RULE, SAME_PART_NUMBER_RULE,
                                                      SPELLING_RULE, DIFFERENT_PRODUCTS_RULE, type_rule_version(()),
                                                      LEAD_RULE]
    assert stats["threshold"] == 0.0
    m = DeltaTable(str(lake.path(PRODUCT_MATCHES))).to_pandas()
    assert len(m) > 0 and set(m["scorer_version"]) == {stats["scorer_version"]}
    # At a threshold of 0 every pair the cross-encoder read is a match: the stage's count of them is the table's
    assert stats["cross_pairs"] == len(m) < stats["candidates"]
    rows = df.set_index("product_id")
    a = [serialize(rows.loc[p].to_dict()) for p in m["product_id_a"]]
    b = [serialize(rows.loc[p].to_dict()) for p in m["product_id_b"]]
    # Each stored score is the cross-encoder's probability of the pair, not the feature scorer's.
    np.testing.assert_allclose(m["score"].to_numpy(), model.score(a, b), atol=1e-4)
    manifest = json.loads((random_cross / "manifest.json").read_text())
    assert manifest["train_config"]["bottom_layers"] == 4


def test_calibration_weighs_the_exact_evidence_beside_the_logit():
    import pandas as pd

    from models.matching.cross import CrossEncoder

    model = CrossEncoder(None, None, None, max_length=8, calibration=(1.0, 0.0), threshold=0.5,
                         feature_weights={"model_conflict": -3.0})
    p = model.probability(np.array([2.0, 2.0]), pd.DataFrame({"model_conflict": [0.0, 1.0]}))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array([2.0, -1.0]))))
    with pytest.raises(ValueError, match="pass them"):
        model.probability(np.array([1.0]))
    with pytest.raises(ValueError, match="unknown features"):
        CrossEncoder(None, None, None, max_length=8, calibration=(1.0, 0.0), threshold=0.5,
                     feature_weights={"text_cosine": 1.0})


def test_shipped_cross_encoder_tells_rewordings_from_near_identical_products():
    from models.matching.features import pair_features, prepare

    same = [({"title": "Logitech M515 Couch Mouse for PC or Mac", "brand": "Logitech", "price": 39.99},
             {"title": "Logitech Couch Mouse M515 - PC/Mac, wireless", "price": 41.5}),
            ({"title": "Kestrel Unisex Black Watch KE-8301", "brand": "Kestrel", "price": 142.45},
             {"title": "Watch Kestrel Black KE8301 Unisex", "brand": "KESTREL", "price": 140.49})]
    different = [({"title": "Sony Bravia KDL-40EX500 40-inch LCD HDTV", "brand": "Sony", "price": 899},
                  {"title": 'Sony KDL-46EX500 46" Bravia LCD HDTV', "brand": "Sony", "price": 1199}),
                 ({"title": "Canon PG-245 black ink cartridge", "brand": "Canon"},
                  {"title": "Canon CL-246 colour ink cartridge", "brand": "Canon"})]
    pairs = same + different
    model = load_cross()
    feats = pair_features([prepare(x) for x, _ in pairs], [prepare(y) for _, y in pairs], np.zeros(len(pairs)))
    p = model.score([serialize(x) for x, _ in pairs], [serialize(y) for _, y in pairs], feats)
    assert (p[:2] >= model.threshold).all() and (p[2:] < model.threshold).all(), p


def test_a_model_number_conflict_needs_the_strict_score():
    import pandas as pd

    from models.matching.cross import CrossEncoder

    model = CrossEncoder(None, None, None, max_length=8, calibration=(1.0, 0.0), threshold=0.5)
    scores = np.array([0.6, 0.6, 0.95, 0.4])
    feats = pd.DataFrame({"model_conflict": [0.0, 1.0, 1.0, 0.0]})
    assert model.is_match(scores, feats).tolist() == [True, False, True, False]
    assert model.is_match(scores).tolist() == [True, True, True, False]


def test_layers_exported_on_one_machine_load_into_the_same_configuration_only(tmp_path):
    """--export-top / --from-top: what a GPU machine exports (fp16 shards under the size a device returns) loads
    back into a top of the same shape with the same outputs, and a top of another shape refuses it."""
    import torch

    from models.attributes.tagger import load_tower
    from models.matching.cross import split_cross
    from models.matching.cross_train import _SHARD_BYTES, CrossTrainConfig, export_top, exported_config, load_top
    from models.refs import text_tower_path

    torch.manual_seed(0)
    _, bert = load_tower(text_tower_path())
    _, top = split_cross(bert, 0)                    # all six layers: over 15 MB in fp16, so more than one shard
    with torch.no_grad():
        top.head.weight.normal_()
    cfg = CrossTrainConfig(bottom_layers=0, epochs=3, lr=8e-5)
    paths = export_top(top, tmp_path / "top", cfg, {"losses": [0.3, 0.2], "train_seconds": 12.5,
                                                    "trained_on": "cuda (test)"})
    assert len(paths) >= 2 and all(p.stat().st_size <= _SHARD_BYTES + 2**20 for p in paths)
    assert exported_config(tmp_path / "top") == cfg

    _, again = split_cross(bert, 0)
    state = load_top(tmp_path / "top", again)
    again.load_state_dict(state["top"])
    assert state["losses"] == [0.3, 0.2] and state["device"] == "cuda (test)"
    h, m = torch.randn(2, 7, bert.config.hidden_size), torch.ones(2, 7, dtype=torch.long)
    top.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(h, m), top(h, m), atol=2e-2, rtol=1e-2)   # fp16 storage, no more

    _, smaller = split_cross(bert, 3)
    with pytest.raises(ValueError, match="do not fit"):
        load_top(tmp_path / "top", smaller)


def test_collated_batches_pad_with_zeros_and_mask_only_the_real_states():
    import torch

    from models.matching.cross_train import _collate

    hidden = [torch.ones(3, 4, dtype=torch.float16), 2 * torch.ones(5, 4, dtype=torch.float16)]
    h, m = _collate(hidden, [1, 0])
    assert h.dtype == torch.float32 and h.shape == (2, 5, 4)
    assert m.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert h[1, 3:].abs().sum() == 0 and (h[0] == 2).all() and (h[1, :3] == 1).all()


def test_hard_pairs_mined_within_a_source_are_non_matches_without_its_duplicates(tmp_path):
    """mine_source_pairs: neighbours within the left table and within the right table become non-matches; two
    records of one source both matched to the same record of the other, and a source's own same-titled
    listings, are left out."""
    import pandas as pd

    from models.matching.cross_train import mine_source_pairs

    left = ["sony bravia kdl-40ex500 40 inch lcd", "sony bravia kdl-46ex500 46 inch lcd",
            "canon pg-245 black ink cartridge", "canon cl-246 colour ink cartridge",
            "canon pg 245 black ink cartridge", "logitech m515 couch mouse",
            "Logitech  M515 Couch Mouse"]
    right = ["sony kdl40ex500 bravia lcd tv", "canon pg-245 ink black", "logitech couch mouse m515",
             "sony kdl46ex500 bravia lcd tv", "canon cl-246 ink colour"]
    rows = [(0, 0, 1), (1, 3, 1), (2, 1, 1), (4, 1, 1), (3, 4, 1), (5, 2, 1), (0, 3, 0), (2, 4, 0), (6, 2, 0)]
    df = pd.DataFrame({"split": "train",
                       "left_name": [left[i] for i, _, _ in rows], "right_name": [right[j] for _, j, _ in rows],
                       "left_price": "", "right_price": "", "label": [y for _, _, y in rows],
                       "left_serialized": [f"L{i}" for i, _, _ in rows],
                       "right_serialized": [f"R{j}" for _, j, _ in rows]})
    (tmp_path / "er_magellan").mkdir()
    df.to_parquet(tmp_path / "er_magellan" / "abt_buy.parquet")

    mined = mine_source_pairs(tmp_path, "abt_buy", "train", k=3)
    assert len(mined) and (mined["label"] == 0).all() and (mined["dataset"] == "abt_buy_mined").all()
    pairs = {frozenset(p) for p in zip(mined["left_title"], mined["right_title"], strict=True)}
    assert frozenset({left[0], left[1]}) in pairs                      # 40 / 46 inch: a hard non-match
    assert frozenset({right[0], right[3]}) in pairs                    # the same within the right table
    assert frozenset({left[2], left[4]}) not in pairs                  # both match "canon pg-245 ink black"
    assert frozenset({left[5], left[6]}) not in pairs                  # the same title, written twice
    for a, b in zip(mined["left_title"], mined["right_title"], strict=True):
        assert (a in left) == (b in left)                              # never across the two sources


def test_fine_tuning_starts_from_a_stored_version_of_the_same_shape_only(random_cross):
    """--init: the layers start as the stored version's (so a run continues it), and a version trained with
    another frozen bottom or word-piece budget is refused before any training."""
    import torch

    from models.attributes.tagger import load_tower
    from models.matching.cross import split_cross
    from models.matching.cross_train import CrossTrainConfig, _init_top
    from models.refs import text_tower_path

    torch.manual_seed(1)
    _, bert = load_tower(text_tower_path())
    _, top = split_cross(bert, 4)
    stored = load_cross(str(random_cross)).top.state_dict()
    assert not torch.equal(top.head.weight, stored["head.weight"])     # a fresh head differs from the stored one
    _init_top(top, CrossTrainConfig(bottom_layers=4, max_length=64, init=str(random_cross)))
    for name, value in top.state_dict().items():
        torch.testing.assert_close(value, stored[name])
    with pytest.raises(ValueError, match="frozen layers"):
        _init_top(split_cross(bert, 3)[1], CrossTrainConfig(bottom_layers=3, max_length=64, init=str(random_cross)))
    with pytest.raises(ValueError, match="max length"):
        _init_top(top, CrossTrainConfig(bottom_layers=4, max_length=96, init=str(random_cross)))


def test_a_soup_is_the_weighted_mean_of_its_versions_layers_of_one_shape_only(random_cross, tmp_path):
    """--soup: the layers are the weighted mean of the stored versions' layers (equal weights by default), nothing is
    trained; weights that do not sum to 1, a soup of one version and a version of another shape are refused."""
    import torch

    from models.attributes.tagger import load_tower
    from models.matching.cross import split_cross
    from models.matching.cross_train import CrossTrainConfig, _ingredient_cards, soup_top
    from models.refs import text_tower_path

    other = tmp_path / _save_random(tmp_path, threshold=0.0, seed=7)
    a, b = load_cross(str(random_cross)).top.state_dict(), load_cross(str(other)).top.state_dict()
    assert not torch.equal(a["head.weight"], b["head.weight"])
    _, bert = load_tower(text_tower_path())
    _, top = split_cross(bert, 4)
    cfg = CrossTrainConfig(bottom_layers=4, max_length=64, soup=f"{random_cross},{other}", soup_weights="0.25,0.75")
    done = soup_top(top, cfg)
    assert done["losses"] == [] and done["train_seconds"] == 0.0 and "0.25 x" in done["device"]
    for name, value in top.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.25 * a[name] + 0.75 * b[name])
    # Stored beside random_cross, the soup's card carries the card of the version that store lacks, and only it.
    extra = _ingredient_cards(cfg, random_cross.parent)
    assert f"### `{other.name}`" in extra and random_cross.name not in extra and "#### Valid splits" in extra
    assert _ingredient_cards(cfg, tmp_path).count("### `") == 1
    soup_top(top, CrossTrainConfig(bottom_layers=4, max_length=64, soup=f"{random_cross},{other}"))
    torch.testing.assert_close(top.state_dict()["head.weight"], 0.5 * a["head.weight"] + 0.5 * b["head.weight"])
    with pytest.raises(ValueError, match="summing to 1"):
        soup_top(top, CrossTrainConfig(bottom_layers=4, max_length=64, soup=f"{random_cross},{other}",
                                       soup_weights="0.5,0.6"))
    with pytest.raises(ValueError, match="two or more"):
        soup_top(top, CrossTrainConfig(bottom_layers=4, max_length=64, soup=str(random_cross)))
    with pytest.raises(ValueError, match="max length"):
        soup_top(top, CrossTrainConfig(bottom_layers=4, max_length=96, soup=f"{random_cross},{other}"))


def test_training_resumes_from_its_checkpoint_and_counts_the_seconds_of_every_run(tmp_path):
    """A rerun after an interruption resumes after the last finished epoch, and the seconds it reports (which go
    into the manifest and card) include the earlier runs', also when every epoch was done and only calibration is
    left."""
    import torch

    from models.attributes.tagger import load_tower
    from models.matching.cross import split_cross
    from models.matching.cross_train import CrossTrainConfig, _finished, _train_top
    from models.refs import text_tower_path

    torch.manual_seed(0)
    _, bert = load_tower(text_tower_path())
    _, top = split_cross(bert, 5)
    hidden = [torch.randn(int(n), 384) for n in torch.randint(3, 9, (16,))]
    labels = np.array([0.0, 1.0] * 8, np.float32)
    cfg = CrossTrainConfig(bottom_layers=5, epochs=1, batch_size=4, threads=1)
    first, s1 = _train_top(top, hidden, labels, tmp_path, cfg)
    assert len(first) == 1 and s1 > 0 and _finished(tmp_path, cfg) is not None
    assert _finished(tmp_path, replace(cfg, epochs=2)) is None          # one more epoch to go
    both, s2 = _train_top(top, hidden, labels, tmp_path, replace(cfg, epochs=2))
    assert len(both) == 2 and both[0] == first[0] and s2 > s1             # resumed, not started again
    done = _finished(tmp_path, replace(cfg, epochs=2))
    assert done is not None and done["train_seconds"] == pytest.approx(s2)


def test_the_soup_options_refuse_what_they_cannot_mean(random_cross, tmp_path, capsys):
    from models.matching.cross_train import main

    base = ["--data", str(tmp_path), "--work", str(tmp_path / "w"), "--store", str(random_cross.parent)]
    for extra, said in ((["--soup", f"{random_cross},{random_cross}", "--init", str(random_cross)], "excludes"),
                        (["--soup-weights", "0.5,0.5"], "needs --soup"),
                        (["--soup", f"{random_cross},{random_cross}", "--soup-weights", "1"], "one positive weight"),
                        (["--soup", f"{random_cross},store:no-such-version"], "--soup")):
        with pytest.raises(SystemExit):
            main(base + extra)
        assert said in capsys.readouterr().err


def test_lspc_pairs_train_with_the_crawls_markup_left_out(tmp_path):
    """--lspc: WDC LSPC v2 titles lose their quotes, language tags and Null placeholders, keep model codes and
    numbers; a pair whose side is empty once cleaned is dropped; an unknown category or split is refused."""
    import pandas as pd

    from models.matching.data import clean_lspc_title, load_lspc

    assert clean_lspc_title('"Panasonic Lumix DMC-FX55 (Silver)"@en, " Panasonic (Silver) "@en Prices"@en') == \
        "Panasonic Lumix DMC-FX55 (Silver) , Panasonic (Silver) Prices"
    assert clean_lspc_title('"458418-B21 HP E5410 2.33GHz", "Null" "New 458418-B21"') == \
        "458418-B21 HP E5410 2.33GHz , New 458418-B21"
    assert clean_lspc_title('"Null"') == "" and clean_lspc_title(None) == ""

    df = pd.DataFrame({"split": ["train_medium", "train_medium", "train_medium", "valid_medium"],
                       "label": [1, 0, 1, 1],
                       "left_title": ['"HP 1GB DDR"@en', '"Null"', '"Sony A7 III"', '"x"'],
                       "right_title": ['"HP 1 GB DDR RAM"', '"Canon R5"', '"Sony Alpha 7 III body"@de', '"y"']})
    (tmp_path / "er_magellan").mkdir()
    df.to_parquet(tmp_path / "er_magellan" / "wdc_lspc_v2_cameras.parquet")
    pairs = load_lspc(tmp_path, "cameras")
    assert pairs["left_title"].tolist() == ["HP 1GB DDR", "Sony A7 III"]
    assert pairs["right_title"].tolist() == ["HP 1 GB DDR RAM", "Sony Alpha 7 III body"]
    assert pairs["label"].tolist() == [1, 1] and (pairs["dataset"] == "lspc_cameras").all()
    assert pairs["left_brand"].isna().all() and pairs["right_price"].isna().all()
    with pytest.raises(ValueError, match="unknown LSPC category"):
        load_lspc(tmp_path, "phones")
    with pytest.raises(ValueError, match="no split"):
        load_lspc(tmp_path, "cameras", "train_large")


def test_reworded_copies_reorder_one_title_and_keep_its_words_and_the_label():
    """--reword-share: a copy reorders one listing's words and toggles its model codes' hyphens (KE-8301 <->
    KE8301), loses no word, keeps the label, and is drawn from matches and non-matches alike."""
    import random
    import re

    import pandas as pd

    from models.matching.cross_train import reword, reworded_copies

    def bag(title: str) -> list[str]:
        return sorted(re.sub(r"[^a-z0-9]", "", w.lower()) for w in title.split())

    title = "Kestrel Unisex Black Watch KE-8301 40 inch kdl40ex500"
    out = reword(title, random.Random(3))
    assert out != title and bag(out) == bag(title)
    assert "KE8301" in out.split() and "kdl-40ex500" in out.split()    # hyphens toggled, nothing else changed
    assert reword(title, random.Random(3)) == out                       # seeded

    rows = [("Acme Kettle AC-1000 steel", "acme steel kettle ac1000", 1), ("Zeta desk lamp", "Zeta lamp ZE-3", 0)] * 10
    pairs = pd.DataFrame({"dataset": "abt_buy", "left_title": [a for a, _, _ in rows],
                          "right_title": [b for _, b, _ in rows], "left_brand": None, "right_brand": "acme",
                          "left_price": 12.5, "right_price": None, "label": [y for _, _, y in rows]})
    pairs["a"] = [serialize({"title": t, "price": 12.5}) for t in pairs["left_title"]]
    pairs["b"] = [serialize({"title": t, "brand": "acme"}) for t in pairs["right_title"]]
    copies = reworded_copies(pairs, 0.5, seed=0)
    assert len(copies) == 10 and set(copies["label"]) == {0, 1} and (copies["dataset"] == "abt_buy_reworded").all()
    for row in copies.itertuples(index=False):
        original = rows[0] if row.label == 1 else rows[1]
        assert bag(row.left_title) == bag(original[0]) and bag(row.right_title) == bag(original[1])
        assert row.a == serialize({"title": row.left_title, "price": 12.5})          # serialised from the new title
        assert row.b == serialize({"title": row.right_title, "brand": "acme"})
    assert reworded_copies(pairs, 0.0, seed=0).empty


def _copy_pairs():
    """Twenty labelled pairs (a match and a non-match, ten times each) with a brand and prices on one side."""
    import pandas as pd

    rows = [("Acme Kettle AC-1000 steel", "acme steel kettle ac1000", 1), ("Zeta desk lamp", "Zeta lamp ZE-3", 0)] * 10
    pairs = pd.DataFrame({"dataset": "abt_buy", "left_title": [a for a, _, _ in rows],
                          "right_title": [b for _, b, _ in rows], "left_brand": "Acme", "right_brand": None,
                          "left_price": 12.5, "right_price": 30.0, "label": [y for _, _, y in rows]})
    pairs["a"] = [serialize({"title": t, "brand": "Acme", "price": 12.5}) for t in pairs["left_title"]]
    pairs["b"] = [serialize({"title": t, "price": 30.0}) for t in pairs["right_title"]]
    return rows, pairs


def test_seller_edits_keep_the_product_and_seller_copies_pair_a_listing_with_its_edited_self():
    """--seller-share: an edit leaves out the brand or price, moves the price by at most 10%, changes case, adds
    sale words, moves words or toggles model codes' hyphens, and never drops a model code or a number; the copies
    keep each pair's label, and each listing drawn against its own edited copy is a match."""
    import random
    import re

    from models.matching.cross_train import SELLER_PREFIXES, SELLER_SUFFIXES, seller_copies, seller_edit

    def codes(title: str) -> list[str]:
        return sorted(re.sub(r"[^a-z0-9]", "", w.lower()) for w in title.split() if re.search(r"\d", w))

    promo = {w.lower() for p in SELLER_PREFIXES + SELLER_SUFFIXES for w in p.split()}
    record = {"title": "Kestrel Unisex Black Watch KE-8301 40 mm", "brand": "Kestrel", "price": 12.5}
    rng, changed = random.Random(0), 0
    for _ in range(300):
        out = seller_edit(record, rng)
        assert codes(out["title"]) == codes(record["title"])            # model codes and numbers all kept
        assert out["brand"] in ("Kestrel", None)
        assert out["price"] is None or 0.9 * 12.5 - 0.01 <= out["price"] <= 1.1 * 12.5 + 0.01
        words = {w.lower().strip("!:") for w in out["title"].split()} - promo
        assert words <= {"kestrel", "unisex", "black", "watch", "ke-8301", "ke8301", "40", "mm"}, out["title"]
        assert {"unisex", "black", "watch", "mm"} <= words              # only the brand's word may be cut
        changed += out != record
    assert changed == 300                                              # every copy differs from its listing
    assert seller_edit(record, random.Random(5)) == seller_edit(record, random.Random(5))   # seeded

    rows, pairs = _copy_pairs()
    out = seller_copies(pairs, 0.5, seed=0)
    edited, own = out[out["dataset"] == "abt_buy_seller_edit"], out[out["dataset"] == "abt_buy_seller"]
    assert len(edited) == 10 and len(own) == 5 and len(out) == 15
    assert set(edited["label"]) == {0, 1} and (own["label"] == 1).all()
    for row in edited.itertuples(index=False):                          # labels kept, one side edited
        original = rows[0] if row.label == 1 else rows[1]
        now = (row.left_title, row.right_title, row.left_brand, row.right_brand, row.left_price, row.right_price)
        assert now != (*original[:2], "Acme", None, 12.5, 30.0)
        assert codes(row.left_title) == codes(original[0]) and codes(row.right_title) == codes(original[1])
    for row in own.itertuples(index=False):                              # a listing against its own edited copy
        assert codes(row.left_title) == codes(row.right_title)
        assert row.a == serialize({"title": row.left_title, "brand": row.left_brand, "price": row.left_price})
        assert row.b == serialize({"title": row.right_title, "brand": row.right_brand, "price": row.right_price})
    assert seller_copies(pairs, 0.0, seed=0).empty

    # The evaluation's held-out variant adds words no training copy adds, or it would measure the lexicon.
    from models.matching.evaluate import SELLER_VARIANTS

    variant = SELLER_VARIANTS["'Top Seller!!' and '(limited offer)' added"]
    held_out = variant({"title": "x", "brand": None, "price": 1.0})
    added = {w.lower().strip("!()") for w in held_out["title"].split()} - {"x"}
    assert added and not added & {w.lower().strip("!:()") for w in promo}


def test_other_product_copies_change_one_digit_or_number_and_are_non_matches():
    """--other-share: a listing against a copy of itself naming another product (one digit of a model code, or a
    lone number, changed; brand and price kept) trains as a non-match; a title with neither gives no copy."""
    import random
    import re

    from models.matching.cross_train import other_copies, other_product

    rng = random.Random(0)
    for title in ("Kestrel Unisex Black Watch KE-8301", "sound forge audio studio 9", "sony kdl-40ex500 40 inch"):
        for _ in range(50):
            out = other_product(title, rng)
            assert out is not None and out != title
            assert re.sub(r"\d", "#", out.split()[0]) == re.sub(r"\d", "#", title.split()[0])  # the words stay
            assert re.sub(r"\d+", "#", out) == re.sub(r"\d+", "#", title)   # only digits change
    assert other_product("adobe illustrator cs3 for mac", rng) is None

    rows, pairs = _copy_pairs()
    out = other_copies(pairs, 1.0, seed=0)
    assert 0 < len(out) < len(pairs)                     # "Zeta desk lamp" has neither a code nor a number
    assert (out["label"] == 0).all() and (out["dataset"] == "abt_buy_other").all()
    for row in out.itertuples(index=False):
        assert row.left_title != row.right_title
        assert re.sub(r"\d+", "#", row.left_title) == re.sub(r"\d+", "#", row.right_title)
        assert (row.left_brand, row.left_price) == (row.right_brand, row.right_price)
        assert row.a == serialize({"title": row.left_title, "brand": row.left_brand, "price": row.left_price})
    assert other_copies(pairs, 0.0, seed=0).empty


def test_the_score_step_reads_two_brands_in_the_titles_of_the_pairs_the_cross_encoder_reads(random_cross):
    """Two titles that start with two of the catalog's leading words need the conflict floor (0.9): at the random
    cross-encoder's threshold of 0 the pair matches in a catalog where each word starts one title, not where each
    starts three."""
    import pandas as pd

    import udfs.matching as um
    from jobs.stages.matching import resolve_matching
    from models.matching.artifact import load_scorer
    from models.matching.spelling import CatalogSpelling
    from tests.test_matching_models import candidate_rows
    from udfs.matching import CrossSpec

    catalog = ["Fila Men Black Sandals", "Fila Men Grey Shoes", "Fila Women Pink Top", "Lotto Men Black Sandals",
               "Lotto Men Blue Shoes", "Lotto Women Red Shorts"]
    frame = candidate_rows([{"a": "p1", "b": "p2", "title_a": catalog[0], "brand_a": None, "price_a": None,
                             "title_b": catalog[3], "brand_b": None, "price_b": None}], cosine=0.98)
    scorer = load_scorer(resolve_matching("auto"))
    spec = CrossSpec(str(random_cross), 0.0, 1)
    found = {}
    for name, titles in (("leads", catalog), ("once each", [catalog[0], catalog[3]])):
        score = um.make_score_fn(scorer.version, scorer.to_json(), cross=spec,
                                 spelling=CatalogSpelling.from_titles(titles))
        out = list(score(iter([frame])))
        found[name] = pd.concat(out)["product_id_b"].tolist() if out else []
    assert found == {"leads": [], "once each": ["p2"]}
