import json

import numpy as np
import pytest

from models import store
from models.arch import build_clip
from models.encoders import load_encoder
from models.refs import ModelRefError, parse_model_ref
from tests.tiny_models import tiny_model_cfg


@pytest.fixture()
def saved(tmp_path):
    cfg = tiny_model_cfg(tmp_path)
    model = build_clip(cfg, seed=3)
    model.text.lock(0)  # as in training with a locked text tower: its transformer is not stored
    root = tmp_path / "store"
    version = store.save_version(root, "tiny", cfg, {"size": [16, 16]}, store.trained_state_dict(model),
                                 training_data="test", metrics={"x": 1.0}, card="# card {version}\n")
    return root, version, model


def test_round_trip_through_the_store(saved):
    root, version, model = saved
    manifest = store.read_manifest(root / version)
    assert set(manifest["files"]) == {"open_clip_config.json", "model.safetensors", "MODEL_CARD.md"}
    assert manifest["training_data"] == "test" and manifest["code_version"]
    assert version in (root / version / "MODEL_CARD.md").read_text()
    ref = parse_model_ref(f"store:{version}", model_store_root=root)
    assert ref.kind == "store" and ref.version == f"store:{version}"
    enc = load_encoder(ref, "cpu")
    px = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    import torch

    with torch.inference_mode():
        want = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(px)), dim=-1).numpy()
    np.testing.assert_allclose(enc.embed_pixels(px), want, atol=1e-5)
    # Only trained parts are stored: the (frozen) text transformer stays out.
    from safetensors import safe_open

    with safe_open(str(root / version / "model.safetensors"), "pt") as f:
        assert not any(k.startswith("text.transformer.") for k in f.keys())


def test_version_id_changes_with_the_weights(saved, tmp_path):
    root, version, _ = saved
    cfg = tiny_model_cfg(tmp_path)
    other = store.save_version(root, "tiny", cfg, {}, store.trained_state_dict(build_clip(cfg, seed=4)),
                               training_data="test", metrics={})
    assert other.rsplit("-", 1)[1] != version.rsplit("-", 1)[1]


def test_tampered_weights_are_refused_and_current_stays(saved):
    root, version, _ = saved
    store.promote(root, version)
    cfg = json.loads((root / version / "open_clip_config.json").read_text())["model_cfg"]
    bad = store.save_version(root, "tiny", cfg, {}, store.trained_state_dict(build_clip(cfg, seed=5)),
                             training_data="test", metrics={})
    path = root / bad / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(store.ModelIntegrityError, match=r"model\.safetensors: sha256 does not match"):
        store.promote(root, bad)
    assert store.current_version(root) == version
    with pytest.raises(store.ModelIntegrityError, match="sha256 does not match"):
        load_encoder(parse_model_ref(f"store:{bad}", model_store_root=root), "cpu")


def test_pickles_are_refused(saved):
    root, version, _ = saved
    (root / version / "extra.pt").write_bytes(b"\x80\x04")
    with pytest.raises(store.ModelIntegrityError, match=r"extra\.pt: pickled weights"):
        store.verify_version(root / version)


def test_current_and_file_uri(saved):
    root, version, _ = saved
    with pytest.raises(ModelRefError, match="no current version"):
        parse_model_ref("current", model_store_root=root)
    store.promote(root, version)
    assert parse_model_ref("current", model_store_root=f"file://{root}").version == f"store:{version}"
    assert parse_model_ref(str(root / version)).kind == "store"
    with pytest.raises(ModelRefError, match="has no version 'nope'"):
        parse_model_ref("store:nope", model_store_root=root)


def test_default_falls_back_to_builtin_without_a_shipped_champion(monkeypatch, tmp_path):
    monkeypatch.setattr(store, "DEFAULT_STORE", tmp_path / "empty")
    assert parse_model_ref("default").kind == "builtin"


def _forge(vdir, name, data):
    """Replace a file and rewrite the manifest to match: the checksum alone can no longer catch it."""
    from models.digest import sha256_file

    (vdir / name).write_bytes(data)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(vdir / name)
    (vdir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("forgery, message", [
    ("pickle", r"model\.safetensors: not a safetensors file \(a pickle"),
    ("truncated", r"model\.safetensors: .*(cut short|outside the file)"),
    ("empty", r"model\.safetensors: not a safetensors file"),
    ("json header", r"model\.safetensors: not a safetensors file \(its header is not JSON\)"),
])
def test_forged_weights_with_a_matching_manifest_are_refused_and_current_stays(saved, forgery, message):
    import pickle

    root, version, model = saved
    store.promote(root, version)
    cfg = json.loads((root / version / "open_clip_config.json").read_text())["model_cfg"]
    bad = store.save_version(root, "tiny", cfg, {}, store.trained_state_dict(build_clip(cfg, seed=6)),
                             training_data="test", metrics={})
    weights = (root / bad / "model.safetensors").read_bytes()
    data = {"pickle": pickle.dumps({"weights": [1.0, 2.0]}),
            "truncated": weights[: len(weights) - 100],
            "empty": b"",
            "json header": (8).to_bytes(8, "little") + b"\xff" * 8 + weights[16:]}[forgery]
    _forge(root / bad, "model.safetensors", data)
    with pytest.raises(store.ModelIntegrityError, match=message):
        store.promote(root, bad)
    assert store.current_version(root) == version            # the champion stays
    with pytest.raises(store.ModelIntegrityError, match=message):
        load_encoder(parse_model_ref(f"store:{bad}", model_store_root=root), "cpu")
    assert parse_model_ref("current", model_store_root=root).version == f"store:{version}"
    load_encoder(parse_model_ref("current", model_store_root=root), "cpu")  # and still loads


def test_the_shipped_stores_pass_the_container_check():
    """The check must not refuse what the project ships (encoder and head bundle)."""
    for vdir in [store.DEFAULT_STORE / v for v in store.list_versions(store.DEFAULT_STORE)] + \
            [store.DEFAULT_STORE / "heads" / v for v in store.list_versions(store.DEFAULT_STORE / "heads")]:
        store.check_safetensors(vdir / "model.safetensors")


def _valid_weights_of(model) -> bytes:
    from safetensors.torch import save as save_bytes

    return save_bytes(store.trained_state_dict(model), metadata={"format": "pt"})


def test_weights_and_manifest_rewritten_together_fail_the_name_digest(saved, tmp_path):
    """A folder keeps its genuine name while its weights (valid safetensors, other values) and manifest are
    rewritten to agree: every checksum matches, only the digest in the name can tell."""
    root, version, model = saved
    cfg = json.loads((root / version / "open_clip_config.json").read_text())["model_cfg"]
    _forge(root / version, "model.safetensors", _valid_weights_of(build_clip(cfg, seed=7)))
    digest = version.rsplit("-", 1)[1]
    with pytest.raises(store.ModelIntegrityError, match=rf"the digest in its name \({digest}\) does not match"):
        store.verify_version(root / version)
    with pytest.raises(store.ModelIntegrityError, match="digest in its name"):
        load_encoder(parse_model_ref(f"store:{version}", model_store_root=root), "cpu")


def test_a_version_under_another_name_is_refused(saved, tmp_path):
    import shutil

    root, version, _ = saved
    renamed = tmp_path / "elsewhere" / "tiny-model"
    shutil.copytree(root / version, renamed)
    with pytest.raises(store.ModelIntegrityError, match="not a store version name"):
        store.verify_version(renamed)
    # A name of the right shape with another digest, and a manifest naming another version.
    other = renamed.with_name(version[:-10] + "0123456789")
    renamed.rename(other)
    with pytest.raises(store.ModelIntegrityError, match="its manifest names version"):
        store.verify_version(other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(dict(manifest, version=other.name)))
    with pytest.raises(store.ModelIntegrityError, match=r"digest in its name \(0123456789\) does not match"):
        store.verify_version(other)


def test_the_shipped_versions_pass_the_name_digest():
    for root in (store.DEFAULT_STORE, store.DEFAULT_STORE / "heads", store.DEFAULT_STORE / "attributes"):
        for v in store.list_versions(root):
            assert store.verify_version(root / v)["version"] == v


def _manifest_only(root, version, **fields):
    (root / version).mkdir(parents=True)
    (root / version / store.MANIFEST_FILE).write_text(json.dumps({"version": version, **fields}))


def test_text_tower_origin_follows_the_copies(tmp_path):
    _manifest_only(tmp_path, "a")
    _manifest_only(tmp_path, "b", text_tower_of="a")
    _manifest_only(tmp_path, "c", text_tower_of="b")
    _manifest_only(tmp_path, "lost", text_tower_of="gone")
    _manifest_only(tmp_path, "x", text_tower_of="y")
    _manifest_only(tmp_path, "y", text_tower_of="x")
    assert store.text_tower_origin(tmp_path, "c") == "a"
    assert store.text_tower_origin(tmp_path, "a") == "a"
    assert store.text_tower_origin(tmp_path, "lost") is None     # a link out of the store
    assert store.text_tower_origin(tmp_path, "x") is None        # links that never end
    assert store.text_tower_origin(tmp_path, "nowhere") is None


def test_the_shipped_encoders_that_share_title_embeddings():
    """The matching stage's log says whether the pair scorer read the catalog's title embeddings in training."""
    from jobs.stages.matching import same_text_tower

    current = f"store:{store.current_version(store.DEFAULT_STORE)}"
    origin = store.text_tower_origin(store.DEFAULT_STORE, current[6:])
    assert origin is not None and origin != current[6:]          # the champion carries an older text tower
    assert same_text_tower(current, f"store:{origin}")
    others = [v for v in store.list_versions(store.DEFAULT_STORE)
              if v.startswith("catalog-") and store.text_tower_origin(store.DEFAULT_STORE, v) != origin]
    assert others and not same_text_tower(current, f"store:{others[0]}")
    assert not same_text_tower(current, "builtin:catalog-tiny-minilm")


def test_the_same_model_saved_twice_within_one_second_gets_a_second_version(saved, tmp_path, monkeypatch):
    """The name is the time to the second and a digest of the content: a second save of the same weights in that
    second (the ensemble command run again with --promote) gets "-2", instead of failing on the taken folder."""
    import datetime as dt

    root, version, _ = saved
    at = dt.datetime.strptime(store.VERSION_NAME.match(version)["time"], "%Y%m%dT%H%M%S").replace(
        tzinfo=dt.timezone.utc)

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return at

    monkeypatch.setattr(store, "datetime", Frozen)
    weights = (root / version / "model.safetensors").read_bytes()   # the same bytes: the same digest
    again = store.save_version(root, "tiny", tiny_model_cfg(tmp_path), {"size": [16, 16]}, {}, training_data="test",
                               metrics={"x": 1.0}, card="# card {version}\n", weights_file=weights)
    assert again == f"{version}-2" and store.VERSION_NAME.match(again)
    assert store.read_manifest(root / again)["version"] == again
    assert again in (root / again / "MODEL_CARD.md").read_text()
    store.verify_version(root / again)
    assert store.read_manifest(root / version)["version"] == version   # the first one untouched
