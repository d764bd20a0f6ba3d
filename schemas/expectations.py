"""The data-quality expectations of the quality gates, declared as data next to the table definitions.

The gates (:mod:`jobs.quality`) turn these into Great Expectations 1.x suites and validate them with Spark.
Nothing here imports Great Expectations or starts Spark: the module is cheap to import from a DAG or a test.

Adding a table's expectations is one entry in :data:`OUTPUT_CHECKS`: the key columns' not-null and uniqueness
checks come from its :class:`~schemas.tables.TableSpec` automatically; list the rest as :class:`Expect` rows.
A table that does not exist in the lake yet is skipped with a note, so expectations may land before the
job that writes the table. An expectation whose :class:`Param` has no value is skipped with a note too.

``derived`` columns are Spark SQL expressions computed before validation (an embedding's norm, a rate from
a map column): they are constants of this module, never built from input. Their names start with ``_`` so
they cannot clash with a table's own columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.reasons import REASONS

__all__ = [
    "CHECKED_OUTPUT_TABLES", "Expect", "GateThresholds", "INPUT_CHECKS", "OUTPUT_CHECKS", "Param", "TableChecks",
]


@dataclass(frozen=True)
class Param:
    """A value given at validation time (a threshold, or a figure from this run's ``enrichment_runs`` row)."""

    name: str


@dataclass(frozen=True)
class Expect:
    """One Great Expectations expectation: its class name in ``great_expectations.expectations`` and kwargs.

    ``scope="run"`` validates only the rows this run wrote (``run_id`` equal to the run's id); ``"table"``
    validates every row of the table version under audit.
    """

    type: str
    kwargs: Mapping[str, Any]
    why: str
    scope: str = "table"

    def __post_init__(self):
        if self.scope not in ("table", "run"):
            raise ValueError(f"Expect.scope must be 'table' or 'run', not {self.scope!r}")

    def params(self) -> list[str]:
        return [v.name for v in self.kwargs.values() if isinstance(v, Param)]


@dataclass(frozen=True)
class TableChecks:
    """The expectations on one table. ``publish``: the table is a data product published through the
    ``_published`` pointer (a run log such as ``enrichment_runs`` is validated but always readable)."""

    table: str
    expectations: tuple[Expect, ...] = ()
    derived: Mapping[str, str] = field(default_factory=dict)
    publish: bool = True
    key_checks: bool = True


@dataclass(frozen=True)
class GateThresholds:
    """Limits of the gates; every field is a :class:`Param` name the suites can refer to."""

    # Per-row problems go to quarantine; the input gate stops only gross breakage of the whole snapshot.
    input_mostly: float = 0.99
    image_uri_mostly: float = 0.95
    # The snapshot's row count may move within this band of the last published run's count.
    row_count_min_ratio: float = 0.5
    row_count_max_ratio: float = 2.0
    norm_tolerance: float = 1e-3
    max_quarantine_rate: float = 0.10
    max_cluster_size: int = 50
    category_labels: tuple[str, ...] | None = None   # None: the label-set expectation is skipped with a note

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.category_labels is not None:
            out["category_labels"] = list(self.category_labels)
        return out


def _between(column: str, lo: Any, hi: Any, why: str, **kw: Any) -> Expect:
    return Expect("ExpectColumnValuesToBeBetween", {"column": column, "min_value": lo, "max_value": hi, **kw}, why)


def _not_null(column: str, why: str, **kw: Any) -> Expect:
    return Expect("ExpectColumnValuesToNotBeNull", {"column": column, **kw}, why)


def _true(column: str, why: str, **kw: Any) -> Expect:
    return Expect("ExpectColumnValuesToBeInSet", {"column": column, "value_set": [True], **kw}, why)


def _probability(column: str) -> Expect:
    return _between(column, 0.0, 1.0, f"{column} is a probability")


def _finite_probability(column: str) -> tuple[dict[str, str], tuple[Expect, ...]]:
    """The derived column and expectations of a score that must be a probability: present, finite, in [0, 1].

    Great Expectations' range check skips missing values, and a NaN the model made reaches the table as NULL
    (pandas to Arrow): presence and finiteness are a check of their own (a stored NaN or infinity fails it too).
    """
    name = f"_{column}_finite"
    sql = f"coalesce(NOT (isnan({column}) OR abs({column}) = double('Infinity')), false)"
    return {name: sql}, (_probability(column), _true(name, f"{column} is present and finite (not NaN or infinite)"))


_TOP_K_PROBABILITIES = "forall(top_k, x -> x.score IS NOT NULL AND NOT isnan(x.score) AND x.score BETWEEN 0 AND 1)"


# A usable image reference: a plain path or a file:// URI without control characters. Other schemes are
# never fetched (the enrich job's image policy), so a catalog full of them is broken, not merely noisy.
_URI_WELL_FORMED = (
    "CASE WHEN image_uri IS NULL THEN NULL ELSE ("
    "length(trim(image_uri)) > 0 AND NOT image_uri RLIKE '[\\\\x00-\\\\x1f]' AND "
    "(image_uri LIKE 'file://%' OR NOT image_uri RLIKE '^[A-Za-z][A-Za-z0-9+.-]*:')) END"
)

INPUT_CHECKS = TableChecks(
    "catalog",
    derived={
        "_id_present": "product_id IS NOT NULL AND length(trim(product_id)) > 0",
        "_title_chars": "coalesce(length(trim(title)), 0)",
        "_image_uri_well_formed": _URI_WELL_FORMED,
    },
    expectations=(
        Expect("ExpectTableRowCountToBeBetween", {"min_value": 1}, "the snapshot is not empty"),
        Expect("ExpectTableRowCountToBeBetween",
               {"min_value": Param("row_count_min"), "max_value": Param("row_count_max")},
               "the row count is within the band around the last published run's count"),
        _true("_id_present", "product_id is present", mostly=Param("input_mostly")),
        Expect("ExpectColumnValuesToBeUnique", {"column": "product_id", "mostly": Param("input_mostly")},
               "product_id is unique within the snapshot"),
        _between("_title_chars", 1, None, "title is non-empty after trimming", mostly=Param("input_mostly")),
        _true("_image_uri_well_formed", "image_uri is a plain path or a file:// URI (absent is fine)",
              mostly=Param("image_uri_mostly")),
    ),
    publish=False,
    key_checks=False,
)


def _norm(col: str) -> str:
    return f"sqrt(aggregate({col}, 0D, (acc, x) -> acc + double(x) * double(x)))"


def _size(col: str) -> str:
    # size(NULL) is -1 under Spark's default settings; an absent image embedding must stay absent.
    return f"CASE WHEN {col} IS NULL THEN NULL ELSE size({col}) END"


# Each vector on its own: concat() of a NULL is NULL, and a NULL verdict is not checked (GX skips nulls).
_FINITE = ("NOT exists(concat(coalesce(embedding, array()), coalesce(text_embedding, array()), "
           "coalesce(image_embedding, array())), x -> isnan(x) OR abs(x) = double('Infinity'))")

_EMBEDDINGS = TableChecks(
    "product_embeddings",
    derived={
        "_embedding_dim": _size("embedding"), "_text_dim": _size("text_embedding"),
        "_image_dim": _size("image_embedding"),
        "_embedding_norm": _norm("embedding"), "_text_norm": _norm("text_embedding"),
        "_image_norm": _norm("image_embedding"), "_finite": _FINITE,
    },
    expectations=(
        _not_null("embedding", "every product row has a fused embedding"),
        _not_null("model_version", "every row records the model that produced it"),
        _not_null("content_hash", "every row records the content it was computed from"),
        _true("_finite", "no NaN or infinite value in any embedding"),
        Expect("ExpectColumnUniqueValueCountToBeBetween", {"column": "_embedding_dim", "min_value": 1, "max_value": 1},
               "one embedding dimension across the table"),
        _between("_embedding_dim", 2, None, "embeddings have at least two dimensions"),
        Expect("ExpectColumnPairValuesToBeEqual", {"column_A": "_text_dim", "column_B": "_embedding_dim"},
               "the text embedding has the fused embedding's dimension"),
        Expect("ExpectColumnPairValuesToBeEqual",
               {"column_A": "_image_dim", "column_B": "_embedding_dim", "ignore_row_if": "either_value_is_missing"},
               "the image embedding (when present) has the fused embedding's dimension"),
        *(_between(c, Param("norm_min"), Param("norm_max"), f"{c[1:].replace('_', ' ')} is 1 (L2-normalised)")
          for c in ("_embedding_norm", "_text_norm", "_image_norm")),
        Expect("ExpectTableRowCountToEqual", {"value": Param("enriched")},
               "one embedding row per product this run enriched", scope="run"),
    ),
)

_RUNS = TableChecks(
    "enrichment_runs",
    derived={
        "_accounted": "counts['read'] = counts['enriched'] + counts['unchanged'] + counts['quarantined']",
        "_quarantine_rate": "counts['quarantined'] / greatest(counts['read'], 1)",
    },
    expectations=(
        Expect("ExpectTableRowCountToEqual", {"value": 1}, "the run recorded itself", scope="run"),
        Expect("ExpectColumnValuesToBeInSet", {"column": "status", "value_set": ["succeeded"]},
               "the enrich job finished", scope="run"),
        Expect("ExpectColumnValuesToBeInSet", {"column": "_accounted", "value_set": [True]},
               "every input row is enriched, unchanged or quarantined", scope="run"),
        Expect("ExpectColumnValuesToBeBetween",
               {"column": "_quarantine_rate", "min_value": 0.0, "max_value": Param("max_quarantine_rate")},
               "the share of quarantined input rows is under the threshold", scope="run"),
    ),
    publish=False,
    key_checks=False,
)

_QUARANTINE = TableChecks(
    "quarantine",
    expectations=(
        Expect("ExpectColumnValuesToBeInSet", {"column": "reason_code", "value_set": sorted(REASONS)},
               "every rejected row carries a known reason code"),
    ),
)

# Tables of the downstream tasks; each is skipped with a note until its table exists in the lake.
_CONFIDENCE, _CONFIDENCE_CHECKS = _finite_probability("confidence")
_SCORE, _SCORE_CHECKS = _finite_probability("score")
_CATEGORIES = TableChecks(
    "product_categories",
    derived={**_CONFIDENCE, "_top_k_probabilities": _TOP_K_PROBABILITIES},
    expectations=(
        *_CONFIDENCE_CHECKS,
        _true("_top_k_probabilities", "every top_k score is a probability: present, finite, in [0, 1]"),
        Expect("ExpectColumnValuesToBeInSet", {"column": "category", "value_set": Param("category_labels")},
               "the top-1 category is in the label set"),
    ),
)
_ATTRIBUTES = TableChecks("product_attributes", derived=_CONFIDENCE, expectations=(
    *_CONFIDENCE_CHECKS,
    Expect("ExpectColumnValuesToBeInSet",
           {"column": "source", "value_set": ["title", "description", "image", "title+image"]},
           "the value was read from the title, description or image (or title and image together)"),
))
_ADULT = TableChecks("product_adult_flags", derived=_SCORE, expectations=(
    *_SCORE_CHECKS, _not_null("is_adult", "every product has a decision"),
))
_MATCHES = TableChecks(
    "product_matches",
    derived={**_SCORE, "_ordered": "product_id_a < product_id_b"},
    expectations=(*_SCORE_CHECKS, _true("_ordered", "each pair is stored once, smaller id first")),
)
_CLUSTERS = TableChecks("product_clusters", expectations=(
    _not_null("cluster_id", "every matched product has a cluster"),
    _between("cluster_size", 1, Param("max_cluster_size"), "clusters stay under the size cap"),
))

OUTPUT_CHECKS: dict[str, TableChecks] = {c.table: c for c in (
    _EMBEDDINGS, _CATEGORIES, _ATTRIBUTES, _ADULT, _MATCHES, _CLUSTERS, _QUARANTINE, _RUNS)}

# The data products the output gate audits and the ``_published`` pointer publishes.
CHECKED_OUTPUT_TABLES: tuple[str, ...] = tuple(name for name, c in OUTPUT_CHECKS.items() if c.publish)
