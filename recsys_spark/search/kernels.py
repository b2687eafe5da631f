"""numpy kernels of the cosine search, shared by the Spark tasks and the one-process reference.

:class:`TopK` keeps a running top-K per row; :func:`search_lists` is the blocked list-by-list
search every Spark task runs (:mod:`recsys_spark.search.spark`); :func:`numpy_exact_search` and
:func:`numpy_ivf_search` are the same arithmetic in one process: the reference for tests and the
single-machine baseline of ``bench/bench_ann.py``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class TopK:
    """Per-row top-``k`` of score blocks pushed one after another.

    Rows keep ``values`` (descending) and ``index`` (the caller's column ids); ties are broken
    by the smaller column id, so callers that number items in ``item_id`` order get ties by id.
    The first block is selected with ``np.partition``; later blocks only compare against each
    row's current k-th score and sort the few entries above it, which is what makes selection
    cheaper than the matrix multiply.
    """

    def __init__(self, n_rows: int, k: int):
        self.k = k
        self.values = np.full((n_rows, k), -np.inf, dtype=np.float32)
        self.index = np.full((n_rows, k), -1, dtype=np.int64)
        self._seeded = np.zeros(n_rows, dtype=bool)

    def push(self, scores: np.ndarray, columns: np.ndarray, rows: Optional[np.ndarray] = None) -> None:
        """Offer ``scores[i, j]`` as column ``columns[j]`` of row ``rows[i]`` (default: row i)."""
        if rows is None:
            rows = np.arange(scores.shape[0])
        if scores.size == 0:
            return
        # Rows seeing their first block: select by the block's own k-th score (np.partition);
        # rows already holding k scores: keep only entries >= their current k-th score.
        fresh = ~self._seeded[rows]
        width = scores.shape[1]
        parts_r, parts_c = [], []
        if fresh.any() and width > self.k:
            first = np.nonzero(fresh)[0]
            block = scores[first]
            kth = np.partition(block, width - self.k, axis=1)[:, width - self.k]
            r, c = np.nonzero(block >= kth[:, None])  # ties kept; the merge orders them by column
            parts_r.append(first[r])
            parts_c.append(c)
            held = np.nonzero(~fresh)[0]
        else:
            held = np.arange(len(rows))
        if held.size:
            block = scores[held]
            r, c = np.nonzero(block >= self.values[rows[held], -1][:, None])
            parts_r.append(held[r])
            parts_c.append(c)
        self._seeded[rows] = True
        r = np.concatenate(parts_r)
        c = np.concatenate(parts_c)
        if r.size:
            self._merge(rows[r], scores[r, c], columns[c])

    def _merge(self, rows: np.ndarray, values: np.ndarray, columns: np.ndarray) -> None:
        touched = np.unique(rows)
        n, k = touched.size, self.k
        all_rows = np.concatenate([np.repeat(np.arange(n), k), np.searchsorted(touched, rows)])
        all_values = np.concatenate([self.values[touched].ravel(), values.astype(np.float32)])
        all_index = np.concatenate([self.index[touched].ravel(), columns.astype(np.int64)])
        # -inf padding has index -1; map it after every real column so real ties win.
        tie_key = np.where(all_index < 0, np.iinfo(np.int64).max, all_index)
        order = np.lexsort((tie_key, -all_values, all_rows))
        starts = np.searchsorted(all_rows[order], np.arange(n))
        take = order[starts[:, None] + np.arange(k)]
        self.values[touched] = all_values[take]
        self.index[touched] = all_index[take]

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """``(index, values)``, each ``(n_rows, k)``; missing entries are ``-1`` / ``-inf``."""
        return self.index, self.values


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0).astype(np.float32)


def nearest_cells(vectors: np.ndarray, centroids: np.ndarray, block_size: int = 8192) -> np.ndarray:
    """The nearest centroid (by dot product) of every vector, as int32 cell ids."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.int32)
    return np.concatenate(
        [np.argmax(vectors[s : s + block_size] @ centroids.T, axis=1) for s in range(0, len(vectors), block_size)]
    ).astype(np.int32)


def nearest_lists(vectors: np.ndarray, centroids: np.ndarray, n: int) -> np.ndarray:
    """Ids ``(len(vectors), n)`` of the ``n`` centroids nearest each vector (unordered)."""
    if n >= centroids.shape[0]:
        return np.tile(np.arange(centroids.shape[0]), (len(vectors), 1))
    return np.argpartition(-(vectors @ centroids.T), n - 1, axis=1)[:, :n]


def excluded_positions(rows: np.ndarray, hashes: np.ndarray, item_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(query row, item position)`` of every excluded ``(row, item hash)`` pair whose item is
    in ``item_hashes`` (items matched by 64-bit id hash), sorted by position."""
    if hashes.size == 0 or item_hashes.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(item_hashes, kind="stable")
    sorted_hashes = item_hashes[order]
    at = np.minimum(np.searchsorted(sorted_hashes, hashes), len(sorted_hashes) - 1)
    hit = sorted_hashes[at] == hashes
    rows, positions = rows[hit], order[at[hit]]
    by_position = np.argsort(positions, kind="stable")
    return rows[by_position], positions[by_position]


def search_lists(
    queries: np.ndarray,
    probe_rows: np.ndarray,
    probe_lists: np.ndarray,
    items: np.ndarray,
    lists: np.ndarray,
    columns: np.ndarray,
    excluded: tuple[np.ndarray, np.ndarray],
    k: int,
    block_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Blocked top-``k`` of every query over the item lists it probes: ``(index, values)``.

    ``items`` are laid out list by list (``lists`` sorted, one id per item row) and ``columns``
    are the ids given to the top-K (ties go to the smaller). Query ``probe_rows[j]`` scans list
    ``probe_lists[j]``. For every list, its probing queries are multiplied against its items in
    ``block_size`` blocks (BLAS), and one running :class:`TopK` per query keeps the best ``k``.
    ``excluded``: ``(query row, item row)`` pairs sorted by item row, never returned.
    """
    order = np.argsort(probe_lists, kind="stable")
    probe_rows, probe_lists = probe_rows[order], probe_lists[order]
    ex_rows, ex_pos = excluded
    list_ids, list_starts = np.unique(lists, return_index=True)
    list_ends = np.append(list_starts[1:], len(lists))
    top = TopK(len(queries), k)
    slot = np.full(len(queries), -1, dtype=np.int64)  # row of a query within the current block
    for lst, start, end in zip(list_ids, list_starts, list_ends):
        lo, hi = np.searchsorted(probe_lists, [lst, lst + 1])
        askers = probe_rows[lo:hi]
        for a0 in range(0, len(askers), block_size):
            rows = askers[a0 : a0 + block_size]
            block = queries[rows]
            for i0 in range(start, end, block_size):
                i1 = min(i0 + block_size, end)
                scores = block @ items[i0:i1].T
                e0, e1 = np.searchsorted(ex_pos, [i0, i1])
                if e1 > e0:
                    slot[rows] = np.arange(len(rows))
                    r = slot[ex_rows[e0:e1]]
                    hit = r >= 0
                    scores[r[hit], ex_pos[e0:e1][hit] - i0] = -np.inf
                    slot[rows] = -1
                top.push(scores, columns[i0:i1], rows=rows)
    return top.results()


def numpy_exact_search(
    queries: np.ndarray, items: np.ndarray, k: int, block_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by dot product: ``(index, values)`` of shape ``(n_queries, k)``.

    Blocked matrix multiply (``block_size`` queries x ``block_size`` items) with a running
    top-K; ties go to the smaller item index.
    """
    queries = np.asarray(queries, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    index = np.full((len(queries), k), -1, dtype=np.int64)
    values = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for q0 in range(0, len(queries), block_size):
        block = queries[q0 : q0 + block_size]
        top = TopK(len(block), k)
        for i0 in range(0, len(items), block_size):
            scores = block @ items[i0 : i0 + block_size].T
            top.push(scores, np.arange(i0, i0 + scores.shape[1]))
        index[q0 : q0 + len(block)], values[q0 : q0 + len(block)] = top.results()
    return index, values


def numpy_ivf_search(
    queries: np.ndarray, items: np.ndarray, k: int, nprobe: int, centroids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """IVF top-``k`` in one process over the cells of ``centroids`` (trained e.g. by
    :func:`recsys_spark.search.kmeans.numpy_centroids`), probing as the Spark search does:
    every item in its nearest cell, every query scanning its ``nprobe`` nearest cells."""
    queries = np.asarray(queries, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    assignment = nearest_cells(items, centroids)
    item_order = np.argsort(assignment, kind="stable")
    item_bounds = np.searchsorted(assignment[item_order], np.arange(len(centroids) + 1))
    probes = nearest_lists(queries, centroids, min(nprobe, len(centroids)))
    probe_lists = probes.ravel()
    probe_queries = np.repeat(np.arange(len(queries)), probes.shape[1])
    probe_order = np.argsort(probe_lists, kind="stable")
    probe_bounds = np.searchsorted(probe_lists[probe_order], np.arange(len(centroids) + 1))
    top = TopK(len(queries), k)
    for cell in range(len(centroids)):
        members = item_order[item_bounds[cell] : item_bounds[cell + 1]]
        askers = probe_queries[probe_order[probe_bounds[cell] : probe_bounds[cell + 1]]]
        if members.size and askers.size:
            top.push(queries[askers] @ items[members].T, members, rows=askers)
    return top.results()
