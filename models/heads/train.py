"""Training of the classification heads on frozen embeddings, with the ZhichunRoad fine-tuning tricks.

Each trick is a switch in :class:`HeadTrainConfig` so that the ablation table can measure it:

* confident learning (``clean_labels``): out-of-fold predicted probabilities -> ``cleanlab`` finds the likely
  label issues -> those rows are dropped from training, or down-weighted (``clean_weight``; sellers' categories
  are noisy);
* EMA of the weights (``ema_decay``): evaluation and export use the moving average;
* FGM (``fgm_eps``): an adversarial step along the loss gradient of the text-embedding part of the input;
* R-Drop (``rdrop_alpha``): two forward passes with dropout, symmetric KL between them added to the loss.

With ``prior_adjustment``, the rare classes get a logit bonus against the class prior, sized on held-out rows.

A head is a small MLP on standardised inputs; a temperature fitted on a held-out calibration slice makes its
softmax an honest confidence.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.heads.bundle import LinearHead, log_softmax, mentions, softmax

__all__ = ["DegradedRows", "HeadTrainConfig", "clean_label_mask", "expected_calibration_error", "fit_head",
           "fit_prior_adjustment", "fit_temperature"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadTrainConfig:
    hidden: int = 512              # 0: a linear head
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    ema_decay: float = 0.0         # e.g. 0.99; 0 = off
    fgm_eps: float = 0.0           # e.g. 0.5 (in standardised units); 0 = off
    rdrop_alpha: float = 0.0       # e.g. 1.0; 0 = off
    clean_labels: bool = False     # confident learning (cleanlab) before training
    clean_folds: int = 3
    clean_weight: float = 0.0      # loss weight of a row flagged as a label issue (0: the row is dropped)
    calibration_fraction: float = 0.1
    image_dropout: float = 0.0     # fraction of rows whose image part is zeroed (heads must cope without a photo)
    # TF-IDF terms of the lexical expert (fitted when texts are given; 0 = none): room for the whole vocabulary of
    # word 1-2 grams seen twice, as the TF-IDF baseline has (13.8k on the fashion titles; 5,000 cut usage's brands)
    lexical_features: int = 20000
    lexical_all_rows: bool = False  # the lexical expert learns from flagged rows too (it is not cleaned)
    prior_adjustment: bool = False  # fit a logit adjustment against the class prior on the calibration rows
    # Gates of the lexical expert tried on the calibration rows (see LinearHead.lexical_min_words; 0 = no gate)
    lexical_gates: tuple[float, ...] = (0.0,)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"HeadTrainConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.rdrop_alpha > 0 and self.dropout == 0:
            raise ValueError("HeadTrainConfig.rdrop_alpha > 0 needs dropout > 0: two passes would be identical")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("HeadTrainConfig.epochs and batch_size must be >= 1")


@dataclass(frozen=True)
class DegradedRows:
    """Extra training rows for :func:`fit_head`: degraded copies of some of its rows (a title cut to the brand,
    words dropped, no title) with their own features ``x``; ``source[i]`` is the row copy i was made from, whose
    label, calibration side and loss weight it shares; ``texts`` its degraded title (for the text experts)."""

    x: np.ndarray
    source: np.ndarray
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.source) or (self.texts is not None and len(self.texts) != len(self.x)):
            raise ValueError(f"DegradedRows: {len(self.x)} rows, {len(self.source)} sources, "
                             f"{'no' if self.texts is None else len(self.texts)} texts: expected one each")


def _softmax_regression_probs(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, n_classes: int,
                              epochs: int = 8, seed: int = 0) -> np.ndarray:
    """Probabilities of a quickly trained multinomial logistic regression (Adam, minibatches, standardised)."""
    import torch
    import torch.nn.functional as F

    mu, sigma = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
    xt = torch.from_numpy(((xtr - mu) / sigma).astype(np.float32))
    yt = torch.from_numpy(ytr.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    # Zero init and a seeded order: the same data gives the same probabilities, whatever ran before.
    lin = torch.nn.Linear(xt.shape[1], n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
    # At least ~100 optimizer steps: a small catalog would otherwise stop at a handful of updates.
    batches = -(-len(xt) // 512)
    for _ in range(max(epochs, -(-100 // batches))):
        for b in torch.randperm(len(xt), generator=gen).split(512):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(lin(xt[b]), yt[b]).backward()
            opt.step()
    with torch.no_grad():
        return torch.softmax(lin(torch.from_numpy(((xte - mu) / sigma).astype(np.float32))), dim=1).numpy()


def clean_label_mask(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 3, seed: int = 0) -> np.ndarray:
    """True for rows to keep: cleanlab's label issues from out-of-fold predicted probabilities."""
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=n_classes)
    # Classes rarer than the folds cannot be stratified: they keep their labels (too few to judge).
    idx = np.flatnonzero(counts[y] >= folds)
    keep = np.ones(len(y), dtype=bool)
    sub_classes = np.unique(y[idx])
    if len(sub_classes) < 2:
        return keep
    remap = np.full(n_classes, -1)
    remap[sub_classes] = np.arange(len(sub_classes))
    sub_y = remap[y[idx]]
    probs = np.zeros((len(idx), len(sub_classes)), dtype=np.float64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in skf.split(idx, sub_y):
        probs[te] = _softmax_regression_probs(x[idx[tr]], sub_y[tr], x[idx[te]], len(sub_classes), seed=seed)
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork of a process that runs Spark or
    # Airflow threads can deadlock on a lock held by another thread (it hung a CI run at pool shutdown).
    issues = find_label_issues(sub_y, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    keep[idx[issues]] = False
    log.info("confident learning: %d of %d labels flagged as issues", int((~keep).sum()), len(y))
    return keep


def _split_calibration(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(n)
    k = int(round(n * fraction)) if fraction > 0 else 0
    return np.sort(perm[k:]), np.sort(perm[:k])


@dataclass(frozen=True)
class _Rows:
    """Which rows (indices into the known-label rows) train the head and which calibrate it."""

    train_all: np.ndarray    # every training row, also those confident learning flagged
    train: np.ndarray        # the rows the net trains on
    calibration: np.ndarray
    weight: np.ndarray       # per row of ``train``: 1, or ``clean_weight`` for a flagged row
    n_real: int | None = None  # rows from this index on are degraded copies (None: none)


def _select_rows(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: HeadTrainConfig) -> _Rows:
    """The calibration split, and the rows confident learning keeps (or down-weights)."""
    keep = np.ones(len(y), dtype=bool)
    if cfg.clean_labels:
        keep = clean_label_mask(x, y, n_classes, cfg.clean_folds, cfg.seed)
    tr_all, cal = _split_calibration(len(y), cfg.calibration_fraction, cfg.seed)
    tr = tr_all if cfg.clean_weight > 0 else tr_all[keep[tr_all]]
    return _Rows(tr_all, tr, cal, np.where(keep[tr], 1.0, cfg.clean_weight).astype(np.float32))


def _build_net(dim: int, n_classes: int, cfg: HeadTrainConfig):
    """The head's net (linear, or one hidden layer) from the seed, and its EMA copy (None without EMA)."""
    import torch
    from torch import nn

    torch.manual_seed(cfg.seed)
    layers: list[nn.Module] = [nn.Dropout(cfg.dropout)]
    if cfg.hidden:
        layers += [nn.Linear(dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_classes)]
    else:
        layers += [nn.Linear(dim, n_classes)]
    net = nn.Sequential(*layers)
    return net, (copy.deepcopy(net) if cfg.ema_decay > 0 else None)


def _train_loop(net, ema, xs: np.ndarray, y: np.ndarray, rows: _Rows, mu: np.ndarray, sigma: np.ndarray,
                cfg: HeadTrainConfig, text_slice: slice | None, image_slice: slice | None) -> None:
    """Train ``net`` on the standardised rows ``xs[rows.train]``: AdamW, one-cycle schedule, label smoothing,
    and the switched tricks (image dropout, R-Drop, FGM, EMA into ``ema``)."""
    import torch
    import torch.nn.functional as F

    tr = rows.train
    row_weight = torch.from_numpy(rows.weight)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt = torch.from_numpy((xs[tr] - mu) / sigma)
    yt = torch.from_numpy(y[tr])
    steps = cfg.epochs * max(1, -(-len(tr) // cfg.batch_size))
    # OneCycleLR needs a warm-up of two steps or more: a run under 20 steps stops before the schedule's end.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 20), pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    text_cols = text_slice if text_slice is not None else slice(0, xs.shape[1])
    img_zero = torch.from_numpy(-mu / sigma)  # the standardised value of a zero (missing) image embedding
    for _epoch in range(cfg.epochs):
        net.train()
        for b in torch.randperm(len(tr), generator=gen).split(cfg.batch_size):
            xb, yb, wb = xt[b].clone(), yt[b], row_weight[b]

            def ce(z, yb=yb, wb=wb):
                per_row = F.cross_entropy(z, yb, label_smoothing=cfg.label_smoothing, reduction="none")
                return (per_row * wb).sum() / wb.sum()

            if cfg.image_dropout > 0 and image_slice is not None:
                drop = torch.rand(len(b), generator=gen) < cfg.image_dropout
                xb[drop, image_slice] = img_zero[image_slice]
            if cfg.fgm_eps > 0:
                xb.requires_grad_(True)
            logits = net(xb)
            loss = ce(logits)
            if cfg.rdrop_alpha > 0:
                logits2 = net(xb)
                loss = 0.5 * (loss + ce(logits2))
                lp, lq = F.log_softmax(logits, -1), F.log_softmax(logits2, -1)
                kl = 0.5 * (F.kl_div(lp, lq, log_target=True, reduction="batchmean")
                            + F.kl_div(lq, lp, log_target=True, reduction="batchmean"))
                loss = loss + cfg.rdrop_alpha * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.fgm_eps > 0:
                # FGM: perturb the text-embedding part along the gradient, add the loss there (Miyato et al.).
                g = xb.grad.detach()
                r = torch.zeros_like(xb)
                gt = g[:, text_cols]
                r[:, text_cols] = cfg.fgm_eps * gt / gt.norm(dim=1, keepdim=True).clamp_min(1e-12)
                adv = ce(net(xb.detach() + r))
                adv.backward()
            opt.step()
            sched.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                        pe.mul_(cfg.ema_decay).add_(p.detach(), alpha=1 - cfg.ema_decay)


def _calibrate(head: LinearHead, x: np.ndarray, y: np.ndarray, rows: _Rows, known_rows: np.ndarray,
               texts: list[str] | None, cfg: HeadTrainConfig) -> LinearHead:
    """On the calibration rows: the temperature, or the text experts (mentions, lexical) with their weights;
    then the prior adjustment when asked for. ``known_rows``: the index in ``texts`` of each row of ``x``."""
    cal, tr_all, n_classes = rows.calibration, rows.train_all, len(head.classes)
    cal_logits = head.logits(x[cal])   # with the text experts once they are fitted (the prior adjustment's input)
    if texts is None:
        head = head.with_temperature(fit_temperature(cal_logits, y[cal]))
    else:
        from models.heads.lexical import LexicalExpert

        cal_texts = [texts[i] for i in known_rows[cal]]
        lex_rows = tr_all if cfg.lexical_all_rows else rows.train

        def fit_lexical(idx: np.ndarray) -> LexicalExpert:
            return LexicalExpert.fit([texts[i] for i in known_rows[idx]], y[idx], n_classes,
                                     max_features=cfg.lexical_features, seed=cfg.seed)

        lexical = fit_lexical(lex_rows) if cfg.lexical_features > 0 else None
        head, cal_logits = _fit_text_experts(dataclasses.replace(head, lexical=lexical), cal_logits,
                                             mentions(cal_texts, head.classes),
                                             None if lexical is None else lexical.log_probs(cal_texts), y[cal],
                                             None if lexical is None else lexical.known_words(cal_texts),
                                             cfg.lexical_gates)
        if head.lexical is not None:   # (kept only with a weight above zero)
            # Its weight chosen, the lexical expert learns from the calibration rows too: it then sees every
            # training title, as the TF-IDF baseline does (the rare classes have a handful each).
            head = dataclasses.replace(head, lexical=fit_lexical(np.sort(np.concatenate([lex_rows, cal]))))
    if cfg.prior_adjustment:
        prior = np.bincount(y[tr_all], minlength=n_classes) + 1.0
        # tau is chosen on the real rows: a degraded copy repeats its product's label, and the rare classes'
        # macro-F1 on a pooled slice is noisier; the temperature is then refitted on every calibration row.
        real = cal < rows.n_real if rows.n_real is not None else np.ones(len(cal), dtype=bool)
        head = fit_prior_adjustment(head, cal_logits[real], y[cal][real], prior / prior.sum())
        if not real.all():
            bias = head.class_bias if head.class_bias is not None else 0.0
            head = head.with_class_bias(head.class_bias, fit_temperature(cal_logits + bias, y[cal]))
    return head


TITLE_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)
TITLE_GATES = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0)   # known title words for the title expert's full weight


def fit_title_expert(head: LinearHead, text_head: LinearHead, own: np.ndarray, x: np.ndarray, y: np.ndarray,
                     texts: list[str], real: np.ndarray, vocabulary=None) -> LinearHead:
    """Late fusion of a fused head with ``text_head`` (a head on the text embedding alone, its text experts
    included), fitted on rows NEITHER head learnt from (a set-aside part of the dev data: the calibration slice
    of train will not do, for the encoder's image tower learnt its photos). ``own``: the fused head's
    log-probabilities on those rows; ``x`` their fused inputs (text part first); ``real``: which rows carry a
    real title, the others degraded copies. The weight and its gate maximise real-row accuracy + macro-F1 +
    degraded-row accuracy; weight 0 keeps the head as it is. The gate counts the title's words known to the
    head's lexical expert, else the text head's, else ``vocabulary``'s."""
    from models.heads.metrics import accuracy_f1

    if tuple(text_head.classes) != tuple(head.classes) or text_head.inputs != "text":
        raise ValueError(f"title expert for {head.name}: needs a text head with the same classes")
    d = text_head.mean.shape[0]
    expert = dataclasses.replace(text_head, name=f"{head.name}.title", title_expert=None, title_weight=0.0,
                                 lexical=text_head.lexical if text_head.lexical is not None else vocabulary)
    z = expert.combined_logits(x[:, :d], texts)
    expert = dataclasses.replace(expert, temperature=fit_temperature(z[real], y[real]))
    expert_lp = log_softmax(z / expert.temperature)
    words = head.lexical if head.lexical is not None else expert.lexical
    known = words.known_words(texts) if words is not None else None

    def gate_of(gate: float) -> np.ndarray | None:
        """(N, 1) each title's gate at ``gate`` known words (None: no gate)."""
        return words.gate_of_known(known, gate) if gate > 0 and known is not None else None

    def fuse(w: float, gate: float) -> np.ndarray:
        g = gate_of(gate)
        return own + w * (1.0 if g is None else g) * expert_lp

    def score(lp: np.ndarray) -> float:
        pred = lp.argmax(axis=1)
        m = accuracy_f1(y[real], pred[real])
        return m["accuracy"] + m["macro_f1"] + (float((pred[~real] == y[~real]).mean()) if (~real).any() else 0.0)

    best = (score(own), 0.0, 0.0)
    for gate in (TITLE_GATES if known is not None else (0.0,)):
        for w in TITLE_WEIGHTS[1:]:
            sc = score(fuse(w, gate))
            if sc > best[0] + 1e-6:
                best = (sc, w, gate)
    _, w, gate = best
    log.info("head %s: title expert weight %.1f (gate %.1f words), held-out score %.4f (without: %.4f)",
             head.name, w, gate, best[0], score(own))
    if not w:
        return head
    fused = dataclasses.replace(head, title_expert=expert, title_weight=float(w), title_min_words=float(gate))
    return fit_fusion_temperatures(fused, fuse(w, gate), y, gate_of(gate))


def fit_fusion_temperatures(head: LinearHead, fused_lp: np.ndarray, y: np.ndarray, gate: np.ndarray | None
                            ) -> LinearHead:
    """``head`` with its fusion temperatures fitted on held-out rows: ``fused_lp`` their fused log-probabilities
    before the temperature, ``gate`` (N, 1) how much each title says (:meth:`LinearHead.title_gate`; None: no
    gate, one temperature). With a gate the rows fit two temperatures, a full title's and an empty one's (see
    :attr:`LinearHead.fusion_temperature_poor`), when both ends are among them; else one."""
    if gate is None or not (gate.min() < 0.5 < gate.max()):
        return dataclasses.replace(head, fusion_temperature=fit_temperature(fused_lp, y), fusion_temperature_poor=None)
    t_full, t_poor = fit_gated_temperature(fused_lp, y, gate)
    log.info("head %s: fusion temperature %.2f on a full title, %.2f on an empty one", head.name, t_full, t_poor)
    return dataclasses.replace(head, fusion_temperature=t_full, fusion_temperature_poor=t_poor)


def _with_degraded(rows: _Rows, source: np.ndarray, n: int) -> _Rows:
    """``rows`` over ``n`` rows, extended by their degraded copies (row ``n + i`` copies row ``source[i]``): a
    copy sits on its source's side of the calibration split (the photo is the same: a copy of a calibration
    product in training would leak it) and shares its loss weight."""
    def extend(idx: np.ndarray) -> np.ndarray:
        member = np.zeros(n, dtype=bool)
        member[idx] = True
        return np.concatenate([idx, n + np.flatnonzero(member[source])])

    weight = np.zeros(n, dtype=np.float32)
    weight[rows.train] = rows.weight
    train = extend(rows.train)
    return _Rows(extend(rows.train_all), train, extend(rows.calibration),
                 np.concatenate([rows.weight, weight[source[train[len(rows.train):] - n]]]), n_real=n)


def fit_head(x: np.ndarray, y: np.ndarray, classes: list[str], cfg: HeadTrainConfig, *, name: str,
             inputs: str, text_slice: slice | None = None, image_slice: slice | None = None,
             texts: list[str] | None = None, degraded: DegradedRows | None = None) -> LinearHead:
    """Train a head on ``x`` (N, D) with labels ``y`` (indices into ``classes``; -1 = unknown, ignored).

    With ``texts`` (one per row of ``x``), the head's mention weight is fitted too (see :class:`LinearHead`).
    With ``degraded``, the head trains and is calibrated on those copies too (same labels); label cleaning
    judges the real rows only."""
    from torch import nn

    known = y >= 0
    x, y = x[known].astype(np.float32), y[known].astype(np.int64)
    texts = None if texts is None else [texts[i] for i in np.flatnonzero(known)]
    rows = _select_rows(x, y, len(classes), cfg)
    if degraded is not None:
        if degraded.x.shape[1:] != x.shape[1:]:
            raise ValueError(f"DegradedRows.x has shape {degraded.x.shape}, the rows {x.shape}")
        if (texts is None) != (degraded.texts is None):
            raise ValueError("fit_head: texts and DegradedRows.texts must be given together")
        pos = np.cumsum(known) - 1
        keep = known[degraded.source]
        source = pos[degraded.source[keep]]
        rows = _with_degraded(rows, source, len(y))
        x = np.concatenate([x, degraded.x[keep].astype(np.float32)])
        y = np.concatenate([y, y[source]])
        if texts is not None and degraded.texts is not None:
            texts = texts + [t for t, k in zip(degraded.texts, keep, strict=True) if k]
    mu = x[rows.train].mean(axis=0)
    sigma = x[rows.train].std(axis=0) + 1e-6
    net, ema = _build_net(x.shape[1], len(classes), cfg)
    _train_loop(net, ema, x, y, rows, mu, sigma, cfg, text_slice, image_slice)
    final = ema if ema is not None else net
    final.eval()
    linears = [m for m in final if isinstance(m, nn.Linear)]
    weights = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]
    head = LinearHead(name=name, inputs=inputs, classes=tuple(classes), mean=mu, scale=sigma,
                      layers=tuple(weights), temperature=1.0)
    if len(rows.calibration):
        head = _calibrate(head, x, y, rows, np.arange(len(y)), texts, cfg)
    return head


PRIOR_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def fit_prior_adjustment(head: LinearHead, logits: np.ndarray, y: np.ndarray, prior: np.ndarray) -> LinearHead:
    """The logit adjustment ``-tau * log(prior)`` (Menon et al. 2021) with the best accuracy + macro-F1 on the
    held-out rows (what the rare classes gain against what the common ones lose); the temperature is refitted on
    the adjusted logits. ``tau`` = 0 (no bias) unless it gains."""
    from models.heads.metrics import accuracy_f1

    log_prior = np.log(prior).astype(np.float32)
    best = None
    for tau in PRIOR_TAUS:
        m = accuracy_f1(y, (logits - tau * log_prior).argmax(axis=1))
        score = m["accuracy"] + m["macro_f1"]
        if best is None or score > best[0] + 1e-9:
            best = (score, tau, m)
    tau = best[1]
    bias = -tau * log_prior if tau else None
    t = fit_temperature(logits + (bias if bias is not None else 0.0), y)
    log.info("head %s: prior adjustment tau %.2f (held-out accuracy %.4f, macro-F1 %.4f), temperature %.2f",
             head.name, tau, best[2]["accuracy"], best[2]["macro_f1"], t)
    return head.with_class_bias(bias, t)


MENTION_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
LEXICAL_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # 2.0 was the choice of 3 of 4 heads


def _fit_text_experts(head: LinearHead, logits: np.ndarray, named: np.ndarray, lexical: np.ndarray | None,
                      y: np.ndarray, known_words: np.ndarray | None = None, gates: tuple[float, ...] = (0.0,)
                      ) -> tuple[LinearHead, np.ndarray]:
    """The weights of the mention and lexical experts and the lexical expert's gate (from small grids; see
    :class:`LinearHead`) and the temperature with the lowest held-out negative log-likelihood; with the held-out
    logits those weights give (before the temperature). ``known_words``: per row, the title's words known to the
    lexical expert (needed for a gate above 0)."""
    best = None
    for gate in (gates if lexical is not None and known_words is not None else (0.0,)):
        g = np.minimum(1.0, known_words / gate)[:, None] if gate > 0 else 1.0
        for w in MENTION_WEIGHTS:
            for lw in (LEXICAL_WEIGHTS if lexical is not None else (0.0,)):
                if lw == 0 and gate > 0:
                    continue
                z = logits + w * named + (lw * g * lexical if lw else 0.0)
                t = fit_temperature(z, y)
                p = softmax(z / t)
                nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
                if best is None or nll < best[0] - 1e-4:
                    best = (nll, w, lw, t, z, gate)
    log.info("head %s: mention weight %.1f, lexical weight %.2f (gate %.1f words), temperature %.2f "
             "(held-out NLL %.4f)", head.name, best[1], best[2], best[5], best[3], best[0])
    return head.with_temperature(best[3], mention_weight=best[1], lexical_weight=best[2],
                                 lexical_min_words=best[5]), best[4]


def _fit_temperatures(logits: np.ndarray, y: np.ndarray, n: int, row_temperature: Callable[[Any], Any],
                      max_iter: int) -> np.ndarray:
    """``n`` temperatures minimising the negative log-likelihood of held-out labels, the rows' logits divided by
    ``row_temperature(temperatures)`` (a torch expression, broadcast over the rows); float32, not clipped."""
    import torch
    import torch.nn.functional as F

    lt, yt = torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    log_t = torch.zeros(n, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lt / row_temperature(log_t.exp()), yt)
        loss.backward()
        return loss

    opt.step(closure)
    return log_t.exp().detach().numpy()


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature minimising the negative log-likelihood of held-out labels (Guo et al. 2017)."""
    t = _fit_temperatures(logits, y, 1, lambda t: t, max_iter=100)
    return float(np.clip(t.item(), 0.05, 20.0))


def fit_gated_temperature(logits: np.ndarray, y: np.ndarray, gate: np.ndarray) -> tuple[float, float]:
    """Two softmax temperatures minimising the negative log-likelihood of held-out labels, row i's temperature
    being ``gate[i] * t_full + (1 - gate[i]) * t_poor`` (``gate`` (N, 1) in 0-1): (t_full, t_poor)."""
    import torch

    g = torch.from_numpy(np.asarray(gate, dtype=np.float32).reshape(-1, 1))
    t = _fit_temperatures(logits, y, 2, lambda t: g * t[0] + (1 - g) * t[1], max_iter=200)
    t_full, t_poor = np.clip(t, 0.05, 20.0)
    return float(t_full), float(t_poor)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 confidence, equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)
