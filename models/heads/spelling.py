"""Titles with typing errors: the heads' lexical experts read a mistyped word as the known word one edit away,
stored as a new version of a head bundle.

    python -m models.heads.spelling --fashion /work/shared/data/fashion [--bundle shipped|BUNDLE_DIR]
        [--store DIR] [--cache-dir DIR] [--report FILE.md] [--no-save]

Sellers mistype ("Puma Women Black Casual Sheos"). The heads' lexical experts (the TF-IDF expert inside a head,
and the one behind its title expert and its gate) know the words of train titles; a mistyped word is none of them,
so it tells the expert nothing while the title's other words keep a whole title's weight, and the type is read
from the brand, gender and colour. :attr:`models.heads.lexical.LexicalExpert.correct_typos` reads such a word as
the vocabulary's most frequent word one edit away. The text tower still reads the title as written (the product
embeddings are the title's own).

Measured on the fashion valid split, both halves apart (:func:`models.heads.fashion.dev_half`), for every head of
the bundle: the four title conditions of the heads' robustness report and three mistyped ones
(:func:`models.heads.degrade.mistyped`: one error in the last word, in one word, in two words), with the correction
off and on, beside the TF-IDF word + character n-gram baseline. The correction is switched on for a head where its
mean dev-half accuracy over the seven conditions is higher with it and its dev-half accuracy on full titles falls by
no more than :data:`FULL_TITLE_SLACK` (two products of the dev half's 1,778: a mistyped word in a real title is read
as another word there too, mostly rightly). The new version's tensors are the old version's, byte for byte.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from models.heads.degrade import mistyped

__all__ = ["FULL_TITLE_SLACK", "MISTYPED", "main", "mistyped_conditions"]

log = logging.getLogger(__name__)

MISTYPED = {"one typo in the last word": "last", "one typo in one word": "one", "typos in two words": "two"}
TYPO_SEED = 2028   # the degraded titles use 2026, the stuffed ones 2027
FULL_TITLE_SLACK = 0.0012


def mistyped_conditions(titles: list[str]) -> dict[str, list[str]]:
    """The :data:`MISTYPED` conditions of ``titles``."""
    return {name: mistyped(titles, words, TYPO_SEED) for name, words in MISTYPED.items()}


def _corrects(head) -> bool:
    """Whether any lexical expert of ``head`` corrects typos already."""
    experts = [head.lexical, None if head.title_expert is None else head.title_expert.lexical]
    return any(x is not None and x.correct_typos for x in experts)


def main(argv: list[str] | None = None) -> int:
    from models.heads import fashion
    from models.heads.bundle import head_input
    from models.heads.metrics import accuracy_f1, md_table
    from models.heads.recalibrate import bundle_tool_parser, open_with_valid, publish
    from models.heads.robustness import CONDITIONS, tfidf_char_baseline

    p = bundle_tool_parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    o = open_with_valid(p, args)
    store, vdir, given, encoder, split, e, deg = o.store, o.folder, o.bundle, o.encoder, o.split, o.embeddings, \
        o.degraded
    tr, va = o.train_rows, o.valid_rows
    titles = va["title"].astype(str).tolist()
    conditions = {CONDITIONS[c]: (deg.valid[c], deg.valid_txt[c]) for c in CONDITIONS}
    for name, ts in mistyped_conditions(titles).items():
        conditions[name] = (ts, encoder.embed_texts(ts))
    dev = fashion.dev_half(va)
    full = CONDITIONS["full"]

    heads = given.heads()
    chosen: dict[str, bool] = {}
    rows: list[list] = []
    metrics: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for task, column in fashion.TASKS.items():
        head = heads.get(task)
        if head is None:
            continue
        index = {c: i for i, c in enumerate(head.classes)}
        y = np.array([index.get(g, -1) if isinstance(g, str) else -1 for g in va[column]])
        labels = tr[column]
        known = labels.notna().to_numpy()
        classes = sorted(set(labels[known].astype(str)))
        pos = {c: i for i, c in enumerate(classes)}
        baseline = tfidf_char_baseline(tr["title"].astype(str)[known].tolist(),
                                       np.array([pos[c] for c in labels[known].astype(str)]))
        as_head = np.array([index.get(c, -1) for c in classes])
        models = {"as written": head.with_typo_correction(False), "typos corrected": head.with_typo_correction(True)}
        scores: dict[str, dict[str, tuple[float, float, float]]] = {}
        for cond, (ts, txt) in conditions.items():
            x = head_input(txt, e["va_img"], head.inputs)
            preds = {m: h.probs(x, ts).argmax(axis=1) for m, h in models.items()}
            preds["TF-IDF word + char n-grams + LR"] = as_head[baseline(ts)]
            for m, pred in preds.items():
                d, r = accuracy_f1(y[dev], pred[dev]), accuracy_f1(y[~dev], pred[~dev])
                scores.setdefault(m, {})[cond] = (d["accuracy"], r["accuracy"], r["macro_f1"])
        off, on = scores["as written"], scores["typos corrected"]
        better = (np.mean([v[0] for v in on.values()]) > np.mean([v[0] for v in off.values()])
                  and on[full][0] >= off[full][0] - FULL_TITLE_SLACK)
        chosen[task] = bool(better)
        for m, by_cond in scores.items():
            metrics.setdefault(task, {})[m] = {c: {"dev_accuracy": v[0], "accuracy": v[1], "macro_f1": v[2]}
                                               for c, v in by_cond.items()}
            for c, v in by_cond.items():
                rows.append([task, c, m, *v])
        log.info("%s: typo correction %s (dev, full titles %.4f -> %.4f, mean of the conditions %.4f -> %.4f)", task,
                 "on" if better else "off", off[full][0], on[full][0], np.mean([v[0] for v in off.values()]),
                 np.mean([v[0] for v in on.values()]))
    header = ["head", "titles", "lexical experts", "accuracy, dev half", "accuracy, report half",
              "macro-F1, report half"]
    switched = ", ".join(f"{t} {'on' if v else 'off'}" for t, v in chosen.items())
    report = (f"### Titles with typing errors: `{vdir.name}`\n\nThe fashion valid split ({int(dev.sum())} products in "
              f"the dev half, {int((~dev).sum())} reported), the photo unchanged. Typo correction chosen on the dev "
              f"half: {switched}.\n\n{md_table(header, rows)}\n")
    new_heads = {t: h.with_typo_correction(chosen.get(t, False)) for t, h in heads.items()}
    new = dataclasses.replace(given, category=new_heads.get("category", given.category),
                              attributes={k: new_heads.get(k, h) for k, h in given.attributes.items()}, version="")
    if all(chosen[t] == _corrects(heads[t]) for t in chosen):
        log.info("nothing to change in %s: nothing stored", vdir.name)
        args.no_save = True
    return publish(args, store, new, split.snapshot, report, {"changed_from": vdir.name, "typo_correction": chosen,
                                                              "heads": metrics}, vdir,
                   f"Made by `python -m models.heads.spelling --fashion FASHION_DIR --bundle {vdir.name}` (the bundle "
                   f"folder): the weights and temperatures of `{vdir.name}`, with typo correction in the lexical "
                   f"experts of: {', '.join(t for t, v in chosen.items() if v) or 'none'}. The heads' training "
                   f"report: the cards of `{vdir.name}` and its parents.")


if __name__ == "__main__":
    raise SystemExit(main())
