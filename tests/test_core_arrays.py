"""models.core.arrays.stack_rows: the one way the workers, the driver paths and the benchmarks turn a nullable
column of vectors into a matrix."""

import numpy as np
import pandas as pd

from models.core.arrays import stack_rows


def test_missing_and_empty_rows_become_nan_rows_and_the_others_are_kept():
    col = pd.Series([np.array([1.0, 2.0]), None, np.array([], np.float32), [3.0, 4.5], np.nan], dtype=object)
    m = stack_rows(col)
    assert m.dtype == np.float32 and m.shape == (5, 2)
    assert np.array_equal(m[[0, 3]], np.array([[1.0, 2.0], [3.0, 4.5]], np.float32))
    assert np.isnan(m[[1, 2, 4]]).all()


def test_the_width_is_dim_when_given_and_when_every_row_is_missing():
    assert stack_rows([None, None], dim=3).shape == (2, 3)
    assert stack_rows([None, None]).shape == (2, 0)
    assert stack_rows([], dim=5).shape == (0, 5)
    assert stack_rows([[1.0, 2.0, 3.0]], dim=3).tolist() == [[1.0, 2.0, 3.0]]
