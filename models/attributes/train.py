"""Train the open attribute-value tagger on OA-Mine, AE-110K and WDC PAVE and save it to a model store.

Usage (the command that made the shipped extractor; about 15 minutes on 2 shared CPU cores)::

    python -m models.attributes.train --data /work/shared/data/attributes --store models/store/attributes --promote

Only the top of MiniLM is trained (see :mod:`models.attributes.tagger`): the frozen bottom's output is computed
once per product and cached in memory, so an epoch costs a forward and backward pass through the top layers.
Supervision per product: the attributes in its gold set (their values tagged B/I where the text has them,
everything else O; n/a attributes all O), and every attribute that no product of its dataset and category is
annotated with (a coffee title has no "Scent" nor "Processor Type"): O. Attributes of the product's category that
its annotation leaves out are not supervised: AE-110K annotates only a few attributes per product.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.attributes.data import Dataset, Product, category_schemas, data_snapshot, hash_side, load_all
from models.attributes.extractor import MODEL_KIND, EncodedRow, Extractor, encode_row
from models.attributes.spans import DECODERS, IGNORE, LabelStats, bio_labels

__all__ = [
    "TrainConfig", "attribute_list", "main", "mean_state", "save_extractor", "supervised_attributes",
    "train_extractor",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    bottom_layers: int = 4          # frozen MiniLM layers (of 6); the rest is fine-tuned
    epochs: int = 6                 # about 100 s each on the shared 2-core machine; the whole run stays under 20 min
    batch_size: int = 16
    # Learning rates, picked on the valid split: layers 2e-4 / 4e-4 / 8e-4 gave steadily better F1 in 6 epochs,
    # 1.5e-3 collapsed to tagging nothing; 6e-4 keeps a margin from that edge.
    lr_layers: float = 6e-4         # the fine-tuned transformer layers
    lr_head: float = 3e-3           # the new classifier
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    span_weight: float = 3.0        # loss weight of B/I tags against the far more frequent O
    ema: float = 0.0                # > 0: keep an exponential moving average of the weights (ZhichunRoad's EMA)
                                    # with this decay per step, and ship the average
    fgm: float = 0.0                # > 0: FGM adversarial training (ZhichunRoad): a second loss on the input states
                                    # pushed this far (L2 norm per batch) along the loss gradient
    rdrop: float = 0.0              # > 0: R-Drop: two dropout passes, this weight on the symmetric KL between them
    max_length: int = 256
    min_confidence: float = 0.5     # default threshold of the shipped extractor (its valid figures use it)
    decoder: str = "span"           # tag probabilities -> values: "span", the most probable whole spans, or
                                    # "greedy", each word's most probable tag (models.attributes.spans.DECODERS)
    valid_fraction: float = 0.2
    seed: int = 0
    category_input: bool = False    # the encoder reads the seller category first: [CLS] category [SEP] title ...
    category_dropout: float = 0.1   # with category_input: this share of the train products (by a hash of the id)
                                    # is read without it, so that a missing or unknown category still works
    datasets: str = ""              # comma-separated gold sets to train on (empty: all); the tagged attributes
                                    # are still those of all of them (a run continued with --init keeps its head)
    # torch intra-op threads. One: on the shared 2-core machine two threads ran 3-7x slower than one (spinning
    # against the other jobs), and one thread makes the float sums, hence the weights, independent of the machine.
    threads: int = 1


def attribute_list(datasets: Sequence[Dataset]) -> list[str]:
    return sorted({a for ds in datasets for p in ds.train for a in p.gold})


def supervised_attributes(product: Product, schema: set[str], attributes: Sequence[str]) -> list[str]:
    """Attributes whose tags are known for ``product``: its gold ones, and those outside its category's schema."""
    return [a for a in attributes if a in product.gold or a not in schema]


@dataclass
class Encoded:
    rows: list[EncodedRow]
    tags: list[np.ndarray]          # [tokens, attributes] int8, IGNORE where unsupervised
    stats: dict[str, LabelStats]


def category_prefix(p: Product, dropout: float) -> str | None:
    """The category a train product is read with (None for the ``dropout`` share, by a hash of its id)."""
    return None if hash_side(f"category-dropout:{p.dataset}", p.product_id, dropout) else p.category


def encode_products(datasets: Sequence[Dataset], tokenizer: Any, attributes: Sequence[str], max_length: int,
                    category_dropout: float | None = None) -> Encoded:
    """Rows and tags of every train product; ``category_dropout`` not None: read with the category first."""
    enc = Encoded([], [], {})
    for ds in datasets:
        schemas = category_schemas(ds.train)
        stats = LabelStats()
        for p in ds.train:
            prefix = category_prefix(p, category_dropout) if category_dropout is not None else None
            row = encode_row(tokenizer, p.title, p.description, max_length, prefix)
            tags, st = bio_labels([p.title, p.description], row.units, len(row.input_ids), p.gold,
                                  supervised_attributes(p, schemas[p.category], attributes), attributes)
            stats.add(st)
            enc.rows.append(row)
            enc.tags.append(tags)
        enc.stats[ds.name] = stats
        log.info("%s train labels: %s", ds.name, vars(stats))
    return enc


def cache_bottom(bottom: Any, rows: Sequence[EncodedRow], batch_size: int = 64) -> list[Any]:
    """The frozen bottom's output per row (float32 ``[tokens, hidden]``), computed once."""
    from models.attributes.qa import bottom_states

    return bottom_states(bottom, [r.input_ids for r in rows], [r.token_type_ids for r in rows], batch_size)


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    # Similar lengths together (little padding: WDC rows are 5x longer than OA-Mine's), batches in random order.
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(idx: list[int], hidden: Sequence[Any], tags: Sequence[np.ndarray]) -> tuple[Any, Any, Any]:
    import torch

    n = max(hidden[i].shape[0] for i in idx)
    dim = hidden[idx[0]].shape[1]
    h = torch.zeros((len(idx), n, dim))
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    y = torch.full((len(idx), n, tags[idx[0]].shape[1]), IGNORE, dtype=torch.long)
    for j, i in enumerate(idx):
        k = hidden[i].shape[0]
        h[j, :k] = hidden[i]
        mask[j, :k] = 1
        y[j, :k] = torch.from_numpy(tags[i].astype(np.int64))
    return h, mask, y


def make_optimizer(top: Any, cfg: Any, n_examples: int) -> tuple[Any, Any]:
    """AdamW (the transformer layers at ``cfg.lr_layers``, the classifier at ``cfg.lr_head``) and a linear warm-up
    then linear decay over ``cfg.epochs`` epochs of ``n_examples``; ``cfg`` is a tagger or conditioned config."""
    import torch

    head = [p for n, p in top.named_parameters() if n.startswith("classifier.")]
    layers = [p for n, p in top.named_parameters() if not n.startswith("classifier.")]
    opt = torch.optim.AdamW([{"params": layers, "lr": cfg.lr_layers}, {"params": head, "lr": cfg.lr_head}],
                            weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(n_examples / cfg.batch_size)
    warmup = max(1, int(cfg.warmup_fraction * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    return opt, sched


def tag_step(top: Any, opt: Any, sched: Any, logits: Any, y: Any, weight: Any) -> float:
    """One optimiser step on the O/B/I cross-entropy of ``logits`` (``[..., 3]``) against ``y`` (IGNORE skipped),
    gradients clipped to norm 1; the loss."""
    loss = tag_loss(logits, y, weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return _clip_and_step(top, opt, sched, float(loss.detach()))


def tag_loss(logits: Any, y: Any, weight: Any) -> Any:
    import torch

    return torch.nn.functional.cross_entropy(logits.reshape(-1, 3), y.reshape(-1), weight=weight,
                                             ignore_index=IGNORE)


def _clip_and_step(top: Any, opt: Any, sched: Any, loss: float) -> float:
    import torch

    torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss


def robust_tag_step(top: Any, opt: Any, sched: Any, h: Any, mask: Any, y: Any, weight: Any, cfg: Any) -> float:
    """A training step with ZhichunRoad's regularisers on the tagger (``cfg.fgm``, ``cfg.rdrop``; both 0 is
    :func:`tag_step`). R-Drop: the loss of two dropout passes plus ``rdrop`` times the symmetric KL between their
    tag distributions, averaged over real tokens and attributes. FGM (Miyato et al.): after the clean backward
    pass, the input states moved by ``fgm`` along their loss gradient (L2-normalised over the batch) give a second
    loss whose gradients add to the first ones."""
    import torch.nn.functional as F

    if cfg.fgm <= 0 and cfg.rdrop <= 0:
        return tag_step(top, opt, sched, top(h, mask), y, weight)
    opt.zero_grad(set_to_none=True)
    h = h.detach().requires_grad_(cfg.fgm > 0)
    logits = top(h, mask)
    loss = tag_loss(logits, y, weight)
    if cfg.rdrop > 0:
        logits2 = top(h, mask)
        real = mask.bool()
        a, b = F.log_softmax(logits[real], -1), F.log_softmax(logits2[real], -1)     # [tokens, attributes, 3]
        # Per (token, attribute), the cross-entropy's scale: a KL summed over the 136 attributes of a token
        # outweighed the tags 136 times, and a run with it (alpha 1.0, 14 epochs) learnt to tag nothing.
        kl = 0.5 * (F.kl_div(a, b, log_target=True, reduction="none")
                    + F.kl_div(b, a, log_target=True, reduction="none")).sum(-1).mean()
        loss = 0.5 * (loss + tag_loss(logits2, y, weight)) + cfg.rdrop * kl
    loss.backward()
    if cfg.fgm > 0 and h.grad is not None:
        g = h.grad.detach()
        delta = cfg.fgm * g / (g.norm() + 1e-12)
        tag_loss(top(h.detach() + delta, mask), y, weight).backward()
    return _clip_and_step(top, opt, sched, float(loss.detach()))


def train_top(top: Any, hidden: Sequence[Any], tags: Sequence[np.ndarray], cfg: TrainConfig) -> list[float]:
    """Fine-tune the top on cached bottom states; returns the mean loss per epoch."""
    import torch

    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt, sched = make_optimizer(top, cfg, len(hidden))
    lengths = [h.shape[0] for h in hidden]
    weight = torch.tensor([1.0, cfg.span_weight, cfg.span_weight])
    losses = []
    average = {k: v.detach().clone() for k, v in top.state_dict().items()} if cfg.ema > 0 else None
    top.train()
    for epoch in range(cfg.epochs):
        t0, total, n = time.perf_counter(), 0.0, 0
        for idx in _batches(lengths, cfg.batch_size, rng):
            h, mask, y = _collate(idx, hidden, tags)
            loss = robust_tag_step(top, opt, sched, h, mask, y, weight, cfg)
            if average is not None:
                with torch.no_grad():
                    for k, v in top.state_dict().items():
                        if v.dtype.is_floating_point:
                            average[k].mul_(cfg.ema).add_(v, alpha=1.0 - cfg.ema)
            total += loss * len(idx)
            n += len(idx)
        losses.append(total / n)
        log.info("epoch %d/%d loss %.4f (%.0f s)", epoch + 1, cfg.epochs, losses[-1], time.perf_counter() - t0)
    if average is not None:
        top.load_state_dict(average)
    top.eval()
    return losses


def _init_from(vdir: Path, top: Any, attributes: Sequence[str], bottom_layers: int) -> None:
    """Start from a stored tagger's weights (verified; same attributes and frozen layers), not from MiniLM's."""
    from models.attributes.base import load_top
    from models.refs import verified_minilm_version

    _, model_cfg, _, _ = verified_minilm_version(vdir, (MODEL_KIND,), "an attribute tagger to continue from")
    if list(model_cfg["attributes"]) != list(attributes) or int(model_cfg["bottom_layers"]) != bottom_layers:
        raise ValueError(f"--init {vdir}: its attributes or frozen layers differ from this training's "
                         f"({len(model_cfg['attributes'])} attributes, {model_cfg['bottom_layers']} frozen layers)")
    load_top(vdir, top)
    log.info("continuing from the weights of %s", vdir.name)


def train_extractor(data: str | Path, cfg: TrainConfig, init: str | Path | None = None
                    ) -> tuple[Extractor, dict[str, Any]]:
    """Train on the train splits; returns the in-memory extractor and facts for the card and manifest.
    ``init``: a stored tagger's version directory to continue training from."""
    import torch

    from models.attributes.base import quiet_transformers
    from models.attributes.tagger import load_tower, split_tower
    from models.refs import text_tower_path

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    datasets = list(load_all(data, cfg.valid_fraction).values())
    attributes = attribute_list(datasets)
    quiet_transformers()
    tokenizer, bert = load_tower(text_tower_path())
    torch.manual_seed(cfg.seed)
    bottom, top = split_tower(bert, cfg.bottom_layers, len(attributes))
    if init is not None:
        _init_from(Path(init), top, attributes, cfg.bottom_layers)
    chosen = [ds for ds in datasets if not cfg.datasets or ds.name in cfg.datasets.split(",")]
    if not chosen:
        raise ValueError(f"--datasets {cfg.datasets!r}: none of {[ds.name for ds in datasets]}")
    enc = encode_products(chosen, tokenizer, attributes, cfg.max_length,
                          cfg.category_dropout if cfg.category_input else None)
    t0 = time.perf_counter()
    hidden = cache_bottom(bottom, enc.rows)
    cache_s = time.perf_counter() - t0
    log.info("cached the frozen bottom for %d products in %.0f s", len(hidden), cache_s)
    losses = train_top(top, hidden, enc.tags, cfg)
    with torch.no_grad():  # the precision the store keeps: the figures below are those of the shipped weights
        for p in top.parameters():
            p.copy_(p.half().float())
    extractor = Extractor(tokenizer, bottom, top, attributes, version="in-memory", max_length=cfg.max_length,
                          min_confidence=cfg.min_confidence)
    extractor.category_input = cfg.category_input
    extractor.decoder = cfg.decoder
    attach_learnt(extractor, data, datasets)
    facts = {
        "attributes": attributes,
        "label_stats": {k: vars(v) for k, v in enc.stats.items()},
        "split": {ds.name: ds.stats for ds in datasets},
        "losses": [round(x, 5) for x in losses],
        "train_seconds": round(time.perf_counter() - t_start, 1),
        "cache_seconds": round(cache_s, 1),
        "trained_parameters": sum(p.numel() for p in top.parameters()),
        "init": Path(init).name if init is not None else None,
    }
    return extractor, facts


def attach_learnt(extractor: Any, data: str | Path, datasets: Sequence[Dataset]) -> None:
    """The per-category schema (what each seller category is asked), the normaliser and the gazetteer of known
    values, from the train data."""
    from models.attributes.data import normaliser_for, wdc_descriptions
    from models.attributes.gazetteer import Gazetteer
    from models.attributes.schema import AttributeSchema

    extractor.schema = AttributeSchema.learn([p for ds in datasets for p in ds.train], wdc_descriptions(data))
    extractor.normaliser = normaliser_for(data, {ds.name: ds for ds in datasets})
    extractor.gazetteer = Gazetteer.learn([p for ds in datasets for p in ds.train])


def mean_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The mean of state dicts of one architecture, rounded to the float16 the store keeps (so what is evaluated
    is what is stored)."""
    keys = set(states[0])
    if any(set(st) != keys for st in states[1:]):
        raise ValueError("the weights to average do not have the same tensors")
    return {k: (sum(st[k].float() for st in states) / len(states)).half().float() for k in states[0]}


def ensemble_members(dirs: Sequence[Path], store: Path) -> list[dict[str, str]]:
    """References to tagger versions an ensemble saved in ``store`` reads: each copied into ``store`` when it is not
    there yet (a version's files never change, so a copy is the same version), verified, with its weights' sha256."""
    import shutil

    from models import store as model_store

    refs = []
    for d in dirs:
        target = store / d.name
        if not target.exists():
            model_store.verify_version(d)
            shutil.copytree(d, target)
        manifest = model_store.verify_version(target)
        refs.append({"version": d.name, "weights_sha256": manifest["files"][model_store.WEIGHTS_FILE]})
    return refs


def attach_to_version(vdirs: Path | Sequence[Path], data: str | Path, store: Path, valid_fraction: float,
                      ensemble: bool = False, decoder: str | None = None) -> tuple[str, str]:
    """A new version of a stored tagger with the schema, normaliser and gazetteer learnt from ``data``; returns
    (version, evaluation report). One version: its weights, byte for byte. Several (runs of the same tagger, e.g.
    one continued from another with ``--init``): the mean of their weights, a uniform model soup (Wortsman et
    al., 2022); the first one's manifest describes the training. ``ensemble``: the first one's weights byte for
    byte, and the others as members whose tag probabilities are averaged with it (runs that do not average well,
    such as two seeds); they are copied into ``store`` beside the new version. ``decoder``: how the new version
    reads its tags (None: as the first one did)."""
    import json

    import torch

    from models import store as model_store
    from models.attributes.card import model_card
    from models.attributes.evaluate import evaluate_all, report_markdown
    from models.attributes.extractor import load_extractor

    dirs = [Path(vdirs)] if isinstance(vdirs, (str, Path)) else [Path(v) for v in vdirs]
    manifest = json.loads((dirs[0] / "manifest.json").read_text())
    ex = load_extractor(str(dirs[0]), device="cpu")
    if decoder is not None:
        ex.decoder = decoder
    # One version: the same tensors, so keep the stored file's bytes (git then stores the weights once).
    weights_file = (dirs[0] / model_store.WEIGHTS_FILE).read_bytes() if len(dirs) == 1 or ensemble else None
    members = ensemble_members(dirs[1:], store) if ensemble else None
    if members:
        others = [load_extractor(str(store / m["version"]), device="cpu") for m in members]
        if any(o.attributes != ex.attributes for o in others):
            raise ValueError("--ensemble: the versions tag different attributes")
        if ex.members or any(o.members for o in others):
            raise ValueError("--ensemble: give the members of an ensemble, not the ensemble itself")
        ex.members = [o.top for o in others]
    elif len(dirs) > 1:
        others = [load_extractor(str(d), device="cpu") for d in dirs[1:]]
        if any(o.attributes != ex.attributes for o in others):
            raise ValueError("--attach: the versions to average tag different attributes")
        with torch.no_grad():
            ex.top.load_state_dict(mean_state([ex.top.state_dict(), *(o.top.state_dict() for o in others)]))
    attach_learnt(ex, data, list(load_all(data, valid_fraction).values()))
    t0 = time.perf_counter()
    results = evaluate_all(ex, data, valid_fraction)
    report = report_markdown(results, extractor_version="{version}")
    cfg = replace(TrainConfig(**manifest["train_config"]), decoder=ex.decoder)
    facts = {k: manifest[k] for k in ("label_stats", "split", "train_seconds", "losses")}
    facts.update(attributes=list(ex.attributes), trained_parameters=sum(p.numel() for p in ex.top.parameters()),
                 cache_seconds=manifest.get("cache_seconds", 0.0), eval_seconds=round(time.perf_counter() - t0, 1),
                 init=manifest.get("init"),
                 soup=[d.name for d in dirs] if len(dirs) > 1 and not ensemble else manifest.get("soup"),
                 ensemble=[m["version"] for m in members] if members else None,
                 macro_f1_below_baseline=[n for n, r in results.items()
                                          if r["model"]["macro_f1"] < r["baseline"]["macro_f1"]])
    # The command that trains these weights: the stored config's non-default settings as flags.
    defaults = asdict(TrainConfig())
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in asdict(cfg).items() if v != defaults.get(k)]
    card = model_card(cfg, facts, report, argv=["--data", str(data), "--store", str(store), *flags])
    metrics = {n: {k: r[k] for k in r if k.startswith(("model", "baseline"))} for n, r in results.items()}
    version = save_extractor(ex, store, cfg, facts, metrics, card, data_snapshot(data), weights_file=weights_file,
                             ensemble=members)
    return version, report.replace("{version}", version)


def save_extractor(extractor: Extractor, store: Path, cfg: TrainConfig, facts: dict[str, Any],
                   metrics: dict[str, Any], card: str, training_data: str, name: str = "attr-minilm",
                   weights_file: bytes | None = None, ensemble: list[dict[str, str]] | None = None) -> str:
    """Write a store version (fp16 top weights) and return its id; ``current`` is not touched. ``ensemble``: the
    member versions (see :func:`ensemble_members`) the loader averages with this top."""
    from models.attributes.base import minilm_model_cfg
    from models.attributes.tagger import TOP_PREFIX
    from models.store import save_version

    model_cfg = minilm_model_cfg(
        MODEL_KIND, cfg.bottom_layers, attributes=list(extractor.attributes),
        schema=extractor.schema.to_json() if extractor.schema is not None else None,
        normaliser=extractor.normaliser.to_json() if extractor.normaliser is not None else None,
        gazetteer=extractor.gazetteer.to_json() if extractor.gazetteer is not None else None,
        **({"ensemble": ensemble} if ensemble else {}))
    preprocess_cfg = {"max_length": cfg.max_length, "min_confidence": cfg.min_confidence, "decoder": cfg.decoder,
                      "category_input": cfg.category_input,
                      "input": ("[CLS] category [SEP] " if cfg.category_input else "[CLS] ")
                      + "title [SEP] description [SEP], longest segment truncated first"}
    # float16 halves the file; the loader casts back to float32 (differences far below the decision margins).
    state = {TOP_PREFIX + k: v.detach().to("cpu").half().contiguous() for k, v in extractor.top.state_dict().items()}
    return save_version(store, name, model_cfg, preprocess_cfg, state, training_data=training_data,
                        metrics=metrics, card=card, weights_file=weights_file,
                        extra={"train_config": asdict(cfg), "label_stats": facts["label_stats"],
                               "split": facts["split"], "train_seconds": facts["train_seconds"],
                               "init": facts.get("init"), "soup": facts.get("soup"),
                               "ensemble": facts.get("ensemble"),
                               "losses": facts["losses"]})


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, TrainConfig]:
    p = argparse.ArgumentParser(prog="python -m models.attributes.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder of the *_products / *_attribute_values parquet files")
    p.add_argument("--store", required=True, help="model store folder to save the version into")
    p.add_argument("--promote", action="store_true",
                   help="make the new version the store's current one (only if it beats the baseline everywhere)")
    p.add_argument("--report", help="also write the evaluation section (markdown) to this file")
    p.add_argument("--attach", metavar="VERSION_DIR[,VERSION_DIR...]",
                   help="no training: save the weights of this stored tagger again with the category schema, the "
                        "normaliser and the gazetteer learnt from --data; several (comma-separated): the mean of "
                        "their weights")
    p.add_argument("--ensemble", action="store_true",
                   help="with --attach of several versions: keep the first one's weights and average the tag "
                        "probabilities of all of them at run time (the others are copied into --store)")
    p.add_argument("--init", metavar="VERSION_DIR",
                   help="continue from this stored tagger's weights (same attributes and frozen layers): its epochs "
                        "come on top of the ones given here")
    d = TrainConfig()
    for f in ("bottom_layers", "epochs", "batch_size", "seed", "max_length", "threads"):
        p.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(d, f))
    for f in ("lr_layers", "lr_head", "span_weight", "min_confidence", "valid_fraction", "ema", "fgm", "rdrop",
              "category_dropout"):
        p.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(d, f))
    p.add_argument("--decoder", choices=sorted(DECODERS), default=d.decoder,
                   help="how tag probabilities become values (with --attach: the new version's; default %(default)s)")
    p.add_argument("--datasets", default="", help="train on these gold sets only (comma-separated; default all)")
    p.add_argument("--category-input", action="store_true",
                   help="the encoder reads the seller category before the title (trained with --category-dropout)")
    a = p.parse_args(argv)
    cfg = TrainConfig(**{f: getattr(a, f) for f in TrainConfig.__dataclass_fields__ if hasattr(a, f)})
    return a, cfg


def main(argv: Sequence[str] | None = None) -> int:
    from models.attributes.card import model_card
    from models.attributes.evaluate import evaluate_all, report_markdown
    from models.store import promote

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, cfg = parse_args(argv)
    if args.attach:
        version, text = attach_to_version([Path(v) for v in args.attach.split(",")], args.data, Path(args.store),
                                          cfg.valid_fraction, ensemble=args.ensemble, decoder=cfg.decoder)
        if args.report:
            Path(args.report).write_text(text)
        print(text)  # noqa: T201 - the command's output
        if args.promote:
            promote(Path(args.store), version)
            log.info("promoted %s to current", version)
        return 0
    extractor, facts = train_extractor(args.data, cfg, init=args.init)
    t0 = time.perf_counter()
    results = evaluate_all(extractor, args.data, cfg.valid_fraction)
    facts["eval_seconds"] = round(time.perf_counter() - t0, 1)
    report = report_markdown(results, extractor_version="{version}")
    facts["macro_f1_below_baseline"] = [n for n, r in results.items()
                                        if r["model"]["macro_f1"] < r["baseline"]["macro_f1"]]
    card = model_card(cfg, facts, report, argv=list(argv) if argv is not None else None)
    metrics = {name: {"model": r["model"], "baseline": r["baseline"]} for name, r in results.items()}
    version = save_extractor(extractor, Path(args.store), cfg, facts, metrics, card, data_snapshot(args.data))
    text = report.replace("{version}", version)
    if args.report:
        Path(args.report).write_text(text)
    log.info("saved %s in %s (train %.0f s)", version, args.store, facts["train_seconds"])
    print(text)  # noqa: T201 - the command's output
    # A run that diverged (a learning rate too high tags nothing) must not become the champion.
    behind = [name for name, r in results.items() if r["model"]["f1"] < r["baseline"]["f1"]]
    if behind:
        log.error("not promoted: F1 below the dictionary baseline on %s", ", ".join(behind))
        return 1
    if args.promote:
        promote(Path(args.store), version)
        log.info("promoted %s to current", version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
