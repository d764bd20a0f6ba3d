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


def _head_scores(head, column: str, conditions: dict, o, dev: np.ndarray
                 ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """model -> condition -> (accuracy on the dev half, accuracy and macro-F1 on the report half) of ``head`` with its
    lexical experts reading the titles as written and with typos corrected, and of the TF-IDF baseline on its labels
    (``o``: :func:`models.heads.recalibrate.open_with_valid`'s)."""
    from models.heads.bundle import head_input
    from models.heads.metrics import accuracy_f1
    from models.heads.robustness import tfidf_char_baseline

    index = {c: i for i, c in enumerate(head.classes)}
    y = np.array([index.get(g, -1) if isinstance(g, str) else -1 for g in o.valid_rows[column]])
    labels = o.train_rows[column]
    known = labels.notna().to_numpy()
    classes = sorted(set(labels[known].astype(str)))
    pos = {c: i for i, c in enumerate(classes)}
    baseline = tfidf_char_baseline(o.train_rows["title"].astype(str)[known].tolist(),
                                   np.array([pos[c] for c in labels[known].astype(str)]))
    as_head = np.array([index.get(c, -1) for c in classes])
    models = {"as written": head.with_typo_correction(False), "typos corrected": head.with_typo_correction(True)}
    scores: dict[str, dict[str, tuple[float, float, float]]] = {}
    for cond, (ts, txt) in conditions.items():
        x = head_input(txt, o.embeddings["va_img"], head.inputs)
        preds = {m: h.probs(x, ts).argmax(axis=1) for m, h in models.items()}
        preds["TF-IDF word + char n-grams + LR"] = as_head[baseline(ts)]
        for m, pred in preds.items():
            d, r = accuracy_f1(y[dev], pred[dev]), accuracy_f1(y[~dev], pred[~dev])
            scores.setdefault(m, {})[cond] = (d["accuracy"], r["accuracy"], r["macro_f1"])
    return scores


def main(argv: list[str] | None = None) -> int:
    from models.heads import fashion
    from models.heads.metrics import md_table
    from models.heads.recalibrate import bundle_tool_parser, open_with_valid, publish
    from models.heads.robustness import CONDITIONS

    p = bundle_tool_parser(__doc__.split("\n")[0])
    args = p.parse_args(argv)
    o = open_with_valid(p, args)
    conditions = {CONDITIONS[c]: (o.degraded.valid[c], o.degraded.valid_txt[c]) for c in CONDITIONS}
    for name, ts in mistyped_conditions(o.valid_rows["title"].astype(str).tolist()).items():
        conditions[name] = (ts, o.encoder.embed_texts(ts))
    dev = fashion.dev_half(o.valid_rows)
    full, heads, name = CONDITIONS["full"], o.bundle.heads(), o.folder.name
    chosen: dict[str, bool] = {}
    rows: list[list] = []
    metrics: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for task, column in fashion.TASKS.items():
        if task not in heads:
            continue
        scores = _head_scores(heads[task], column, conditions, o, dev)
        off, on = scores["as written"], scores["typos corrected"]
        mean_off, mean_on = np.mean([v[0] for v in off.values()]), np.mean([v[0] for v in on.values()])
        chosen[task] = bool(mean_on > mean_off and on[full][0] >= off[full][0] - FULL_TITLE_SLACK)
        for m, by_cond in scores.items():
            metrics.setdefault(task, {})[m] = {c: {"dev_accuracy": v[0], "accuracy": v[1], "macro_f1": v[2]}
                                               for c, v in by_cond.items()}
            rows.extend([task, c, m, *v] for c, v in by_cond.items())
        log.info("%s: typo correction %s (dev, full titles %.4f -> %.4f, mean of the conditions %.4f -> %.4f)", task,
                 "on" if chosen[task] else "off", off[full][0], on[full][0], mean_off, mean_on)
    header = ["head", "titles", "lexical experts", "accuracy, dev half", "accuracy, report half",
              "macro-F1, report half"]
    switched = ", ".join(f"{t} {'on' if v else 'off'}" for t, v in chosen.items())
    report = (f"### Titles with typing errors: `{name}`\n\nThe fashion valid split ({int(dev.sum())} products in "
              f"the dev half, {int((~dev).sum())} reported), the photo unchanged. Typo correction chosen on the dev "
              f"half: {switched}.\n\n{md_table(header, rows)}\n")
    new_heads = {t: h.with_typo_correction(chosen.get(t, False)) for t, h in heads.items()}
    new = dataclasses.replace(o.bundle, category=new_heads.get("category", o.bundle.category),
                              attributes={k: new_heads.get(k, h) for k, h in o.bundle.attributes.items()}, version="")
    if all(chosen[t] == _corrects(heads[t]) for t in chosen):
        log.info("nothing to change in %s: nothing stored", name)
        args.no_save = True
    return publish(args, o.store, new, o.split.snapshot, report,
                   {"changed_from": name, "typo_correction": chosen, "heads": metrics}, o.folder,
                   f"Made by `python -m models.heads.spelling --fashion FASHION_DIR --bundle {name}` (the bundle "
                   f"folder): the weights and temperatures of `{name}`, with typo correction in the lexical "
                   f"experts of: {', '.join(t for t, v in chosen.items() if v) or 'none'}. The heads' training "
                   f"report: the cards of `{name}` and its parents.")

if __name__ == "__main__":
    raise SystemExit(main())
