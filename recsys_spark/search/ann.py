"""Cosine top-K search in Spark: exact blocked search and an IVF (inverted-file) index.

Both searches read ``queries`` as ``(query_id, vector)`` and ``items`` as ``(item_id, vector)``
(``vector`` array<float>, normalised here so cosine = dot product) and return
``(query_id, item_id, rank, score)``: the top ``k`` items of every query by cosine, ties broken
by ``item_id``, never a pair listed in ``exclude`` ``(query_id, item_id)``.

First, one pass over each side checks and encodes the vectors (:func:`encode_vectors`): rows
that cannot be searched are counted by reason and skipped, the rest are unit-normalised and kept
on the executors as float32 bytes in a binary column, so later stages never decode Spark arrays
again. Items are split into lists: k-means cells for IVF, a single list for the exact search.

The search then takes one of two shapes, as Spark's joins do:

* **Queries sent with the task** (their vectors take at most ``BROADCAST_QUERY_BYTES``, the
  usual case: users of one run or one catalog's items). The queries, with the cells each must
  probe, are collected on the driver and travel with the task; every item partition is searched
  where it lies, in chunks of at most ``ITEMS_PER_TASK`` items. The items are never shuffled.
* **Cogrouped** (larger query sets). Lists are gathered into a few *parts* (one per core, more
  when a part would exceed ``ITEMS_PER_TASK`` items), queries into blocks of at most
  ``QUERIES_PER_TASK``, and each query is sent once to every part holding a list it must scan
  (every part for exact, those with its ``nprobe`` nearest cells for IVF). A ``cogroup`` on
  (part, block) hands a task its items and queries.

Either way a Python worker walks its items list by list, multiplies each list with the queries
probing it in ``block_size`` blocks (BLAS), and keeps one running top-K per query
(:class:`TopK`); a per-query merge of the partial top-Ks gives the answer. The item table is
never collected on the driver: only the k-means centroids (``nlist x dim``), the queries when
small, and, to train the centroids, a sample of at most ``nlist x 64`` items when it fits in
256 MiB (:func:`train_centroids`).

The numpy functions (``numpy_exact_search``, ``numpy_ivf_search``, ``kmeans``) are the same
kernels in one process: the reference for tests and the single-machine baseline of the bench.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, RANK, SCORE, VECTOR, require_columns

log = logging.getLogger(__name__)

LIST_ID = "_list"
QUERY_BLOCK = "_qblock"
ITEM_HASH = "_item_hash"
EXCLUDED = "_excluded"
BUCKET = "_bucket"
VEC = "_vec"
PART = "_part"
PROBES = "_probes"
_LENGTH = "_len"
_CODE = "_code"

RESULTS = T.StructType(
    [
        T.StructField(QUERY_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(SCORE, T.FloatType(), False),
    ]
)
_PARTIAL = T.StructType(
    [
        T.StructField(QUERY_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(SCORE, T.FloatType(), False),
    ]
)
RESULTS_ARROW = pa.schema([(QUERY_ID, pa.string()), (ITEM_ID, pa.string()), (RANK, pa.int32()), (SCORE, pa.float32())])
_PARTIAL_ARROW = pa.schema([(QUERY_ID, pa.string()), (ITEM_ID, pa.string()), (SCORE, pa.float32())])
# A search task holds at most this many items, and this many queries, in memory.
ITEMS_PER_TASK = 65_536
QUERIES_PER_TASK = 65_536
# Queries whose vectors take at most this many bytes are sent to every item partition with the
# task (like a broadcast join): no shuffle of the items. Larger query sets are cogrouped.
BROADCAST_QUERY_BYTES = 64 << 20
# k-means is trained on at most this many sampled items per centroid (faiss uses 39..256).
TRAIN_POINTS_PER_LIST = 64
# ... and on the driver when that sample takes at most this many MiB.
MAX_DRIVER_SAMPLE_MB = 256


# ---- running top-K (numpy) ---------------------------------------------------------------
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


# ---- numpy search (reference and single-process baseline) -------------------------------
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


def _kmeans_stats(points: np.ndarray, centroids: np.ndarray, block_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-centroid ``(counts, sums)`` of the points nearest (by cosine) to each centroid."""
    counts = np.zeros(len(centroids), dtype=np.int64)
    sums = np.zeros(centroids.shape, dtype=np.float64)
    for start in range(0, len(points), block_size):
        block = points[start : start + block_size]
        nearest = np.argmax(block @ centroids.T, axis=1)
        block_counts = np.bincount(nearest, minlength=len(centroids))
        counts += block_counts
        # Segment sums over the points sorted by cell (np.add.at is ~100x slower).
        order = np.argsort(nearest, kind="stable")
        cells = np.nonzero(block_counts)[0]
        starts = np.searchsorted(nearest[order], cells)
        sums[cells] += np.add.reduceat(block[order], starts, axis=0)
    return counts, sums


def _kmeans_update(counts: np.ndarray, sums: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Spherical k-means step: normalised means; an empty cell keeps its old centroid."""
    updated = normalize_rows(sums.astype(np.float32))
    return np.where((counts > 0)[:, None], updated, centroids).astype(np.float32)


def seed_centroids(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` starting centroids picked from unit-vector ``candidates`` by k-means++: each next
    one drawn with probability proportional to its cosine distance from the nearest already
    picked, so the seeds spread over the clusters instead of doubling up in the big ones."""
    candidates = np.asarray(candidates, dtype=np.float32)
    n = min(n, len(candidates))
    picked = [int(rng.integers(len(candidates)))]
    distance = np.clip(1.0 - candidates @ candidates[picked[0]], 0.0, None).astype(np.float64)
    for _ in range(n - 1):
        total = distance.sum()
        if total > 0:
            choice = int(rng.choice(len(candidates), p=distance / total))
        else:  # every candidate coincides with a seed: any unpicked one
            choice = int(rng.choice(np.setdiff1d(np.arange(len(candidates)), picked)))
        picked.append(choice)
        distance = np.minimum(distance, np.clip(1.0 - candidates @ candidates[choice], 0.0, None))
    return candidates[picked].copy()


# k-means++ draws its seeds from this many random candidates per centroid.
SEED_CANDIDATES_PER_LIST = 8


def kmeans(points: np.ndarray, nlist: int, iterations: int = 10, seed: int = 17) -> np.ndarray:
    """Spherical k-means centroids ``(nlist, dim)`` of unit vectors, seeded by k-means++ on a
    random subset (:func:`seed_centroids`)."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float32)
    nlist = min(nlist, len(points))
    pool = points[rng.choice(len(points), min(len(points), nlist * SEED_CANDIDATES_PER_LIST), replace=False)]
    centroids = seed_centroids(pool, nlist, rng)
    for _ in range(iterations):
        centroids = _kmeans_update(*_kmeans_stats(points, centroids), centroids)
    return centroids


def numpy_centroids(
    items: np.ndarray, nlist: int, iterations: int = 10, seed: int = 17, train_points_per_list: int = TRAIN_POINTS_PER_LIST
) -> np.ndarray:
    """k-means centroids on a random sample of ``nlist * train_points_per_list`` items."""
    rng = np.random.default_rng(seed)
    n_train = min(len(items), nlist * train_points_per_list)
    return kmeans(items[rng.choice(len(items), n_train, replace=False)], nlist, iterations, seed)


def _nearest_lists(vectors: np.ndarray, centroids: np.ndarray, n: int) -> np.ndarray:
    """Ids ``(len(vectors), n)`` of the ``n`` centroids nearest each vector (unordered)."""
    sims = vectors @ centroids.T
    if n >= centroids.shape[0]:
        return np.tile(np.arange(centroids.shape[0]), (len(vectors), 1))
    return np.argpartition(-sims, n - 1, axis=1)[:, :n]


def numpy_ivf_search(
    queries: np.ndarray,
    items: np.ndarray,
    k: int,
    nlist: int,
    nprobe: int,
    seed: int = 17,
    iterations: int = 10,
    train_points_per_list: int = TRAIN_POINTS_PER_LIST,
    centroids: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """IVF top-``k`` in one process, with the same k-means and probing as :func:`ivf_search`
    (``centroids`` given: no training)."""
    queries = np.asarray(queries, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    if centroids is None:
        centroids = numpy_centroids(items, nlist, iterations, seed, train_points_per_list)
    assignment = np.concatenate(
        [np.argmax(items[s : s + 8192] @ centroids.T, axis=1) for s in range(0, len(items), 8192)]
    )
    item_order = np.argsort(assignment, kind="stable")
    item_bounds = np.searchsorted(assignment[item_order], np.arange(len(centroids) + 1))
    probes = _nearest_lists(queries, centroids, min(nprobe, len(centroids)))
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


# ---- vectors in Arrow ------------------------------------------------------------------
# Between Python stages a vector travels as one binary value: its float32 bytes, which numpy
# reads for a whole batch without a copy. Measured on 100k 384-float rows, an identity stage took
# 4.5 s through pandas, 1.05 s through Arrow as array<float>, 0.76 s through Arrow as binary.
_MISSING, _WRONG_DIMENSION, _NON_FINITE, _ZERO, _USABLE = range(5)
_MAX_CHUNK_BYTES = 1 << 30  # Arrow binary offsets are int32


def _column(table, name: str) -> pa.Array:
    """One contiguous array of a column (``combine_chunks`` copies even a single chunk)."""
    column = table.column(name)
    if not isinstance(column, pa.ChunkedArray):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _vector_codes(ids: pa.Array, vectors: pa.Array, dim: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``(code, length)``: code is ``_USABLE`` or why the vector cannot be searched
    (with ``dim`` None, every non-empty length is checked as if it were the dimension)."""
    n = len(vectors)
    lengths = pc.list_value_length(vectors).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = np.full(n, _MISSING, dtype=np.int8)
    present = (lengths > 0) & ~ids.is_null().to_numpy(zero_copy_only=False)
    if dim is not None:
        codes[present & (lengths != dim)] = _WRONG_DIMENSION
    values = vectors.flatten()  # the non-null lists' elements, in row order
    floats = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # null -> NaN
    starts = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))])[:-1]
    for size in np.unique(lengths[present]):
        if dim is not None and size != dim:
            continue
        rows = np.flatnonzero(present & (lengths == size))
        if rows.size == n:  # the usual batch: every row one length, values back to back
            block = floats.reshape(n, size)
        else:
            block = floats[starts[rows][:, None] + np.arange(size)]
        finite = np.isfinite(block).all(axis=1)
        zero = finite & ~block.any(axis=1)
        codes[rows] = np.where(~finite, _NON_FINITE, np.where(zero, _ZERO, _USABLE))
    return codes, lengths


def _usable_matrix(vectors: pa.Array, keep: np.ndarray, dim: int) -> np.ndarray:
    """Unit-normalised ``(keep.sum(), dim)`` float32 matrix of the kept rows (all of length ``dim``)."""
    kept = vectors.filter(pa.array(keep))
    if len(kept) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    floats = kept.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return normalize_rows(floats.reshape(len(kept), dim))


def _binary(matrix: np.ndarray) -> pa.Array:
    """Each row of a float32 ``(n, dim)`` matrix as one binary value (its bytes)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, width = matrix.shape[0], matrix.shape[1] * 4
    if n * width >= _MAX_CHUNK_BYTES:
        step = _MAX_CHUNK_BYTES // width - 1
        return pa.concat_arrays([_binary(matrix[i : i + step]) for i in range(0, n, step)])
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(matrix)])


def _matrix(values: pa.Array) -> np.ndarray:
    """The float32 matrix of a binary column written by :func:`_binary` (all rows one length)."""
    n = len(values)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    offset_type = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=offset_type, count=n + 1, offset=values.offset * np.dtype(offset_type).itemsize)
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.float32).reshape(n, -1)


def _to_binary(id_col: str, dim: int, extra: list[str], batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Usable rows only, as ``(id_col, _vec, *extra)`` with unit-normalised binary vectors."""
    for batch in batches:
        ids, vectors = batch.column(id_col), batch.column(VECTOR)
        keep = _vector_codes(ids, vectors, dim)[0] == _USABLE
        if not keep.any():
            continue
        mask = pa.array(keep)
        columns = [ids.filter(mask), _binary(_usable_matrix(vectors, keep, dim))]
        columns += [batch.column(name).filter(mask) for name in extra]
        yield pa.RecordBatch.from_arrays(columns, [id_col, VEC, *extra])


def _binary_frame(df: DataFrame, id_col: str, dim: int, extra: tuple[str, ...] = ()) -> DataFrame:
    """``df``'s usable rows as ``(id_col, _vec binary, *extra)`` (see :func:`_to_binary`)."""
    fields = {f.name: f for f in df.schema.fields}
    schema = T.StructType(
        [T.StructField(id_col, fields[id_col].dataType), T.StructField(VEC, T.BinaryType(), False)]
        + [fields[name] for name in extra]
    )
    return df.select(id_col, VECTOR, *extra).mapInArrow(partial(_to_binary, id_col, dim, list(extra)), schema)


# ---- input validation -----------------------------------------------------------------
@dataclass(frozen=True)
class VectorCounts:
    """What :func:`clean_vectors` found: usable rows and each kind of skipped row."""

    rows: int
    usable: int
    missing: int  # null id, null or empty vector
    wrong_dimension: int
    non_finite: int  # NaN, infinite or null component
    zero: int  # all-zero vector: no direction, cosine undefined
    dim: Optional[int]

    @property
    def skipped(self) -> int:
        return self.rows - self.usable

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": self.skipped}


def _code_counts(id_col: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Rows per (vector length, code) of a partition, codes computed for every length."""
    tally: dict[tuple[int, int], int] = {}
    for batch in batches:
        codes, lengths = _vector_codes(batch.column(id_col), batch.column(VECTOR), None)
        pairs, counts = np.unique(np.stack([lengths, codes.astype(np.int64)]), axis=1, return_counts=True)
        for (length, code), count in zip(pairs.T.tolist(), counts.tolist()):
            tally[(length, code)] = tally.get((length, code), 0) + count
    keys = list(tally)
    yield pa.RecordBatch.from_arrays(
        [pa.array([k[0] for k in keys], pa.int64()), pa.array([k[1] for k in keys], pa.int32()), pa.array(list(tally.values()), pa.int64())],
        ["length", "code", "n"],
    )


def vector_counts(df: DataFrame, id_col: str, dim: Optional[int] = None) -> VectorCounts:
    """Count the rows of ``df`` a search can use, and each kind it skips (one pass, small result).

    Reads ``id_col`` and ``vector``. The expected dimension is ``dim`` or, when None, the most
    common length among the vectors with finite components.
    """
    require_columns(df, [id_col, VECTOR], "vector search input")
    stats = df.select(id_col, VECTOR).mapInArrow(partial(_code_counts, id_col), "length long, code int, n long").collect()
    return _tally(stats, dim, id_col)


def _tally(stats: list, dim: Optional[int], label: str) -> VectorCounts:
    """:class:`VectorCounts` from rows ``(length, code, n)``; ``dim`` None: the most common
    length among the vectors with finite components."""
    finite_sizes: dict[int, int] = {}
    for row in stats:
        if row["code"] in (_ZERO, _USABLE):
            finite_sizes[row["length"]] = finite_sizes.get(row["length"], 0) + row["n"]
    if dim is None and finite_sizes:
        dim = max(finite_sizes, key=lambda s: (finite_sizes[s], -s))
    counts = {"missing": 0, "wrong_dimension": 0, "non_finite": 0, "zero": 0, "usable": 0}
    names = {_NON_FINITE: "non_finite", _ZERO: "zero", _USABLE: "usable"}
    for row in stats:
        if row["code"] == _MISSING:
            counts["missing"] += row["n"]
        elif row["length"] != dim:
            counts["wrong_dimension"] += row["n"]
        else:
            counts[names[row["code"]]] += row["n"]
    result = VectorCounts(rows=sum(r["n"] for r in stats), dim=dim, **counts)
    if result.skipped:
        log.warning("vector search input (%s): skipped %d bad vector(s): %s", label, result.skipped, result.to_dict())
    return result


def _keep_usable(id_col: str, dim: Optional[int], batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if dim is None:
            continue
        keep = _vector_codes(batch.column(id_col), batch.column(VECTOR), dim)[0] == _USABLE
        if keep.any():
            yield batch.filter(pa.array(keep))


def clean_vectors(df: DataFrame, id_col: str, dim: Optional[int] = None) -> tuple[DataFrame, VectorCounts]:
    """Split off rows whose ``vector`` cannot be searched; returns ``(usable rows, counts)``.

    Reads ``id_col`` and ``vector`` (see :func:`vector_counts`); the usable rows keep every
    column of ``df``.
    """
    counts = vector_counts(df, id_col, dim)
    return df.mapInArrow(partial(_keep_usable, id_col, counts.dim), df.schema), counts


def _unit_bytes(vectors: pa.Array, usable: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Binary column: each usable row's unit-normalised float32 bytes, ``b""`` for the others
    (rows may differ in length)."""
    n = len(vectors)
    if n and usable.all() and (lengths == lengths[0]).all():
        return _binary(_usable_matrix(vectors, usable, int(lengths[0])))
    sizes = np.where(usable, lengths, 0).astype(np.int64)
    if sizes.sum() * 4 >= _MAX_CHUNK_BYTES:
        raise ValueError(
            f"vector search: {sizes.sum() * 4} bytes of vectors in one Arrow batch; "
            "lower spark.sql.execution.arrow.maxRecordsPerBatch"
        )
    floats = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    starts = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))])[:-1]
    out_starts = np.concatenate([[0], np.cumsum(sizes)])
    out = np.empty(out_starts[-1], dtype=np.float32)
    for size in np.unique(sizes[sizes > 0]):
        rows = np.flatnonzero(sizes == size)
        block = floats[starts[rows][:, None] + np.arange(size)]
        out[out_starts[rows][:, None] + np.arange(size)] = normalize_rows(block)
    offsets = (out_starts * 4).astype(np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)])


def _encode(id_col: str, extra: list[str], batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Every row as ``(id_col, _vec, _len, _code, *extra)``: ``_code`` says whether the vector
    is usable at its own length (:func:`_vector_codes`), ``_vec`` holds it unit-normalised."""
    for batch in batches:
        ids, vectors = batch.column(id_col), batch.column(VECTOR)
        codes, lengths = _vector_codes(ids, vectors, None)
        columns = [ids, _unit_bytes(vectors, codes == _USABLE, lengths), pa.array(lengths, pa.int64()), pa.array(codes.astype(np.int32))]
        columns += [batch.column(name) for name in extra]
        yield pa.RecordBatch.from_arrays(columns, [id_col, VEC, _LENGTH, _CODE, *extra])


def encode_vectors(
    df: DataFrame, id_col: str, dim: Optional[int] = None, extra: tuple[str, ...] = ()
) -> tuple[DataFrame, VectorCounts]:
    """``df``'s usable rows as ``(id_col, _vec, *extra)`` (unit vectors as float32 bytes), and
    the counts of :func:`vector_counts`, from one pass over ``vector``.

    The encoded rows are kept on the executors (a local checkpoint, freed when the returned
    frame is garbage-collected), so the k-means sample, the index and the search read bytes
    instead of decoding the arrays again. Like any local checkpoint, it does not survive the
    loss of an executor: a search running while one is lost fails and must be rerun.
    """
    require_columns(df, [id_col, VECTOR, *extra], "vector search input")
    fields = {f.name: f for f in df.schema.fields}
    schema = T.StructType(
        [
            T.StructField(id_col, fields[id_col].dataType),
            T.StructField(VEC, T.BinaryType(), False),
            T.StructField(_LENGTH, T.LongType(), False),
            T.StructField(_CODE, T.IntegerType(), False),
        ]
        + [fields[name] for name in extra]
    )
    encoded = df.select(id_col, VECTOR, *extra).mapInArrow(partial(_encode, id_col, list(extra)), schema)
    encoded = encoded.localCheckpoint(eager=True)
    stats = encoded.groupBy(F.col(_LENGTH).alias("length"), F.col(_CODE).alias("code")).agg(F.count(F.lit(1)).alias("n"))
    counts = _tally(stats.collect(), dim, id_col)
    usable = (F.col(_CODE) == _USABLE) & (F.col(_LENGTH) == F.lit(-1 if counts.dim is None else counts.dim))
    return encoded.where(usable).select(id_col, VEC, *extra), counts


# ---- Spark search -------------------------------------------------------------------------
def _list_column(table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(row, value)`` pairs of a list column (null lists are empty)."""
    column = _column(table, name)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(column)), lengths)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, values


def _search_part(items: pa.Table, queries: pa.Table, k: int, block_size: int) -> pa.Table:
    """One task: the queries routed to one part of the index against that part's items.

    ``items`` carry their list (``_list``); each query row carries ``_probes``, the lists of
    this part it scans. Items are laid out list by list; for every list, its probing queries
    are multiplied against its items in ``block_size`` blocks with BLAS, and one running top-K
    per query (:class:`TopK`) keeps the best ``k`` of the part. Columns given to the top-K are
    the items' ranks by ``item_id``, so ties go to the smaller id. Returns partial top-Ks.
    """
    if items.num_rows == 0 or queries.num_rows == 0:
        return _PARTIAL_ARROW.empty_table()
    ids = _column(items, ITEM_ID)
    by_id = pc.sort_indices(ids).to_numpy()
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[by_id] = np.arange(len(ids))
    lists = _column(items, LIST_ID).to_numpy().astype(np.int64)
    layout = np.lexsort((id_rank, lists))  # list by list, each in id order
    item_vectors = _matrix(_column(items, VEC))[layout]
    columns = id_rank[layout]
    lists = lists[layout]
    list_ids, list_starts = np.unique(lists, return_index=True)
    list_ends = np.append(list_starts[1:], len(lists))

    query_vectors = _matrix(_column(queries, VEC))
    probe_rows, probe_lists = _list_column(queries, PROBES)
    order = np.argsort(probe_lists, kind="stable")
    probe_rows, probe_lists = probe_rows[order], probe_lists[order]

    if EXCLUDED in queries.column_names:
        ex_rows, ex_pos = _excluded_positions(*_list_column(queries, EXCLUDED), _column(items, ITEM_HASH).to_numpy()[layout])
    else:
        ex_rows = ex_pos = np.zeros(0, dtype=np.int64)
    top = TopK(queries.num_rows, k)
    slot = np.full(queries.num_rows, -1, dtype=np.int64)  # row of a query within the current block
    for lst, start, end in zip(list_ids, list_starts, list_ends):
        lo, hi = np.searchsorted(probe_lists, [lst, lst + 1])
        askers = probe_rows[lo:hi]
        for a0 in range(0, len(askers), block_size):
            rows = askers[a0 : a0 + block_size]
            block = query_vectors[rows]
            for i0 in range(start, end, block_size):
                i1 = min(i0 + block_size, end)
                scores = block @ item_vectors[i0:i1].T
                e0, e1 = np.searchsorted(ex_pos, [i0, i1])
                if e1 > e0:
                    slot[rows] = np.arange(len(rows))
                    r = slot[ex_rows[e0:e1]]
                    hit = r >= 0
                    scores[r[hit], ex_pos[e0:e1][hit] - i0] = -np.inf
                    slot[rows] = -1
                top.push(scores, columns[i0:i1], rows=rows)
    index, values = top.results()
    rows, cols = np.nonzero((index >= 0) & np.isfinite(values))
    return pa.table(
        {
            QUERY_ID: _column(queries, QUERY_ID).take(pa.array(rows)),
            ITEM_ID: ids.take(pa.array(by_id[index[rows, cols]])),
            SCORE: pa.array(values[rows, cols], pa.float32()),
        }
    )


def _excluded_positions(rows: np.ndarray, hashes: np.ndarray, item_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _merge_partials(k: int, partials: pa.Table) -> pa.Table:
    """Top-``k`` per query of the partial lists: score descending, ties by item_id."""
    ranked = partials.sort_by([(QUERY_ID, "ascending"), (SCORE, "descending"), (ITEM_ID, "ascending")])
    if ranked.num_rows == 0:
        return RESULTS_ARROW.empty_table()
    queries = _column(ranked, QUERY_ID).dictionary_encode().indices.to_numpy()
    starts = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(queries)]))
    rank = np.arange(len(queries)) - run_start + 1
    keep = pa.array(rank <= k)
    return pa.table(
        {
            QUERY_ID: _column(ranked, QUERY_ID).filter(keep),
            ITEM_ID: _column(ranked, ITEM_ID).filter(keep),
            RANK: pa.array(rank[rank <= k].astype(np.int32)),
            SCORE: _column(ranked, SCORE).filter(keep),
        }
    )


def _with_exclusions(queries: DataFrame, exclude: Optional[DataFrame]) -> DataFrame:
    """``queries`` plus ``_excluded``: the 64-bit hashes of the item ids never to return."""
    if exclude is None:
        return queries
    require_columns(exclude, [QUERY_ID, ITEM_ID], "exclude")
    lists = exclude.select(F.col(QUERY_ID).alias(QUERY_ID), F.col(ITEM_ID).alias(ITEM_ID)).groupBy(QUERY_ID).agg(
        F.collect_set(F.xxhash64(ITEM_ID)).alias(EXCLUDED)
    )
    return queries.join(lists, QUERY_ID, "left")


def _plan(spark, n_items: int, n_queries: int, max_parts: int, query_copies: int) -> tuple[int, int]:
    """``(parts, query blocks)``: how to cut the work into ``parts x blocks`` tasks.

    Items are split into parts, queries into blocks; a task is one (part, block) pair, so every
    item row is copied once per block and every query row once per part it probes (at most
    ``query_copies``). At least one task per core, none holding more than ``ITEMS_PER_TASK``
    items or ``QUERIES_PER_TASK`` queries, and the fewest copied rows. (Two tasks per core
    copied each IVF query twice as often and measured 5-25% slower on 2 cores.)
    """
    tasks = spark.sparkContext.defaultParallelism
    min_parts = min(max_parts, max(1, math.ceil(n_items / ITEMS_PER_TASK)))
    min_blocks = max(1, math.ceil(n_queries / QUERIES_PER_TASK))
    best = None
    for parts in range(min_parts, max(min_parts, min(max_parts, tasks)) + 1):
        blocks = max(min_blocks, math.ceil(tasks / parts))
        cost = n_items * blocks + n_queries * min(parts, query_copies)
        if best is None or cost < best[0]:
            best = (cost, parts, blocks)
    return best[1], best[2]


def _cogroup_parts(items_by_part: DataFrame, queries_by_part: DataFrame, k: int, block_size: int) -> DataFrame:
    """Partial top-Ks: items and queries cogrouped on (part, query block), each task searched."""
    keys = [PART, QUERY_BLOCK]
    return items_by_part.groupBy(*keys).cogroup(queries_by_part.groupBy(*keys)).applyInArrow(_searcher(k, block_size), _PARTIAL)


def _merge(partials: DataFrame, k: int) -> DataFrame:
    """The final top-``k`` per query from the partial top-Ks."""
    buckets = int(partials.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    return (
        partials.withColumn(BUCKET, F.pmod(F.xxhash64(QUERY_ID), F.lit(buckets)))
        .groupBy(BUCKET)
        .applyInArrow(_merger(k), RESULTS)
    )


def _broadcastable(counts: VectorCounts) -> bool:
    return counts.usable * counts.dim * 4 <= BROADCAST_QUERY_BYTES


def _search_with_queries(
    items: DataFrame, n_items: int, queries: DataFrame, centroids: Optional[np.ndarray], nprobe: int, k: int, block_size: int
) -> DataFrame:
    """Top-``k`` per query, the queries (``query_id, _vec[, _excluded]``) collected on the driver
    with their ``_probes`` (the ``nprobe`` nearest of ``centroids``; one cell when None) and sent
    with the tasks; every item partition is searched where it lies, its items put in their
    cells, in chunks of at most ``ITEMS_PER_TASK``.

    Each chunk costs a pass over every query whatever its size, so many small partitions (a
    table of many small files) are first merged, without a shuffle, into one per core or one
    per ``ITEMS_PER_TASK`` items, whichever is more.
    """
    table = queries.toArrow().combine_chunks()
    if centroids is None:
        cells = np.zeros((table.num_rows, 1), dtype=np.int32)
    else:
        cells = _nearest_lists(_matrix(_column(table, VEC)), centroids, nprobe)
    table = table.append_column(PROBES, _probes_column(cells))
    tasks = max(items.sparkSession.sparkContext.defaultParallelism, math.ceil(n_items / ITEMS_PER_TASK))
    items = items.coalesce(tasks)
    if EXCLUDED in table.column_names:
        items = items.withColumn(ITEM_HASH, F.xxhash64(ITEM_ID))
    return _merge(items.mapInArrow(_local_searcher(table, centroids, ITEMS_PER_TASK, k, block_size), _PARTIAL), k)


def _probes_column(cells: np.ndarray) -> pa.Array:
    """``_probes``: row ``i`` of the ``(n, nprobe)`` cell ids as one list per query."""
    n, width = cells.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), pa.array(cells.ravel().astype(np.int32)))


def _local_searcher(queries: pa.Table, centroids: Optional[np.ndarray], chunk_rows: int, k: int, block_size: int):
    def search_chunk(chunk: list) -> Iterator[pa.RecordBatch]:
        items = pa.Table.from_batches(chunk)
        if centroids is None:
            cells = np.zeros(items.num_rows, dtype=np.int32)
        else:
            cells = np.argmax(_matrix(_column(items, VEC)) @ centroids.T, axis=1).astype(np.int32)
        yield from _search_part(items.append_column(LIST_ID, pa.array(cells)), queries, k, block_size).to_batches()

    def search(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        chunk, rows = [], 0
        for batch in batches:
            while batch.num_rows:
                take = batch.slice(0, chunk_rows - rows)
                chunk.append(take)
                rows += take.num_rows
                batch = batch.slice(take.num_rows)
                if rows == chunk_rows:
                    yield from search_chunk(chunk)
                    chunk, rows = [], 0
        if rows:
            yield from search_chunk(chunk)

    return search


# Plain closures, no annotations: applyInArrow in pyspark 4.2 fails on a functools.partial
# ("cannot access local variable 'eval_type'") while inferring the UDF kind from type hints.
def _searcher(k: int, block_size: int):
    def search(items, queries):
        return _search_part(items, queries, k, block_size)

    return search


def _merger(k: int):
    def merge(partials):
        return _merge_partials(k, partials.drop_columns([BUCKET]))

    return merge


def _with_block(df: DataFrame, id_col: Optional[str], n_blocks: int) -> DataFrame:
    """Add ``_qblock``: a query's block by id hash (``id_col``), or every block for an item."""
    if id_col is not None:
        return df.withColumn(QUERY_BLOCK, F.pmod(F.xxhash64(id_col), F.lit(n_blocks)).cast("int"))
    if n_blocks == 1:
        return df.withColumn(QUERY_BLOCK, F.lit(0))
    return df.withColumn(QUERY_BLOCK, F.explode(F.sequence(F.lit(0), F.lit(n_blocks - 1))))


def _prepare(
    queries: DataFrame, items: DataFrame, k: int, exclude: Optional[DataFrame]
) -> tuple[DataFrame, DataFrame, VectorCounts, VectorCounts]:
    """Validate the arguments and encode both sides (:func:`encode_vectors`); returns
    ``(query_id, _vec[, _excluded])`` and ``(item_id, _vec)`` frames of usable rows and both counts."""
    if k < 1:
        raise ValueError(f"vector search: k must be >= 1, got {k}")
    require_columns(queries, [QUERY_ID, VECTOR], "vector search queries")
    require_columns(items, [ITEM_ID, VECTOR], "vector search items")
    # Fresh column identities: queries and items may be the same table (item -> item search).
    items = items.select(F.col(ITEM_ID).alias(ITEM_ID), F.col(VECTOR).alias(VECTOR))
    queries = queries.select(F.col(QUERY_ID).alias(QUERY_ID), F.col(VECTOR).alias(VECTOR))
    items, item_counts = encode_vectors(items, ITEM_ID)
    extra = (EXCLUDED,) if exclude is not None else ()
    queries, query_counts = encode_vectors(_with_exclusions(queries, exclude), QUERY_ID, item_counts.dim, extra)
    if item_counts.usable and query_counts.usable == 0 and query_counts.rows:
        raise ValueError(
            f"vector search: no query vector has the items' dimension {item_counts.dim} "
            f"(query vectors: {query_counts.to_dict()})"
        )
    return queries, items, query_counts, item_counts


def _empty(queries: DataFrame) -> DataFrame:
    return queries.sparkSession.createDataFrame([], RESULTS)


def exact_search(
    queries: DataFrame,
    items: DataFrame,
    k: int,
    exclude: Optional[DataFrame] = None,
    block_size: int = 4096,
) -> DataFrame:
    """Exact cosine top-``k`` of every query over all items.

    Reads queries ``(query_id, vector)``, items ``(item_id, vector)``, exclude ``(query_id,
    item_id)``; returns ``(query_id, item_id, rank, score)``. Every item is compared with every
    query in ``block_size`` blocks, the queries sent with the tasks or, when large, items hashed
    into parts and cogrouped with every query (module doc). Rows with bad vectors are skipped
    (see :func:`vector_counts`).
    """
    queries, items, query_counts, item_counts = _prepare(queries, items, k, exclude)
    if item_counts.usable == 0 or query_counts.usable == 0:
        return _empty(queries)
    if _broadcastable(query_counts):
        return _search_with_queries(items, item_counts.usable, queries, None, 1, k, block_size)
    n_parts, n_blocks = _plan(queries.sparkSession, item_counts.usable, query_counts.usable, item_counts.usable, item_counts.usable)
    # Both sides' keys must have the same types (int): cogroup hash-partitions each side by its
    # keys, and an int and a long of the same value hash differently, so groups would miss
    # each other and their pairs vanish without an error.
    part = F.pmod(F.xxhash64(ITEM_ID), F.lit(n_parts)).cast("int")
    items_by_part = _with_block(
        items.withColumn(ITEM_HASH, F.xxhash64(ITEM_ID)).withColumn(PART, part).withColumn(LIST_ID, part), None, n_blocks
    )
    queries_by_part = _with_block(
        queries.withColumn(PART, F.explode(F.sequence(F.lit(0), F.lit(n_parts - 1)))).withColumn(PROBES, F.array(F.col(PART))),
        QUERY_ID,
        n_blocks,
    )
    return _merge(_cogroup_parts(items_by_part, queries_by_part, k, block_size), k)


def train_centroids(
    items: DataFrame,
    nlist: int,
    iterations: int = 10,
    seed: int = 17,
    train_points_per_list: int = TRAIN_POINTS_PER_LIST,
    n_items: Optional[int] = None,
    dim: Optional[int] = None,
    max_driver_sample_mb: int = MAX_DRIVER_SAMPLE_MB,
) -> np.ndarray:
    """Spherical k-means centroids ``(nlist, dim)`` trained on a random sample of ``items``.

    Reads ``vector`` (rows :func:`vector_counts` would skip are left out). The sample has about
    ``nlist x train_points_per_list`` rows. When it fits in ``max_driver_sample_mb``, it is
    fetched to the driver and trained there with :func:`kmeans`, the same code as the numpy
    baseline (ten Spark jobs of ~0.5 s each would cost more than the arithmetic). Otherwise the
    sample is cached on the workers and each iteration is one Spark job: workers return
    per-centroid counts and sums (``nlist x dim`` per partition), seeds come from k-means++ on
    ``nlist x 8`` rows. ``n_items`` and ``dim``: the usable row count and dimension of
    ``items`` when already known (saves a pass).
    """
    require_columns(items, [VECTOR], "IVF index items")
    if n_items is None or dim is None:
        counts = vector_counts(items.select(F.lit("x").alias("_id"), VECTOR), "_id")
        n_items, dim = counts.usable, counts.dim
    if n_items == 0:
        raise ValueError("IVF index: the item table has no usable vectors")
    sample, rows = _sample(items.select(F.lit("x").alias("_id"), VECTOR), n_items, nlist * train_points_per_list, seed)
    sample = _binary_frame(sample, "_id", dim).select(VEC)
    return _train_on_sample(sample, rows * dim * 4, nlist, iterations, seed, max_driver_sample_mb)


def _sample(df: DataFrame, n_rows: int, wanted: int, seed: int) -> tuple[DataFrame, float]:
    """About ``wanted`` random rows of ``df`` (``n_rows`` rows), and the expected count."""
    fraction = min(1.0, wanted / n_rows)
    return (df if fraction >= 1.0 else df.sample(False, fraction, seed)), fraction * n_rows


def _train_on_sample(
    sample: DataFrame, sample_bytes: float, nlist: int, iterations: int, seed: int, max_driver_sample_mb: int
) -> np.ndarray:
    """k-means on ``sample`` (unit vectors in ``_vec``), on the driver when ``sample_bytes``
    fit in ``max_driver_sample_mb``, else as one Spark job per iteration (see :func:`train_centroids`)."""
    if sample_bytes <= max_driver_sample_mb * 2**20:
        points = _matrix(_column(sample.toArrow(), VEC))
        if len(points) == 0:
            raise ValueError("IVF index: the k-means sample is empty")
        return kmeans(points, nlist, iterations, seed)
    parallelism = sample.sparkSession.sparkContext.defaultParallelism
    sample = sample.repartition(parallelism).cache()
    try:
        pool = sample.orderBy(F.rand(seed)).limit(nlist * SEED_CANDIDATES_PER_LIST).collect()
        if not pool:
            raise ValueError("IVF index: the k-means sample is empty")
        pool = np.stack([np.frombuffer(row[VEC], dtype=np.float32) for row in pool])
        centroids = seed_centroids(pool, nlist, np.random.default_rng(seed))
        for _ in range(iterations):
            stats = sample.mapInArrow(partial(_partition_stats, centroids), "cell int, n long, total binary")
            counts = np.zeros(len(centroids), dtype=np.int64)
            sums = np.zeros(centroids.shape, dtype=np.float64)
            for row in stats.collect():
                counts[row["cell"]] += row["n"]
                sums[row["cell"]] += np.frombuffer(row["total"], dtype=np.float64)
            centroids = _kmeans_update(counts, sums, centroids)
    finally:
        sample.unpersist()
    return centroids


def _partition_stats(centroids: np.ndarray, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    counts = np.zeros(len(centroids), dtype=np.int64)
    sums = np.zeros(centroids.shape, dtype=np.float64)
    for batch in batches:
        if batch.num_rows:
            c, s = _kmeans_stats(_matrix(batch.column(VEC)), centroids)
            counts += c
            sums += s
    cells = np.nonzero(counts)[0]
    yield pa.RecordBatch.from_arrays(
        [pa.array(cells.astype(np.int32)), pa.array(counts[cells]), pa.array([row.tobytes() for row in sums[cells]], pa.binary())],
        ["cell", "n", "total"],
    )


def _assign_items(centroids: np.ndarray, n_parts: int, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Add ``_list`` (the nearest cell) and ``_part`` (the part holding that cell)."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        cells = np.argmax(_matrix(batch.column(VEC)) @ centroids.T, axis=1).astype(np.int32)
        yield batch.append_column(LIST_ID, pa.array(cells)).append_column(PART, pa.array((cells % n_parts).astype(np.int32)))


def _route_queries(
    centroids: np.ndarray, nprobe: int, n_parts: int, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """One row per (query, part holding any of its ``nprobe`` nearest cells), with ``_part``
    and ``_probes`` (those cells)."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        cells = _nearest_lists(_matrix(batch.column(VEC)), centroids, nprobe)
        rows = np.repeat(np.arange(batch.num_rows), cells.shape[1])
        cells = cells.ravel()
        parts = cells % n_parts
        order = np.lexsort((cells, parts, rows))
        rows, parts, cells = rows[order], parts[order], cells[order]
        starts = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (parts[1:] != parts[:-1])])
        probes = pa.ListArray.from_arrays(pa.array(np.r_[starts, len(cells)].astype(np.int32)), pa.array(cells.astype(np.int32)))
        yield batch.take(pa.array(rows[starts])).append_column(PART, pa.array(parts[starts].astype(np.int32))).append_column(PROBES, probes)


def ivf_search(
    queries: DataFrame,
    items: DataFrame,
    k: int,
    nlist: int,
    nprobe: int,
    exclude: Optional[DataFrame] = None,
    seed: int = 17,
    iterations: int = 10,
    block_size: int = 4096,
    centroids: Optional[np.ndarray] = None,
) -> DataFrame:
    """Approximate cosine top-``k`` through an inverted-file index; same columns as :func:`exact_search`.

    k-means (``nlist`` cells, ``iterations`` rounds, on a sample: :func:`train_centroids`, or the
    given ``centroids``) assigns every item to its nearest cell; each query scans the items of
    its ``nprobe`` nearest cells. ``nprobe >= nlist`` is an exact search. Small query sets travel
    with the tasks and each item partition is searched where it lies; for large ones, cells are
    grouped into a few parts (cell id modulo the part count), a query goes once to each part
    holding one of its cells, and a task searches all of its queries' cells in its part.
    """
    if nlist < 1 or nprobe < 1:
        raise ValueError(f"IVF search: nlist and nprobe must be >= 1, got nlist={nlist}, nprobe={nprobe}")
    queries, items, query_counts, item_counts = _prepare(queries, items, k, exclude)
    if item_counts.usable == 0 or query_counts.usable == 0:
        return _empty(queries)
    dim = item_counts.dim
    if centroids is None:
        n_cells = min(nlist, item_counts.usable)
        sample, rows = _sample(items.select(VEC), item_counts.usable, n_cells * TRAIN_POINTS_PER_LIST, seed)
        centroids = _train_on_sample(sample, rows * dim * 4, n_cells, iterations, seed, MAX_DRIVER_SAMPLE_MB)
    elif centroids.shape[1] != dim:
        raise ValueError(f"IVF search: centroids have dimension {centroids.shape[1]}, items {dim}")
    centroids = np.asarray(centroids, dtype=np.float32)
    nprobe = min(nprobe, len(centroids))
    if _broadcastable(query_counts):
        return _search_with_queries(items, item_counts.usable, queries, centroids, nprobe, k, block_size)
    n_parts, n_blocks = _plan(queries.sparkSession, item_counts.usable, query_counts.usable, len(centroids), nprobe)
    item_schema = T.StructType(items.schema.fields + [T.StructField(LIST_ID, T.IntegerType()), T.StructField(PART, T.IntegerType())])
    items_by_part = _with_block(
        items.mapInArrow(partial(_assign_items, centroids, n_parts), item_schema).withColumn(ITEM_HASH, F.xxhash64(ITEM_ID)),
        None,
        n_blocks,
    )
    query_schema = T.StructType(
        queries.schema.fields + [T.StructField(PART, T.IntegerType()), T.StructField(PROBES, T.ArrayType(T.IntegerType()))]
    )
    queries_by_part = _with_block(
        queries.mapInArrow(partial(_route_queries, centroids, nprobe, n_parts), query_schema), QUERY_ID, n_blocks
    )
    return _merge(_cogroup_parts(items_by_part, queries_by_part, k, block_size), k)


def recall_vs_exact(approximate: DataFrame, exact: DataFrame, k: int) -> Optional[float]:
    """Mean over the queries of ``exact`` of |approx top-k ∩ exact top-k| / |exact top-k|.

    Both read ``(query_id, item_id, rank)``; None when ``exact`` has no rows.
    """
    truth = exact.where(F.col(RANK) <= k).select(QUERY_ID, ITEM_ID)
    found = approximate.where(F.col(RANK) <= k).select(QUERY_ID, ITEM_ID).withColumn("_hit", F.lit(1))
    per_query = (
        truth.join(found, [QUERY_ID, ITEM_ID], "left")
        .groupBy(QUERY_ID)
        .agg((F.sum(F.coalesce("_hit", F.lit(0))) / F.count(F.lit(1))).alias("_recall"))
    )
    value = per_query.agg(F.avg("_recall")).first()[0]
    return None if value is None else float(value)
