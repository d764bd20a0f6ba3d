"""Attribute extraction scored end to end through the enrich job: the table a user reads, not the model in memory.

    python -m jobs.attributes_eval --data /work/shared/data/attributes --work DIR [--out FILE.md]
        [--datasets oa_mine,ae_110k,wdc_pave] [--attributes REF]

The valid split of each gold set (the one ``models.attributes.evaluate`` reports) becomes a catalog: the
product's id (prefixed with the set's name), title, description and the category as a seller gives it, no
image. The real enrich job runs on it (heads, categories and matching off), and its ``product_attributes`` rows
are scored with the ExtractGPT protocol (:mod:`models.attributes.metrics`): per gold (product, attribute), the
table's most confident value of that attribute, the names compared as the table writes them
(:func:`models.attributes.vocabulary.canonical_name`). WDC PAVE is scored as written and, against its normalised
gold, on the table's ``normalized_value`` (its value where there is none). A product the job quarantined has no
rows: its gold values count as missed.

Beside each figure: the same extractor scored in memory (:func:`models.attributes.evaluate.evaluate_all`), so a
difference is the job's (its input checks, its batching, the names it writes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["catalog_of", "job_predictions", "main", "score_tables"]

log = logging.getLogger(__name__)


def catalog_of(datasets: dict[str, Any]) -> pd.DataFrame:
    """The valid products of every gold set as one catalog (``<set>:<product id>``), the schema's columns."""
    rows = [{"product_id": f"{name}:{p.product_id}", "title": p.title, "description": p.description,
             "category": p.category}
            for name, ds in datasets.items() for p in ds.valid]
    return pd.DataFrame(rows, columns=["product_id", "title", "description", "category"])


def job_predictions(table: pd.DataFrame, normalised: bool = False) -> dict[str, dict[str, str]]:
    """product id -> {attribute as the table names it -> its most confident value} (``normalised``: the
    ``normalized_value`` where the row has one)."""
    if table.empty:
        return {}
    rows = table.sort_values(["product_id", "attribute", "confidence"], ascending=[True, True, False])
    rows = rows.drop_duplicates(["product_id", "attribute"])
    out: dict[str, dict[str, str]] = {}
    for r in rows.itertuples(index=False):
        value = r.value
        if normalised and isinstance(r.normalized_value, str) and r.normalized_value.strip():
            value = r.normalized_value
        out.setdefault(r.product_id, {})[r.attribute] = value
    return out


def score_tables(name: str, ds: Any, table: pd.DataFrame, gold: dict[str, dict[str, tuple[str, ...]]] | None = None,
                 normalised: bool = False) -> Any:
    """ExtractGPT scores of the job's rows for one gold set's valid products (``gold``: another gold, keyed by
    the set's product id, e.g. the normalised one)."""
    from models.attributes.metrics import score_predictions
    from models.attributes.vocabulary import canonical_name

    found = job_predictions(table, normalised)
    categories, golds, preds = [], [], []
    for p in ds.valid:
        g = p.gold if gold is None else gold.get(p.product_id, {})
        row = found.get(f"{name}:{p.product_id}", {})
        categories.append(p.category)
        golds.append(g)
        preds.append({a: row.get(canonical_name(a)) for a in g})
    return score_predictions(categories, golds, preds)


def _run_job(catalog: pd.DataFrame, work: Path, job_args: Sequence[str]) -> tuple[pd.DataFrame, float]:
    import shutil

    from jobs.catalog_eval import read_table, run_enrich

    work.mkdir(parents=True, exist_ok=True)
    path, lake = work / "catalog.parquet", work / "lake"
    catalog.to_parquet(path, index=False)
    shutil.rmtree(lake, ignore_errors=True)
    seconds = run_enrich(["--catalog", str(path), "--lake", str(lake), "--heads", "none", "--categories", "none",
                          "--matching", "none", *job_args], "the attribute gold sets")
    table = read_table(lake, "product_attributes")
    return table[table["method"].str.startswith("open:")], seconds


def _f1(s: Any) -> str:
    return f"{100 * s.micro.f1:.1f}"


def report(data: str | Path, work: Path, names: Sequence[str] | None = None, attributes: str = "default"
           ) -> str:
    from models.attributes.data import load_all, normalised_gold
    from models.attributes.evaluate import evaluate_dataset
    from models.attributes.extractor import load_extractor

    datasets = load_all(data, names=tuple(names) if names else None)
    catalog = catalog_of(datasets)
    job_ref = "auto" if attributes in ("default", "current") else attributes   # the job's name for the champion
    table, seconds = _run_job(catalog, work, ["--attributes", job_ref])
    extractor = load_extractor(attributes)
    try:
        ngold = normalised_gold(data)
    except FileNotFoundError:
        ngold = None
    with_rows = set(table["product_id"])
    lines = [f"Extractor `{extractor.version}` in the enrich job ({len(catalog)} valid products of "
             f"{', '.join(datasets)}, one run, {seconds:.0f} s) and in memory; micro F1, percent.", "",
             "| gold set | products | with rows in the table | job P | job R | job F1 | in memory F1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ds in datasets.items():
        job = score_tables(name, ds, table)
        mem = evaluate_dataset(extractor, ds, normalised=ngold if name == "wdc_pave" else None)
        rows = sum(f"{name}:{p.product_id}" in with_rows for p in ds.valid)
        m = job.micro
        lines.append(f"| {name} | {len(ds.valid)} | {rows} | {100 * m.precision:.1f} | {100 * m.recall:.1f} | "
                     f"**{_f1(job)}** | {100 * mem['model']['f1']:.1f} |")
        if name == "wdc_pave" and ngold is not None:
            norm = score_tables(name, ds, table, gold=ngold, normalised=True)
            n = norm.micro
            lines.append(f"| {name}, normalised | {len(ds.valid)} | {rows} | {100 * n.precision:.1f} | "
                         f"{100 * n.recall:.1f} | **{_f1(norm)}** | {100 * mem['model_normalised']['f1']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.attributes_eval", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of the attribute gold sets (*_products, *_attribute_values)")
    p.add_argument("--work", required=True, help="scratch folder for the catalog and the lake")
    p.add_argument("--out", help="markdown file to write")
    p.add_argument("--datasets", default="", help="comma-separated gold sets (default: all three)")
    p.add_argument("--attributes", default="default", help="the extractor: default, store:VERSION or a folder")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [n for n in a.datasets.split(",") if n] or None
    text = report(a.data, Path(a.work), names, a.attributes)
    if a.out:
        Path(a.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
