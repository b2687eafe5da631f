"""Cosine top-K search in Spark: exact blocked search and an IVF (inverted-file) index.

Both searches read ``queries`` as ``(query_id, vector)`` and ``items`` as ``(item_id, vector)``
(``vector`` array<float>, L2-normalised so cosine = dot product) and return
``(query_id, item_id, rank, score)``: the top ``k`` items of every query by cosine, ties broken
by ``item_id``, never a pair listed in ``exclude`` ``(query_id, item_id)``.

The shape is the same for both. Items are split into lists: hash groups for the exact search,
k-means cells for IVF. Each query is sent to the lists it must scan (every group for exact, its
``nprobe`` nearest cells for IVF); a ``cogroup`` on the list id hands one list's items and its
queries to a Python worker, which computes dot products in ``block_size`` blocks with BLAS and
keeps a running top-K per query (:class:`TopK`). A per-query merge of the partial top-Ks gives
the answer. The item table is never collected on the driver: only the k-means centroids are
(``nlist x dim`` floats), and they are trained in Spark on a sample of the items.

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
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.schemas import ITEM_ID, QUERY_ID, RANK, SCORE, VECTOR, require_columns

log = logging.getLogger(__name__)

LIST_ID = "_list"
QUERY_BLOCK = "_qblock"
ITEM_HASH = "_item_hash"
EXCLUDED = "_excluded"
BUCKET = "_bucket"

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
# An exact-search task scans this many blocks of items per query block, so the running top-K
# threshold set by the first block prunes the selection work of the others.
_BLOCKS_PER_GROUP = 4
# k-means is trained on at most this many sampled items per centroid (faiss uses 39..256).
TRAIN_POINTS_PER_LIST = 64


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


def kmeans(points: np.ndarray, nlist: int, iterations: int = 10, seed: int = 17) -> np.ndarray:
    """Spherical k-means centroids ``(nlist, dim)`` of unit vectors, seeded with random points."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float32)
    nlist = min(nlist, len(points))
    centroids = points[rng.choice(len(points), nlist, replace=False)].copy()
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


# ---- input validation -----------------------------------------------------------------
@dataclass(frozen=True)
class VectorCounts:
    """What :func:`clean_vectors` found: usable rows and each kind of skipped row."""

    rows: int
    usable: int
    missing: int  # null id, null or empty vector
    wrong_dimension: int
    non_finite: int  # NaN or infinite component
    zero: int  # all-zero vector: no direction, cosine undefined
    dim: Optional[int]

    @property
    def skipped(self) -> int:
        return self.rows - self.usable

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": self.skipped}


def clean_vectors(df: DataFrame, id_col: str, dim: Optional[int] = None) -> tuple[DataFrame, VectorCounts]:
    """Split off rows whose ``vector`` cannot be searched; returns ``(usable rows, counts)``.

    Reads ``id_col`` and ``vector``. The expected dimension is ``dim`` or, when None, the most
    common length among the finite vectors. One small aggregation (a row per distinct length).
    """
    require_columns(df, [id_col, VECTOR], "vector search input")
    size = F.coalesce(F.size(VECTOR), F.lit(-1))
    missing = F.col(id_col).isNull() | (size <= 0)
    non_finite = F.coalesce(
        F.exists(VECTOR, lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf"))), F.lit(True)
    )
    zero = F.coalesce(F.forall(VECTOR, lambda x: x == 0), F.lit(False))
    stats = (
        df.groupBy(size.alias("size"), missing.alias("missing"), non_finite.alias("nf"), zero.alias("zero"))
        .count()
        .collect()
    )
    finite_sizes: dict[int, int] = {}
    for row in stats:
        if not row["missing"] and not row["nf"]:
            finite_sizes[row["size"]] = finite_sizes.get(row["size"], 0) + row["count"]
    if dim is None and finite_sizes:
        dim = max(finite_sizes, key=lambda s: (finite_sizes[s], -s))
    counts = {"missing": 0, "wrong_dimension": 0, "non_finite": 0, "zero": 0, "usable": 0}
    for row in stats:
        if row["missing"]:
            counts["missing"] += row["count"]
        elif row["size"] != dim:
            counts["wrong_dimension"] += row["count"]
        elif row["nf"]:
            counts["non_finite"] += row["count"]
        elif row["zero"]:
            counts["zero"] += row["count"]
        else:
            counts["usable"] += row["count"]
    result = VectorCounts(rows=sum(r["count"] for r in stats), dim=dim, **counts)
    usable = ~missing & (size == F.lit(dim if dim is not None else -2)) & ~non_finite & ~zero
    if result.skipped:
        log.warning("vector search input (%s): skipped %d bad vector(s): %s", id_col, result.skipped, result.to_dict())
    return df.where(usable), result


# ---- Spark search -------------------------------------------------------------------------
def _stack(vectors: pd.Series) -> np.ndarray:
    if len(vectors) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return normalize_rows(np.vstack(vectors.to_numpy()))


def _search_list(
    key: tuple, items: pd.DataFrame, queries: pd.DataFrame, k: int, block_size: int
) -> pd.DataFrame:
    """One list: every query against every item, running top-K; partial results per query."""
    if items.empty or queries.empty:
        return pd.DataFrame({QUERY_ID: [], ITEM_ID: [], SCORE: []}).astype({SCORE: np.float32})
    order = np.argsort(items[ITEM_ID].to_numpy().astype(str), kind="stable")
    items = items.iloc[order]
    item_ids = items[ITEM_ID].to_numpy()
    item_vectors = _stack(items[VECTOR])
    item_hashes = items[ITEM_HASH].to_numpy(dtype=np.int64)
    query_vectors = _stack(queries[VECTOR])
    excluded = queries[EXCLUDED] if EXCLUDED in queries else None
    out_q, out_i, out_v = [], [], []
    for q0 in range(0, len(queries), block_size):
        block = query_vectors[q0 : q0 + block_size]
        ex_rows, ex_hashes = _exclusions(excluded, q0, len(block))
        top = TopK(len(block), k)
        for i0 in range(0, len(item_ids), block_size):
            scores = block @ item_vectors[i0 : i0 + block_size].T
            if ex_rows.size:
                _mask_excluded(scores, ex_rows, ex_hashes, item_hashes[i0 : i0 + block_size])
            top.push(scores, np.arange(i0, i0 + scores.shape[1]))
        index, values = top.results()
        keep = index >= 0
        keep &= np.isfinite(values)
        rows, cols = np.nonzero(keep)
        out_q.append(rows + q0)
        out_i.append(index[rows, cols])
        out_v.append(values[rows, cols])
    q = np.concatenate(out_q)
    return pd.DataFrame(
        {
            QUERY_ID: queries[QUERY_ID].to_numpy()[q],
            ITEM_ID: item_ids[np.concatenate(out_i)],
            SCORE: np.concatenate(out_v).astype(np.float32),
        }
    )


def _exclusions(excluded: Optional[pd.Series], start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened ``(row, item hash)`` exclusions of query rows ``start .. start+n``."""
    if excluded is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, hashes = [], []
    for offset, value in enumerate(excluded.iloc[start : start + n]):
        if value is not None and len(value):
            rows.append(np.full(len(value), offset, dtype=np.int64))
            hashes.append(np.asarray(value, dtype=np.int64))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(hashes)


def _mask_excluded(scores: np.ndarray, rows: np.ndarray, hashes: np.ndarray, block_hashes: np.ndarray) -> None:
    """Set excluded (row, item) scores to -inf in place (items matched by 64-bit id hash)."""
    order = np.argsort(block_hashes)
    sorted_hashes = block_hashes[order]
    pos = np.minimum(np.searchsorted(sorted_hashes, hashes), len(sorted_hashes) - 1)
    hit = sorted_hashes[pos] == hashes
    scores[rows[hit], order[pos[hit]]] = -np.inf


def _merge_partials(k: int, partials: pd.DataFrame) -> pd.DataFrame:
    """Top-``k`` per query of the partial lists: score descending, ties by item_id."""
    ranked = partials.sort_values([QUERY_ID, SCORE, ITEM_ID], ascending=[True, False, True], kind="mergesort")
    ranked = ranked.assign(**{RANK: ranked.groupby(QUERY_ID, sort=False).cumcount() + 1})
    ranked = ranked[ranked[RANK] <= k]
    return ranked[[QUERY_ID, ITEM_ID, RANK, SCORE]].astype({RANK: np.int32, SCORE: np.float32})


def _with_exclusions(queries: DataFrame, exclude: Optional[DataFrame]) -> DataFrame:
    """``queries`` plus ``_excluded``: the 64-bit hashes of the item ids never to return."""
    if exclude is None:
        return queries
    require_columns(exclude, [QUERY_ID, ITEM_ID], "exclude")
    lists = exclude.select(F.col(QUERY_ID).alias(QUERY_ID), F.col(ITEM_ID).alias(ITEM_ID)).groupBy(QUERY_ID).agg(
        F.collect_set(F.xxhash64(ITEM_ID)).alias(EXCLUDED)
    )
    return queries.join(lists, QUERY_ID, "left")


def _run_lists(
    items_by_list: DataFrame, queries_by_list: DataFrame, k: int, block_size: int, group_keys: list[str]
) -> DataFrame:
    """Cogroup items and queries on ``group_keys``, search each group, merge per query."""
    spark = items_by_list.sparkSession
    partials = (
        items_by_list.groupBy(*group_keys)
        .cogroup(queries_by_list.groupBy(*group_keys))
        .applyInPandas(partial(_search_list, k=k, block_size=block_size), _PARTIAL)
    )
    buckets = int(spark.conf.get("spark.sql.shuffle.partitions"))
    return (
        partials.withColumn(BUCKET, F.pmod(F.xxhash64(QUERY_ID), F.lit(buckets)))
        .groupBy(BUCKET)
        .applyInPandas(_merger(k), RESULTS)
    )


def _merger(k: int):
    def merge(partials: pd.DataFrame) -> pd.DataFrame:
        return _merge_partials(k, partials.drop(columns=[BUCKET]))

    return merge


def _prepare(queries: DataFrame, items: DataFrame, k: int) -> tuple[DataFrame, DataFrame, VectorCounts, VectorCounts]:
    if k < 1:
        raise ValueError(f"vector search: k must be >= 1, got {k}")
    require_columns(queries, [QUERY_ID, VECTOR], "vector search queries")
    require_columns(items, [ITEM_ID, VECTOR], "vector search items")
    # Fresh column identities: queries and items may be the same table (item -> item search).
    items_ok, item_counts = clean_vectors(items.select(F.col(ITEM_ID).alias(ITEM_ID), F.col(VECTOR).alias(VECTOR)), ITEM_ID)
    queries_ok, query_counts = clean_vectors(
        queries.select(F.col(QUERY_ID).alias(QUERY_ID), F.col(VECTOR).alias(VECTOR)), QUERY_ID, item_counts.dim
    )
    if item_counts.usable and query_counts.usable == 0 and query_counts.rows:
        raise ValueError(
            f"vector search: no query vector has the items' dimension {item_counts.dim} "
            f"(query vectors: {query_counts.to_dict()})"
        )
    return queries_ok, items_ok.withColumn(ITEM_HASH, F.xxhash64(ITEM_ID)), query_counts, item_counts


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
    item_id)``; returns ``(query_id, item_id, rank, score)``. Items are hashed into groups of
    about ``4 x block_size``, queries into blocks of ``block_size``; each (group, block) pair is
    one task. Rows with bad vectors are skipped (see :func:`clean_vectors`).
    """
    queries_ok, items_ok, query_counts, item_counts = _prepare(queries, items, k)
    if item_counts.usable == 0 or query_counts.usable == 0:
        return _empty(queries)
    n_groups = max(1, math.ceil(item_counts.usable / (block_size * _BLOCKS_PER_GROUP)))
    n_blocks = max(1, math.ceil(query_counts.usable / block_size))
    # Both sides' keys must have the same types (int): cogroup hash-partitions each side by its
    # keys, and an int and a long of the same value hash differently, so groups would miss
    # each other and their pairs vanish without an error.
    items_by_list = items_ok.withColumn(
        LIST_ID, F.pmod(F.xxhash64(ITEM_ID), F.lit(n_groups)).cast("int")
    ).withColumn(QUERY_BLOCK, F.explode(F.sequence(F.lit(0), F.lit(n_blocks - 1))))
    queries_by_list = (
        _with_exclusions(queries_ok, exclude)
        .withColumn(QUERY_BLOCK, F.pmod(F.xxhash64(QUERY_ID), F.lit(n_blocks)).cast("int"))
        .withColumn(LIST_ID, F.explode(F.sequence(F.lit(0), F.lit(n_groups - 1))))
    )
    return _run_lists(items_by_list, queries_by_list, k, block_size, [LIST_ID, QUERY_BLOCK])


def train_centroids(
    items: DataFrame,
    nlist: int,
    iterations: int = 10,
    seed: int = 17,
    train_points_per_list: int = TRAIN_POINTS_PER_LIST,
) -> np.ndarray:
    """Spherical k-means centroids ``(nlist, dim)`` trained in Spark on a sample of ``items``.

    Reads ``vector``. Each iteration is one Spark job: workers return per-centroid counts and
    sums of their sample rows (``nlist x dim`` per partition); only those reach the driver.
    """
    n_items = items.count()
    if n_items == 0:
        raise ValueError("IVF index: the item table has no usable vectors")
    fraction = min(1.0, nlist * train_points_per_list / n_items)
    sample = items.select(VECTOR)
    if fraction < 1.0:
        sample = sample.sample(False, fraction, seed)
    parallelism = items.sparkSession.sparkContext.defaultParallelism
    sample = sample.repartition(parallelism).cache()
    try:
        seeds = sample.orderBy(F.rand(seed)).limit(nlist).collect()
        if not seeds:
            raise ValueError("IVF index: the k-means sample is empty")
        centroids = normalize_rows(np.array([row[VECTOR] for row in seeds], dtype=np.float32))
        for _ in range(iterations):
            stats = sample.mapInPandas(partial(_partition_stats, centroids), "cell int, n long, total array<double>")
            counts = np.zeros(len(centroids), dtype=np.int64)
            sums = np.zeros(centroids.shape, dtype=np.float64)
            for row in stats.collect():
                counts[row["cell"]] += row["n"]
                sums[row["cell"]] += np.asarray(row["total"])
            centroids = _kmeans_update(counts, sums, centroids)
    finally:
        sample.unpersist()
    return centroids


def _partition_stats(centroids: np.ndarray, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    counts = np.zeros(len(centroids), dtype=np.int64)
    sums = np.zeros(centroids.shape, dtype=np.float64)
    for batch in batches:
        if len(batch):
            c, s = _kmeans_stats(_stack(batch[VECTOR]), centroids)
            counts += c
            sums += s
    cells = np.nonzero(counts)[0]
    yield pd.DataFrame({"cell": cells.astype(np.int32), "n": counts[cells], "total": list(sums[cells])})


def _assign(centroids: np.ndarray, nprobe: int, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Add ``_list``: the ``nprobe`` nearest cells of each row (one output row per cell)."""
    for batch in batches:
        if batch.empty:
            continue
        cells = _nearest_lists(_stack(batch[VECTOR]), centroids, nprobe)
        out = batch.iloc[np.repeat(np.arange(len(batch)), cells.shape[1])].reset_index(drop=True)
        out[LIST_ID] = cells.ravel().astype(np.int32)
        yield out


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
    its ``nprobe`` nearest cells. ``nprobe >= nlist`` is an exact search.
    """
    queries_ok, items_ok, query_counts, item_counts = _prepare(queries, items, k)
    if item_counts.usable == 0 or query_counts.usable == 0:
        return _empty(queries)
    if nlist < 1 or nprobe < 1:
        raise ValueError(f"IVF search: nlist and nprobe must be >= 1, got nlist={nlist}, nprobe={nprobe}")
    if centroids is None:
        centroids = train_centroids(items_ok, min(nlist, item_counts.usable), iterations, seed)
    elif centroids.shape[1] != item_counts.dim:
        raise ValueError(f"IVF search: centroids have dimension {centroids.shape[1]}, items {item_counts.dim}")
    nprobe = min(nprobe, len(centroids))
    item_schema = T.StructType(items_ok.schema.fields + [T.StructField(LIST_ID, T.IntegerType())])
    items_by_list = items_ok.mapInPandas(partial(_assign, centroids, 1), item_schema)
    queries_ex = _with_exclusions(queries_ok, exclude)
    query_schema = T.StructType(queries_ex.schema.fields + [T.StructField(LIST_ID, T.IntegerType())])
    queries_by_list = queries_ex.mapInPandas(partial(_assign, centroids, nprobe), query_schema)
    return _run_lists(items_by_list, queries_by_list, k, block_size, [LIST_ID])


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
