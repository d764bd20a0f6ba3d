"""``catalog-enrich search --image``: the query image is bounded like the job's images (no Spark, no lake).

A named pipe hung the command; ``/dev/zero`` grew its memory without limit. Now only a regular file is read,
without blocking and up to a byte cap, and decoded under the job's limits: anything else is one line, exit 2.
"""

from __future__ import annotations

import io
import os
import signal

import pytest
from PIL import Image

from jobs import cli
from jobs.read import search
from models.testing import load_fake_encoder

FAKE_LOADER = "models.testing:load_fake_encoder"


@pytest.fixture()
def deadline():
    """Fail a test that blocks (the FIFO case) instead of hanging the suite."""
    def expired(*_):
        raise TimeoutError("the command blocked")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_named_pipe_is_refused_at_once(tmp_path, capsys, deadline):
    fifo = tmp_path / "query.fifo"
    os.mkfifo(fifo)
    assert cli.main(["search", "red shoes", "--image", str(fifo), "--lake", str(tmp_path / "lake")]) == 2
    assert _one_error_line(capsys) == f"error: --image {fifo}: not a regular file (a folder, pipe, socket or device)"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_dev_zero_is_refused_without_reading(tmp_path, capsys, deadline):
    assert cli.main(["search", "--image", "/dev/zero", "--lake", str(tmp_path / "lake")]) == 2
    assert "not a regular file" in _one_error_line(capsys)


def test_a_folder_and_a_missing_file_are_one_line_each(tmp_path, capsys, deadline):
    assert cli.main(["search", "--image", str(tmp_path), "--lake", str(tmp_path / "lake")]) == 2
    assert _one_error_line(capsys) == f"error: --image {tmp_path}: Is a directory"
    assert cli.main(["search", "--image", str(tmp_path / "gone.jpg"), "--lake", str(tmp_path / "lake")]) == 2
    assert _one_error_line(capsys) == f"error: --image {tmp_path / 'gone.jpg'}: No such file or directory"


def test_an_image_over_the_byte_cap_is_refused(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    with pytest.raises(search.SearchError, match=r"--image .*big.jpg: file larger than 1024 bytes"):
        search.read_query_image(str(big), max_bytes=1024)
    assert search.read_query_image(str(big), max_bytes=2048) == b"\xff" * 2048


def test_an_image_out_of_proportion_is_refused_by_the_decode_limits(tmp_path):
    sliver = tmp_path / "sliver.png"
    Image.new("L", (1, 150_000), 200).save(sliver, format="PNG", optimize=True)
    version = load_fake_encoder("fake:").version
    with pytest.raises(search.SearchError, match=r"^--image .*sliver.png: image of 1x150000 pixels: the long side"):
        search.embed_query(version, None, str(sliver), model="fake:", loader=FAKE_LOADER)


def test_a_good_query_image_still_embeds(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buf, format="PNG")
    (tmp_path / "q.png").write_bytes(buf.getvalue())
    version = load_fake_encoder("fake:").version
    by_path = search.embed_query(version, None, str(tmp_path / "q.png"), model="fake:", loader=FAKE_LOADER)
    by_bytes = search.embed_query(version, None, buf.getvalue(), model="fake:", loader=FAKE_LOADER)
    assert by_path.shape == by_bytes.shape and float((by_path * by_bytes).sum()) == pytest.approx(1.0, abs=1e-5)
