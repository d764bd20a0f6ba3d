"""models.core.io: the one atomic write and the one file:// parser every layer uses."""

import json
import os
import stat

import pytest

from jobs.lake.publish import write_json
from models.core.io import atomic_write, local_path


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "CURRENT"
    atomic_write(target, "v1\n")
    atomic_write(target, b"v2\n")
    assert target.read_bytes() == b"v2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["CURRENT"]


def test_atomic_write_gets_the_mode_a_plain_open_gets(tmp_path):
    atomic_write(tmp_path / "a", "x")
    (tmp_path / "b").write_text("x")
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == stat.S_IMODE((tmp_path / "b").stat().st_mode)


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "pointer.json"
    atomic_write(target, "old")
    with pytest.raises(TypeError):
        atomic_write(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["pointer.json"]


def test_the_published_pointer_keeps_its_bytes(tmp_path):
    data = {"published": "r1", "tables": {"b": 2, "a": 1}, "note": "caf\u00e9"}
    write_json(tmp_path / "p.json", data)
    # json.dump(data, f, indent=2, sort_keys=True), what the pointer was written with before
    assert (tmp_path / "p.json").read_bytes() == json.dumps(data, indent=2, sort_keys=True).encode("ascii")


@pytest.mark.parametrize(("uri", "path"), [
    ("/srv/lake", "/srv/lake"),
    ("lake", "lake"),
    ("file:///srv/my%20lake", "/srv/my lake"),
    ("file://localhost/srv/lake", "/srv/lake"),
    ("~/lake", "~/lake"),
])
def test_local_path_of_plain_paths_and_file_uris(uri, path):
    assert local_path(uri) == path
    assert local_path(os.fspath(uri)) == path


@pytest.mark.parametrize("uri", ["s3://bucket/lake", "https://host/x", "hdfs:///lake"])
def test_local_path_refuses_other_schemes_naming_the_uri(uri):
    with pytest.raises(ValueError, match=rf"model store {uri!r}: only local directories and file:// URIs"):
        local_path(uri, "model store")


def test_the_cache_folder_is_the_users_or_the_one_named(tmp_path, monkeypatch):
    from models.core.io import cache_root
    from models.matching.data import default_cache_dir

    monkeypatch.delenv("CATALOG_ENRICH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "catalog-enrich"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "catalog-enrich"
    monkeypatch.setenv("CATALOG_ENRICH_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"                       # every cache of the project moves with it
    assert default_cache_dir() == tmp_path / "mine" / "matching"
