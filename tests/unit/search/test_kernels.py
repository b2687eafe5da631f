"""numpy kernels against brute force: the running top-K, the blocked searches."""
from __future__ import annotations

import numpy as np

from recsys_spark.search.kernels import (
    TopK,
    excluded_positions,
    nearest_cells,
    normalize_rows,
    numpy_exact_search,
    numpy_ivf_search,
    search_lists,
)
from recsys_spark.search.kmeans import numpy_centroids
from tests.unit.search.helpers import brute_force


def test_topk_matches_brute_force_with_ties_over_many_blocks():
    rng = np.random.default_rng(1)
    items = normalize_rows(rng.normal(size=(900, 8)))
    # Exact ties: the smaller index must win. The tied vector's products are exact in float32
    # (halves and zeros), so no BLAS kernel's order of summation can split the tie.
    tied = np.array([0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0], dtype=items.dtype)
    items[[5, 10, 400, 899]] = tied
    queries = normalize_rows(rng.normal(size=(50, 8)))
    queries[0] = tied
    index, values = numpy_exact_search(queries, items, 6, block_size=64)
    np.testing.assert_array_equal(index, brute_force(queries, items, 6))
    assert list(index[0][:4]) == [5, 10, 400, 899]
    assert np.all(np.diff(values, axis=1) <= 0)


def test_topk_pads_when_fewer_columns_than_k():
    top = TopK(2, 5)
    top.push(np.array([[0.1, 0.9], [0.5, 0.2]], dtype=np.float32), np.array([7, 3]))
    index, values = top.results()
    assert index.tolist() == [[3, 7, -1, -1, -1], [7, 3, -1, -1, -1]]
    assert np.isneginf(values[:, 2:]).all()


def test_numpy_ivf_with_every_list_probed_is_exact():
    rng = np.random.default_rng(2)
    items = normalize_rows(rng.normal(size=(2000, 16)))
    queries = normalize_rows(rng.normal(size=(100, 16)))
    index, _ = numpy_ivf_search(queries, items, 5, nprobe=20, centroids=numpy_centroids(items, 20))
    np.testing.assert_array_equal(index, brute_force(queries, items, 5))


def test_search_lists_probes_only_its_lists_in_blocks_and_skips_exclusions():
    """The task kernel: items in three lists, queries probing some of them, blocks of 4 rows;
    each query's answer is brute force over the lists it probes minus its excluded items."""
    rng = np.random.default_rng(9)
    items = normalize_rows(rng.normal(size=(30, 6)))
    queries = normalize_rows(rng.normal(size=(7, 6)))
    lists = np.repeat([0, 1, 2], 10)
    probes = {q: [q % 3] if q % 2 else [0, 2] for q in range(7)}
    probe_rows = np.array([q for q in probes for _ in probes[q]])
    probe_lists = np.array([c for q in probes for c in probes[q]])
    excluded_pairs = [(1, 12), (4, 0), (4, 25)]
    ex_rows, ex_pos = excluded_positions(
        np.array([q for q, _ in excluded_pairs]), np.array([j for _, j in excluded_pairs]) + 1000, np.arange(30) + 1000
    )
    assert ex_pos.tolist() == [0, 12, 25] and ex_rows.tolist() == [4, 1, 4]
    index, values = search_lists(queries, probe_rows, probe_lists, items, lists, np.arange(30), (ex_rows, ex_pos), 3, 4)
    for q in range(7):
        allowed = [j for j in range(30) if lists[j] in probes[q] and (q, j) not in excluded_pairs]
        expected = [allowed[j] for j in brute_force(queries[q : q + 1], items[allowed], 3)[0]]
        assert index[q].tolist() == expected, q
        assert np.all(np.diff(values[q]) <= 0)


def test_nearest_cells_is_the_argmax_in_blocks():
    rng = np.random.default_rng(10)
    vectors = normalize_rows(rng.normal(size=(50, 5)))
    centroids = normalize_rows(rng.normal(size=(4, 5)))
    cells = nearest_cells(vectors, centroids, block_size=7)
    assert cells.dtype == np.int32
    np.testing.assert_array_equal(cells, np.argmax(vectors @ centroids.T, axis=1))
    assert nearest_cells(np.zeros((0, 5), dtype=np.float32), centroids).shape == (0,)
