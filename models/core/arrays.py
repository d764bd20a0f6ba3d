"""Array helpers shared by the job's Python workers, its driver paths and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["stack_rows"]


def stack_rows(values: Iterable, dim: int | None = None) -> np.ndarray:
    """Rows of a nullable array column (a list or a pandas Series of vectors) as an (N, d) float32 matrix.

    A null or empty row (a product without an image) becomes a row of NaN. The width ``d`` is ``dim`` when
    given, else the first present row's length (0 when every row is missing)."""
    rows = list(values)
    present = (v for v in rows if v is not None and len(v))
    width = dim if dim is not None else len(next(present, ()))
    out = np.full((len(rows), width), np.nan, np.float32)
    for i, v in enumerate(rows):
        if v is not None and len(v):
            out[i] = v
    return out
