"""Image URI policy and decoding: pure Python, no Spark."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from models.images import ImageDecodeError, decode_image, to_model_array
from schemas import reasons
from udfs import images as image_checks
from udfs.images import RACY_NS, ImagePolicy, ImageStat, inspect_image, inspect_image_stat, resolve_image_uri


@pytest.fixture()
def root(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    (images / "ok.jpg").write_bytes(buf.getvalue())
    (tmp_path / "secret.jpg").write_bytes(buf.getvalue())
    os.symlink(tmp_path / "secret.jpg", images / "link.jpg")
    return images


@pytest.mark.parametrize("uri, reason", [
    ("ok.jpg", None),
    ("./sub/../ok.jpg", None),
    ("../secret.jpg", reasons.IMAGE_URI_NOT_ALLOWED),
    ("link.jpg", reasons.IMAGE_URI_NOT_ALLOWED),          # a symlink pointing out of the root
    ("https://example.com/a.jpg", reasons.IMAGE_URI_NOT_ALLOWED),
    ("s3://bucket/a.jpg", reasons.IMAGE_URI_NOT_ALLOWED),
    ("file:///etc/hostname", reasons.IMAGE_URI_NOT_ALLOWED),
    ("file://otherhost/ok.jpg", reasons.IMAGE_URI_NOT_ALLOWED),
    ("/etc/passwd", reasons.IMAGE_URI_NOT_ALLOWED),
    ("ok.jpg\x00.png", reasons.IMAGE_URI_NOT_ALLOWED),
])
def test_resolve_image_uri(root, uri, reason):
    got = resolve_image_uri(uri, ImagePolicy(image_root=str(root)))
    assert got.reason == reason
    if reason is None:
        assert got.path == str((root / "ok.jpg").resolve())


def test_file_uri_and_absolute_path_inside_the_root_are_allowed(root):
    policy = ImagePolicy(image_root=str(root))
    assert resolve_image_uri(f"file://{root}/ok.jpg", policy).path == str((root / "ok.jpg").resolve())
    assert resolve_image_uri(str(root / "ok.jpg"), policy).path is not None


def test_extra_allowed_roots(root):
    policy = ImagePolicy(image_root=str(root), allowed_roots=(str(root.parent),))
    assert resolve_image_uri("../secret.jpg", policy).path is not None


def test_relative_uri_without_a_root_is_refused():
    assert resolve_image_uri("a.jpg", ImagePolicy()).detail == "relative image URI and no image root"


def test_inspect_reports_each_problem(root):
    policy = ImagePolicy(image_root=str(root), max_pixels=1000)
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_bytes(b"hello")
    path, sha, reason, _ = inspect_image("ok.jpg", ImagePolicy(image_root=str(root)))
    assert path and len(sha) == 64 and reason is None
    assert inspect_image("missing.jpg", policy)[2] == reasons.IMAGE_UNREADABLE
    assert inspect_image("empty.png", policy)[2] == reasons.IMAGE_UNDECODABLE
    assert inspect_image("text.jpg", policy)[3] == "not a recognised image format"
    # 40x30 = 1200 pixels is over this policy's cap of 1000: refused before decoding.
    assert "exceeds the cap" in inspect_image("ok.jpg", policy)[3]
    assert inspect_image(None, policy) == (None, None, None, None)


def _aged(seen: ImageStat) -> ImageStat:
    """``seen`` as if hashed well after the file's last change (a fresh file is racy: re-read next time)."""
    import dataclasses

    return dataclasses.replace(seen, image_checked_ns=seen.image_ctime_ns + RACY_NS + 1)


def test_stat_cache_keeps_the_hash_of_an_unchanged_file_without_reading_it(root, monkeypatch):
    policy = ImagePolicy(image_root=str(root))
    seen, reason, _, read = inspect_image_stat("ok.jpg", policy)
    assert reason is None and read and seen.image_sha256 == inspect_image("ok.jpg", policy)[1]
    assert (seen.image_width, seen.image_height, seen.image_size) == (40, 30, (root / "ok.jpg").stat().st_size)
    known = ImageStat.from_json(__import__("json").dumps(_aged(seen).__dict__))  # as the cache hands it over
    assert known == _aged(seen)

    def no_reading(*a, **k):
        raise AssertionError("an unchanged file was read")

    with monkeypatch.context() as m:
        m.setattr(image_checks, "_read_with_stat", no_reading)
        again, reason, _, read = inspect_image_stat("ok.jpg", policy, known)
        assert not read and reason is None and again == known
        # The policy still decides: a URI that is no longer allowed is refused, cache or not.
        elsewhere = ImagePolicy(image_root=str(root.parent / "other"))
        assert inspect_image_stat(str(root / "ok.jpg"), elsewhere, known)[1] == reasons.IMAGE_URI_NOT_ALLOWED
        # ... and so do its caps, on the remembered size and dimensions.
        assert "exceeds the cap" in inspect_image_stat("ok.jpg", ImagePolicy(image_root=str(root), max_pixels=1000),
                                                       known)[2]
    # Hashed right after its last change: read again (the file system's clock may not show a second change).
    assert inspect_image_stat("ok.jpg", policy, seen)[3]
    # A re-shot photo at the same URI: read again, with its new hash.
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 30)).save(buf, format="JPEG")
    (root / "ok.jpg").write_bytes(buf.getvalue())
    new, reason, _, read = inspect_image_stat("ok.jpg", policy, known)
    assert read and reason is None and new.image_sha256 != known.image_sha256
    assert ImageStat.from_json("not json") is None and ImageStat.from_json(None) is None
    assert ImageStat.from_json('{"image_sha256": "x", "image_size": 1.5}') is None


def test_decode_refuses_bombs_and_truncation():
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (1, 2, 3)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="exceeds the cap"):
        decode_image(buf.getvalue(), max_pixels=10_000)
    jpeg = io.BytesIO()
    Image.effect_noise((128, 128), 50).convert("RGB").save(jpeg, format="JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_decode_draft_and_model_array():
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (255, 0, 0)).save(buf, format="JPEG")
    img = decode_image(buf.getvalue(), target_size=64)
    assert min(img.size) >= 64 and img.size[0] <= 160  # decoded at a reduced scale, not 640x480
    arr = to_model_array(img, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert arr.shape == (3, 64, 64)
    assert arr[0].mean() == pytest.approx(1.0, abs=0.02) and arr[1].mean() == pytest.approx(-1.0, abs=0.02)


def test_fit_box_keeps_the_whole_photo_on_white():
    from models.images import fit_box

    # A 60x80 photo (W x H) with a red top row and a blue bottom row: a centre square would cut both off.
    arr = np.zeros((80, 60, 3), dtype=np.uint8)
    arr[0] = (255, 0, 0)
    arr[-1] = (0, 0, 255)
    out = np.asarray(fit_box(Image.fromarray(arr), 80, 60))
    assert out.shape == (80, 60, 3)
    assert (out[0] == (255, 0, 0)).all() and (out[-1] == (0, 0, 255)).all()
    # A square photo is scaled to the box's width and centred: white bands above and below, none at the sides.
    sq = np.asarray(fit_box(Image.new("RGB", (30, 30), (0, 0, 0)), 80, 60))
    assert sq.shape == (80, 60, 3)
    assert (sq[:9] == 255).all() and (sq[-9:] == 255).all() and (sq[40] == 0).all()
    # A wide banner keeps its shape: the long side becomes the box's, nothing is cut.
    wide = np.asarray(fit_box(Image.new("RGB", (600, 20), (0, 0, 0)), 80, 60))
    assert (wide[40, :] == 0).all() and (wide[0, :] == 255).all()


def _product(w: int = 60, h: int = 80) -> Image.Image:
    """A 3:4 product photo: a dark, shaded product touching every edge, as a catalog frames it (no plain margin)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([40 + 60 * x / w, 30 + 80 * y / h, 60 + 30 * (x + y) / (w + h)], axis=2)
    return Image.fromarray(arr.astype(np.uint8))


def _jpeg(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize(("canvas", "jpeg"), [((80, 80), True), ((107, 80), True), ((70, 80), False)],
                         ids=["square", "landscape", "a little wide, PNG"])
def test_a_photo_padded_with_white_to_another_shape_fits_as_the_photo_itself(canvas, jpeg):
    from PIL import ImageOps

    from models.images import fit_box

    # (JPEG's ringing spreads a product that touches the photo's edge into a 5-pixel margin: not plain any more)
    photo = _product()
    padded = ImageOps.pad(photo, canvas, color="white")
    padded = _jpeg(padded) if jpeg else padded
    want = np.asarray(fit_box(photo, 80, 60), dtype=np.float32)
    got = np.asarray(fit_box(padded, 80, 60), dtype=np.float32)
    assert got.shape == (80, 60, 3)
    # JPEG noise and a pixel of rounding at the seams; without the trim the product is a narrower band in the middle
    # of white (the columns at the sides are white: 255 against the product's 30-120)
    assert np.abs(got - want).mean() < 12
    assert got[:, 0].mean() < 150 and got[:, -1].mean() < 150


def test_a_square_photo_at_four_times_the_size_is_trimmed_before_it_is_scaled():
    from PIL import ImageOps

    from models.images import fit_box

    photo = _product()
    big = _jpeg(ImageOps.pad(photo.resize((240, 320), Image.BICUBIC), (320, 320), color="white"))
    got = np.asarray(fit_box(big, 80, 60), dtype=np.float32)
    assert np.abs(got - np.asarray(fit_box(photo, 80, 60), dtype=np.float32)).mean() < 12


def test_only_plain_margins_are_cut_and_only_to_the_box_shape():
    from models.images import trim_to_aspect

    # The box's own shape: the very same image object, whatever its margins.
    photo = Image.new("RGB", (60, 80), (255, 255, 255))
    photo.paste(Image.new("RGB", (20, 20), (0, 0, 0)), (20, 30))
    assert trim_to_aspect(photo, 80, 60) is photo
    # A scene behind the product (no plain margin): nothing is cut.
    scene = _product(100, 80)
    assert trim_to_aspect(scene, 80, 60).size == (100, 80)
    # A square with white margins 30 px wide at each side: cut to 3:4 (60x80), no further, from both sides.
    sq = Image.new("RGB", (80, 80), (255, 255, 255))
    sq.paste(Image.new("RGB", (20, 80), (0, 0, 0)), (30, 0))
    out = trim_to_aspect(sq, 80, 60)
    assert out.size == (60, 80)
    arr = np.asarray(out)
    assert (arr[:, 20:40] == 0).all() and (arr[:, :20] == 255).all() and (arr[:, 40:] == 255).all()
    # Margins on one side only: taken from that side.
    left = Image.new("RGB", (80, 80), (255, 255, 255))
    left.paste(Image.new("RGB", (60, 80), (0, 0, 0)), (20, 0))
    assert (np.asarray(trim_to_aspect(left, 80, 60)) == 0).all()
    # Margins narrower than the excess: cut as far as they go.
    thin = Image.new("RGB", (80, 80), (255, 255, 255))
    thin.paste(Image.new("RGB", (76, 80), (0, 0, 0)), (2, 0))
    assert trim_to_aspect(thin, 80, 60).size == (76, 80)
    # A tall strip with white above and below: cut from the top and bottom.
    tall = Image.new("RGB", (60, 120), (255, 255, 255))
    tall.paste(Image.new("RGB", (60, 80), (0, 0, 0)), (0, 20))
    assert trim_to_aspect(tall, 80, 60).size == (60, 80)
    # A blank picture stays as it is.
    blank = Image.new("RGB", (80, 80), (255, 255, 255))
    assert trim_to_aspect(blank, 80, 60).size == (80, 80)
    # A light canvas of another colour is a margin too, each side with its own colour.
    grey = Image.new("RGB", (80, 80), (230, 230, 230))
    grey.paste(Image.new("RGB", (10, 80), (250, 240, 205)), (70, 0))
    grey.paste(Image.new("RGB", (20, 80), (0, 0, 0)), (30, 0))
    out = np.asarray(trim_to_aspect(grey, 80, 60))
    assert out.shape == (80, 60, 3)
    # margins of 30 and 10 columns, read up to 21 (20 to cut, and one more): 14 cut on the left, 6 on the right
    assert (out[:, 0] == 230).all() and (out[:, -1] == (250, 240, 205)).all() and (out[:, 16:36] == 0).all()
    # A dark plain side is the product touching the edge, not a canvas: only the light side is cut.
    dark = Image.new("RGB", (80, 80), (255, 255, 255))
    dark.paste(Image.new("RGB", (70, 80), (90, 30, 30)), (10, 0))
    assert trim_to_aspect(dark, 80, 60).size == (70, 80)
    # A side whose outermost line is not of one colour (a gradient, a scene) has no margin.
    ramp = np.full((80, 80, 3), 255, dtype=np.uint8)
    ramp[:, :10] = np.linspace(0, 250, 80, dtype=np.uint8)[:, None, None]
    ramp[:, 10:70] = 0
    assert trim_to_aspect(Image.fromarray(ramp), 80, 60).size == (70, 80)   # only the white right side goes


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_cut_out_on_transparency_is_decoded_on_white_whatever_lies_under_it(mode):
    # A red square product in the middle of a transparent canvas whose hidden colour is black, as exporters leave it.
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)
    rgba[10:30, 5:25] = (200, 0, 0, 255)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
        pal = img.getpalette()
        black = next(i for i in range(256) if pal[3 * i:3 * i + 3] == [0, 0, 0])
        img.info["transparency"] = black
    data = _png(img)
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0)) == (0, 0, 0)   # what the alpha hid
    out = np.asarray(decode_image(data))
    assert out.shape == (40, 30, 3)
    assert (out[0, 0] == 255).all() and (out[39, 29] == 255).all()   # the canvas is white now
    product = out[20, 15].astype(int)
    if mode == "LA":   # grey levels: the red reads as a dark grey
        assert product.max() - product.min() < 5 and product[0] < 200
    else:
        assert product[0] > 100 and product[1] < 60 and product[2] < 60


def test_half_transparent_pixels_are_blended_with_white_and_opaque_images_are_untouched():
    from models.images import flatten

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = 128   # black at half opacity over white: mid grey
    grey = np.asarray(flatten(Image.fromarray(rgba, "RGBA")))
    assert np.all(np.abs(grey.astype(int) - 127) <= 1)
    rgb = Image.fromarray(np.full((2, 2, 3), 7, dtype=np.uint8))
    assert (np.asarray(flatten(rgb)) == 7).all()
    assert (np.asarray(flatten(rgb.convert("L"))) == 7).all()


def _sideways(img: Image.Image, orientation: int, exif: bytes | None = None) -> bytes:
    """``img`` as a phone stores it: its pixels turned so that the EXIF ``orientation`` turns them back."""
    stored = {6: img.transpose(Image.Transpose.ROTATE_90), 8: img.transpose(Image.Transpose.ROTATE_270),
              3: img.transpose(Image.Transpose.ROTATE_180)}[orientation]
    if exif is None:
        tags = Image.Exif()
        tags[0x0112] = orientation
        exif = tags.tobytes()
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_photo_stored_on_its_side_with_an_exif_orientation_is_decoded_upright(orientation):
    photo = _product()   # 60 wide, 80 high, darker at the top left
    data = _sideways(photo, orientation)
    assert Image.open(io.BytesIO(data)).size == ((80, 60) if orientation in (6, 8) else (60, 80))
    out = decode_image(data)
    assert out.size == (60, 80)
    assert np.abs(np.asarray(out, dtype=np.float32) - np.asarray(photo, dtype=np.float32)).mean() < 4
    # decoded at a reduced scale too (the JPEG draft), still upright
    assert decode_image(data, target_size=32).size[1] > decode_image(data, target_size=32).size[0]


def test_an_unreadable_exif_block_leaves_the_photo_as_stored():
    from models.images import upright

    photo = _product()
    img = Image.open(io.BytesIO(_sideways(photo, 6, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff")))
    img.load()
    upright(img)   # no exception
    assert img.size in ((80, 60), (60, 80))
    assert decode_image(_sideways(photo, 6, exif=b"Exif\x00\x00garbage")).size in ((80, 60), (60, 80))


def test_a_16_bit_greyscale_png_keeps_its_grey_levels():
    ramp = np.linspace(0, 65535, 64 * 48).reshape(64, 48).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    out = np.asarray(decode_image(buf.getvalue())).astype(int)
    assert out.shape == (64, 48, 3)
    assert np.abs(out[..., 0] - (ramp.astype(int) >> 8)).max() <= 1   # was 255 nearly everywhere
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 100 < out.mean() < 155


def test_model_array_longest_mode_is_height_by_width():
    img = Image.new("RGB", (60, 80), (255, 0, 0))
    arr = to_model_array(img, (80, 60), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize_mode="longest")
    assert arr.shape == (3, 80, 60)
    assert arr[0].mean() == pytest.approx(1.0) and arr[1].mean() == pytest.approx(-1.0)
    # The default (shortest) geometry of the ViT towers is unchanged: a centre square.
    assert to_model_array(img, 64, (0.5,) * 3, (0.5,) * 3).shape == (3, 64, 64)
