"""Evaluate an attribute extractor on the valid splits, next to the dictionary baseline (ExtractGPT protocol).

::

    python -m models.attributes.evaluate --data /work/shared/data/attributes --out attributes.md [--model REF]

writes (and prints) a markdown section with one table per dataset: micro precision / recall / F1 over
(product, attribute) pairs and macro F1 over (category, attribute) groups, for the model (its most confident
value per attribute) and the baseline (:mod:`models.attributes.baseline`, fitted on the same train split).
``attributes_report(data_root)`` returns the same text for the lead's evaluation report.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.attributes.baseline import DictionaryBaseline
from models.attributes.data import VALID_FRACTION, Dataset, category_schemas, load_all
from models.attributes.metrics import Counts, Scores, score_predictions
from models.attributes.spans import find_spans

__all__ = ["attributes_report", "evaluate_all", "evaluate_dataset", "main", "report_markdown"]

log = logging.getLogger(__name__)

DATASET_TITLES = {"oa_mine": "OA-Mine", "ae_110k": "AE-110K", "wdc_pave": "WDC PAVE (all attributes)"}


def _summary(s: Scores) -> dict[str, Any]:
    m = s.micro
    return {"precision": round(m.precision, 4), "recall": round(m.recall, 4), "f1": round(m.f1, 4),
            "macro_f1": round(s.macro_f1, 4), "counts": {k: getattr(m, k) for k in ("nn", "nv", "vn", "vc", "vw")}}


def _coverage(ds: Dataset) -> dict[str, int]:
    """How many valid gold values a span extractor could produce at all (in the text; with the same case)."""
    values = in_text = exact = 0
    for p in ds.valid:
        for vals in p.gold.values():
            for v in vals:
                values += 1
                texts = [p.title, p.description or ""]
                in_text += any(find_spans(t, v) for t in texts)
                exact += any(v.strip() in t for t in texts)
    return {"values": values, "in_text": in_text, "in_text_same_case": exact}


def _folded(golds: Sequence[dict], preds: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    return ([{a: tuple(v.casefold() for v in vals) for a, vals in g.items()} for g in golds],
            [{a: v.casefold() for a, v in p.items() if v} for p in preds])


def evaluate_dataset(extractor: Any, ds: Dataset, batch_size: int = 32,
                     normalised: dict[str, dict[str, tuple[str, ...]]] | None = None) -> dict[str, Any]:
    """One extractor on one dataset's valid split: exact, case-insensitive and (with ``normalised`` gold, WDC
    PAVE) normalised scores, beside the dictionary baseline."""
    from models.attributes.extractor import best_per_attribute

    t0 = time.perf_counter()
    extracted = extractor.extract([p.title for p in ds.valid], [p.description for p in ds.valid],
                                  [p.category for p in ds.valid], batch_size=batch_size, one_per_attribute=True)
    seconds = time.perf_counter() - t0
    # What the catalog would get beyond the scored pairs: attributes per product, and the share of them that
    # the product's category never has in the data (a "Scent" on a coffee): unscored by the protocol, noise.
    schemas = category_schemas(ds.train)
    n_out = sum(len(e) for e in extracted)
    off = sum(1 for p, e in zip(ds.valid, extracted, strict=True) for x in e if x.attribute not in schemas[p.category])
    categories = [p.category for p in ds.valid]
    golds = [p.gold for p in ds.valid]
    preds = [best_per_attribute(e) for e in extracted]
    model = score_predictions(categories, golds, preds)
    baseline_model = DictionaryBaseline(ds.train)
    base_preds = [baseline_model.predict(p) for p in ds.valid]
    baseline = score_predictions(categories, golds, base_preds)
    out = {"model": _summary(model), "baseline": _summary(baseline), "products": len(ds.valid),
           "model_casefold": _summary(score_predictions(categories, *_folded(golds, preds))),
           "baseline_casefold": _summary(score_predictions(categories, *_folded(golds, base_preds))),
           "pairs": model.micro.nn + model.micro.scored, "coverage": _coverage(ds),
           "extract_seconds": round(seconds, 1), "values_per_product": round(n_out / max(1, len(ds.valid)), 2),
           "off_schema_share": round(off / max(1, n_out), 4)}
    if normalised is not None:
        ngold = [normalised.get(p.product_id, {}) for p in ds.valid]
        norm = getattr(extractor, "normaliser", None)

        def normed(pr: list[dict]) -> list[dict]:
            if norm is None:
                return pr
            return [{a: norm.normalise(a, v, p.category) or v for a, v in d.items() if v}
                    for d, p in zip(pr, ds.valid, strict=True)]

        out["model_normalised"] = _summary(score_predictions(categories, ngold, normed(preds)))
        out["baseline_normalised"] = _summary(score_predictions(categories, ngold, base_preds))
    return out


def evaluate_all(extractor: Any, data_root: str | Path, fraction: float = VALID_FRACTION) -> dict[str, Any]:
    from models.attributes.data import normalised_gold

    datasets = load_all(data_root, fraction)
    try:
        ngold = normalised_gold(data_root)
    except FileNotFoundError:
        ngold = None
    return {name: evaluate_dataset(extractor, ds, normalised=ngold if name == "wdc_pave" else None)
            for name, ds in datasets.items()}


def _row(label: str, s: dict[str, Any], folded: dict[str, Any] | None = None) -> str:
    c = Counts(**s["counts"])
    fold = f" {100 * folded['f1']:.1f} |" if folded else " |"
    return (f"| {label} | {100 * s['precision']:.1f} | {100 * s['recall']:.1f} | **{100 * s['f1']:.1f}** |{fold} "
            f"{100 * s['macro_f1']:.1f} | {c.vc} | {c.nv + c.vw} | {c.vn + c.vw} |")


def report_markdown(results: dict[str, Any] | list[tuple[str, dict[str, Any]]], extractor_version: str = "") -> str:
    """One table per dataset, a row per extractor (``[(version, results)]``) and the baseline."""
    runs = results if isinstance(results, list) else [(extractor_version, results)]
    lines = [
        "## Attribute-value extraction (open attributes, title + description)",
        "",
        f"Extractors {', '.join(f'`{v}`' for v, _ in runs)} against the dictionary baseline (train-split values "
        "of the category's attribute, longest match first), on the valid split carved from each dataset's train "
        "split (20% of the products by a hash of the product id, duplicates kept on one side). ExtractGPT "
        "protocol: one decision per (product, attribute) of the gold set; a value where gold is n/a is a false "
        "positive, no value where gold has one a false negative, a wrong value both. P/R/F1 are micro over pairs "
        "(percent), values compared exactly; F1 (case) compares them ignoring case; macro F1 averages (category, "
        "attribute) groups. Every extractor is given the product's category (the conditioned one asks the "
        "category's attributes; the tagger ignores it).",
        "",
    ]
    first = runs[0][1]
    for name in first:
        r0 = first[name]
        cov = r0["coverage"]
        lines += [
            f"### {DATASET_TITLES.get(name, name)}",
            "",
            f"{r0['products']} valid products, {r0['pairs']} (product, attribute) pairs, {cov['values']} gold values "
            f"of which {cov['in_text']} occur in the text ({cov['in_text_same_case']} with the same case: the "
            "ceiling of exact-match recall for a span extractor).",
            "",
            "| method | P | R | F1 | F1 (case) | macro F1 | correct | false pos. | false neg. |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for version, res in runs:
            lines.append(_row(f"`{version}`", res[name]["model"], res[name].get("model_casefold")))
        lines.append(_row("dictionary baseline", r0["baseline"], r0.get("baseline_casefold")))
        lines.append("")
        for version, res in runs:
            r = res[name]
            lines.append(f"`{version}` extracts {r['values_per_product']:.1f} attributes per product "
                         f"({100 * r['off_schema_share']:.1f}% of them attributes the product's category never has "
                         f"in the data, unscored by the protocol) in {r['extract_seconds']:.0f} s.")
        lines.append("")
        if "model_normalised" in r0:
            lines += [
                "#### WDC PAVE, normalised values",
                "",
                "The same products scored against WDC PAVE's normalised gold (units converted, numbers and names "
                "written one way). An extractor with a normaliser is scored on its normalised values; one without, "
                "on its values as written.",
                "",
                "| method | P | R | F1 | F1 (case) | macro F1 | correct | false pos. | false neg. |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for version, res in runs:
                lines.append(_row(f"`{version}`", res[name]["model_normalised"]))
            lines += [_row("dictionary baseline", r0["baseline_normalised"]), ""]
    return "\n".join(lines)


def attributes_report(data_root: str | Path, ref: str | None = "default", store: str | Path | None = None,
                      device: str | None = None) -> str:
    """The markdown section for the evaluation report: the stored extractors ``ref`` (comma-separated) on the
    valid splits."""
    from models.attributes.extractor import load_extractor

    runs = []
    for r in (ref or "default").split(","):
        extractor = load_extractor(r.strip(), store=store, device=device)
        runs.append((extractor.version, evaluate_all(extractor, data_root)))
    return report_markdown(runs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.attributes.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of the attribute datasets")
    p.add_argument("--out", help="markdown file to write")
    p.add_argument("--model", default="default",
                   help="default, current, store:VERSION or a version folder; several, comma-separated")
    p.add_argument("--store", help="attribute model store (default: the one shipped in models/store/attributes)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    text = attributes_report(args.data, args.model, args.store, args.device)
    if args.out:
        Path(args.out).write_text(text)
    print(text)  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
