"""The encoder's precision and serving form: the text tower in bf16 where asked, the image tower in bf16 on a CPU
only where its version was measured to hold it, folded and channels-last in the job."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from models.encoders import (
    IMAGE_BF16_FLOOR,
    early_layers_fp32,
    image_bf16_holds,
    load_encoder,
    measure_image_bf16,
    tower_precisions,
)
from models.precision import cpu_has_bf16
from udfs.embed import EmbedConfig, cached_encoder
from udfs.model_cache import clear

SAMPLE = "jobs/sample_catalog"


def test_tower_precisions_follow_the_device_and_the_request():
    assert tower_precisions(None, "cpu") == ("fp32", "fp32")          # library default on a CPU
    assert tower_precisions("fp32", "cpu") == ("fp32", "fp32")
    assert tower_precisions("bf16", "cpu") == ("bf16", "fp32")        # an image tower not measured to hold bf16
    assert tower_precisions("bf16", "cpu", image_bf16_on_cpu=True) == ("bf16", "bf16")
    assert tower_precisions("fp32", "cpu", image_bf16_on_cpu=True) == ("fp32", "fp32")
    assert tower_precisions(None, "cpu", image_bf16_on_cpu=True) == ("fp32", "fp32")   # training, evaluation
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


def test_bf16_towers_hold_the_fp32_embeddings_of_the_measured_default(sample):
    titles, images = sample
    fp32, bf16 = load_encoder("default", "cpu", "fp32"), load_encoder("default", "cpu", "bf16")
    # the default records a measurement that holds (models.training.image_precision, 2026-12-07)
    assert (bf16.text_precision, bf16.image_precision) == ("bf16", "bf16")
    t32, t16 = fp32.embed_texts(titles), bf16.embed_texts(titles)
    assert t16.dtype == np.float32 and t16.shape == t32.shape
    assert not np.array_equal(t32, t16)                      # bf16 really ran: the numbers move a little
    cos = (t32 * t16).sum(axis=1)
    assert cos.min() >= 0.999                                 # issue 21's floor for embeddings
    i32, i16 = fp32.embed_images(images), bf16.embed_images(images)
    assert not np.array_equal(i32, i16)
    assert (i32 * i16).sum(axis=1).min() >= IMAGE_BF16_FLOOR


def test_an_unmeasured_image_tower_stays_fp32_on_a_cpu(sample, tmp_path):
    _, images = sample
    unmeasured = _measured_copy(tmp_path, None)
    enc = load_encoder(unmeasured, "cpu", "bf16")
    assert (enc.text_precision, enc.image_precision) == ("bf16", "fp32")
    fp32 = load_encoder(unmeasured, "cpu", "fp32")
    np.testing.assert_array_equal(enc.embed_images(images), fp32.embed_images(images))


def _measured_copy(tmp_path, cosine_min: float | None):
    """A copy of the default version whose manifest records a bf16 measurement with ``cosine_min`` (None: no
    measurement)."""
    import json
    import shutil

    from models.refs import parse_model_ref

    src = parse_model_ref("default").name
    dst = tmp_path / os.path.basename(src)
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.pop("image_bf16_on_cpu", None)
    if cosine_min is not None:
        manifest["image_bf16_on_cpu"] = {"photos": 3574, "cosine_min": cosine_min}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return str(dst)


def test_an_image_tower_measured_to_hold_bf16_runs_bf16_on_a_cpu(sample, tmp_path):
    _, images = sample
    held = _measured_copy(tmp_path / "held", 0.9995)
    assert load_encoder(held, "cpu", "bf16").image_precision == "bf16"
    assert load_encoder(held, "cpu", "fp32").image_precision == "fp32"
    assert load_encoder(held, "cpu").image_precision == "fp32"               # training and evaluation: as stored
    i32, i16 = load_encoder(held, "cpu", "fp32").embed_images(images), load_encoder(held, "cpu", "bf16").embed_images(
        images)
    assert i16.dtype == np.float32 and not np.array_equal(i32, i16)         # bf16 really ran
    assert (i32 * i16).sum(axis=1).min() > 0.99
    short = _measured_copy(tmp_path / "short", 0.9986)                       # under the floor: stays fp32
    assert load_encoder(short, "cpu", "bf16").image_precision == "fp32"


def test_the_bf16_permission_is_a_measurement_that_reaches_the_floor():
    assert IMAGE_BF16_FLOOR == 0.999
    assert not image_bf16_holds({})
    assert not image_bf16_holds({"image_bf16_on_cpu": {"photos": 3574, "cosine_min": 0.99858}})
    assert not image_bf16_holds({"image_bf16_on_cpu": "yes"})
    assert image_bf16_holds({"image_bf16_on_cpu": {"photos": 3574, "cosine_min": 0.99944}})


def test_measure_image_bf16_compares_the_serving_form_in_fp32_and_bf16(sample):
    _, images = sample
    enc = load_encoder("default", "cpu")                       # the stored form: BatchNorms unfolded
    h, w = enc.image_hw
    pixels = np.stack([np.asarray(im.convert("RGB").resize((w, h))) for im in images])
    m = measure_image_bf16(enc.model, pixels, batch=16)
    assert m["photos"] == len(images)
    assert 0.99 < m["cosine_min"] <= m["cosine_p1"] <= m["cosine_median"] < 1.0   # bf16 moved every photo a little
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in enc.model.visual.modules())   # measured on a copy


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


def test_the_first_layers_of_the_jobs_image_tower_run_fp32_under_autocast(sample):
    _, images = sample
    enc = load_encoder("default", "cpu", "bf16")
    trunk = enc.model.visual.trunk
    dtypes = {}
    hooks = [getattr(trunk, name).register_forward_hook(
        lambda _m, _i, out, name=name: dtypes.__setitem__(name, out.dtype)) for name in ("stem", "s1", "s2", "s4")]
    try:
        enc.embed_images(images[:4])
    finally:
        for h in hooks:
            h.remove()
    assert dtypes == {"stem": torch.float32, "s1": torch.float32, "s2": torch.bfloat16, "s4": torch.bfloat16}
    assert early_layers_fp32(enc.model.visual) == 0               # a second call wraps nothing more
    stored = load_encoder("default", "cpu")
    assert early_layers_fp32(stored.model.visual) == 2            # the stem and the first stage
    assert early_layers_fp32(stored.model.text) == 0               # no convolutional trunk


def test_a_measurement_is_recorded_in_the_manifest_and_the_version_stays_valid(tmp_path):
    import shutil

    from models.refs import parse_model_ref
    from models.store import read_manifest, record_measurement, verify_version

    src = parse_model_ref("default").name
    dst = tmp_path / os.path.basename(src)
    shutil.copytree(src, dst)
    before = read_manifest(dst)
    record_measurement(dst, "image_bf16_on_cpu", {"photos": 3, "cosine_min": 0.5})
    after = verify_version(dst)                                     # checksums and name still hold
    assert after["image_bf16_on_cpu"] == {"photos": 3, "cosine_min": 0.5}
    assert {k: v for k, v in after.items() if k != "image_bf16_on_cpu"} == {
        k: v for k, v in before.items() if k != "image_bf16_on_cpu"}
    for own in ("files", "version", "code_version"):
        with pytest.raises(ValueError, match="not a measurement"):
            record_measurement(dst, own, {})
    assert read_manifest(dst) == after
