"""Titles stuffed with other products' words: the category head's title expert switched off on them, stored as a
new version of a head bundle.

    python -m models.heads.ambiguity --fashion /work/shared/data/fashion [--bundle shipped|BUNDLE_DIR]
        [--store DIR] [--cache-dir DIR] [--report FILE.md] [--no-save]

Sellers stuff titles with the words buyers search for ("Nike Women Black T-Shirts Body Lotion Shorts"). The fused
category head sees the photo and mostly holds; its title expert (a head on the text alone, added with a weight that
grows with the title's known words) reads the stuffed words and overrules it. With
:attr:`models.heads.bundle.LinearHead.ambiguous_titles` set, a title that names two or more of the head's classes
gives its title expert no weight, as an empty title does. Nothing is fitted: the flag has no parameter, and a title
that names at most one class is read exactly as before.

Measured on the fashion valid split, both halves apart (:func:`models.heads.fashion.dev_half`: the half the title
expert was fitted on, and the report half), in the four title conditions of the heads' robustness report and four
stuffed ones: one or two other classes' names appended, or one or two phrases from other classes' train titles
(their last two words: "Body Lotion", "Red Skirt"), beside the TF-IDF word + character n-gram baseline. The new
version's tensors are the old version's, byte for byte; only the category head's description changes.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from models.heads.degrade import stuffed

__all__ = ["STUFFED", "main", "stuffed_conditions"]

log = logging.getLogger(__name__)

# condition -> (what is appended, how many); drawn with seed 2027 (the degraded titles use 2026)
STUFFED = {"one class name added": ("names", 1), "two class names added": ("names", 2),
           "one title phrase added": ("phrases", 1), "two title phrases added": ("phrases", 2)}
STUFF_SEED = 2027


def stuffed_conditions(titles: list[str], labels: list[str], train_titles: list[str], train_labels: list[str]
                       ) -> dict[str, list[str]]:
    """The :data:`STUFFED` conditions of ``titles``: class names, or the last two words of train titles of each
    class (read from train only)."""
    phrases: dict[str, list[str]] = {}
    for t, c in zip(train_titles, train_labels, strict=True):
        words = str(t).split()
        if len(words) >= 2:
            phrases.setdefault(c, []).append(" ".join(words[-2:]))
    pools = {"names": {c: [c] for c in set(train_labels)}, "phrases": phrases}
    return {name: stuffed(titles, labels, pools[kind], n, STUFF_SEED) for name, (kind, n) in STUFFED.items()}


def main(argv: list[str] | None = None) -> int:
    from models.heads import fashion
    from models.heads.bundle import head_input
    from models.heads.metrics import accuracy_f1, md_table
    from models.heads.recalibrate import bundle_tool_parser, open_bundle, publish
    from models.heads.robustness import CONDITIONS, degraded_titles, tfidf_char_baseline
    from models.training.fashion import load_fashion

    p = bundle_tool_parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    store, vdir, given, encoder = open_bundle(p, args)
    if given.category is None or given.category.title_expert is None:
        p.error(f"{vdir.name} has no category head with a title expert: nothing to change")
    if given.category.ambiguous_titles:
        log.info("%s has the switch already: measured against the switch off, nothing stored", vdir.name)
        args.no_save = True
    old, new = (dataclasses.replace(given, category=dataclasses.replace(given.category, ambiguous_titles=on),
                                    version="") for on in (False, True))

    split = load_fashion(args.fashion, size=encoder.pixel_geometry, cache_dir=args.cache_dir)
    e = fashion._embed(encoder, split, Path(args.cache_dir))
    column = fashion.TASKS["category"]
    tr, va = split.train_rows, split.valid_rows.reset_index(drop=True)
    titles, gold = va["title"].astype(str).tolist(), va[column].astype(str).to_numpy()
    deg = degraded_titles(encoder, tr["title"].astype(str).tolist(), titles, Path(args.cache_dir), e["va_txt"])
    conditions = {CONDITIONS[c]: (deg.valid[c], deg.valid_txt[c]) for c in CONDITIONS}
    for name, ts in stuffed_conditions(titles, gold.tolist(), tr["title"].astype(str).tolist(),
                                       tr[column].astype(str).tolist()).items():
        conditions[name] = (ts, encoder.embed_texts(ts))
    # every label as an index into the category head's classes (-1: a type the head does not know, left out)
    index = {c: i for i, c in enumerate(old.category.classes)}
    y = np.array([index.get(g, -1) for g in gold])
    classes = sorted(set(tr[column].astype(str)))
    pos = {c: i for i, c in enumerate(classes)}
    baseline = tfidf_char_baseline(tr["title"].astype(str).tolist(),
                                   np.array([pos[c] for c in tr[column].astype(str)]))
    as_head = np.array([index.get(c, -1) for c in classes])
    dev = fashion.dev_half(va)
    rows: list[list] = []
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    switch = "title expert off on ambiguous titles"
    for cond, (ts, txt) in conditions.items():
        x = head_input(txt, e["va_img"], old.category.inputs)
        preds = {"title expert always on": old.category.probs(x, ts).argmax(axis=1),
                 switch: new.category.probs(x, ts).argmax(axis=1),
                 "TF-IDF word + char n-grams + LR": as_head[baseline(ts)]}
        switched = (np.asarray(new.category.title_gate(ts)) == 0).ravel() & ~(
            np.asarray(old.category.title_gate(ts)) == 0).ravel()
        for model, pred in preds.items():
            d, r = accuracy_f1(y[dev], pred[dev]), accuracy_f1(y[~dev], pred[~dev])
            metrics.setdefault(model, {})[cond] = {"dev_accuracy": d["accuracy"], "accuracy": r["accuracy"],
                                                   "macro_f1": r["macro_f1"]}
            rows.append([cond, model, d["accuracy"], r["accuracy"], r["macro_f1"],
                         int(switched[~dev].sum()) if model == switch else ""])
    header = ["titles", "category", "accuracy, dev half", "accuracy, report half", "macro-F1, report half",
              "report-half titles whose expert is switched off"]
    report = (f"### The title expert switched off on titles that name two or more types: `{vdir.name}`\n\n"
              f"Category on the fashion valid split ({int(dev.sum())} products in the dev half, {int((~dev).sum())} "
              f"reported), the photo unchanged.\n\n{md_table(header, rows)}\n")
    return publish(args, store, new, split.snapshot, report, {"changed_from": vdir.name, "category": metrics}, vdir,
                   f"Made by `python -m models.heads.ambiguity --fashion FASHION_DIR --bundle {vdir.name}` (the bundle "
                   f"folder): the weights and temperatures of `{vdir.name}`, with the category head's "
                   f"`ambiguous_titles` set. The heads' training report: the cards of `{vdir.name}` and its parents.")


if __name__ == "__main__":
    raise SystemExit(main())
