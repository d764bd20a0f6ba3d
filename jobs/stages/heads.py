"""The heads stage of the enrich job: decide on the driver what runs, apply it in a UDF, shape the three tables.

Decisions (logged, and recorded in every row's ``method`` column):

* head bundle: ``--heads auto`` takes the newest bundle in the model store trained for the run's encoder
  version; ``--heads none`` runs without; a folder names a bundle explicitly (verified like any model).
* categories: the bundle's head when its labels fit the catalog (at least ``min_coverage`` of the products
  with a seller category have one whose leaf is a head label, or the catalog has no seller categories);
  otherwise zero-shot against category names: ``--taxonomy FILE`` when given, else the catalog's own seller
  categories; with neither, no categories are written.
* open attributes: ``--attributes auto`` runs the model store's current attribute extractor
  (:mod:`models.attributes`) over title and description, beside the closed heads' colour/usage/gender rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.heads.adult import TermList
from udfs.heads import HeadsPlan

__all__ = ["HeadsConfig", "heads_tables", "leaf", "plan_heads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadsConfig:
    heads: str = "auto"                 # auto | none | a bundle folder
    categories: str = "auto"            # auto | head | zero-shot | none
    taxonomy: str | None = None         # category names for zero-shot (Parquet taxonomy or text file)
    taxonomy_language: str = "en"
    adult_terms: str | None = None      # term list JSON (default: the shipped multilingual list)
    top_k: int = 5
    min_coverage: float = 0.5

    def __post_init__(self) -> None:
        if self.categories not in ("auto", "head", "zero-shot", "none"):
            raise ValueError(f"--categories must be auto, head, zero-shot or none, got {self.categories!r}")
        if not 0 <= self.min_coverage <= 1:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")


def leaf(category: str) -> str:
    """The last level of a category path (``Apparel > Topwear > Tshirts`` -> ``Tshirts``)."""
    return category.replace("/", ">").split(">")[-1].strip()


def _bundle_dir(cfg: HeadsConfig, encoder_version: str) -> Path | None:
    from models.heads.bundle import find_heads, load_heads
    from models.store import DEFAULT_STORE

    if cfg.heads == "none":
        return None
    if cfg.heads == "auto":
        found = find_heads(DEFAULT_STORE, encoder_version)
        if found is None:
            log.info("no head bundle for encoder %s in %s: categories fall back to zero-shot, no closed attributes, "
                     "adult flags from terms and categories only", encoder_version, DEFAULT_STORE)
        return found
    path = Path(cfg.heads).expanduser().resolve()
    bundle = load_heads(path)   # verify now: a bad bundle fails the run before any work
    if bundle.encoder_version != encoder_version:
        raise ValueError(f"head bundle {path.name} was trained for encoder {bundle.encoder_version}, "
                         f"not {encoder_version}: its heads cannot read these embeddings")
    return path


def plan_heads(cfg: HeadsConfig, encoder_version: str, category_counts: dict[str, int],
               embed_texts: Callable[[], Callable[[list[str]], object]]) -> tuple[HeadsPlan, str]:
    """The plan for this run and a one-line description. ``category_counts``: seller category -> products;
    ``embed_texts()`` returns the encoder's text embedder (only called for zero-shot)."""
    from models.heads.bundle import load_heads
    from models.heads.zero_shot import ZeroShotLabels, load_label_names

    bundle_dir = _bundle_dir(cfg, encoder_version)
    bundle = load_heads(bundle_dir) if bundle_dir is not None else None
    mode = cfg.categories
    total = sum(category_counts.values())
    if mode in ("auto", "head") and bundle is not None and bundle.category is not None:
        classes = set(bundle.category.classes)
        covered = sum(n for c, n in category_counts.items() if leaf(c) in classes or c in classes)
        coverage = covered / total if total else 1.0
        fits = coverage >= cfg.min_coverage
        log.info("category head %s covers %.0f%% of the products with a seller category", bundle.version,
                 100 * coverage)
        if mode == "head" or fits:
            mode = "head"
        else:
            mode = "zero-shot"
    elif mode == "head":
        raise ValueError("--categories head needs a head bundle with a category head for encoder "
                         f"{encoder_version}; none was found (train one with python -m models.heads.fashion)")
    elif mode == "auto":
        mode = "zero-shot"
    zero_shot = None
    if mode == "zero-shot":
        if cfg.taxonomy:
            names, source = load_label_names(cfg.taxonomy, cfg.taxonomy_language)
        else:
            names, source = sorted(category_counts), "catalog seller categories"
        if names:
            zero_shot = ZeroShotLabels.build(names, embed_texts(), source)
        else:
            mode = "none"
    terms = TermList.load(cfg.adult_terms)
    types = tuple(bundle.category.classes) if mode == "head" and bundle is not None and bundle.category else ()
    plan = HeadsPlan(str(bundle_dir) if bundle_dir else None, mode, zero_shot, cfg.top_k, terms, types)
    if mode == "head":
        what = f"category head of {bundle.version}"
    elif mode == "zero-shot":
        what = f"zero-shot over {len(zero_shot.labels)} names ({zero_shot.source})"
    else:
        what = "no categories (no head fits and no category names)"
    note = f"categories: {what}; head bundle: {bundle.version if bundle else 'none'}"
    log.info(note)
    return plan, note


def category_method(plan: HeadsPlan) -> str:
    if plan.category_mode == "head":
        return f"head:{Path(plan.bundle_dir).name}"
    if plan.category_mode == "zero-shot":
        return f"zero-shot:{plan.zero_shot.source}"
    return "none"


def heads_tables(scored, plan: HeadsPlan, encoder_version: str, run_id: str, now) -> dict[str, object]:
    """The three output DataFrames from rows with a ``_h`` struct (:data:`udfs.heads.HEADS_SCHEMA`)."""
    from pyspark.sql import functions as F

    bundle_name = Path(plan.bundle_dir).name if plan.bundle_dir else None
    common = [F.lit(encoder_version).alias("model_version"), F.lit(run_id).alias("run_id"),
              F.lit(now).cast("timestamp").alias("updated_at")]
    categories = (scored.where(F.col("_h.category").isNotNull())
                  .select("product_id", F.col("_h.category").alias("category"),
                          F.col("_h.confidence").alias("confidence"), F.col("_h.top_k").alias("top_k"),
                          F.col("category").alias("seller_category"), F.lit(category_method(plan)).alias("method"),
                          *common))
    attributes = (scored.select("product_id", F.explode("_h.attributes").alias("a"))
                  .select("product_id", "a.attribute", "a.value", F.col("a.value").alias("normalized_value"),
                          "a.confidence", "a.source", F.lit(f"closed:{bundle_name}").alias("method"), *common))
    adult = scored.select(
        "product_id", F.col("_h.is_adult").alias("is_adult"), F.col("_h.adult_score").alias("score"),
        F.col("_h.adult_reasons").alias("reasons"),
        F.lit(f"embedding:{bundle_name}+terms+category" if bundle_name else "terms+category").alias("method"),
        *common)
    return {"product_categories": categories, "product_attributes": attributes, "product_adult_flags": adult}


def resolve_extractor(ref: str) -> tuple[str, str] | None:
    """(reference for the loader, version name) of the open attribute extractor for ``--attributes``, or None
    to skip the stage.

    ``auto`` takes the shipped store's current extractor and skips (with a log line) when there is none, as
    when the project runs from the ``--py-files`` zip without the model store; any other reference must
    resolve, so a typo fails the run before any work."""
    from models.attributes.extractor import resolve_version
    from models.refs import ModelRefError

    if ref == "none":
        return None
    if ref == "auto":
        try:
            vdir = resolve_version("default")
        except ValueError as e:
            log.info("no open attribute extractor (%s): product_attributes gets the closed heads' rows only", e)
            return None
        return f"store:{vdir.name}", vdir.name
    try:
        vdir = resolve_version(ref)
    except ValueError as e:
        raise ModelRefError(f"--attributes {ref}: {e}") from None
    # A store version keeps its short reference (workers resolve it in the same store); a folder its full path.
    return (ref if ref.startswith("store:") else str(vdir.resolve())), vdir.name


def open_attributes(scored, extractor: tuple[str, str], batch_size: int, device: str | None, torch_threads: int,
                    run_id: str, now, schema_json: str | None = None, precision: str = "auto"):
    """``product_attributes`` rows from the open extractor over each scored product's title, description and
    seller category (which picks the attributes asked, for an extractor with a per-category schema)."""
    from pyspark.sql import functions as F

    from udfs.attributes import AttributesConfig, make_attributes_udf

    ref, name = extractor
    cfg = AttributesConfig(model_ref=ref, batch_size=batch_size, device=device, torch_threads=torch_threads,
                           schema_json=schema_json, precision=precision)
    category = F.col("category") if "category" in scored.columns else F.lit(None).cast("string")
    found = scored.select("product_id", make_attributes_udf(cfg)(F.col("title"), F.col("description"),
                                                                 category).alias("_a"))
    # explode_outer and a null filter, not explode: before an inner explode Spark's optimizer adds
    # ``size(_a) > 0`` below it (InferFiltersFromGenerate), which evaluates the extractor UDF a second time
    # in the same task (measured: 4 Python workers on 2 cores, the stage 2x the plain loop's time).
    return (found.select("product_id", F.explode_outer("_a").alias("a")).where(F.col("a").isNotNull())
            .select("product_id", "a.attribute", "a.value", "a.normalized_value",
                    F.col("a.confidence").cast("double").alias("confidence"),
                    "a.source", F.lit(f"open:{name}").alias("method"), F.lit(f"store:{name}").alias("model_version"),
                    F.lit(run_id).alias("run_id"), F.lit(now).cast("timestamp").alias("updated_at")))
