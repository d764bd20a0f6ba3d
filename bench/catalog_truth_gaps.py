"""What the enrich job's matches on the walmart_amazon catalog are, read against the shops' own model numbers.

    python bench/catalog_truth_gaps.py --data ../shared/data/matching --work DIR [--min-score 0.0]

``DIR`` is a ``jobs.catalog_eval`` work folder that ran ``walmart_amazon`` (it holds
``walmart_amazon/matches.parquet``, the job's ``product_matches`` table). The catalog's truth lists only pairs
across the two shops, one-to-one, and its README says it is incomplete. Each stored match is put in one of three
kinds by that truth: ``true``, ``false, across the shops`` and ``false, within one shop``; and, by the
``modelno`` field of the two records (which the job never reads: its catalog has title, brand and price only),
in one of three readings:

* ``same model number``: both records carry the same model number (compared as lower-case letters and digits),
  or one carries a model number of 5+ characters that the other's title holds;
* ``different``: both carry model numbers and they differ, or the one model number is not in the other title;
* ``unknown``: neither record carries a model number (or only a short one).

A ``false`` match with the same model number is most likely a duplicate the truth does not list (the same
product listed twice in one shop, or a cross-shop pair left out). The reading is a lower bound on such gaps: a
true pair reads ``different`` too when the shops write the model number differently (the ``true`` row shows how
often).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _norm(value: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(value or "").lower())


def reading(model_a: str, model_b: str, title_a: str, title_b: str) -> str:
    """``same model number``, ``different`` or ``unknown`` for two records (model numbers and titles normalised
    by :func:`_norm`)."""
    if model_a and model_b:
        return "same model number" if model_a == model_b else "different"
    for model, title in ((model_a, title_b), (model_b, title_a)):
        if len(model) >= 5:
            return "same model number" if model in title else "different"
    return "unknown"


def table(records: pd.DataFrame, matches: pd.DataFrame, min_score: float = 0.0) -> pd.DataFrame:
    """Matches scoring at least ``min_score``, counted by kind (rows) and model-number reading (columns)."""
    r = records.set_index("record_id")
    model, title, source, group = (r["modelno"].map(_norm), r["title"].map(_norm), r["source"],
                                   r["gt_entity_id"].astype(str))
    m = matches[matches["score"] >= min_score]
    a, b = m["product_id_a"], m["product_id_b"]
    kind = ["true" if group[x] == group[y] else
            "false, within one shop" if source[x] == source[y] else "false, across the shops"
            for x, y in zip(a, b, strict=True)]
    read = [reading(model[x], model[y], title[x], title[y]) for x, y in zip(a, b, strict=True)]
    out = pd.crosstab(pd.Series(kind, name="kind"), pd.Series(read, name="model numbers"))
    out["matches"] = out.sum(axis=1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="the shared matching data folder")
    ap.add_argument("--work", required=True, type=Path, help="a jobs.catalog_eval work folder with walmart_amazon")
    ap.add_argument("--min-score", type=float, default=0.0, help="count only matches scoring at least this")
    a = ap.parse_args(argv)
    records = pd.read_parquet(Path(a.data) / "catalog_dedup" / "walmart_amazon" / "records.parquet")
    matches = pd.read_parquet(a.work / "walmart_amazon" / "matches.parquet")
    t = table(records, matches, a.min_score)
    print("| kind | " + " | ".join(t.columns) + " |")
    print("|---|" + "---:|" * len(t.columns))
    for kind, row in t.iterrows():
        print(f"| {kind} | " + " | ".join(str(int(v)) for v in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
