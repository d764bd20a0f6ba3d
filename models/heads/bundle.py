"""Task heads on the embeddings (categories, closed-vocabulary attributes, adult score) and their store format.

A head bundle is trained for one encoder version (its inputs are that encoder's embeddings) and lives in the
model store under ``<store>/heads/<version>/`` with the same guarantees as an encoder: a manifest with the
sha256 of every file, safetensors weights, a model card. Inference is numpy, but for the MLPs' GELU, which is
torch's kernel (:func:`_gelu`): torch is imported on a bundle's first prediction, in the Spark workers that
have already loaded it for the encoder; loading a bundle needs no torch.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.heads.lexical import LexicalExpert

__all__ = [
    "HEADS_DIR", "HeadBundle", "LinearHead", "ambiguous_names", "find_heads", "head_input", "load_heads", "mentions",
    "named_class_mask", "named_classes", "save_heads", "softmax",
]

log = logging.getLogger(__name__)

HEADS_DIR = "heads"   # sub-folder of a model store that holds head bundles
LEXICAL_WEIGHT_SUFFIX = ".lexical.weight"   # stored in float16
INPUTS = ("text", "image", "text+image")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _gelu(z: np.ndarray) -> np.ndarray:
    """GELU (the exact, erf form) in float32, by torch's vectorised kernel on the same memory. It was
    ``0.5 * z * (1 + scipy.special.erf(z / sqrt(2)))``: 28% of the heads' time, 50x slower than torch's kernel;
    the two differ by float32 rounding (at most 1.4e-6 on activations up to 15)."""
    import torch

    return torch.nn.functional.gelu(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))).numpy()


def head_input(text: np.ndarray, image: np.ndarray | None, inputs: str) -> np.ndarray:
    """The feature matrix a head reads: text, image, or both side by side (a missing image is zeros)."""
    if inputs not in INPUTS:
        raise ValueError(f"head inputs must be one of {INPUTS}, got {inputs!r}")
    if image is None:
        image = np.zeros_like(text)
    image = np.nan_to_num(image, nan=0.0)
    if inputs == "text":
        return text
    if inputs == "image":
        return image
    return np.concatenate([text, image], axis=1)


@functools.lru_cache(maxsize=64)
def _mention_pattern(classes: tuple[str, ...]) -> tuple[re.Pattern, dict[str, int]]:
    # Longest names first, so that "Navy Blue" is one mention and not also "Blue".
    names = sorted({c.lower() for c in classes if c.strip()}, key=len, reverse=True)
    index = {}
    for i, c in enumerate(classes):
        index.setdefault(c.lower(), i)
    pattern = r"(?<!\w)(" + "|".join(re.escape(n) for n in names) + r")(?!\w)" if names else r"(?!x)x"
    return re.compile(pattern, re.IGNORECASE), index


def mentions(texts: list[str], classes: tuple[str, ...]) -> np.ndarray:
    """(N, C) matrix: 1 where the text names the class as a whole word or phrase (case-insensitive)."""
    pattern, index = _mention_pattern(tuple(classes))
    out = np.zeros((len(texts), len(classes)), dtype=np.float32)
    for i, t in enumerate(texts):
        for m in pattern.findall(t or ""):
            out[i, index[m.lower()]] = 1.0
    return out


def _type_word(word: str) -> str:
    """A word as :func:`named_classes` compares it: lower case, letters and digits only, a plural ending off
    ("T-Shirts" and "Tshirt" -> "tshirt", "Watches" -> "watch", "Dresses" and "Dress" -> "dress")."""
    w = re.sub(r"[^0-9a-z]", "", word.lower())
    if len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


_NAME_SPLIT = re.compile(r"[\s/,&+|()]+")


@functools.lru_cache(maxsize=64)
def _class_names(classes: tuple[str, ...]) -> tuple[dict[tuple[str, ...], frozenset[int]], int]:
    names: dict[tuple[str, ...], set[int]] = {}
    for i, c in enumerate(classes):
        key = tuple(w for w in (_type_word(x) for x in c.split()) if w)
        if key:
            names.setdefault(key, set()).add(i)
    return {k: frozenset(v) for k, v in names.items()}, max((len(k) for k in names), default=0)


def named_class_mask(texts: list[str], classes: tuple[str, ...]) -> np.ndarray:
    """(N, C) bool: which of ``classes`` each text names, its words compared as :func:`_type_word` writes them (so
    "T-Shirt" names ``Tshirts``), the longest name first ("Sports Shoes" is one name, not also "Shoes"). A text
    that is not a string (None, NaN) names none."""
    names, longest = _class_names(tuple(classes))
    out = np.zeros((len(texts), len(classes)), dtype=bool)
    for i, t in enumerate(texts):
        words = [w for w in (_type_word(x) for x in _NAME_SPLIT.split(t if isinstance(t, str) else "")) if w]
        j = 0
        while j < len(words):
            for n in range(min(longest, len(words) - j), 0, -1):
                hit = names.get(tuple(words[j:j + n]))
                if hit is not None:
                    out[i, list(hit)] = True
                    j += n
                    break
            else:
                j += 1
    return out


def named_classes(texts: list[str], classes: tuple[str, ...]) -> np.ndarray:
    """(N,) how many different ``classes`` each text names (:func:`named_class_mask`)."""
    return named_class_mask(texts, classes).sum(axis=1).astype(np.int64)


def ambiguous_names(named: np.ndarray) -> np.ndarray:
    """(N, C) bool: of :func:`named_class_mask`'s ``named``, the classes of the texts that name two or more (a seller
    stuffing a title with other products' words); a text naming one class or none has none."""
    return named & (named.sum(axis=1, keepdims=True) >= 2)


@dataclass(frozen=True)
class LinearHead:
    """An MLP head (one or two layers, GELU between) on standardised inputs, with a softmax temperature.

    ``mention_weight`` adds a lexical expert to the embedding one: a class that the product's text names
    (``"Navy Blue"`` in a title) gets that much added to its logit. A sentence embedding blurs which of 45
    colour words a title holds; the word itself does not. ``lexical_weight`` adds the log-probabilities of a
    TF-IDF expert on the title words (:class:`models.heads.lexical.LexicalExpert`). Both weights are fitted on
    held-out rows with the temperature (0 when the text does not help).

    ``class_bias`` is a logit adjustment against the class prior (Menon et al. 2021, ``-tau * log prior``): a
    head trained on 27,000 casual products and 20 party ones rarely says "Party" even where the title makes it
    likely. ``tau`` is fitted on held-out rows too (0, no bias, when the rare classes do not gain from it).

    ``lexical_min_words`` gates the lexical expert by its evidence: its log-probabilities count in proportion to
    the title's words its vocabulary knows, fully from that many on (0: no gate). A title cut to its brand then
    cannot overrule the photo with one word; an empty title adds nothing.

    ``title_expert`` (a head on the text embedding alone, with its text experts) is a late-fusion expert for a
    fused head: the fused head's calibrated log-probabilities plus ``title_weight`` times the title expert's, the
    weight gated by the title's evidence like the lexical expert's (full from ``title_min_words`` known words
    on), then softmax at ``fusion_temperature``. A fused head trained beside degraded titles leans on the photo;
    on a title that says enough, the title expert gives the text its say back.

    ``fusion_temperature_poor`` (None: one temperature for every title) is the temperature of a title that gives
    the title expert no evidence; per product the temperature runs linearly from it to ``fusion_temperature`` with
    the same gate as the expert's weight. One temperature fitted over full and degraded titles together left the
    colour head sure of itself on full titles and unsure without one (mean confidence 0.43 where it was right
    0.62 of the time with no title).

    ``ambiguous_titles``: a title that names two or more of the head's classes ("... Black T-Shirts Body Lotion
    Shorts", a seller stuffing the title with other products' words; :func:`named_classes`, which reads "T-Shirts"
    as ``Tshirts``) gives its title expert a gate of 0, as an empty title does: the fused head, which sees the
    photo, decides, at the poor title's temperature. The title expert reads the text alone and follows the stuffed
    words (category accuracy 0.44 on such titles, the fused head without it 0.89; ``python -m
    models.heads.ambiguity``).

    ``named_weight`` (with ``ambiguous_titles``): on such a title each class it names gets this much added to its
    fused log-probability, before the fusion temperature. The product is most likely one of the types its seller
    named, and the photo picks which; the fused head alone, reading a sentence embedding that the stuffed words
    move, may pick a type the title never named. Fitted on the set-aside half of the valid split
    (``python -m models.heads.ambiguity``).
    """

    name: str
    inputs: str
    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]   # (W (in, out), b (out,)) per layer
    temperature: float = 1.0
    mention_weight: float = 0.0
    lexical: LexicalExpert | None = None   # TF-IDF expert on the title words (models.heads.lexical)
    lexical_weight: float = 0.0
    class_bias: np.ndarray | None = None   # (C,) added to the logits: the class-prior adjustment (or None)
    lexical_min_words: float = 0.0         # the lexical expert's full weight from this many known title words on
    title_expert: LinearHead | None = None  # late fusion: a head on the text embedding alone
    title_weight: float = 0.0
    title_min_words: float = 0.0           # the title expert's full weight from this many known title words on
    fusion_temperature: float = 1.0
    fusion_temperature_poor: float | None = None   # at a title gate of 0 (None: fusion_temperature throughout)
    ambiguous_titles: bool = False         # a title naming two or more classes gives the title expert no weight
    named_weight: float = 0.0              # ... and adds this to the fused log-probability of each class it names

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"LinearHead.inputs must be one of {INPUTS}, got {self.inputs!r}")
        if self.layers[-1][0].shape[1] != len(self.classes):
            raise ValueError(f"head {self.name}: last layer has {self.layers[-1][0].shape[1]} outputs "
                             f"for {len(self.classes)} classes")

    def with_temperature(self, t: float, mention_weight: float | None = None,
                         lexical_weight: float | None = None, lexical_min_words: float | None = None) -> LinearHead:
        w = self.mention_weight if mention_weight is None else float(mention_weight)
        lw = self.lexical_weight if lexical_weight is None else float(lexical_weight)
        gate = self.lexical_min_words if lexical_min_words is None else float(lexical_min_words)
        return replace(self, temperature=float(t), mention_weight=w, lexical_weight=lw,
                       lexical=self.lexical if lw else None, lexical_min_words=gate if lw else 0.0)

    def with_typo_correction(self, on: bool = True) -> LinearHead:
        """The head with every lexical expert it reads (its own, its title expert's) correcting typos or not
        (:attr:`models.heads.lexical.LexicalExpert.correct_typos`); nothing else changes."""
        lexical = None if self.lexical is None else replace(self.lexical, correct_typos=on)
        expert = None if self.title_expert is None else self.title_expert.with_typo_correction(on)
        return replace(self, lexical=lexical, title_expert=expert)

    def with_class_bias(self, bias: np.ndarray | None, t: float) -> LinearHead:
        """The head with a logit adjustment (None: none) and the temperature refitted for it."""
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float32)
            if bias.shape != (len(self.classes),):
                raise ValueError(f"head {self.name}: class bias of shape {bias.shape} for {len(self.classes)} classes")
            if not np.any(bias):
                bias = None
        return replace(self, class_bias=bias, temperature=float(t))

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            z = z @ w + b
            if i < len(self.layers) - 1:
                z = _gelu(z)
        return z

    def combined_logits(self, x: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """The embedding MLP's logits plus the text experts and the class bias, before the temperature."""
        z = self.logits(x)
        if self.mention_weight and texts is not None:
            z = z + self.mention_weight * mentions(texts, self.classes)
        if self.lexical_weight and self.lexical is not None and texts is not None:
            z = z + self.lexical_weight * self.lexical.gate(texts, self.lexical_min_words) * \
                self.lexical.log_probs(texts)
        if self.class_bias is not None:
            z = z + self.class_bias
        return z

    def probs(self, x: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        if self.title_expert is None or not self.title_weight or texts is None:
            return softmax(self.combined_logits(x, texts) / self.temperature)
        lp, gate = self.fused_before_temperature(x, texts)
        return softmax(lp / self.fusion_temperatures(gate))

    def fused_before_temperature(self, x: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray | float]:
        """The late-fused log-probabilities before the fusion temperature (the head's own, calibrated, plus its
        title expert's; :meth:`fused_log_probs`; on a title naming two or more classes, with :attr:`named_weight`
        added to those it names), and each title's gate (:meth:`title_gate`)."""
        own = log_softmax(self.combined_logits(x, texts) / self.temperature)
        named = named_class_mask(texts, self.classes) if self.ambiguous_titles else None
        gate = self.title_gate(texts, named)
        lp = self.fused_log_probs(own, x, texts, gate)
        if named is not None and self.named_weight:
            lp = lp + self.named_weight * ambiguous_names(named)
        return lp, gate

    def title_gate(self, texts: list[str], named: np.ndarray | None = None) -> np.ndarray | float:
        """(N, 1) how much each title says, 0-1: its words known to the head's lexical vocabulary, else the title
        expert's, over ``title_min_words`` (1.0 without a vocabulary); 0 for a title that names two or more classes
        when :attr:`ambiguous_titles` is set (``named``: :func:`named_class_mask` of ``texts``, computed if not
        given)."""
        expert = self.title_expert
        vocab = self.lexical if self.lexical is not None else (None if expert is None else expert.lexical)
        gate = vocab.gate(texts, self.title_min_words) if vocab is not None else 1.0
        if not self.ambiguous_titles:
            return gate
        if named is None:
            named = named_class_mask(texts, self.classes)
        stuffed = ambiguous_names(named).any(axis=1)[:, None]
        return np.where(stuffed, 0.0, np.broadcast_to(gate, stuffed.shape)).astype(np.float32)

    def fusion_temperatures(self, gate: np.ndarray | float) -> np.ndarray | float:
        """The fusion temperature of each product: ``fusion_temperature_poor`` at gate 0, ``fusion_temperature``
        at 1, linear between."""
        if self.fusion_temperature_poor is None:
            return self.fusion_temperature
        return gate * self.fusion_temperature + (1.0 - gate) * self.fusion_temperature_poor

    def fused_log_probs(self, own: np.ndarray, x: np.ndarray, texts: list[str],
                        gate: np.ndarray | float | None = None) -> np.ndarray:
        """``own`` (the head's log-probabilities) plus the title expert's, weighted by how much the title says
        (:meth:`title_gate`; given or computed), before the fusion temperature."""
        expert = self.title_expert
        if gate is None:
            gate = self.title_gate(texts)
        d = expert.mean.shape[0]
        z = expert.combined_logits(np.asarray(x)[:, :d], texts) / expert.temperature
        return own + self.title_weight * gate * log_softmax(z)

    def predict(self, text: np.ndarray, image: np.ndarray | None, texts: list[str] | None = None) -> np.ndarray:
        """Class probabilities; ``texts`` (title and description) feed the mention expert when the head has one."""
        return self.probs(head_input(text, image, self.inputs), texts)

    # -- serialisation: tensors + a JSON description --
    def tensors(self) -> dict[str, np.ndarray]:
        out = {f"{self.name}.mean": self.mean.astype(np.float32), f"{self.name}.scale": self.scale.astype(np.float32)}
        for i, (w, b) in enumerate(self.layers):
            out[f"{self.name}.layer{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
            out[f"{self.name}.layer{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
        if self.lexical is not None:
            out.update(self.lexical.tensors(f"{self.name}.lexical"))
        if self.class_bias is not None:
            out[f"{self.name}.class_bias"] = np.ascontiguousarray(self.class_bias, dtype=np.float32)
        if self.title_expert is not None:
            out.update(self.title_expert.tensors())
        return out

    def describe(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "classes": list(self.classes), "temperature": self.temperature,
                "n_layers": len(self.layers), "mention_weight": self.mention_weight,
                "lexical_weight": self.lexical_weight,
                "lexical": None if self.lexical is None else self.lexical.describe(),
                "class_bias": self.class_bias is not None, "lexical_min_words": self.lexical_min_words,
                "title_expert": None if self.title_expert is None else self.title_expert.describe(),
                "title_weight": self.title_weight, "title_min_words": self.title_min_words,
                "fusion_temperature": self.fusion_temperature,
                "fusion_temperature_poor": self.fusion_temperature_poor, "ambiguous_titles": self.ambiguous_titles,
                "named_weight": self.named_weight}

    @classmethod
    def from_parts(cls, name: str, desc: dict[str, Any], tensors: dict[str, np.ndarray]) -> LinearHead:
        layers = tuple((tensors[f"{name}.layer{i}.weight"], tensors[f"{name}.layer{i}.bias"])
                       for i in range(int(desc["n_layers"])))
        return cls(name, desc["inputs"], tuple(desc["classes"]), tensors[f"{name}.mean"], tensors[f"{name}.scale"],
                   layers, float(desc["temperature"]), float(desc.get("mention_weight", 0.0)),
                   None if not desc.get("lexical") else LexicalExpert.from_parts(f"{name}.lexical", desc["lexical"],
                                                                                 tensors),
                   float(desc.get("lexical_weight", 0.0)),
                   tensors[f"{name}.class_bias"] if desc.get("class_bias") else None,
                   float(desc.get("lexical_min_words", 0.0)),
                   None if not desc.get("title_expert") else cls.from_parts(f"{name}.title", desc["title_expert"],
                                                                            tensors),
                   float(desc.get("title_weight", 0.0)), float(desc.get("title_min_words", 0.0)),
                   float(desc.get("fusion_temperature", 1.0)),
                   None if desc.get("fusion_temperature_poor") is None else float(desc["fusion_temperature_poor"]),
                   bool(desc.get("ambiguous_titles", False)), float(desc.get("named_weight", 0.0)))


@dataclass(frozen=True)
class HeadBundle:
    """Every head trained for one encoder version."""

    encoder_version: str
    category: LinearHead | None = None
    attributes: dict[str, LinearHead] = field(default_factory=dict)   # closed vocabulary: colour, usage, ...
    adult: LinearHead | None = None          # classes ("not_adult", "adult")
    adult_threshold: float = 0.5
    attribute_threshold: float = 0.5         # closed attributes below this confidence are not written
    mature_categories: tuple[str, ...] = ()  # category labels that count as adult when predicted
    version: str = ""                        # the store version id, once saved

    def heads(self) -> dict[str, LinearHead]:
        out = dict(self.attributes)
        if self.category is not None:
            out["category"] = self.category
        if self.adult is not None:
            out["adult"] = self.adult
        return out


def save_heads(store: Path, name: str, bundle: HeadBundle, *, training_data: str, metrics: dict[str, Any],
               card: str | None = None, same_weights_as: Path | None = None) -> str:
    """Write ``bundle`` as a new version under ``<store>/heads``; returns the version id. ``same_weights_as``: an
    earlier version's folder whose weight file holds exactly the bundle's tensors, stored again byte for byte (a
    bundle with a changed description only: serialised again, safetensors' metadata may come out in another order
    and give git a second copy of the same tensors); ValueError where the tensors differ."""
    import torch

    from models.store import WEIGHTS_FILE, save_version

    config = {
        "kind": "heads",
        "encoder_version": bundle.encoder_version,
        "category": None if bundle.category is None else bundle.category.describe(),
        "attributes": {k: h.describe() for k, h in bundle.attributes.items()},
        "adult": None if bundle.adult is None else bundle.adult.describe(),
        "adult_threshold": bundle.adult_threshold,
        "attribute_threshold": bundle.attribute_threshold,
        "mature_categories": list(bundle.mature_categories),
    }
    tensors: dict[str, Any] = {}
    for head in bundle.heads().values():
        tensors.update({k: torch.from_numpy(v) for k, v in head.tensors().items()})
    # The lexical experts' (terms, classes) weights are most of a bundle: float16 halves them (the loader casts
    # back to float32; the change to a log-probability is about 1e-3 of its size).
    tensors = {k: v.half() if k.endswith(LEXICAL_WEIGHT_SUFFIX) else v for k, v in tensors.items()}
    weights_file = None
    if same_weights_as is not None:
        from safetensors.torch import load as load_bytes

        weights_file = (Path(same_weights_as) / WEIGHTS_FILE).read_bytes()
        stored = load_bytes(weights_file)
        if stored.keys() != tensors.keys() or any(
                stored[k].dtype != v.dtype or not torch.equal(stored[k], v) for k, v in tensors.items()):
            raise ValueError(f"save_heads: the bundle's tensors are not those of {same_weights_as}")
    return save_version(store / HEADS_DIR, name, config, {}, tensors, training_data=training_data, metrics=metrics,
                        extra={"kind": "heads", "encoder_version": bundle.encoder_version}, card=card,
                        weights_file=weights_file)


def load_heads(vdir: Path) -> HeadBundle:
    """Verify (checksums, no pickles) and load a head bundle."""
    from safetensors.numpy import load_file

    from models.store import CONFIG_FILE, WEIGHTS_FILE, ModelIntegrityError, verify_version

    manifest = verify_version(vdir)
    if manifest.get("kind") != "heads":
        raise ModelIntegrityError(f"{vdir} is not a head bundle (manifest kind {manifest.get('kind')!r})")
    cfg = json.loads((vdir / CONFIG_FILE).read_text())["model_cfg"]
    tensors = {k: v.astype(np.float32) if v.dtype == np.float16 else v
               for k, v in load_file(str(vdir / WEIGHTS_FILE)).items()}

    def part(name: str, desc: dict[str, Any] | None) -> LinearHead | None:
        return None if desc is None else LinearHead.from_parts(name, desc, tensors)

    return HeadBundle(
        encoder_version=cfg["encoder_version"],
        category=part("category", cfg.get("category")),
        attributes={k: LinearHead.from_parts(k, d, tensors) for k, d in cfg.get("attributes", {}).items()},
        adult=part("adult", cfg.get("adult")),
        adult_threshold=float(cfg.get("adult_threshold", 0.5)),
        attribute_threshold=float(cfg.get("attribute_threshold", 0.5)),
        mature_categories=tuple(cfg.get("mature_categories", ())),
        version=manifest["version"],
    )


def find_heads(store: Path, encoder_version: str) -> Path | None:
    """The newest head bundle in ``store`` trained for ``encoder_version`` (None when there is none)."""
    from models.store import list_versions, read_manifest

    root = store / HEADS_DIR
    matches = []
    for v in list_versions(root):
        m = read_manifest(root / v)
        if m.get("kind") == "heads" and m.get("encoder_version") == encoder_version:
            matches.append((m.get("created_at", ""), v))
    return root / max(matches)[1] if matches else None
