"""The encoder's precision and serving form: the text tower in bf16 where asked, the image tower fp32 on a CPU,
folded and channels-last in the job."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models.encoders import load_encoder, tower_precisions
from models.precision import cpu_has_bf16
from udfs.embed import EmbedConfig, cached_encoder
from udfs.model_cache import clear

SAMPLE = "jobs/sample_catalog"


def test_tower_precisions_follow_the_device_and_the_request():
    assert tower_precisions(None, "cpu") == ("fp32", "fp32")          # library default on a CPU
    assert tower_precisions("fp32", "cpu") == ("fp32", "fp32")
    assert tower_precisions("bf16", "cpu") == ("bf16", "fp32")        # the image tower did not hold bf16
    assert tower_precisions("auto", "cpu") == (("bf16" if cpu_has_bf16() else "fp32"), "fp32")
    assert tower_precisions(None, "cuda") == ("bf16", "bf16")         # what CUDA always ran
    assert tower_precisions("fp32", "cuda:0") == ("fp32", "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        tower_precisions("int4", "cpu")


@pytest.fixture(scope="module")
def sample():
    cat = pd.read_parquet(f"{SAMPLE}/catalog.parquet")
    titles = [t for t in cat["title"] if isinstance(t, str)][:120]
    images = []
    for uri in cat["image_uri"]:
        try:
            with Image.open(f"{SAMPLE}/{uri}") as im:
                images.append(im.convert("RGB"))
        except (OSError, TypeError):
            continue
        if len(images) == 48:
            break
    return titles, images


def test_bf16_text_tower_holds_the_fp32_embeddings_and_images_stay_fp32(sample):
    titles, images = sample
    fp32, bf16 = load_encoder("default", "cpu", "fp32"), load_encoder("default", "cpu", "bf16")
    assert (bf16.text_precision, bf16.image_precision) == ("bf16", "fp32")
    t32, t16 = fp32.embed_texts(titles), bf16.embed_texts(titles)
    assert t16.dtype == np.float32 and t16.shape == t32.shape
    assert not np.array_equal(t32, t16)                      # bf16 really ran: the numbers move a little
    cos = (t32 * t16).sum(axis=1)
    assert cos.min() >= 0.999                                 # issue 21's floor for embeddings
    i32, i16 = fp32.embed_images(images), bf16.embed_images(images)
    np.testing.assert_array_equal(i32, i16)                   # the image tower stays fp32 on a CPU


def test_the_jobs_image_tower_is_folded_and_channels_last_with_the_stored_forms_outputs(sample):
    import torch

    _, images = sample
    stored, serving = load_encoder("default", "cpu"), load_encoder("default", "cpu", "fp32")
    norms = lambda e: [m for m in e.model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]   # noqa: E731
    assert len(norms(stored)) > 10 and norms(serving) == []          # every BatchNorm folded away
    convs = [m for m in serving.model.visual.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if c.weight.shape[-1] > 1)
    a, b = stored.embed_images(images), serving.embed_images(images)
    assert not np.array_equal(a, b)                                   # really another computation
    assert ((a * b).sum(axis=1)).min() > 0.99999
    # the text tower is not touched by the serving form
    title = ["Nike Men Blue Shoes"]
    np.testing.assert_array_equal(stored.embed_texts(title), serving.embed_texts(title))


def test_the_embed_udf_loads_its_encoder_at_the_configured_precision():
    clear()
    try:
        enc = cached_encoder(EmbedConfig(device="cpu", precision="bf16"))
        assert enc.text_precision == "bf16"
        assert cached_encoder(EmbedConfig(device="cpu", precision="fp32")).text_precision == "fp32"
    finally:
        clear()


def test_bf16_linears_cast_once_give_autocasts_outputs_bit_for_bit(sample):
    import torch

    titles, _ = sample
    cast = load_encoder("default", "cpu", "bf16")               # the job's: linear layers stored in bf16
    dtypes = {m.weight.dtype for m in cast.model.text.modules() if isinstance(m, torch.nn.Linear)}
    assert dtypes == {torch.bfloat16}
    plain = load_encoder("default", "cpu")                      # fp32 weights, cast by autocast on each call
    plain.text_precision = "bf16"
    np.testing.assert_array_equal(cast.embed_texts(titles), plain.embed_texts(titles))
