"""float32 vectors <-> Arrow binary, without Spark."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys_spark.search.codec import to_binary, to_matrix, unit_binary


def test_binary_round_trip_is_exact_and_sliced_arrays_read_their_own_rows():
    matrix = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
    values = to_binary(matrix)
    assert values.type == pa.binary() and len(values) == 6
    assert values[1].as_py() == matrix[1].tobytes()
    np.testing.assert_array_equal(to_matrix(values), matrix)
    np.testing.assert_array_equal(to_matrix(values.slice(2, 3)), matrix[2:5])
    np.testing.assert_array_equal(to_matrix(pa.chunked_array([values.slice(0, 2), values.slice(2)])), matrix)
    assert to_matrix(values.slice(0, 0)).shape == (0, 0)


def test_unit_binary_normalises_usable_rows_of_mixed_lengths_and_empties_the_rest():
    vectors = pa.array([[3.0, 4.0], None, [0.0, 2.0, 0.0], [1.0, 1.0]], pa.list_(pa.float32()))
    usable = np.array([True, False, True, False])
    lengths = np.array([2, -1, 3, 2])
    encoded = unit_binary(vectors, usable, lengths)
    rows = [np.frombuffer(v.as_py(), dtype=np.float32).tolist() for v in encoded]
    assert rows[0] == pytest.approx([0.6, 0.8]) and rows[2] == [0.0, 1.0, 0.0]
    assert rows[1] == [] and rows[3] == []
    # every row usable and of one length: the one-block path gives the same bytes
    same = unit_binary(pa.array([[3.0, 4.0], [0.0, 5.0]], pa.list_(pa.float32())), np.array([True, True]), np.array([2, 2]))
    np.testing.assert_allclose(to_matrix(same), [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
