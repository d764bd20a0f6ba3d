"""Verify, on the driver and before Spark starts, every model artifact an enrich run will use.

The encoder's store version, the head bundle, the open attribute extractor and the pair scorer are each checked
against their manifest (sha256 of every file, safetensors containers, the digest in the version name). A
tampered or damaged artifact then fails the run in a fraction of a second with one line that names the file
and the fix, instead of inside a Spark task after the catalog was read. Workers keep their own check when they
load a model (defence in depth); it should never be the first to fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from models.core.errors import CatalogEnrichError

if TYPE_CHECKING:
    from jobs.stages.heads import HeadsConfig

__all__ = ["ModelCheckError", "verify_run_models"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelCheckError(CatalogEnrichError, ValueError):
    """A model the run would use is missing, damaged or tampered with; the message is one line for the user."""


class RunModels(Protocol):
    """What the check reads of a run's configuration (a :class:`jobs.enrich.EnrichConfig`): the entry point
    imports this module, so the module names the fields it needs instead of importing the entry point."""

    @property
    def model(self) -> str: ...
    @property
    def encoder_loader(self) -> str: ...
    @property
    def heads(self) -> HeadsConfig: ...
    @property
    def attributes(self) -> str: ...
    @property
    def matching(self) -> str: ...
    @property
    def pair_model(self) -> str: ...


def _guard(role: str, flag: str, step: Callable[[], T]) -> T:
    """``step()``, its model errors turned into one line: what, which file, what to do."""
    from models.refs import ModelRefError
    from models.store import ModelIntegrityError

    try:
        return step()
    except ModelIntegrityError as e:
        raise ModelCheckError(f"{role} refused: {_one_line(e)}. Restore the folder from a trusted copy of the "
                              f"model store (or retrain it), or choose another with {flag}") from None
    except (ModelRefError, OSError) as e:
        raise ModelCheckError(f"{role}: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _encoder(cfg: RunModels) -> tuple[str | None, Path | None]:
    """(encoder version, store version folder or None) of the run's encoder; the folder verified. A test or
    custom loader answers for its own model (its version is known once it loads: None here)."""
    from models.refs import parse_model_ref
    from models.store import check_safetensors, verify_version

    if cfg.encoder_loader != type(cfg).encoder_loader:
        return None, None
    ref = parse_model_ref(cfg.model)
    if ref.kind == "store":
        verify_version(Path(ref.name))
        return ref.version, Path(ref.name)
    if ref.kind == "local":   # no manifest: its version is a digest of the files; the containers must be whole
        for weights in sorted(Path(ref.name).glob("*.safetensors")):
            check_safetensors(weights)
    return ref.version, None


def _heads(ref: str, encoder_version: str | None) -> Path | None:
    """The head bundle folder the run will use (as :func:`jobs.stages.heads.plan_heads` finds it), verified."""
    from models.heads.bundle import find_heads
    from models.store import DEFAULT_STORE, ModelIntegrityError, verify_version

    if ref == "none":
        return None
    if ref == "auto":
        if encoder_version is None:
            return None
        vdir = find_heads(DEFAULT_STORE, encoder_version)
    else:
        vdir = Path(ref).expanduser().resolve()
    if vdir is not None and verify_version(vdir).get("kind") != "heads":
        raise ModelIntegrityError(f"{vdir} is not a head bundle (its manifest's kind is not 'heads')")
    return vdir


def _extractor(ref: str) -> Path | None:
    from jobs.stages.heads import resolve_extractor
    from models.attributes.extractor import resolve_version
    from models.store import verify_version

    found = resolve_extractor(ref)
    if found is None:
        return None
    vdir = resolve_version(found[0])
    verify_version(vdir)
    return vdir


def verify_run_models(cfg: RunModels) -> dict[str, str]:
    """Verify every model artifact ``cfg`` names; ``{role: folder}`` of those checked (logged with the time taken).

    Raises :class:`ModelCheckError` on the first one that fails.
    """
    from jobs.stages.matching import resolve_matching, resolve_pair_model

    t = time.perf_counter()
    version, encoder_dir = _guard("encoder", "--model", lambda: _encoder(cfg))
    found = {"encoder": encoder_dir,
             "head bundle": _guard("head bundle", "--heads", lambda: _heads(cfg.heads.heads, version)),
             "attribute extractor": _guard("attribute extractor", "--attributes", lambda: _extractor(cfg.attributes)),
             "pair scorer": _guard("pair scorer", "--matching", lambda: resolve_matching(cfg.matching))}
    if found["pair scorer"] is not None:
        found["pair cross-encoder"] = _guard("pair cross-encoder", "--pair-model",
                                             lambda: resolve_pair_model(cfg.pair_model))
    checked = {role: str(vdir) for role, vdir in found.items() if vdir is not None}
    log.info("models verified on the driver in %.2f s: %s", time.perf_counter() - t,
             ", ".join(f"{k} {Path(v).name}" for k, v in checked.items()) or "none with a manifest")
    return checked
