"""The model UDF (embed, then heads) inside a real SparkSession, with the fake encoder that logs loads and batches."""

from __future__ import annotations

import numpy as np
import pytest

from models.testing import load_fake_encoder, read_log
from udfs.embed import EmbedConfig, embed_frame
from udfs.heads import HeadsPlan, make_embed_heads_udf

pytestmark = pytest.mark.spark

FAKE = "models.testing:load_fake_encoder"


@pytest.fixture()
def arrow_batch(spark):
    def set_size(n: int):
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(n))

    old = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    yield set_size
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", old)


def run_udf(spark, log_dir, n_rows, partitions, batch_size):
    from pyspark.sql import functions as F

    cfg = EmbedConfig(model_ref=f"fake:{log_dir}", batch_size=batch_size, loader=FAKE)
    df = spark.range(n_rows).select(F.concat(F.lit("title "), F.col("id").cast("string")).alias("title"),
                                    F.lit(None).cast("string").alias("image_path"),
                                    F.lit(None).cast("string").alias("description")).repartition(partitions)
    udf = make_embed_heads_udf(cfg, HeadsPlan(None, "none"))
    return df.select("title", udf("title", "image_path", "description").alias("e")).collect()


def text_batches(log_dir) -> list[int]:
    return [int(line.split()[1]) for lines in read_log(str(log_dir), "batches").values()
            for line in lines if line.startswith("text")]


def test_model_batches_are_cut_from_arrow_batches(spark, tmp_path, arrow_batch):
    arrow_batch(50)
    rows = run_udf(spark, tmp_path, n_rows=400, partitions=4, batch_size=16)
    sizes = text_batches(tmp_path)
    assert sum(sizes) == 400 and max(sizes) == 16
    assert sorted(set(sizes)) == [2, 16]  # 50 = 16 + 16 + 16 + 2 within each Arrow batch
    assert all(r.e.error is None and len(r.e.embedding) == 8 for r in rows)
    assert all(r.e.is_adult is False and r.e.category is None for r in rows)  # the heads ran, with no category


def test_model_batch_larger_than_arrow_batch(spark, tmp_path, arrow_batch):
    arrow_batch(10)
    run_udf(spark, tmp_path, n_rows=100, partitions=2, batch_size=64)
    assert max(text_batches(tmp_path)) == 10


def test_model_is_loaded_once_per_worker_process(spark, tmp_path, arrow_batch):
    arrow_batch(20)
    run_udf(spark, tmp_path, n_rows=600, partitions=12, batch_size=32)  # 12 tasks, 30 Arrow batches
    loads = read_log(str(tmp_path), "loads")
    batches = read_log(str(tmp_path), "batches")
    assert loads and all(len(lines) == 1 for lines in loads.values())
    assert set(batches) <= set(loads)  # every process that embedded had loaded exactly once
    assert len(loads) <= 4  # local[2] with reused workers: a couple of processes, not one per task


def test_embed_frame_marks_undecodable_images_and_keeps_the_rest(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    enc = load_fake_encoder("fake:")
    cfg = EmbedConfig(batch_size=2)
    out = embed_frame(["a", "b", "c", "d"], [str(good), str(bad), None, str(tmp_path / "gone.jpg")], enc, cfg)
    assert out["error"] == [None, "image_undecodable", None, "image_unreadable"]
    assert out["embedding"][1] is None and out["image_embedding"][2] is None
    for i in (0, 2):
        assert np.linalg.norm(out["embedding"][i]) == pytest.approx(1.0, abs=1e-5)
    # Without an image the fused embedding is the text embedding; with one it is not.
    assert np.allclose(out["embedding"][2], out["text_embedding"][2])
    assert not np.allclose(out["embedding"][0], out["text_embedding"][0])


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        make_embed_heads_udf(EmbedConfig(batch_size=0), HeadsPlan(None, "none"))


def test_embed_heads_frame_applies_the_heads_to_the_rows_that_embedded(tmp_path):
    from PIL import Image

    from models.heads.adult import TermList
    from models.heads.zero_shot import ZeroShotLabels
    from udfs.heads import embed_heads_frame, heads_frame

    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (0, 0, 255)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    enc, terms = load_fake_encoder("fake:"), TermList.load()
    plan = HeadsPlan(None, "zero-shot", ZeroShotLabels.build(["Shoes", "Bags", "Watches"], enc.embed_texts, "test"),
                     top_k=2)
    titles = ["Red running shoes", "Leather bag", "Steel watch", "Gift box"]
    descriptions = [None, "brown", "", "an erotic novelty"]
    out = embed_heads_frame(titles, [str(good), str(bad), None, None], descriptions, enc, EmbedConfig(batch_size=2),
                            plan, None, terms)
    assert out["error"] == [None, "image_undecodable", None, None]
    assert all(out[k][1] is None for k in ("category", "top_k", "attributes", "is_adult", "adult_reasons"))
    ok = [0, 2, 3]
    alone = heads_frame([out["text_embedding"][i] for i in ok], [out["image_embedding"][i] for i in ok],
                        ["Red running shoes", "Steel watch", "Gift box an erotic novelty"], plan, None, terms,
                        titles=[titles[i] for i in ok])
    for name, values in alone.items():
        assert [out[name][i] for i in ok] == values, name
    # The description reaches the term list: the gift box is flagged by it, not by its title.
    assert out["is_adult"] == [False, None, False, True]
    assert [len(out["top_k"][i]) for i in ok] == [2, 2, 2]
