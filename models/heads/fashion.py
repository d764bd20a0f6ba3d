"""Train, evaluate and store the shipped head bundle: fashion categories and attributes, adult recognition.

    python -m models.heads.fashion --fashion /work/shared/data/fashion --taxonomy /work/shared/data/taxonomy \\
        [--model default] [--store DIR] [--report FILE.md] [--no-ablation] [--no-save]
        [--tasks category,colour,usage,gender] [--compare shipped|none|BUNDLE_DIR] [--no-degraded]

Heads read the embeddings of one encoder version (default: the store's champion). Tasks on the fashion data
(train split for training, the encoder's own valid split for every figure): category = articleType (leaf type),
colour = baseColour, usage, gender (parsed from the templated titles: Men/Women/Boys/Girls/Unisex). Each head
is measured from text, image and both, next to TF-IDF + logistic regression on the titles. Adult recognition is
trained on the taxonomy's category names (mature = positive, six languages) and fashion titles (negative).

The text+image heads train beside degraded copies of the train titles (models.heads.degrade: cut to the brand,
half the words dropped, empty, shuffled), so that a title which names nothing does not overrule the photo; each
head is then measured on valid titles degraded the same ways (another seed), beside the bundle it would replace
(``--compare``: the store's newest for the encoder by default). ``--tasks`` trains a subset; the saved bundle then
keeps the replaced bundle's other heads (and its adult head unless ``--taxonomy`` is given). The bundle is saved
into the store (``--no-save``: not), where the enrich job picks the newest bundle trained for its encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.core.io import cache_root
from models.heads.adult import TermList, decide_adult
from models.heads.bundle import HeadBundle, LinearHead, head_input, save_heads
from models.heads.metrics import accuracy_f1, md_table, tfidf_baseline
from models.heads.robustness import DegradedTitles, degraded_titles, robustness_table, tfidf_char_baseline
from models.heads.train import DegradedRows, HeadTrainConfig, expected_calibration_error, fit_head, fit_title_expert
from models.heads.zero_shot import ZeroShotLabels, zero_shot_probs

__all__ = ["INTIMATE_TYPES", "LANGUAGES", "gender_of", "main"]

log = logging.getLogger(__name__)

LANGUAGES = ("en", "de", "fr", "id", "ja", "ko")
_GENDER = re.compile(r"\b(men|women|boys|girls|unisex)\b", re.IGNORECASE)
# Ordinary apparel that an adult filter must leave alone (the false-positive rate is reported on these).
INTIMATE_SUBCATEGORIES = ("Innerwear", "Loungewear and Nightwear")
INTIMATE_TYPES = ("Swimwear", "Bra", "Briefs", "Lingerie Set", "Baby Dolls", "Shapewear", "Stockings")
TASKS = {"category": "articleType", "colour": "baseColour", "usage": "usage", "gender": "gender"}
# A label becomes a class of its head from this many train products on (default 5). The category head knows every
# leaf type with a train product (issue 18: the rare types dominate macro-F1 and were never predicted).
MIN_COUNT = {"category": 1}
INPUTS = ("text", "image", "text+image")
ABLATION = {
    "plain": {},
    "+ confident learning": {"clean_labels": True},
    "+ EMA": {"ema_decay": 0.99},
    "+ FGM": {"fgm_eps": 0.5},
    "+ R-Drop": {"rdrop_alpha": 1.0},
    "all four": {"clean_labels": True, "ema_decay": 0.99, "fgm_eps": 0.5, "rdrop_alpha": 1.0},
}


def gender_of(title: str) -> str | None:
    m = _GENDER.search(title or "")
    return m.group(1).capitalize() if m else None


def _labels(train: pd.Series, valid: pd.Series, min_count: int = 5) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Indices for labels seen at least ``min_count`` times in train (others -1: too rare to learn)."""
    counts = train.value_counts()
    classes = sorted(str(c) for c in counts[counts >= min_count].index)
    pos = {c: i for i, c in enumerate(classes)}
    enc = lambda s: np.array([pos.get(str(v), -1) if v is not None and v == v else -1 for v in s])  # noqa: E731
    return enc(train), enc(valid), classes


def _embed(encoder: Any, split: Any, cache_dir: Path) -> dict[str, np.ndarray]:
    from models.training.evaluate import embed_data

    key = hashlib.sha256(f"{encoder.version}|{split.snapshot}".encode()).hexdigest()[:16]
    cache = cache_dir / f"heads-emb-{key}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return dict(z)
    log.info("embedding %d train + %d valid products with %s", len(split.train), len(split.valid), encoder.version)
    tr_img, tr_txt = embed_data(encoder, split.train)
    va_img, va_txt = embed_data(encoder, split.valid)
    out = {"tr_img": tr_img, "tr_txt": tr_txt, "va_img": va_img, "va_txt": va_txt}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def _feats(e: dict[str, np.ndarray], part: str, inputs: str) -> np.ndarray:
    return head_input(e[f"{part}_txt"], e[f"{part}_img"], inputs)


def _fit(e, ytr, classes, cfg: HeadTrainConfig, name: str, inputs: str, texts: list[str] | None = None,
         deg: DegradedTitles | None = None) -> LinearHead:
    d = e["tr_txt"].shape[1]
    if inputs == "image":
        cfg = dataclasses.replace(cfg, fgm_eps=0.0)   # FGM perturbs the text embedding: none here
        texts = None                                  # an image-only head reads no text
    img_slice = slice(d, 2 * d) if inputs == "text+image" else None
    extra = None
    if deg is not None and inputs == "text+image":    # the fused head learns to read the photo on a poor title
        extra = DegradedRows(head_input(deg.train_txt, e["tr_img"], inputs), np.arange(len(deg.train)),
                             None if texts is None else deg.train)
    return fit_head(_feats(e, "tr", inputs), ytr, classes, cfg, name=name, inputs=inputs,
                    text_slice=slice(0, d) if inputs != "image" else None, image_slice=img_slice, texts=texts,
                    degraded=extra)


def dev_half(valid_rows: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the half of the valid split set aside to fit the late fusion (a hash of the product id); the
    other half reports. The calibration slice of train will not do: the image tower learnt those photos."""
    ids = valid_rows["product_id"].astype(str)
    return np.array([hashlib.sha256(f"dev:{i}".encode()).digest()[0] % 2 == 0 for i in ids], dtype=bool)


def _valid_part(e: dict[str, np.ndarray], deg: DegradedTitles, rows: pd.DataFrame, mask: np.ndarray
                ) -> tuple[dict[str, np.ndarray], DegradedTitles, pd.DataFrame]:
    """The valid rows under ``mask``: their embeddings, degraded titles and rows."""
    idx = np.flatnonzero(mask)
    part = {**e, "va_txt": e["va_txt"][idx], "va_img": e["va_img"][idx]}
    titles = {c: [v[i] for i in idx] for c, v in deg.valid.items()}
    return (part, dataclasses.replace(deg, valid=titles, valid_txt={c: v[idx] for c, v in deg.valid_txt.items()}),
            rows.iloc[idx].reset_index(drop=True))


def _fuse_title_expert(fused: LinearHead, text_head: LinearHead, dev: tuple, y: np.ndarray) -> LinearHead:
    """The fused head with the text head late-fused as its title expert, weight and gate fitted on the dev
    half's products in every title condition (full titles are the real rows)."""
    e, deg, _ = dev
    known = y >= 0
    parts = []
    for c, titles in deg.valid.items():
        texts = [t for t, k in zip(titles, known, strict=True) if k]
        txt, img = deg.valid_txt[c][known], e["va_img"][known]
        own = np.log(np.clip(fused.predict(txt, img, texts), 1e-12, None))
        parts.append((head_input(txt, img, fused.inputs), texts, own, np.full(len(texts), c == "full")))
    x = np.concatenate([p[0] for p in parts])
    texts = [t for p in parts for t in p[1]]
    return fit_title_expert(fused, text_head, np.concatenate([p[2] for p in parts]), x,
                            np.concatenate([y[known]] * len(parts)), texts, np.concatenate([p[3] for p in parts]))


def _remapped(probs: np.ndarray, remap: np.ndarray, n_classes: int) -> np.ndarray:
    """An old head's output over the new head's classes (``remap[j]``: the new index of old class j, -1 where the
    new head has no such class): its probabilities, reordered, where both heads know the same classes; else its
    predicted class indices (-1, a miss, where it names a class the new head lacks), with no calibration."""
    if len(remap) == n_classes and (remap >= 0).all() and len(set(remap.tolist())) == n_classes:
        out = np.empty_like(probs)
        out[:, remap] = probs
        return out
    return remap[probs.argmax(axis=1)]


def _robustness(e, task: str, heads: dict[str, LinearHead], old: HeadBundle | None, deg: DegradedTitles,
                tr_titles: list[str], ytr: np.ndarray, yva: np.ndarray) -> tuple[dict, str]:
    """The task's heads (and the replaced bundle's) in every title condition of ``deg`` (valid split)."""
    def head_predictor(head: LinearHead):
        return lambda c: head.predict(deg.valid_txt[c], e["va_img"], deg.valid[c])   # probabilities

    predictors = {}
    old_head = None if old is None else old.heads().get(task)
    if old_head is not None:
        pos = {c: i for i, c in enumerate(heads["text+image"].classes)}   # the old head's classes, mapped
        remap = np.array([pos.get(c, -1) for c in old_head.classes])
        predictors[f"replaced bundle {old.version or '(unsaved)'}"] = \
            lambda c: _remapped(old_head.predict(deg.valid_txt[c], e["va_img"], deg.valid[c]), remap,
                                len(heads["text+image"].classes))
    predictors["new head: text+image, trained beside degraded titles"] = head_predictor(heads["text+image"])
    predictors["head on text only"] = head_predictor(heads["text"])
    predictors["head on image only"] = head_predictor(heads["image"])
    base = tfidf_char_baseline(tr_titles, ytr)
    predictors["TF-IDF word + char n-grams + logistic regression"] = lambda c: base(deg.valid[c])
    metrics, table = robustness_table(yva, predictors)
    return metrics, f"#### {task}: titles degraded (valid split; photo unchanged)\n\n{table}"


def evaluate_tasks(e, train_rows: pd.DataFrame, valid_rows: pd.DataFrame, cfg: HeadTrainConfig,
                   ablation: bool, deg: DegradedTitles | None = None, old: HeadBundle | None = None,
                   tasks: tuple[str, ...] = tuple(TASKS)) -> tuple[dict[str, LinearHead], dict[str, Any], str]:
    """Per task: baseline and heads from text/image/both; the ablation of the tricks on the category head. With
    ``deg``, the fused heads train beside degraded titles and late-fuse the text head as a title expert fitted on
    a set-aside half of valid (:func:`dev_half`); every figure is then on the other half, and every head is
    measured on degraded valid titles too (beside the heads of ``old``, the bundle they would replace)."""
    heads: dict[str, LinearHead] = {}
    metrics: dict[str, Any] = {}
    sections = []
    dev = None
    if deg is not None:   # half of valid fits the late fusion; every figure below is on the other half
        part = dev_half(valid_rows)
        dev = _valid_part(e, deg, valid_rows, part)
        e, deg, valid_rows = _valid_part(e, deg, valid_rows, ~part)
    tr_titles, va_titles = train_rows["title"].astype(str).tolist(), valid_rows["title"].astype(str).tolist()
    for task in tasks:
        column = TASKS[task]
        ytr, yva, classes = _labels(train_rows[column], valid_rows[column], MIN_COUNT.get(task, 5))
        ydev = None if dev is None else _labels(train_rows[column], dev[2][column], MIN_COUNT.get(task, 5))[1]
        base = accuracy_f1(yva, tfidf_baseline(tr_titles, ytr, va_titles))
        rows = [["TF-IDF + logistic regression (titles)", base["accuracy"], base["macro_f1"], "n/a"]]
        metrics[task] = {"baseline": base, "classes": len(classes), "valid_items": base["n"]}
        trained = {}
        for inputs in INPUTS:
            head = trained[inputs] = _fit(e, ytr, classes, cfg, task, inputs, tr_titles, deg)
            if inputs == "text+image" and dev is not None:   # INPUTS trains "text" first: the title expert
                head = trained[inputs] = _fuse_title_expert(head, trained["text"], dev, ydev)
            probs = head.predict(e["va_txt"], e["va_img"], va_titles)
            m = accuracy_f1(yva, probs.argmax(axis=1))
            m["ece"] = expected_calibration_error(probs[yva >= 0], yva[yva >= 0])
            m["mention_weight"], m["lexical_weight"] = head.mention_weight, head.lexical_weight
            m["lexical_min_words"] = head.lexical_min_words
            m["prior_adjustment"] = head.class_bias is not None
            m["title_weight"], m["title_min_words"] = head.title_weight, head.title_min_words
            metrics[task][inputs] = m
            what = (f"head on {inputs} embeddings" + (" + title mentions" if head.mention_weight else "")
                    + (" + title words" if head.lexical_weight else "")
                    + (" + prior adjustment" if head.class_bias is not None else "")
                    + (" + gated title expert" if head.title_weight else ""))
            rows.append([what, m["accuracy"], m["macro_f1"], m["ece"]])
            if inputs == "text+image":
                heads[task] = head
        sections.append(f"#### {task} ({column}; {len(classes)} classes, {base['n']} valid products)\n\n"
                        + md_table(["model", "accuracy", "macro-F1", "ECE"], rows))
        if deg is not None:
            metrics[task]["degraded"], md = _robustness(e, task, trained, old, deg, tr_titles, ytr, yva)
            sections.append(md)
        log.info("%s: %s", task, {k: v for k, v in metrics[task].items() if isinstance(v, dict)})
    if ablation:
        ytr, yva, classes = _labels(train_rows["articleType"], valid_rows["articleType"], MIN_COUNT["category"])
        rows = []
        metrics["ablation"] = {}
        for label, change in ABLATION.items():
            for inputs in ("text+image",):
                head = _fit(e, ytr, classes, dataclasses.replace(cfg, **{**_PLAIN, **change}), "category", inputs,
                            tr_titles, deg)
                m = accuracy_f1(yva, head.predict(e["va_txt"], e["va_img"], va_titles).argmax(axis=1))
                metrics["ablation"][f"{label} / {inputs}"] = m
                rows.append([label, inputs, m["accuracy"], m["macro_f1"]])
        sections.append("#### category head: ablation of the ZhichunRoad tricks (valid split)\n\n"
                        + md_table(["training", "inputs", "accuracy", "macro-F1"], rows))
    return heads, metrics, "\n\n".join(sections)


LEXICAL_GATES = (0.0, 2.0, 3.0, 4.0)   # lexical expert gates tried (known title words for its full weight)
_PLAIN = {"clean_labels": False, "ema_decay": 0.0, "fgm_eps": 0.0, "rdrop_alpha": 0.0}


def zero_shot_section(encoder: Any, e, valid_rows: pd.DataFrame, classes: list[str]) -> tuple[dict, str]:
    """Zero-shot accuracy against the articleType names: what the fallback path achieves without a head."""
    labels = ZeroShotLabels.build(classes, encoder.embed_texts, "fashion articleType names")
    pos = {c: i for i, c in enumerate(classes)}
    y = np.array([pos.get(str(v), -1) for v in valid_rows["articleType"]])
    out, rows = {}, []
    for name, q in {"text": e["va_txt"], "fused": e["va_txt"] + e["va_img"]}.items():
        m = accuracy_f1(y, zero_shot_probs(q, labels).argmax(axis=1))
        out[name] = m
        rows.append([f"zero-shot from {name} embedding", m["accuracy"], m["macro_f1"]])
    return out, ("#### category fallback: zero-shot against the category names (no trained head)\n\n"
                 + md_table(["model", "accuracy", "macro-F1"], rows))


def _taxonomy_texts(taxonomy: Path) -> pd.DataFrame:
    """One row per (category, language): the leaf name, whether the category is mature."""
    df = pd.read_parquet(taxonomy / "google_product_taxonomy_multilingual.parquet")
    rows = []
    for r in df.itertuples(index=False):
        for lang in LANGUAGES:
            path = getattr(r, f"path_{lang}")
            if isinstance(path, str) and path.strip():
                rows.append((int(r.gpc_id), lang, path.split(">")[-1].strip(), bool(r.is_mature)))
    return pd.DataFrame(rows, columns=["gpc_id", "language", "text", "is_mature"])


def _adult_head(x: np.ndarray, y: np.ndarray, seed: int = 0) -> LinearHead:
    from sklearn.linear_model import LogisticRegression

    mu, sigma = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = LogisticRegression(C=0.5, class_weight="balanced", max_iter=500, random_state=seed)
    clf.fit((x - mu) / sigma, y)
    w = np.zeros((x.shape[1], 2), dtype=np.float32)
    w[:, 1] = clf.coef_[0]
    b = np.array([0.0, clf.intercept_[0]], dtype=np.float32)
    return LinearHead("adult", "text", ("not_adult", "adult"), mu.astype(np.float32), sigma.astype(np.float32),
                      ((w, b),))


def adult_section(encoder: Any, e, train_rows: pd.DataFrame, valid_rows: pd.DataFrame, taxonomy: Path,
                  terms: TermList, target_fpr: float = 0.005, seed: int = 0) -> tuple[LinearHead, float, dict, str]:
    """Train the adult head; measure recall on the taxonomy's mature names (category-grouped cross-validation:
    a category is scored by a head that never saw it, in any language) and false positives on fashion."""
    from sklearn.model_selection import GroupKFold

    tax = _taxonomy_texts(taxonomy)
    tax_emb = np.asarray(encoder.embed_texts(tax["text"].tolist()), dtype=np.float32)
    rng = np.random.default_rng(seed)
    n_tr = len(train_rows)
    neg_idx = np.sort(rng.permutation(n_tr)[: n_tr // 2])         # fashion titles as negatives ...
    held = np.setdiff1d(np.arange(n_tr), neg_idx)                  # ... the rest chooses the threshold
    x = np.concatenate([tax_emb, e["tr_txt"][neg_idx]])
    y = np.concatenate([tax["is_mature"].to_numpy().astype(int), np.zeros(len(neg_idx), dtype=int)])
    head = _adult_head(x, y, seed)
    held_scores = head.predict(e["tr_txt"][held], None)[:, 1]
    threshold = float(max(0.5, np.quantile(held_scores, 1 - target_fpr)))

    # Recall on mature names: each mature category scored by a head trained without it (5 folds by gpc_id).
    mature = tax[tax["is_mature"]].reset_index(drop=True)
    m_emb = tax_emb[tax["is_mature"].to_numpy()]
    cv_scores = np.zeros(len(mature))
    groups = mature["gpc_id"].to_numpy()
    for _, te in GroupKFold(n_splits=5).split(m_emb, groups=groups):
        out_ids = set(groups[te])
        keep = ~tax["gpc_id"].isin(out_ids).to_numpy()
        xf = np.concatenate([tax_emb[keep], e["tr_txt"][neg_idx]])
        yf = np.concatenate([tax["is_mature"].to_numpy()[keep].astype(int), np.zeros(len(neg_idx), dtype=int)])
        cv_scores[te] = _adult_head(xf, yf, seed).predict(m_emb[te], None)[:, 1]
    texts = mature["text"].tolist()
    d_terms = decide_adult(texts, terms=terms)
    d_all = decide_adult(texts, terms=terms, embedding_scores=cv_scores, threshold=threshold)
    rows, metrics = [], {"threshold": threshold, "recall": {}, "fpr": {}}
    for lang in LANGUAGES:
        m = (mature["language"] == lang).to_numpy()
        r_terms = float(np.mean([d.is_adult for d, k in zip(d_terms, m, strict=True) if k]))
        r_emb = float((cv_scores[m] >= threshold).mean())
        r_all = float(np.mean([d.is_adult for d, k in zip(d_all, m, strict=True) if k]))
        metrics["recall"][lang] = {"terms": r_terms, "embedding": r_emb, "combined": r_all, "n": int(m.sum())}
        rows.append([lang, int(m.sum()), r_terms, r_emb, r_all])
    recall_md = md_table(["language", "mature names", "recall: term list (baseline)", "recall: embedding head",
                          "recall: combined"], rows)

    va_titles = valid_rows["title"].astype(str).tolist()
    va_scores = head.predict(e["va_txt"], None)[:, 1]
    f_terms = np.array([d.is_adult for d in decide_adult(va_titles, terms=terms)])
    f_all = np.array([d.is_adult for d in decide_adult(va_titles, terms=terms, embedding_scores=va_scores,
                                                         threshold=threshold)])
    intimate = (valid_rows["subCategory"].isin(INTIMATE_SUBCATEGORIES)
                | valid_rows["articleType"].isin(INTIMATE_TYPES)).to_numpy()
    rows = []
    for name, m in {"all fashion valid products": np.ones(len(va_titles), bool),
                    "lingerie, swimwear, innerwear, nightwear": intimate}.items():
        fp = {"terms": float(f_terms[m].mean()), "embedding": float((va_scores[m] >= threshold).mean()),
              "combined": float(f_all[m].mean()), "n": int(m.sum())}
        metrics["fpr"][name] = fp
        rows.append([name, fp["n"], fp["terms"], fp["embedding"], fp["combined"]])
    fpr_md = md_table(["products (none is adult)", "n", "FPR: term list", "FPR: embedding head", "FPR: combined"],
                      rows)
    md = (f"#### adult recognition\n\nEmbedding head: logistic regression on the text embedding, trained on the "
          f"taxonomy's category names in six languages (mature = positive, {int(tax['is_mature'].sum())} names; "
          f"{int((~tax['is_mature']).sum())} other names) and {len(neg_idx)} fashion train titles (negative); "
          f"threshold {threshold:.3f} = the {100 * (1 - target_fpr):.1f}th percentile of its score on other "
          f"fashion train titles. Recall on the mature category names (leaf names; each category scored by a "
          f"head trained without it, in any language; the term list is hand-written and its author had seen "
          f"the taxonomy, so its recall here is optimistic):\n\n{recall_md}\n\nFalse positives on fashion "
          f"(valid split):\n\n{fpr_md}")
    return head, threshold, metrics, md


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fashion", required=True, help="the fashion folder (products.parquet + images/)")
    p.add_argument("--taxonomy", default=None, help="the taxonomy folder (adult head); skipped when absent")
    p.add_argument("--model", default="default", help="encoder whose embeddings the heads read")
    p.add_argument("--store", default=None, help="model store root (default: the shipped store)")
    p.add_argument("--cache-dir", default=str(cache_root()))
    p.add_argument("--report", default=None, help="also write the markdown section here")
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--no-degraded", action="store_true",
                   help="train on the real titles only (no degraded copies) and skip the degraded-title tables")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help="comma-separated tasks to train (the saved bundle keeps the replaced bundle's other heads)")
    p.add_argument("--compare", default="shipped",
                   help="head bundle folder measured beside the new heads on degraded titles, and whose heads fill "
                        "the tasks not trained: 'shipped' (the store's newest for the encoder) or 'none'")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads: small heads train fastest on one thread (no sync between cores)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from models.encoders import load_encoder
    from models.store import store_root
    from models.training.fashion import load_fashion

    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model, "cpu")
    split = load_fashion(args.fashion, size=encoder.pixel_geometry, cache_dir=args.cache_dir)
    e = _embed(encoder, split, Path(args.cache_dir))
    tr_rows, va_rows = split.train_rows.copy(), split.valid_rows.copy()
    for rows in (tr_rows, va_rows):
        rows["gender"] = [gender_of(t) for t in rows["title"].astype(str)]
    cfg = HeadTrainConfig(epochs=args.epochs, ema_decay=0.99, fgm_eps=0.5, rdrop_alpha=1.0, clean_labels=True,
                          clean_weight=0.3, lexical_all_rows=True, image_dropout=0.1, prior_adjustment=True,
                          lexical_gates=(0.0,) if args.no_degraded else LEXICAL_GATES)
    tasks = tuple(t for t in args.tasks.split(",") if t)
    if not tasks or set(tasks) - set(TASKS):
        p.error(f"--tasks: choose among {','.join(TASKS)}, got {args.tasks!r}")
    old = _replaced_bundle(args.compare, store_root(args.store), encoder.version)
    deg = None if args.no_degraded else degraded_titles(encoder, tr_rows["title"].astype(str).tolist(),
                                                         va_rows["title"].astype(str).tolist(), Path(args.cache_dir),
                                                         e["va_txt"])
    heads, metrics, md = evaluate_tasks(e, tr_rows, va_rows, cfg, ablation=not args.no_ablation, deg=deg, old=old,
                                        tasks=tasks)
    sections = [md]
    if "category" in heads:
        metrics["zero_shot"], zs_md = zero_shot_section(encoder, e, va_rows, list(heads["category"].classes))
        sections.append(zs_md)
    for task in [t for t in TASKS if t not in heads]:
        if old is None or task not in old.heads():
            p.error(f"--tasks leaves out {task} and no replaced bundle (--compare) holds its head")
        heads[task] = old.heads()[task]
        sections.append(f"#### {task}: head kept from {old.version} (not retrained)")
    terms = TermList.load()
    adult, threshold = (None, 0.5) if old is None else (old.adult, old.adult_threshold)   # kept unless retrained
    if args.taxonomy and Path(args.taxonomy).is_dir():
        adult, threshold, metrics["adult"], adult_md = adult_section(encoder, e, tr_rows, va_rows,
                                                                      Path(args.taxonomy), terms)
        sections.append(adult_md)
    header = _header(encoder.version, split, cfg, deg)
    report = header + "\n\n" + "\n\n".join(sections) + "\n"
    sys.stdout.write(report)
    if args.report:
        Path(args.report).write_text(report)
    if not args.no_save:
        bundle = HeadBundle(encoder.version, heads["category"], {k: heads[k] for k in ("colour", "usage", "gender")},
                            adult, threshold)
        version = save_heads(store_root(args.store), "heads-fashion", bundle, training_data=split.snapshot,
                             metrics=metrics, card="# Head bundle {version}\n\n" + report)
        log.info("saved head bundle %s", version)
    return 0


def _header(encoder_version: str, split: Any, cfg: HeadTrainConfig, deg: DegradedTitles | None) -> str:
    lex_rows = "all training rows, flagged ones included" if cfg.lexical_all_rows else "the head's own training rows"
    header = (f"### Heads on the embeddings of `{encoder_version}`\n\nFashion data ({split.snapshot}); train "
              f"{len(split.train)}, valid {len(split.valid)} products (split by a hash of product_id, the encoder's "
              f"own split). Heads: MLP (512 hidden) on standardised embeddings, trained with "
              f"{_describe(cfg)}; temperature-scaled on a 10% calibration slice of train (ECE on valid), where the "
              f"weights of two text experts are fitted too: '+ title mentions', a logit bonus for a class whose name "
              f"the title holds, and '+ title words', the log-probabilities of TF-IDF + logistic regression on the "
              f"title words ({cfg.lexical_features} terms, trained on {lex_rows}); each is named where its "
              f"weight is above zero."
              + (" '+ prior adjustment': a logit bias of -tau * log(class prior) for the rare classes, tau "
                 "chosen from 0-1 by accuracy + macro-F1 on the same calibration slice (named where tau > 0)."
                 if cfg.prior_adjustment else "")
              + ("" if deg is None else
                 " The text+image heads train beside one degraded copy of each train title (same photo and label; "
                 "the kind drawn at random: cut to the brand, half the words dropped, empty, words shuffled; their "
                 "text embeddings from the encoder's text tower), calibrated on real and degraded rows of the same "
                 "slice, where the lexical expert's gate is chosen too (its weight grows with the title's known "
                 "words up to a count chosen from "
                 f"{', '.join(f'{g:g}' for g in cfg.lexical_gates)}; 0 = no gate). Each text+image head then "
                 "late-fuses the text-only head ('+ gated title expert', named where its weight is above zero): "
                 "its log-probabilities, weighted up to a count of known title words, are added to the fused "
                 "head's; weight and count are fitted on a set-aside half of the valid split (a hash of "
                 "product_id; the calibration slice of train will not do, the image tower learnt its photos), so "
                 "every valid figure below is on the OTHER half."))
    return header


def _replaced_bundle(compare: str, store: Path, encoder_version: str) -> HeadBundle | None:
    """The bundle the new heads are measured against (``--compare``): 'none', 'shipped' or a bundle folder."""
    from models.heads.bundle import find_heads, load_heads

    if compare == "none":
        return None
    vdir = find_heads(store, encoder_version) if compare == "shipped" else Path(compare)
    if vdir is None:
        log.info("no head bundle for %s in %s to compare with", encoder_version, store)
        return None
    bundle = load_heads(vdir)
    if bundle.encoder_version != encoder_version:
        raise ValueError(f"--compare {vdir}: trained for {bundle.encoder_version}, not {encoder_version}")
    return bundle


def _describe(cfg: HeadTrainConfig) -> str:
    flagged = f"down-weighted to {cfg.clean_weight}" if cfg.clean_weight > 0 else "dropped"
    cleaning = f"confident learning (cleanlab, rows flagged as label issues {flagged})"
    tricks = [n for n, on in ((cleaning, cfg.clean_labels),
                              (f"EMA {cfg.ema_decay}", cfg.ema_decay > 0), (f"FGM eps {cfg.fgm_eps}", cfg.fgm_eps > 0),
                              (f"R-Drop alpha {cfg.rdrop_alpha}", cfg.rdrop_alpha > 0)) if on]
    return ", ".join(tricks) + f", {cfg.epochs} epochs, {int(cfg.image_dropout * 100)}% of photos dropped"


if __name__ == "__main__":
    raise SystemExit(main())
