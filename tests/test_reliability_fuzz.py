"""Hostile input, fuzzed with hypothesis: image URIs and image bytes against the pure-Python validators (many
examples), then a generated hostile catalog through a real Spark enrich run.

Properties: a validator never raises and never hangs; a URI never resolves outside the allowed roots; every
refusal carries a reason code of ``schemas.reasons``; in the Spark run every bad row is in ``quarantine`` with
the reason an independent oracle predicts, every good row is enriched, and the job exits 0.
``CATALOG_ENRICH_RELIABILITY=full`` multiplies the examples.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from schemas import reasons
from tests import reliability as rel
from udfs.images import ImagePolicy, PathMemo, inspect_image, resolve_image_uri

FULL = rel.full_mode()
ALL_PHASES = [Phase.explicit, Phase.generate]  # no shrinking: one example is a whole Spark run
EXAMPLES = 10_000 if FULL else 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED: dict[str, int] = {}


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


def _encode(fmt: str, size=(12, 9), seed: int = 0) -> bytes:
    px = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format=fmt)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid little PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    data = bytearray(_encode("PNG", (4, 4)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


GOOD = {name: _encode(fmt) for name, fmt in
        (("good.jpg", "JPEG"), ("good.png", "PNG"), ("good.webp", "WEBP"), ("good.gif", "GIF"))}


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """An image root full of traps, and a folder outside it that must never be read."""
    base = tmp_path_factory.mktemp("images")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for name, data in GOOD.items():
        (root / name).write_bytes(data)
    (root / "sub" / "inner.jpg").write_bytes(GOOD["good.jpg"])
    (outside / "secret.jpg").write_bytes(GOOD["good.jpg"])
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(GOOD["good.jpg"][: len(GOOD["good.jpg"]) // 2])
    (root / "truncated.png").write_bytes(GOOD["good.png"][:60])
    (root / "truncated.webp").write_bytes(GOOD["good.webp"][:40])
    (root / "text.jpg").write_bytes(b"<html>not an image</html>")
    (root / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    (root / "link_in.jpg").symlink_to(root / "good.jpg")
    (root / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "link_dir").symlink_to(outside)
    (root / "loop").symlink_to(root / "loop")
    os.mkfifo(root / "fifo.jpg")  # reading it would block forever
    return root, outside


SEGMENTS = ["..", ".", "", "sub", "inner.jpg", "good.jpg", "good.png", "good.webp", "good.gif", "empty.jpg",
            "truncated.jpg", "truncated.png", "truncated.webp", "text.jpg", "bomb.png", "link_in.jpg",
            "link_out.jpg", "link_dir", "secret.jpg", "loop", "fifo.jpg", "missing.jpg", "%2e%2e", "..%2f", "\x00",
            "outside", "~", "C:", "\\..\\"]
PREFIXES = ["", "/", "./", "file://", "file:///", "file://localhost/", "FILE://", "file://evil.example/",
            "http://", "https://cdn.example/", "s3://bucket/", "gs://b/", "data:image/png;base64,", "ftp://",
            "//", "\\\\server\\share\\", " ", "\t"]


@st.composite
def uris(draw, root: Path, outside: Path):
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(max_size=300))
    head = draw(st.sampled_from([*PREFIXES, str(root) + "/", str(outside) + "/", f"file://{root}/",
                                 f"file://{outside}/"]))
    return head + "/".join(draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6)))


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + os.sep)


def test_uris_never_escape_the_image_root(image_tree):
    root, outside = (p.resolve() for p in image_tree)
    policy = ImagePolicy(image_root=str(root))
    memo = PathMemo(policy)   # one memo across all examples, as a batch of URIs shares one: the same answers

    @FUZZ
    @given(uri=uris(root, outside))
    @example(uri="loop/../link_out.jpg")
    @example(uri="loop/../link_in.jpg")
    @example(uri="link_dir/secret.jpg")
    @example(uri="loop//sub")   # realpath makes it "/sub" (refused); a memo of the folder "loop" must not differ
    def check(uri):
        _count("uri")
        res = resolve_image_uri(uri, policy)
        assert resolve_image_uri(uri, policy, memo) == res
        if res.path is None:
            assert res.reason == reasons.IMAGE_URI_NOT_ALLOWED and res.detail
        else:
            assert _under(res.path, root) and res.path == os.path.realpath(res.path)
        path, digest, reason, detail = inspect_image(uri, policy)  # never raises, never blocks (the FIFO)
        assert (reason is None) == (detail is None) and (reason is None or reason in reasons.REASONS)
        if reason is None and path is not None:
            assert _under(path, root) and len(digest) == 64
        assert path is None or not _under(path, outside)

    check()


def test_named_traps_get_their_reasons(image_tree):
    root, outside = image_tree
    policy = ImagePolicy(image_root=str(root))
    want = {
        "../outside/secret.jpg": reasons.IMAGE_URI_NOT_ALLOWED, "link_out.jpg": reasons.IMAGE_URI_NOT_ALLOWED,
        "link_dir/secret.jpg": reasons.IMAGE_URI_NOT_ALLOWED, f"file://{outside}/secret.jpg":
        reasons.IMAGE_URI_NOT_ALLOWED, "http://cdn.example/good.jpg": reasons.IMAGE_URI_NOT_ALLOWED,
        "s3://bucket/good.jpg": reasons.IMAGE_URI_NOT_ALLOWED, "missing.jpg": reasons.IMAGE_UNREADABLE,
        "loop": reasons.IMAGE_UNREADABLE, "fifo.jpg": reasons.IMAGE_UNREADABLE, "sub": reasons.IMAGE_UNREADABLE,
        "empty.jpg": reasons.IMAGE_UNDECODABLE, "text.jpg": reasons.IMAGE_UNDECODABLE,
        "bomb.png": reasons.IMAGE_UNDECODABLE, "link_in.jpg": None, f"file://{root}/sub/inner.jpg": None,
        "good.webp": None,
        # past a symbolic-link loop, the links after ".." are still followed
        "loop/../link_out.jpg": reasons.IMAGE_URI_NOT_ALLOWED, "loop/../link_dir/secret.jpg":
        reasons.IMAGE_URI_NOT_ALLOWED, "loop/../link_in.jpg": None, "loop/x/../../good.jpg": None,
    }
    got = {uri: inspect_image(uri, policy)[2] for uri in want}
    assert got == want
    assert "pixels" in inspect_image("bomb.png", policy)[3]


@st.composite
def image_bytes(draw):
    """Valid images, cut, bit-flipped, spliced, given huge headers, or plain noise."""
    base = draw(st.sampled_from(sorted(GOOD.values())))
    how = draw(st.sampled_from(["cut", "flip", "splice", "bomb", "noise", "empty", "as is"]))
    if how == "cut":
        return base[: draw(st.integers(0, len(base)))]
    if how == "flip":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "splice":
        i = draw(st.integers(0, len(base)))
        return base[:i] + draw(st.binary(max_size=64)) + base[i:]
    if how == "bomb":
        return _png_claiming(draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1)))
    if how == "noise":
        return draw(st.binary(max_size=512))
    return b"" if how == "empty" else base


def test_image_bytes_are_decoded_or_refused_with_a_reason(tmp_path):
    """What passes the cheap header check (validation) is decoded by the embedding UDF or refused there: either
    way with a reason, never an exception that would fail the Spark task."""
    from models.testing import FakeEncoder
    from udfs.embed import EmbedConfig, _decode

    encoder, cfg = FakeEncoder(None), EmbedConfig(max_pixels=1_000_000)
    policy = ImagePolicy(image_root=str(tmp_path), max_pixels=1_000_000)
    path = tmp_path / "x.img"

    @FUZZ
    @given(data=image_bytes())
    def check(data):
        _count("image")
        path.write_bytes(data)
        got, digest, reason, detail = inspect_image("x.img", policy)
        assert reason in (None, reasons.IMAGE_UNDECODABLE, reasons.IMAGE_ASPECT_RATIO), (reason, detail)
        if reason is not None:
            return
        arr, err, why = _decode(got, encoder, cfg)
        if err is None:
            assert arr.shape == (3, 8, 8) and np.isfinite(arr).all()
        else:
            assert err in (reasons.IMAGE_UNDECODABLE, reasons.IMAGE_ASPECT_RATIO) and why

    check()


# -- a hostile catalog through the real job ------------------------------------------------------------------
PRICES = {"12.5": None, "0": None, "-3": "invalid_price", "NaN": "invalid_price", "Infinity": "invalid_price",
          "-Infinity": "invalid_price", "n/a": "invalid_price", "": "invalid_price", "1e400": "invalid_price"}
URIS = ["good.jpg", "good.png", "good.webp", "sub/inner.jpg", "link_in.jpg", "truncated.jpg", "truncated.png",
        "truncated.webp", "empty.jpg", "text.jpg", "bomb.png", "missing.jpg", "fifo.jpg", "sub", "loop",
        "../outside/secret.jpg", "link_out.jpg", "link_dir/secret.jpg", "http://cdn.example/a.jpg", "s3://b/k.jpg",
        "file:///etc/passwd", "", None]


TITLES = ["Rote Jacke aus Wolle", "赤いジャケット Mサイズ", "Красная куртка", "سترة حمراء للرجال", "👗 Summer dress",
          "Cafe\u0301 mug", "Vela Handbag VE-6494", "z" * 4090, "Tab\tand\nnewline", "Zoë\x00nul", "\u202eevil"]
BLANK = [None, "", " ", "\t\n\r", "\u3000\u00a0", "\u200b\ufeff", "\x00\x1f\x7f"]
FAULTS = ["missing_id", "duplicate", "bad_utf8", "blank_title", "huge_title", "price", "time", "image", "text"]


def hostile_rows(seed: int, n: int) -> list[dict]:
    """``n`` catalog rows, about half of them with one or two hostile values (bytes per text column)."""
    import random

    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        r = {"product_id": f"P{i:04d}", "title": rng.choice(TITLES) + f" #{i}", "description": f"row-{i}",
             "image_uri": rng.choice(["good.jpg", "good.png", "good.webp", "sub/inner.jpg", "link_in.jpg", None]),
             "brand": "Vela", "price": rng.choice(["12.5", "0", None]),
             "updated_at": f"2026-10-01 {i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}"}
        faults = rng.sample(FAULTS, rng.choice([0, 0, 0, 1, 1, 1, 2]))
        for fault in faults:
            if fault == "missing_id":
                r["product_id"] = rng.choice(BLANK)
            elif fault == "duplicate" and "time" not in faults:
                sources = [x for x in rows if x["updated_at"] not in (None, "not a time")]
                if sources:  # the copy is older or newer than the row it copies: either may win
                    r["product_id"] = rng.choice(sources)["product_id"]
                    r["updated_at"] = rng.choice([r["updated_at"], r["updated_at"].replace("10-01", "09-30")])
            elif fault == "bad_utf8":
                # Ids repaired to the same text are duplicates: keep their times valid, so the winner is plain.
                col = rng.choice(["title", "image_uri", "brand"] + ([] if "time" in faults else ["product_id"]))
                r[col] = rng.choice([b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80", b"ok\xc3", b"\xc0\xaf"])
            elif fault == "blank_title":
                r["title"] = rng.choice(BLANK)
            elif fault == "huge_title":
                r["title"] = "y" * rng.choice([4097, 20_000, 200_000])
            elif fault == "price":
                r["price"] = rng.choice(sorted(PRICES))
            elif fault == "time" and "duplicate" not in faults:
                r["updated_at"] = rng.choice(["not a time", None])
            elif fault == "image":
                r["image_uri"] = rng.choice(URIS)
            elif fault == "text":   # odd but valid: mixed scripts, controls inside words, combining marks
                r["title"] = "".join(rng.choice(["a", "Ж", "中", "\u0301", "\t", "\x01", "ß", "\u200d", "😀", " "])
                                     for _ in range(rng.randint(1, 30)))
        rows.append({k: v.encode("utf-8") if isinstance(v, str) and k not in ("price", "updated_at") else v
                     for k, v in r.items()})
    return rows


def _text_column(values):
    """A Parquet string column holding exactly these bytes: invalid UTF-8 included, as a buggy writer makes."""
    import pyarrow as pa

    offsets, data = [0], bytearray()
    for v in values:
        data += v or b""
        offsets.append(len(data))
    validity = pa.array([v is not None for v in values]).buffers()[1]
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(np.array(offsets, np.int32)),
                                                            pa.py_buffer(bytes(data))])


def _write_catalog(rows, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {name: _text_column([r[name] for r in rows]) for name in ("product_id", "title", "description",
                                                                    "image_uri", "brand")}
    cols["price"] = pa.array([r["price"] for r in rows], pa.string())      # text prices, as a CSV export has them
    cols["updated_at"] = pa.array([r["updated_at"] for r in rows], pa.string())
    pq.write_table(pa.table(cols), path)


def _blank(s: str | None) -> bool:
    import unicodedata

    return s is None or all(unicodedata.category(c)[0] in "ZC" for c in s)


def _invisible(s: str | None) -> bool:
    """A title nobody could see: separators, control and format characters, marks without a base, fillers."""
    import unicodedata

    fillers = "\u115f\u1160\u3164\uffa0\u2800\U0001d159"
    return s is None or all(unicodedata.category(c)[0] in "ZCM" or c in fillers for c in s)


def expected_reasons(rows, root: Path) -> dict[str, str | None]:
    """The oracle: each row's reason (None: enriched), from the input contract, written independently of
    jobs.stages.validate (the image checks reuse the fuzzed pure-Python validators)."""
    from models.testing import FakeEncoder
    from udfs.embed import EmbedConfig, _decode

    def text(b):
        return None if b is None else b.decode("utf-8", "replace")

    def valid(b):
        try:
            b is None or b.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    winner = {}
    for i, r in enumerate(rows):
        pid = text(r["product_id"])
        if not _blank(pid) and r["updated_at"] not in ("not a time", None):
            if pid not in winner or r["updated_at"] > rows[winner[pid]]["updated_at"]:
                winner[pid] = i
    policy, out = ImagePolicy(image_root=str(root)), {}
    for i, r in enumerate(rows):
        pid, title = text(r["product_id"]), text(r["title"])
        bad_text = [c for c in ("product_id", "title", "description", "image_uri", "brand") if not valid(r[c])]
        price_code = PRICES.get(r["price"]) if r["price"] is not None else None
        if _blank(pid):
            reason = reasons.MISSING_ID
        elif winner.get(pid, i) != i:
            reason = reasons.DUPLICATE_ID
        elif bad_text:
            reason = reasons.INVALID_TEXT
        elif r["price"] in ("n/a", ""):
            reason = reasons.INVALID_PRICE
        elif r["updated_at"] == "not a time":
            reason = reasons.INVALID_VALUE
        elif _invisible(title):
            reason = reasons.EMPTY_TITLE
        elif len(title) > 4096:
            reason = reasons.TITLE_TOO_LONG
        elif price_code:
            reason = price_code
        else:
            path, _, reason, _ = inspect_image(text(r["image_uri"]), policy)
            if reason is None and path is not None:
                reason = _decode(path, FakeEncoder(None), EmbedConfig())[1]
        out[f"row-{i}"] = reason
    return out


@pytest.mark.spark
def test_hostile_catalog_through_the_job(spark, image_tree, tmp_path_factory):
    from deltalake import DeltaTable

    from jobs import enrich

    root, _ = image_tree

    # Seed 2 yields every reason code in 80 rows: the default run tries it alone (one Spark run); the long run
    # adds three random catalogs of 300 rows.
    @settings(max_examples=3, deadline=None, database=None, phases=ALL_PHASES if FULL else [Phase.explicit],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32 - 1))
    @example(seed=2)
    def check(seed):
        rows = hostile_rows(seed, 80 if seed == 2 else 300)
        _count("catalog")
        TRIED["catalog_rows"] = TRIED.get("catalog_rows", 0) + len(rows)
        work = tmp_path_factory.mktemp("hostile")
        catalog, lake = work / "catalog.parquet", work / "lake"
        _write_catalog(rows, catalog)
        code = enrich.main(["--catalog", str(catalog), "--image-root", str(root), "--lake", str(lake),
                            "--run-id", "fuzz", *rel.FAKE, "--matching", "none"])  # validation is the point
        assert code == 0
        want = expected_reasons(rows, root)
        quarantine = DeltaTable(str(lake / "quarantine")).to_pyarrow_table().to_pylist()
        got = {json.loads(q["raw_record"])["description"]: q["reason_code"] for q in quarantine}
        assert got == {tag: r for tag, r in want.items() if r is not None}
        enriched = {p for p in DeltaTable(str(lake / "product_embeddings")).to_pandas()["product_id"]}
        good_ids = {rows[int(tag[4:])]["product_id"].decode() for tag, r in want.items() if r is None}
        assert enriched == good_ids and len(got) + len(enriched) == len(rows)
        rel.check_readable(lake)   # every table reads back (no invalid UTF-8 reached a Parquet file)
        rel.check_accounted(lake, catalog, "fuzz")

    check()
    print(f"fuzz cases tried so far in this process: {TRIED}")


# The reason codes the default run's hostile catalog (seed 2, 80 rows) must plant: one Spark run checks each.
PLANTED = (reasons.MISSING_ID, reasons.DUPLICATE_ID, reasons.EMPTY_TITLE, reasons.INVALID_TEXT,
           reasons.TITLE_TOO_LONG, reasons.INVALID_PRICE, reasons.INVALID_VALUE, reasons.IMAGE_URI_NOT_ALLOWED,
           reasons.IMAGE_UNREADABLE, reasons.IMAGE_UNDECODABLE)


def test_default_hostile_catalog_plants_every_reason_code(image_tree):
    """The catalog ``test_hostile_catalog_through_the_job`` runs by default holds a row for each reason code
    (by the oracle, whose image verdicts come from the validator itself) and good rows, so a change of
    :func:`hostile_rows` cannot quietly leave a reason out of the default run."""
    root, _ = image_tree
    want = expected_reasons(hostile_rows(2, 80), root)
    predicted = set(want.values()) - {None}
    assert predicted <= set(reasons.REASONS), predicted - set(reasons.REASONS)
    assert set(PLANTED) <= predicted, set(PLANTED) - predicted
    assert sum(r is None for r in want.values()) >= 20   # and enough good rows to enrich
