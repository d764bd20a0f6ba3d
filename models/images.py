"""Safe, fast image decoding for product photos.

Decoding is where hostile input bites: files that are not images, truncated files, and decompression
bombs (a tiny PNG that claims to be 100k x 100k pixels). Everything here raises :class:`ImageDecodeError`
with a short reason instead of letting PIL's many exception types escape.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from models.core.errors import CatalogEnrichError

__all__ = ["DEFAULT_MAX_ASPECT_RATIO", "DEFAULT_MAX_PIXELS", "ImageAspectError", "ImageDecodeError",
           "aspect_problem", "box_hw", "center_square", "decode_image", "fit_box", "flatten",
           "normalise_batch", "to_model_array", "trim_to_aspect", "upright"]

# Product photos are rarely above 4k x 4k; anything larger is refused before decoding.
DEFAULT_MAX_PIXELS = 40_000_000
# The model sees the centre square of a photo after its short side is scaled to the input size, so a photo's
# long side becomes ratio x the input size: a 1 x 150,000 PNG of 373 bytes became 64 x 9.6M pixels (4 GB in
# one Python worker). Beyond 20:1 the centre square is under 5% of the picture: no product photo, only harm.
DEFAULT_MAX_ASPECT_RATIO = 20.0
# How far (in 0-255 levels, every channel) a pixel of a plain margin may read from the margin's colour: a JPEG's
# white background reads 240-255 around the product.
BACKGROUND_TOLERANCE = 15
# The darkest level (every channel) a canvas that pads a photo may have: white and light greys (#CCCCCC is 204).
CANVAS_MIN_LEVEL = 200


class ImageDecodeError(CatalogEnrichError, ValueError):
    """The bytes are not a decodable image (or one too large to decode safely)."""


class ImageAspectError(ImageDecodeError):
    """The image is far longer than it is wide (or the reverse): its resize would be out of all proportion."""


def aspect_problem(width: int, height: int, max_aspect: float = DEFAULT_MAX_ASPECT_RATIO) -> str | None:
    """Why an image of ``width`` x ``height`` is refused for its shape, or None when it is not."""
    short, long = min(width, height), max(width, height)
    if short < 1:
        return f"image of {width}x{height} pixels has no area"
    if long > max_aspect * short:
        return (f"image of {width}x{height} pixels: the long side is {long / short:.0f} times the short one "
                f"(at most {max_aspect:g})")
    return None


def decode_image(data: bytes, target_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_aspect: float = DEFAULT_MAX_ASPECT_RATIO) -> Image.Image:
    """Decode ``data`` into an RGB image.

    The size in the header is checked before any pixel is decoded: at most ``max_pixels``, and a long side at
    most ``max_aspect`` times the short one (:class:`ImageAspectError`), which bounds what a resize to the
    model's input makes of it. Any error of the decoder, ``MemoryError`` included, is an :class:`ImageDecodeError`.

    When ``target_size`` is given, JPEGs are decoded at a reduced scale (``Image.draft``: the DCT does the
    downscaling, several times faster than a full decode and a resize) as long as both sides stay at least
    ``target_size``.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(f"image of {w}x{h} pixels exceeds the cap of {max_pixels}")
            shape = aspect_problem(w, h, max_aspect)
            if shape:
                raise ImageAspectError(shape)
            if target_size and img.format == "JPEG":
                img.draft("RGB", (target_size, target_size))
            img.load()
            upright(img)
            if img.mode != "RGB":
                img = flatten(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad input
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from None
    return img


def upright(img: Image.Image) -> None:
    """Turn ``img`` in place as its EXIF orientation tag says it is to be shown. A phone stores a photo taken
    upright as the sensor read it, on its side, with a tag for the viewer: read without the tag, the product lies on
    its side in the model's box. A tag that cannot be read leaves the pixels as stored (the photo stays usable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # PIL warns of a corrupt EXIF block, then reads what it can
            ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the photo's pixels
        pass


def flatten(img: Image.Image, fill: int = 255) -> Image.Image:
    """``img`` in RGB, any transparency laid over a ``fill``-coloured canvas (white: the background of product
    photos). A product cut out on a transparent background (a PNG as sellers export it) keeps, under its
    transparent pixels, whatever colour the exporting program left there, black as often as not: converted without
    its alpha channel it became a product on black, which the image tower, trained on photos on white, reads as
    another photo."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (fill, fill, fill, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grey levels (a 16-bit greyscale PNG): PIL's conversion clips them at 255, which turned all but the
        # darkest 1/256 of the range white; they are scaled to 8 bits instead
        grey = np.asarray(img, dtype=np.int64)
        grey = grey >> 8 if grey.max(initial=0) > 255 else grey
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def center_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to ``size`` x ``size`` (open_clip's default geometry).

    An image more elongated than :data:`DEFAULT_MAX_ASPECT_RATIO` (one not from :func:`decode_image`) has its
    centre square cut out first and only that resized: the memory used stays that of ``size`` x ``size``.
    """
    w, h = img.size
    if aspect_problem(w, h):
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return img.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def box_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) of a model input given as a square's side or as an (H, W) pair."""
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def _plain_run(plain: np.ndarray) -> int:
    """How many leading entries of a boolean vector are True."""
    return len(plain) if plain.all() else int(np.argmin(plain))


def _margin(block: np.ndarray, axis: int, tolerance: int) -> int:
    """How many lines of ``block`` (H, W, 3), the outermost first along ``axis`` (1: columns, 0: rows), are of one
    plain, light colour: the colour of the outermost line (its median; every channel at least
    :data:`CANVAS_MIN_LEVEL`), every pixel within ``tolerance`` of it in every channel. A dark plain line is taken
    for the product, not a canvas."""
    outer = block[:, 0] if axis == 1 else block[0]
    ref = np.median(outer, axis=0)
    if ref.min() < CANVAS_MIN_LEVEL:
        return 0
    across = 0 if axis == 1 else 1
    # each line's darkest and lightest level per channel (two uint8 reductions), against the margin's colour
    low, high = block.min(axis=across).astype(np.int16), block.max(axis=across).astype(np.int16)
    plain = ((low >= ref - tolerance) & (high <= ref + tolerance)).all(axis=1)
    return _plain_run(plain)


def trim_to_aspect(img: Image.Image, height: int, width: int, tolerance: int = BACKGROUND_TOLERANCE) -> Image.Image:
    """``img`` with plain margins cut off the sides that make it wider (or taller) than a ``width`` x ``height``
    box, no more than restores the box's aspect ratio; the image itself where its ratio is the box's (within 2%) or
    no such margin is there.

    Sellers post a photo on a canvas of their marketplace's shape: a 3:4 photo padded with white (or grey) to a
    square. Fitted into the box as it is, the product shrinks to three quarters of its size, and the image tower,
    which learnt the catalog's own framing, reads another photo (median cosine 0.64 to the unpadded one). A margin
    is the run of lines, from the edge in, of the colour of the outermost line when that colour is light (a
    canvas, not a dark product touching the edge): every pixel within ``tolerance`` of it in every channel (JPEG
    noise). Only the lines that could go are read (up to the excess and one more), and the cut is shared between
    the two sides in proportion to the margins read. A photo with a scene behind the product keeps every pixel; a
    light product that fills a whole edge can lose lines up to the box's shape."""
    w, h = img.size
    want = width / height
    if abs(w / h - want) <= 0.02 * want:
        return img
    arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    wide = w / h > want
    excess = (w - round(h * want)) if wide else (h - round(w / want))
    k = min(excess + 1, w if wide else h)
    if wide:
        first, last = _margin(arr[:, :k], 1, tolerance), _margin(arr[:, w - k:][:, ::-1], 1, tolerance)
    else:
        first, last = _margin(arr[:k], 0, tolerance), _margin(arr[h - k:][::-1], 0, tolerance)
    if first > excess and _margin(arr, 1 if wide else 0, tolerance) == (w if wide else h):   # blank: no product
        return img
    cut = min(excess, first + last)
    if cut <= 0:
        return img
    head = round(cut * first / (first + last))   # at most ``first``, and ``cut - head`` at most ``last``: cut <= both
    tail = cut - head
    return img.crop((head, 0, w - tail, h) if wide else (0, head, w, h - tail))


def fit_box(img: Image.Image, height: int, width: int, fill: int = 255) -> Image.Image:
    """Scale ``img`` to fit inside ``width`` x ``height`` keeping its aspect ratio, centred on a ``fill`` canvas
    (white: the background of product photos). Nothing of the photo is cut but plain margins that only pad it to
    another shape (:func:`trim_to_aspect`); a 60x80 photo fits 60x80 exactly.

    An image more elongated than :data:`DEFAULT_MAX_ASPECT_RATIO` is scaled the same way: its long side becomes
    the box's, so the memory used stays that of the box."""
    img = trim_to_aspect(img, height, width)
    w, h = img.size
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    if (nw, nh) == (width, height):
        return img
    canvas = Image.new("RGB", (width, height), (fill, fill, fill))
    canvas.paste(img, ((width - nw) // 2, (height - nh) // 2))
    return canvas


def to_model_array(img: Image.Image, size: int | tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                   resize_mode: str = "shortest", fill: int = 255) -> np.ndarray:
    """The model input of ``img``: a (3, H, W) float32 array, scaled and normalised.

    ``resize_mode`` ``shortest`` (open_clip's default geometry): :func:`center_square` at ``size``;
    ``longest``: :func:`fit_box` into ``size`` = (H, W) (or a square of side ``size``), nothing cut.
    Done with one PIL resize and NumPy instead of a torchvision pipeline per image.
    """
    if resize_mode == "longest":
        hw = box_hw(size)
        arr = np.asarray(fit_box(img, hw[0], hw[1], fill), dtype=np.float32) / 255.0
    else:
        side = size if isinstance(size, int) else int(size[0])
        arr = np.asarray(center_square(img, side), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def normalise_batch(x, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]):
    """A (B, 3, H, W) float tensor of pixel values in 0-255 normalised by the model's ``mean`` and ``std`` (given
    for 0-1 values), in the channels-last layout the convolutional towers run in."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)
