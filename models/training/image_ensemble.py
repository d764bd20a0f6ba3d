"""Store several image towers that share one text tower as one encoder version (:mod:`models.ensemble`).

    python -m models.training.image_ensemble --data FASHION_DIR --members store:A,PATH_OF_B [--promote]

Each member is a store version (or its folder) with a single image tower, trained against the same locked text
tower (``models.training.image_tower``): the text tensors must be equal, bit for bit, and the architectures and
preprocessing the same. The new version carries the first member's text tower and logit scale, and each member's
image tower under ``visual.members.<i>``, in half precision by default, so that a version of two towers adds
about as much to the repository as one (on the fashion valid split the image probe of two regnetx_002 towers
moved from 0.8534 in fp32 to 0.8525 so stored). Nothing is trained: the version is evaluated on the valid split
with the protocol of :func:`models.training.evaluate.evaluate`, checked to reproduce its in-memory embeddings
from the store, and promoted only with ``--promote``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Any

from models.arch import ENSEMBLE_KEY, ensemble_size

__all__ = ["ensemble_state", "main", "member_recipe"]

log = logging.getLogger(__name__)


def ensemble_state(members: list[tuple[dict[str, Any], dict[str, Any]]], half: bool = True
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, state) of one version made of ``members`` (each ``(model_cfg, stored state)``).

    Refuses members that are ensembles themselves, differ in architecture, or carry different text towers."""
    import torch

    if len(members) < 2:
        raise ValueError(f"an image ensemble needs at least two members, got {len(members)}")
    cfg0, state0 = members[0]
    for i, (cfg, state) in enumerate(members):
        if ensemble_size(cfg) != 1:
            raise ValueError(f"member {i} is an image ensemble itself ({ENSEMBLE_KEY}={cfg[ENSEMBLE_KEY]})")
        if cfg != cfg0:
            raise ValueError(f"member {i} has another architecture than member 0: {json.dumps(cfg)[:300]}")
        text = sorted(k for k in state if not k.startswith("visual."))
        if text != sorted(k for k in state0 if not k.startswith("visual.")) or not all(
                torch.equal(state[k], state0[k]) for k in text):
            raise ValueError(f"member {i} carries another text tower than member 0: an ensemble's towers must be "
                             "trained against one locked text tower (models.training.image_tower)")
    out = {k: v for k, v in state0.items() if not k.startswith("visual.")}
    for i, (_, state) in enumerate(members):
        for k, v in state.items():
            if k.startswith("visual."):
                out[f"visual.members.{i}." + k.removeprefix("visual.")] = (
                    v.half() if half and v.is_floating_point() else v).contiguous()
    return {**cfg0, ENSEMBLE_KEY: len(members)}, out


def member_recipe(card: str) -> str:
    """The command in the "Reproduce" section of a member's card ("" when it has none)."""
    m = re.search(r"## Reproduce\s*```\s*(.*?)\s*```", card, flags=re.S)
    return m.group(1).strip() if m else ""


def _card(names: list[str], metrics: list[dict[str, Any]], cand: dict[str, float], half: bool, split: Any,
          cmd: str, recipes: list[str]) -> str:
    from models.training.card import model_card

    steps = "\n".join(f"# member {i}: {n}\n{r or '(its card gives no command)'}"
                      for i, (n, r) in enumerate(zip(names, recipes, strict=True)))

    cols = {f"member `{n}`": m for n, m in zip(names, metrics, strict=True)}
    cols["this model"] = cand
    return model_card(
        title=f"{len(names)} image towers answering together (models/ensemble.py)",
        summary=(f"The image embedding is the mean of the unit embeddings of {len(names)} image towers of one "
                 f"architecture, each trained against the same locked text tower ({', '.join(f'`{n}`' for n in names)}"
                 f"); the text tower is theirs, unchanged: every text embedding is the first member's, bit for bit. "
                 f"Nothing was trained for this version: see each member's card for how it was trained."),
        training=(f"None here. The members' towers are stored {'in half precision' if half else 'as they were'}. "
                  "Each member's training command is under Reproduce, before the command that joins them."),
        data=(f"The members' training data: {split.snapshot}; evaluated on its valid split ({len(split.valid)} "
              "products), which no member trained on."),
        evaluation=("On the valid split, with the protocol of the members' cards (retrieval gallery = the first "
                    f"{int(cand['gallery_size'])} valid products; linear probe on "
                    f"{int(cand.get('probe_train_items', 0))} random train products, accuracy on every valid "
                    "product). The members' figures are those recorded in their manifests."),
        columns=cols,
        reproduce=f"{steps}\n# this version\n{cmd}",
        limitations=("The image tower costs the sum of its members' (each is small beside the text tower). The "
                     "members' limitations hold: tiny photos, an English text tower."),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.training.image_ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the fashion folder the members were trained on")
    p.add_argument("--members", required=True, help="comma-separated store versions or version folders")
    p.add_argument("--store", default=None, help="model store root (default: the shipped store)")
    p.add_argument("--cache-dir", default=None, help="decoded photos are cached here")
    p.add_argument("--full-precision", action="store_true", help="store the towers in fp32 (default: fp16)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--promote", action="store_true", help="make the new version the store's current one")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    with torch.no_grad():   # nothing is trained; and a caller's autograd state is left as it was
        return _join(args)


def _join(args: argparse.Namespace) -> int:
    import torch

    from models.arch import build_clip, pixel_geometry
    from models.encoders import IMAGE_BF16_KEY, load_encoder, measure_image_bf16
    from models.refs import resolve_substore_ref
    from models.store import (
        CARD_FILE,
        CONFIG_FILE,
        ModelIntegrityError,
        promote,
        read_manifest,
        save_version,
        store_root,
    )
    from models.training.evaluate import EvalConfig, evaluate
    from models.training.fashion import load_fashion
    from models.training.pipeline import in_memory_encoder, same_embeddings, stored_preprocess, stored_state

    if args.threads:
        torch.set_num_threads(args.threads)
    root = store_root(args.store)
    try:
        dirs = [resolve_substore_ref(r.strip(), root, "image tower") for r in args.members.split(",") if r.strip()]
        manifests = [read_manifest(d) for d in dirs]
    except (ValueError, ModelIntegrityError) as e:   # ModelIntegrityError: a version folder without a manifest
        raise SystemExit(f"a member is not a model version: {e}") from None
    names = [str(m.get("version", d.name)) for m, d in zip(manifests, dirs, strict=True)]
    pps = [json.loads((d / CONFIG_FILE).read_text()).get("preprocess_cfg") for d in dirs]
    if any(pp != pps[0] for pp in pps):
        raise SystemExit("the members preprocess photos differently; an ensemble's towers must share one input")
    try:
        model_cfg, state = ensemble_state([stored_state(d) for d in dirs], half=not args.full_precision)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    model = build_clip(model_cfg, pps[0])
    missing = [k for k in model.state_dict() if k not in state and not k.startswith("text.transformer.")]
    if missing:
        raise SystemExit(f"the members' tensors do not fill the ensemble: missing {missing[:5]}")
    model.load_state_dict(state, strict=False)
    split = load_fashion(args.data, size=pixel_geometry(model_cfg), cache_dir=args.cache_dir)
    cand = evaluate(in_memory_encoder(model, model_cfg), split.train, split.valid, EvalConfig())
    bf16 = measure_image_bf16(model, split.valid.pixels)
    member_metrics = [m.get("metrics", {}).get("valid", {}) for m in manifests]
    cmd = (f"python -m models.training.image_ensemble --data {args.data} --members "
           + ",".join(f"store:{n}" for n in names) + (" --full-precision" if args.full_precision else ""))
    # Stored as joined: the first member's text tensors and the towers in fp16 (the model holds them in fp32 once
    # loaded). Not the model's own state: it holds the whole packaged text transformer too (76 MB more).
    version = save_version(
        root, manifests[0].get("name", "catalog-minilm") + f"-x{len(dirs)}", model_cfg, stored_preprocess(model),
        state, training_data=str(manifests[0].get("training_data", split.snapshot)),
        metrics={"valid": cand, "members_valid": dict(zip(names, member_metrics, strict=True))},
        extra={"base_architecture": manifests[0].get("base_architecture"), "languages": ["en"],
               "text_tower_of": names[0], "ensemble_of": names, IMAGE_BF16_KEY: bf16},
        card=_card(names, member_metrics, cand, not args.full_precision, split, cmd,
                   [member_recipe((d / CARD_FILE).read_text()) if (d / CARD_FILE).is_file() else "" for d in dirs]))
    stored = load_encoder(str(root / version), "cpu")
    if not same_embeddings(stored, in_memory_encoder(model, model_cfg), split.valid):
        log.error("the stored version %s does not reproduce the ensemble's embeddings", version)
        return 1
    log.info("stored %s: image probe %.4f (members %s)", version, cand.get("probe_image_acc", float("nan")),
             [round(m.get("probe_image_acc", float("nan")), 4) for m in member_metrics])
    if args.promote:
        promote(root, version)
        log.info("promoted %s", version)
    sys.stdout.write(version + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
