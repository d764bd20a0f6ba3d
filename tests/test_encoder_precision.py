"""The encoder's precision: the text tower in bf16 where asked, the image tower fp32 on a CPU in channels-last."""

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


def test_conv_image_tower_runs_channels_last_with_the_contiguous_outputs(sample):
    import torch

    _, images = sample
    enc = load_encoder("default", "cpu")
    convs = [m for m in enc.model.visual.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) > 1 and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                                  for c in convs if c.weight.shape[-1] > 1)
    fast = enc.embed_images(images)
    enc.model.visual.to(memory_format=torch.contiguous_format)
    plain = enc.embed_images(images)
    assert ((fast * plain).sum(axis=1)).min() > 0.99999


def test_the_embed_udf_loads_its_encoder_at_the_configured_precision():
    clear()
    try:
        enc = cached_encoder(EmbedConfig(device="cpu", precision="bf16"))
        assert enc.text_precision == "bf16"
        assert cached_encoder(EmbedConfig(device="cpu", precision="fp32")).text_precision == "fp32"
    finally:
        clear()
