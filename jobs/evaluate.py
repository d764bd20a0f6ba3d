"""The evaluation report: every task's metric on the shared valid splits, next to a plain baseline.

    python -m jobs.evaluate --data /work/shared/data [--out EVALUATION.md] [--only encoder,heads,...]

Sections (each printed and written as markdown; a section whose data folder is missing is skipped with a note):

* ``encoder``: the shipped encoder's retrieval and linear-probe figures against the same architecture without
  contrastive pre-training (measured when the model was trained; its manifest holds them);
* ``heads``: categories, closed attributes (colour, usage, gender) and adult recognition (trains the head
  bundle on the fashion train split, as ``python -m models.heads.fashion`` does, without saving it);
* ``attributes``: open attribute-value extraction on OA-Mine, AE-110K and WDC PAVE (ExtractGPT protocol);
* ``matching``: pair matching and clustering on the DeepMatcher and WDC Products valid splits.

The withheld test splits are scored the same way by the maintainers; nothing here reads them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import io
import logging
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["SECTIONS", "encoder_section", "main"]

log = logging.getLogger("jobs.evaluate")   # the module name, also under python -m


def encoder_section(data: Path, model: str) -> str:
    from models.heads.metrics import md_table
    from models.refs import parse_model_ref
    from models.store import DEFAULT_STORE, read_manifest

    ref = parse_model_ref(model)
    vdir = Path(ref.name) if Path(ref.name).is_dir() else DEFAULT_STORE / ref.version.removeprefix("store:")
    manifest = read_manifest(vdir)
    m = manifest["metrics"]
    cand, base = m["valid"], m["baseline_valid"]
    names = [("i2t_recall@1", "image->text recall@1"), ("i2t_recall@10", "image->text recall@10"),
             ("t2i_recall@1", "text->image recall@1"), ("t2i_recall@10", "text->image recall@10"),
             ("probe_image_acc", "linear probe accuracy, image"), ("probe_text_acc", "linear probe accuracy, text"),
             ("probe_fused_acc", "linear probe accuracy, fused")]
    rows = [[label, base[k], cand[k], "yes" if cand[k] > base[k] else "no"] for k, label in names if k in cand]
    return (f"### Encoder `{ref.version}`\n\nFashion valid split ({int(cand.get('probe_valid_items', 0))} products; "
            f"retrieval over a gallery of {int(cand['gallery_size'])}). Baseline: the same architecture without "
            f"contrastive pre-training. Training data: {manifest.get('training_data')}. Figures from the model's "
            f"manifest, measured when it was trained (reproduce with the command in its model card).\n\n"
            + md_table(["metric", "baseline", "this model", "above baseline"], rows))


def _heads(data: Path, model: str) -> str:
    from models.heads.fashion import main as heads_main

    out = io.StringIO()
    args = ["--fashion", str(data / "fashion"), "--model", model, "--no-save"]
    if (data / "taxonomy").is_dir():
        args += ["--taxonomy", str(data / "taxonomy")]
    with redirect_stdout(out):
        heads_main(args)
    return out.getvalue().strip()


def _optional(module: str, function: str, folder: str) -> Callable[[Path, str], str]:
    def section(data: Path, model: str) -> str:
        try:
            fn = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError):
            return f"### {folder}\n\nNot built yet ({module}.{function} is missing)."
        return fn(data / folder)

    return section


SECTIONS: dict[str, tuple[str, Callable[[Path, str], str]]] = {
    "encoder": ("fashion", encoder_section),
    "heads": ("fashion", _heads),
    "attributes": ("attributes", _optional("models.attributes.evaluate", "attributes_report", "attributes")),
    "matching": ("matching", _optional("models.matching.evaluate", "matching_report", "matching")),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the shared data folder (fashion/, attributes/, matching/, ...)")
    p.add_argument("--out", default="EVALUATION.md", help="markdown file to write (default: EVALUATION.md)")
    p.add_argument("--model", default="default", help="encoder to evaluate (default: the shipped champion)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = Path(args.data)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    parts = [f"# Evaluation report\n\nGenerated by `python -m jobs.evaluate --data {args.data}` on "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Every figure is on a valid split (the "
             f"test splits are withheld), next to a plain baseline."]
    for name in wanted:
        folder, fn = SECTIONS[name]
        if not (data / folder).is_dir():
            parts.append(f"### {name}\n\nSkipped: {data / folder} does not exist.")
            continue
        log.info("section %s ...", name)
        parts.append(fn(data, args.model))
    report = "\n\n".join(parts) + "\n"
    Path(args.out).write_text(report)
    print(report)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
