"""Array helpers shared by the job's Python workers, its driver paths and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["stack_rows"]


def stack_rows(values: Iterable, dim: int | None = None) -> np.ndarray:
    """Rows of a nullable array column (a list or a pandas Series of vectors) as an (N, d) float32 matrix.

    A null, empty or scalar row (a product without an image; pandas may hold a missing one as a float NaN)
    becomes a row of NaN. The width ``d`` is ``dim`` when given, else the first present row's length (0 when every
    row is missing)."""
    rows = list(values)
    sizes = [_size(v) for v in rows]
    width = dim if dim is not None else next((n for n in sizes if n), 0)
    out = np.full((len(rows), width), np.nan, np.float32)
    for i, (v, n) in enumerate(zip(rows, sizes, strict=True)):
        if n:
            out[i] = v
    return out


def _size(v) -> int:
    """The length of a row; 0 for a missing one (None, or a scalar such as NaN)."""
    if v is None:
        return 0
    try:
        return len(v)
    except TypeError:
        return 0
