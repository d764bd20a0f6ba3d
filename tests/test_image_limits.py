"""Images out of all proportion, and decoder failures of one image: refused or quarantined, never a crash.

A 373-byte PNG of 1 x 150,000 pixels passes the 40 MP cap, yet its resize to the model's input made
64 x 9.6M pixels (4 GB in one Python worker). No Spark here: the job's test is in test_input_limits.py.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from models.images import DEFAULT_MAX_ASPECT_RATIO, ImageAspectError, ImageDecodeError, center_square, decode_image
from models.testing import load_fake_encoder
from schemas import reasons
from udfs.embed import EmbedConfig, embed_frame
from udfs.images import RACY_NS, ImagePolicy, inspect_image_stat


def sliver_png(width: int = 1, height: int = 150_000) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 200).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png(width: int, height: int, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def test_the_hostile_png_is_tiny_and_under_the_pixel_cap():
    data = sliver_png()
    assert len(data) < 1000
    assert 150_000 < 40_000_000  # the pixel cap lets it through: only its shape gives it away


@pytest.mark.parametrize("size", [(1, 150_000), (150_000, 1), (21, 1), (3, 100)])
def test_decode_refuses_an_image_out_of_proportion(size):
    with pytest.raises(ImageAspectError, match=r"the long side is \d+ times the short one \(at most 20\)"):
        decode_image(png(*size) if size[0] * size[1] < 10_000 else sliver_png(*size), target_size=64)


@pytest.mark.parametrize("size", [(20, 1), (1, 20), (640, 480), (1, 1)])
def test_decode_accepts_shapes_within_the_ratio(size):
    assert decode_image(png(*size)).size == size


def test_the_ratio_is_a_parameter():
    assert decode_image(png(30, 1), max_aspect=50).size == (30, 1)
    with pytest.raises(ImageAspectError):
        decode_image(png(30, 1), max_aspect=DEFAULT_MAX_ASPECT_RATIO)


def test_center_square_of_a_sliver_stays_small_in_memory():
    """Under a 1 GB address-space limit: the old resize-then-crop needed 64 x 9.6M pixels (2.4 GB)."""
    code = textwrap.dedent("""
        import resource
        from PIL import Image
        from models.images import center_square
        img = Image.new("RGB", (1, 150_000), (10, 20, 30))
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        out = center_square(img, 64)
        print(out.size, out.getpixel((32, 32)))
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(64, 64) (10, 20, 30)"


def test_center_square_of_a_sliver_keeps_its_middle():
    img = Image.new("RGB", (4, 400), (0, 0, 255))
    img.paste((255, 0, 0), (0, 198, 4, 202))   # the centre 4x4 square is red
    out = center_square(img, 8)
    assert out.size == (8, 8) and out.getpixel((4, 4)) == (255, 0, 0)


def test_inspect_quarantines_a_sliver_with_its_own_reason(tmp_path):
    (tmp_path / "sliver.png").write_bytes(sliver_png())
    (tmp_path / "ok.png").write_bytes(png(40, 30))
    policy = ImagePolicy(image_root=str(tmp_path))
    seen, reason, detail, read = inspect_image_stat("sliver.png", policy)
    assert (reason, read, seen.image_sha256) == (reasons.IMAGE_ASPECT_RATIO, True, None)
    assert detail == "image of 1x150000 pixels: the long side is 150000 times the short one (at most 20)"
    assert inspect_image_stat("ok.png", policy)[1] is None
    # The cap applies to what the stat cache remembers of a file too.
    ok, *_ = inspect_image_stat("ok.png", policy)
    remembered = dataclasses.replace(ok, image_width=1, image_height=150_000,
                                     image_checked_ns=ok.image_ctime_ns + RACY_NS + 1)  # hashed long after
    _, reason, _, read = inspect_image_stat("ok.png", policy, remembered)
    assert (reason, read) == (reasons.IMAGE_ASPECT_RATIO, False)


def test_embed_frame_quarantines_a_sliver_and_embeds_the_rest(tmp_path):
    (tmp_path / "sliver.png").write_bytes(sliver_png())
    (tmp_path / "ok.png").write_bytes(png(16, 16))
    enc = load_fake_encoder("fake:")
    out = embed_frame(["a", "b", "c"], [str(tmp_path / "ok.png"), str(tmp_path / "sliver.png"), None], enc,
                      EmbedConfig(batch_size=2))
    assert out["error"] == [None, reasons.IMAGE_ASPECT_RATIO, None]
    assert out["embedding"][1] is None
    assert all(np.linalg.norm(out["embedding"][i]) == pytest.approx(1.0, abs=1e-5) for i in (0, 2))


class _StarvedEncoder:
    """The fake encoder, but preparing one image's pixels runs out of memory (as a large resize did)."""

    def __init__(self, starved: tuple[int, int]):
        self._enc = load_fake_encoder("fake:")
        self.image_size = self._enc.image_size
        self._starved = starved

    def preprocess(self, img):
        if img.size == self._starved:
            raise MemoryError
        return self._enc.preprocess(img)

    def __getattr__(self, name):
        return getattr(self._enc, name)


def test_a_memory_error_of_one_image_quarantines_that_image_only(tmp_path):
    (tmp_path / "big.png").write_bytes(png(30, 20))
    (tmp_path / "ok.png").write_bytes(png(16, 16))
    out = embed_frame(["a", "b"], [str(tmp_path / "big.png"), str(tmp_path / "ok.png")], _StarvedEncoder((30, 20)),
                      EmbedConfig(batch_size=2))
    assert out["error"] == [reasons.IMAGE_UNDECODABLE, None]
    assert out["error_detail"][0] == "out of memory while preparing the image for the model"
    assert out["embedding"][1] is not None


def test_decoder_errors_are_image_decode_errors():
    with pytest.raises(ImageDecodeError):
        decode_image(b"GIF89a" + b"\x00" * 20)
    with pytest.raises(ImageDecodeError):
        decode_image(png(40, 40)[:60])
