"""Delta column statistics for the data files the table layer commits, and file pruning with them.

Each ``add`` action carries ``{"numRecords", "minValues", "maxValues", "nullCount"}`` for the table's
statistics columns: its key columns and its scalar string, integer, date and timestamp columns. They come from
the Parquet footers' row-group statistics (which Spark and pyarrow write), so committing a file reads its
footer only. Readers use them to skip files: ``deltalake`` (``file_uris(file_pruning_predicate=...)`` and the
fragments of ``to_pyarrow_dataset()``, which DuckDB scans in :mod:`jobs.read.query`), and :meth:`Lake.upsert_arrow`
to read only the files whose key range can hold a changed key.

The columns are named in the table property ``delta.dataSkippingStatsColumns``. That matters beyond
documentation: ``deltalake`` builds each file's pyarrow guarantee from every statistics column, and a column
without a min/max there reads as "no row can match" (a filter on it would return nothing). So every file
gets bounds for every listed column that holds a non-null value; where a footer lacks them, the column is read.
Floating-point and boolean columns are not listed: NaN and infinity have no JSON form, and neither kind is
worth skipping on here.

Strings follow Delta's truncation: the min is the first ``STRING_PREFIX`` characters (a prefix sorts before
every value that starts with it); a longer max becomes the shortest string above every value with its prefix
(the prefix with its last character incremented).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from schemas.tables import TableSpec

__all__ = ["STATS_COLUMNS_PROPERTY", "STRING_PREFIX", "candidate_files", "file_stats", "stats_columns"]

STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
STRING_PREFIX = 32
_MAX_CHAR = 0x10FFFF


def stats_columns(spec: TableSpec) -> list[str]:
    """The columns that get statistics: the keys, then the scalar columns bounds make sense for, in table order."""
    from pyspark.sql.types import DateType, IntegralType, StringType, TimestampType

    keys = set(spec.keys) | set(spec.match_keys)
    scalar = (StringType, IntegralType, DateType, TimestampType)
    return [c.name for c in spec.columns if c.name in keys or isinstance(c.type, scalar)]


def _max_string(value: str) -> str | None:
    """An upper bound of every string that starts with ``value[:STRING_PREFIX]``: the value itself when short."""
    if len(value) <= STRING_PREFIX:
        return value
    chars = list(value[:STRING_PREFIX])
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:       # surrogates have no UTF-8 form: the next character is U+E000
            code = 0xE000
        if code <= _MAX_CHAR:
            return "".join(chars) + chr(code)
    return None                             # 32 times U+10FFFF: no bound exists


def _json_value(value: Any, is_max: bool) -> Any:
    """A footer statistic as Delta writes it in JSON; ``None`` when it cannot be written."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        return _max_string(value) if is_max else value[:STRING_PREFIX]
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        # Delta writes milliseconds: round the min down and the max up, so both still bound the microseconds.
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        micros = value.microsecond % 1000
        if micros:
            value -= dt.timedelta(microseconds=micros)
            if is_max:
                value += dt.timedelta(milliseconds=1)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return None


def _footer_bounds(meta, index: int) -> tuple[Any, Any, int | None]:
    """``(min, max, null count)`` of leaf column ``index`` over the row groups; min/max ``None`` when unknown."""
    lo = hi = None
    nulls: int | None = 0
    known = True
    for g in range(meta.num_row_groups):
        col = meta.row_group(g).column(index)
        st = col.statistics
        if st is None:
            return None, None, None
        nulls = nulls + st.null_count if nulls is not None and st.has_null_count else None
        if st.has_min_max:
            lo = st.min if lo is None or st.min < lo else lo
            hi = st.max if hi is None or st.max > hi else hi
        elif nulls is None or st.null_count < col.num_values:
            known = False                   # values without bounds in this row group
    return (lo, hi, nulls) if known else (None, None, nulls)


def _read_bounds(path, name: str) -> tuple[Any, Any, int]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    values = pq.read_table(path, columns=[name]).column(name)
    mm = pc.min_max(values).as_py()
    return mm["min"], mm["max"], values.null_count


def file_stats(path, meta, columns: Iterable[str]) -> dict:
    """The Delta ``stats`` object of the Parquet file at ``path`` whose footer is ``meta``."""
    leaf = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name in columns:
        if name not in leaf:
            raise ValueError(f"{path} has no top-level scalar column {name!r}")
        lo, hi, n = _footer_bounds(meta, leaf[name])
        if n is None or (n < meta.num_rows and (lo is None or hi is None)):
            lo, hi, n = _read_bounds(path, name)   # a footer without statistics: rare, the column only
        nulls[name] = n
        if n < meta.num_rows:
            lo, hi = _json_value(lo, False), _json_value(hi, True)
            if lo is None or hi is None:
                raise ValueError(f"{path}: column {name!r} has no bounds Delta statistics can hold")
            mins[name], maxs[name] = lo, hi
    return {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def candidate_files(bounds: Mapping[str, tuple[Any, Any] | None], wanted: list) -> list[str]:
    """The files whose ``[min, max]`` of a key column can hold one of the ``wanted`` (non-null) values.

    ``bounds``: per file, ``(min, max)`` from the log, ``None`` (or a missing side) when unknown: such a file is
    always a candidate. A file whose key column is all null has no bounds in its stats and is passed as
    ``None`` too.
    """
    ordered = sorted(set(wanted))
    out = []
    for path, bound in bounds.items():
        lo, hi = bound if bound is not None else (None, None)
        i = 0 if lo is None else bisect.bisect_left(ordered, lo)
        if i < len(ordered) and (hi is None or ordered[i] <= hi):
            out.append(path)
    return out
