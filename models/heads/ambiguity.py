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

On such a title the fused head still reads a sentence embedding that the stuffed words move, and may pick a type
the title never named. :attr:`models.heads.bundle.LinearHead.named_weight` adds a weight to the fused
log-probability of each class the ambiguous title names (the product is most likely one of them; the photo picks
which). It is the one number fitted here: on the dev half, the weight of :data:`NAMED_WEIGHTS` with the best mean
accuracy over all eight title conditions (the smaller on a tie).

Measured on the fashion valid split, both halves apart (:func:`models.heads.fashion.dev_half`: the half the title
expert was fitted on, and the report half), in the four title conditions of the heads' robustness report and four
stuffed ones: one or two other classes' names appended, or one or two phrases from other classes' train titles
(their last two words: "Body Lotion", "Red Skirt"), beside the TF-IDF word + character n-gram baseline. The new
version's tensors are the old version's, byte for byte; only the category head's description changes.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from models.heads.bundle import LinearHead, ambiguous_names, named_class_mask
from models.heads.degrade import stuffed

__all__ = ["NAMED_WEIGHTS", "STUFFED", "fit_named_weight", "main", "stuffed_conditions"]

log = logging.getLogger(__name__)

# condition -> (what is appended, how many); drawn with seed 2027 (the degraded titles use 2026)
STUFFED = {"one class name added": ("names", 1), "two class names added": ("names", 2),
           "one title phrase added": ("phrases", 1), "two title phrases added": ("phrases", 2)}
STUFF_SEED = 2027
NAMED_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0)


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


def fit_named_weight(head: LinearHead, inputs: list[tuple[np.ndarray, list[str]]], y: np.ndarray,
                     rows: np.ndarray, weights: tuple[float, ...] = NAMED_WEIGHTS) -> tuple[float, list[float]]:
    """The :attr:`LinearHead.named_weight` of ``weights`` whose top class is right most often on ``rows`` of every
    ``(head input, titles)`` condition, averaged over the conditions (labels ``y`` in the head's class indices),
    and each weight's mean accuracy. The head's other parameters stay; ``ambiguous_titles`` is taken as set."""
    head = dataclasses.replace(head, ambiguous_titles=True, named_weight=0.0)
    fused = [(head.fused_before_temperature(x[rows], [ts[i] for i in np.flatnonzero(rows)])[0],
              ambiguous_names(named_class_mask([ts[i] for i in np.flatnonzero(rows)], head.classes)))
             for x, ts in inputs]
    accuracy = []
    for w in weights:
        hits = [((lp + w * named).argmax(axis=1) == y[rows]).mean() for lp, named in fused]
        accuracy.append(float(np.mean(hits)))
    return float(weights[int(np.argmax(accuracy))]), accuracy


def main(argv: list[str] | None = None) -> int:
    from models.heads import fashion
    from models.heads.bundle import head_input
    from models.heads.metrics import accuracy_f1, md_table
    from models.heads.recalibrate import bundle_tool_parser, open_bundle, open_with_valid, publish
    from models.heads.robustness import CONDITIONS, tfidf_char_baseline
    from models.heads.train import expected_calibration_error

    p = bundle_tool_parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    opened = open_bundle(p, args)
    store, vdir, given, encoder = opened
    if given.category is None or given.category.title_expert is None:
        p.error(f"{vdir.name} has no category head with a title expert: nothing to change")
    base = given.category
    off, switch = (dataclasses.replace(base, ambiguous_titles=on, named_weight=0.0) for on in (False, True))

    o = open_with_valid(p, args, opened)
    split, e, deg, tr, va = o.split, o.embeddings, o.degraded, o.train_rows, o.valid_rows
    column = fashion.TASKS["category"]
    titles, gold = va["title"].astype(str).tolist(), va[column].astype(str).to_numpy()
    conditions = {CONDITIONS[c]: (deg.valid[c], deg.valid_txt[c]) for c in CONDITIONS}
    for name, ts in stuffed_conditions(titles, gold.tolist(), tr["title"].astype(str).tolist(),
                                       tr[column].astype(str).tolist()).items():
        conditions[name] = (ts, encoder.embed_texts(ts))
    # every label as an index into the category head's classes (-1: a type the head does not know, left out)
    index = {c: i for i, c in enumerate(base.classes)}
    y = np.array([index.get(g, -1) for g in gold])
    dev = fashion.dev_half(va)
    inputs = {cond: (head_input(txt, e["va_img"], base.inputs), ts) for cond, (ts, txt) in conditions.items()}
    weight, curve = fit_named_weight(base, list(inputs.values()), y, dev)
    favoured = dataclasses.replace(switch, named_weight=weight)
    if base.ambiguous_titles and base.named_weight == weight:
        log.info("%s has the switch and the named types' weight %.1f already: measured, nothing stored", vdir.name,
                 weight)
        args.no_save = True
    classes = sorted(set(tr[column].astype(str)))
    pos = {c: i for i, c in enumerate(classes)}
    baseline = tfidf_char_baseline(tr["title"].astype(str).tolist(),
                                   np.array([pos[c] for c in tr[column].astype(str)]))
    as_head = np.array([index.get(c, -1) for c in classes])
    named = f"... and the types it names favoured (weight {weight:g})"
    models = {"title expert always on": off, "title expert off on ambiguous titles": switch, named: favoured}
    rows: list[list] = []
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for cond, (x, ts) in inputs.items():
        probs = {model: h.probs(x, ts) for model, h in models.items()}
        preds = {model: pr.argmax(axis=1) for model, pr in probs.items()}
        preds["TF-IDF word + char n-grams + LR"] = as_head[baseline(ts)]
        switched = (np.asarray(switch.title_gate(ts)) == 0).ravel() & ~(np.asarray(off.title_gate(ts)) == 0).ravel()
        for model, pred in preds.items():
            d, r = accuracy_f1(y[dev], pred[dev]), accuracy_f1(y[~dev], pred[~dev])
            known = ~dev & (y >= 0)
            ece = expected_calibration_error(probs[model][known], y[known]) if model in probs else None
            metrics.setdefault(model, {})[cond] = {"dev_accuracy": d["accuracy"], "accuracy": r["accuracy"],
                                                   "macro_f1": r["macro_f1"],
                                                   **({} if ece is None else {"ece": ece})}
            rows.append([cond, model, d["accuracy"], r["accuracy"], r["macro_f1"], "" if ece is None else ece,
                         int(switched[~dev].sum()) if model != "title expert always on" and ece is not None else ""])
    header = ["titles", "category", "accuracy, dev half", "accuracy, report half", "macro-F1, report half",
              "ECE, report half", "report-half titles whose expert is switched off"]
    fit = ", ".join(f"{w:g}: {a:.4f}" for w, a in zip(NAMED_WEIGHTS, curve, strict=True))
    report = (f"### Titles that name two or more types: `{vdir.name}`\n\n"
              f"Category on the fashion valid split ({int(dev.sum())} products in the dev half, {int((~dev).sum())} "
              "reported), the photo unchanged. The title expert is switched off on a title that names two or more "
              "types, and each type it names gets the fitted weight on its fused log-probability. The weight was "
              f"fitted on the dev half, mean accuracy over the eight conditions by weight: {fit}.\n\n"
              f"{md_table(header, rows)}\n")
    new = dataclasses.replace(given, category=favoured, version="")
    return publish(args, store, new, split.snapshot, report,
                   {"changed_from": vdir.name, "named_weight_fit": dict(zip(map(str, NAMED_WEIGHTS), curve,
                                                                            strict=True)),
                    "category": metrics}, vdir,
                   f"Made by `python -m models.heads.ambiguity --fashion FASHION_DIR --bundle {vdir.name}` (the bundle "
                   f"folder): the weights and temperatures of `{vdir.name}`, with the category head's "
                   f"`ambiguous_titles` set and `named_weight` {weight:g}. The heads' training report: the cards of "
                   f"`{vdir.name}` and its parents.")


if __name__ == "__main__":
    raise SystemExit(main())
