"""Refit a head bundle's fusion temperatures by how much each title says, and store it as a new version.

    python -m models.heads.recalibrate --fashion /work/shared/data/fashion [--bundle shipped|BUNDLE_DIR]
        [--store DIR] [--cache-dir DIR] [--report FILE.md] [--no-save]

A fused head with a title expert (:class:`models.heads.bundle.LinearHead`) ends in one softmax temperature,
fitted over full and degraded titles together. On the fashion valid split that left the shipped colour head
sure of itself on full titles and unsure on poor ones: its mean top-1 confidence was 0.97 where it was right
92% of the time, and 0.43 with no title where it was right 62% of the time. Each such head gets two temperatures
instead, a full title's and an empty one's, blended per product by the gate that already weighs its title expert
(:attr:`LinearHead.fusion_temperature_poor`). A temperature changes no product's top class: the categories and
attribute values stay what they were, their confidences move, and with them which closed attribute values pass
the bundle's ``attribute_threshold``.

The temperatures are fitted where the title expert was fitted, on the set-aside half of the valid split (all four
title conditions: full, cut to the brand, half the words, none; :func:`models.heads.fashion.dev_half`), and every
figure printed is on the other half: per head and condition the ECE, the mean confidence beside the accuracy, and
the share of products whose value passes the attribute threshold with the accuracy of those, before and after.
The weights are not touched; the new version's tensors are the old version's, byte for byte.
New bundles trained by ``python -m models.heads.fashion`` get the two temperatures in training.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.core.io import cache_root
from models.heads.bundle import HeadBundle, LinearHead, head_input
from models.heads.metrics import md_table
from models.heads.robustness import CONDITIONS, DegradedTitles, calibration_table, robustness_table
from models.heads.train import fit_fusion_temperatures

__all__ = ["Opened", "bundle_tool_parser", "main", "open_bundle", "open_with_valid", "publish", "recalibrate_head"]

log = logging.getLogger(__name__)


def _labels(head: LinearHead, values) -> np.ndarray:
    pos = {c: i for i, c in enumerate(head.classes)}
    return np.array([pos.get(v, -1) if isinstance(v, str) else -1 for v in values])


def recalibrate_head(head: LinearHead, e: dict[str, np.ndarray], deg: DegradedTitles, y: np.ndarray) -> LinearHead:
    """``head`` with its fusion temperatures refitted on the rows of ``e`` / ``deg`` (valid embeddings and titles
    in every condition; ``y`` the labels in the head's class indices, -1 unknown). Heads without a gated title
    expert come back unchanged."""
    if head.title_expert is None or not head.title_weight or head.title_min_words <= 0:
        return head
    known = y >= 0
    lps, gates = [], []
    for c in CONDITIONS:
        texts = [t for t, k in zip(deg.valid[c], known, strict=True) if k]
        lp, gate = head.fused_before_temperature(head_input(deg.valid_txt[c][known], e["va_img"][known],
                                                            head.inputs), texts)
        lps.append(lp)
        gates.append(np.broadcast_to(np.asarray(gate, dtype=np.float64), (len(texts), 1)))
    return fit_fusion_temperatures(head, np.concatenate(lps), np.concatenate([y[known]] * len(CONDITIONS)),
                                   np.concatenate(gates))


def _written(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Share of labelled products whose top value reaches ``threshold`` (the job writes those) and its accuracy."""
    known = y >= 0
    conf, pred = probs[known].max(axis=1), probs[known].argmax(axis=1)
    passed = conf >= threshold
    return {"written": float(passed.mean()) if len(passed) else 0.0,
            "written_accuracy": float((pred[passed] == y[known][passed]).mean()) if passed.any() else 0.0}


def _probs(h: LinearHead, e: dict[str, np.ndarray], deg: DegradedTitles) -> dict[str, np.ndarray]:
    """The head's probabilities in every title condition."""
    return {c: h.predict(deg.valid_txt[c], e["va_img"], deg.valid[c]) for c in CONDITIONS}


def compare(old: HeadBundle, new: HeadBundle, e: dict[str, np.ndarray], deg: DegradedTitles, rows,
            columns: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Calibration of each recalibrated head before and after, in every condition, on the rows given."""
    metrics: dict[str, Any] = {}
    sections = []
    old_heads, new_heads = old.heads(), new.heads()
    for task, column in columns.items():
        before, after = old_heads.get(task), new_heads.get(task)
        if before is None or after is None or after.fusion_temperature_poor is None:
            continue
        y = _labels(before, rows[column])
        probs = {"before": _probs(before, e, deg), "after": _probs(after, e, deg)}
        m, _ = robustness_table(y, {"before (one temperature)": probs["before"].__getitem__,
                                    "after (gated temperatures)": probs["after"].__getitem__})
        calibration = calibration_table(m)   # (the accuracy table is the same before and after)
        written = []
        for label, p in probs.items():
            w = {c: _written(p[c], y, new.attribute_threshold) for c in CONDITIONS}
            m[f"{label} written"] = w
            written.append([label, *[v for c in CONDITIONS for v in (w[c]["written"], w[c]["written_accuracy"])]])
        metrics[task] = {**m, "temperatures": {"before": before.fusion_temperature,
                                               "full": after.fusion_temperature, "poor": after.fusion_temperature_poor}}
        sections.append(
            f"#### {task} ({int((y >= 0).sum())} products; fusion temperature {before.fusion_temperature:.2f} -> "
            f"{after.fusion_temperature:.2f} on a full title, {after.fusion_temperature_poor:.2f} on an empty "
            f"one)\n\n{calibration}\n\nValues at or above the attribute threshold ({new.attribute_threshold}): "
            "share of products, and the accuracy of those:\n\n"
            + md_table(["", *[f"{label}: {what}" for label in CONDITIONS.values()
                              for what in ("written", "accuracy of written")]], written))
    return metrics, "\n\n".join(sections)


def bundle_tool_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of a tool that reads a stored head bundle and stores a changed copy (this module,
    :mod:`models.heads.ambiguity`)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--fashion", required=True, help="the fashion folder (products.parquet + images/)")
    p.add_argument("--bundle", default="shipped", help="'shipped' (the store's newest for the default encoder) or a "
                                                       "bundle folder")
    p.add_argument("--store", default=None, help="model store root (default: the shipped store)")
    p.add_argument("--cache-dir", default=str(cache_root()))
    p.add_argument("--report", default=None, help="also write the markdown report here")
    p.add_argument("--no-save", action="store_true")
    return p


def open_bundle(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, Path, HeadBundle, Any]:
    """``(store, bundle folder, bundle, its encoder)`` of a :func:`bundle_tool_parser` command line."""
    from models.encoders import load_encoder
    from models.heads.bundle import find_heads, load_heads
    from models.store import store_root

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = store_root(args.store)
    if args.bundle == "shipped":
        encoder = load_encoder("default", "cpu")
        vdir = find_heads(store, encoder.version)
        if vdir is None:
            p.error(f"no head bundle for {encoder.version} in {store}")
    else:
        vdir = Path(args.bundle)
    bundle = load_heads(vdir)
    if args.bundle != "shipped":
        encoder = load_encoder(bundle.encoder_version, "cpu")
    return store, vdir, bundle, encoder


@dataclasses.dataclass
class Opened:
    """What a :func:`bundle_tool_parser` command works on (:func:`open_with_valid`)."""

    store: Path
    folder: Path
    bundle: HeadBundle
    encoder: Any
    split: Any                       # models.training.fashion's split
    embeddings: dict[str, np.ndarray]
    train_rows: Any                  # pandas rows, each with a ``gender`` column read from its title
    valid_rows: Any
    degraded: DegradedTitles         # the valid titles in the robustness report's conditions


def open_with_valid(p: argparse.ArgumentParser, args: argparse.Namespace,
                    opened: tuple[Path, Path, HeadBundle, Any] | None = None) -> Opened:
    """The bundle of a :func:`bundle_tool_parser` command line, with the fashion split embedded by its encoder and
    the valid titles' degraded copies. ``opened``: :func:`open_bundle`'s result where the caller checked the bundle
    before the split is read (minutes)."""
    from models.heads import fashion
    from models.heads.robustness import degraded_titles
    from models.training.fashion import load_fashion

    store, vdir, bundle, encoder = opened if opened is not None else open_bundle(p, args)
    split = load_fashion(args.fashion, size=encoder.pixel_geometry, cache_dir=args.cache_dir)
    e = fashion._embed(encoder, split, Path(args.cache_dir))
    tr_rows, va_rows = split.train_rows.copy(), split.valid_rows.reset_index(drop=True)
    for rows in (tr_rows, va_rows):
        rows["gender"] = [fashion.gender_of(t) for t in rows["title"].astype(str)]
    deg = degraded_titles(encoder, tr_rows["title"].astype(str).tolist(), va_rows["title"].astype(str).tolist(),
                          Path(args.cache_dir), e["va_txt"])
    return Opened(store, vdir, bundle, encoder, split, e, tr_rows, va_rows, deg)


def main(argv: list[str] | None = None) -> int:
    p = bundle_tool_parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    from models.heads import fashion

    o = open_with_valid(p, args)
    vdir, old, e, va_rows, deg = o.folder, o.bundle, o.embeddings, o.valid_rows, o.degraded
    part = fashion.dev_half(va_rows)
    dev_e, dev_deg, dev_rows = fashion._valid_part(e, deg, va_rows, part)
    rep_e, rep_deg, rep_rows = fashion._valid_part(e, deg, va_rows, ~part)

    heads = old.heads()
    new_heads = {task: recalibrate_head(heads[task], dev_e, dev_deg, _labels(heads[task], dev_rows[column]))
                 for task, column in fashion.TASKS.items() if task in heads}
    new = dataclasses.replace(old, category=new_heads.get("category", old.category),
                              attributes={k: new_heads.get(k, h) for k, h in old.attributes.items()}, version="")
    metrics, md = compare(old, new, rep_e, rep_deg, rep_rows, fashion.TASKS)
    if not metrics:
        log.info("no head of %s has a gated title expert: nothing to recalibrate", vdir.name)
        return 0
    report = (f"### Fusion temperatures by title evidence: `{vdir.name}` recalibrated\n\nThe weights of "
              f"`{vdir.name}` unchanged; each fused head with a gated title expert refits its fusion temperature "
              "as two, a full title's and an empty one's, blended per product by the title expert's gate, on the "
              "set-aside half of the valid split in all four title conditions. Figures on the other half "
              f"({len(rep_rows)} products).\n\n{md}\n")
    return publish(args, o.store, new, o.split.snapshot, report, {"recalibrated_from": vdir.name, **metrics}, vdir,
                   f"Made by `python -m models.heads.recalibrate --fashion FASHION_DIR --bundle {vdir.name}` (the "
                   f"bundle folder). The heads' training report: the card of `{vdir.name}`.")


def publish(args: argparse.Namespace, store: Path, bundle: HeadBundle, training_data: str, report: str,
            metrics: dict[str, Any], source: Path, made_by: str) -> int:
    """Print ``report`` (and write it to ``--report``), then, unless ``--no-save``, store ``bundle`` as a new
    version whose card is the report and ``made_by``, its weight file that of ``source`` byte for byte (the tools
    change no weight)."""
    from models.heads.bundle import save_heads

    sys.stdout.write(report)
    if args.report:
        Path(args.report).write_text(report)
    if not args.no_save:
        version = save_heads(store, "heads-fashion", bundle, training_data=training_data, metrics=metrics,
                             card=f"# Head bundle {{version}}\n\n{report}\n{made_by}\n", same_weights_as=source)
        log.info("saved head bundle %s", version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
