"""Planning and executing a cosine top-K search over DataFrames of encoded vectors.

The search reads queries ``(query_id, _vec[, _excluded])`` and items ``(item_id, _vec[, _list])``
(``_vec`` unit float32 bytes from :func:`recsys_spark.search.vectors.encode_vectors`, ``_list`` an
item's IVF cell) and returns ``(query_id, item_id, rank, score)``. It takes one of two shapes, as
Spark's joins do:

* **Queries sent with the task** (their vectors take at most ``BROADCAST_QUERY_BYTES``, the
  usual case: users of one run or one catalog's items). The queries, with the cells each must
  probe, are collected on the driver and travel with the task; every item partition is searched
  where it lies, in chunks of at most ``ITEMS_PER_TASK`` items. The items are never shuffled.
* **Cogrouped** (larger query sets). Lists are gathered into a few *parts* (one per core, more
  when a part would exceed ``ITEMS_PER_TASK`` items), queries into blocks of at most
  ``QUERIES_PER_TASK``, and each query is sent once to every part holding a list it must scan
  (every part for exact, those with its ``nprobe`` nearest cells for IVF). A ``cogroup`` on
  (part, block) hands a task its items and queries.

Either way a Python worker runs the same kernel (:func:`_search_part`, which calls
:func:`recsys_spark.search.kernels.search_lists`) and a per-query merge of the partial top-Ks
gives the answer. The item table is never collected on the driver.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core.session import default_parallelism
from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, RANK, SCORE, require_columns
from recsys_spark.search.codec import VEC, column, list_array, list_column, to_matrix
from recsys_spark.search.kernels import excluded_positions, nearest_cells, nearest_lists, search_lists

LIST_ID = "_list"
QUERY_BLOCK = "_qblock"
ITEM_HASH = "_item_hash"
EXCLUDED = "_excluded"
BUCKET = "_bucket"
PART = "_part"
PROBES = "_probes"

RESULTS = T.StructType(
    [T.StructField(name, kind, False) for name, kind in
     ((QUERY_ID, T.StringType()), (ITEM_ID, T.StringType()), (RANK, T.IntegerType()), (SCORE, T.FloatType()))]
)
_PARTIAL = T.StructType([field for field in RESULTS.fields if field.name != RANK])
RESULTS_ARROW = pa.schema([(QUERY_ID, pa.string()), (ITEM_ID, pa.string()), (RANK, pa.int32()), (SCORE, pa.float32())])
_PARTIAL_ARROW = pa.schema([field for field in RESULTS_ARROW if field.name != RANK])
# A search task holds at most this many items, and this many queries, in memory.
ITEMS_PER_TASK = 65_536
QUERIES_PER_TASK = 65_536
# Queries whose vectors take at most this many bytes are sent to every item partition with the
# task (like a broadcast join): no shuffle of the items. Larger query sets are cogrouped.
BROADCAST_QUERY_BYTES = 64 << 20


def search(
    queries: DataFrame,
    n_queries: int,
    items: DataFrame,
    n_items: int,
    dim: int,
    k: int,
    block_size: int,
    centroids: Optional[np.ndarray] = None,
    nprobe: int = 1,
) -> DataFrame:
    """Top-``k`` per query of ``n_queries`` encoded queries over ``n_items`` encoded items.

    Without ``centroids`` every query scans every item (exact); with them, each item is in its
    cell (``_list`` when the items carry it, else its nearest centroid, computed where the item
    lies) and each query scans its ``nprobe`` nearest cells (IVF). The shape is chosen by the
    queries' size (module doc).
    """
    if n_queries * dim * 4 <= BROADCAST_QUERY_BYTES:
        return _search_with_queries(items, n_items, queries, centroids, nprobe, k, block_size)
    if centroids is None:
        n_parts, n_blocks = _plan(queries.sparkSession, n_items, n_queries, n_items, n_items)
        # Both sides' keys must have the same types (int): cogroup hash-partitions each side by
        # its keys, and an int and a long of the same value hash differently, so groups would
        # miss each other and their pairs vanish without an error.
        part = F.pmod(F.xxhash64(ITEM_ID), F.lit(n_parts)).cast("int")
        items_by_part = items.withColumn(PART, part).withColumn(LIST_ID, part)
        queries_by_part = queries.withColumn(PART, F.explode(F.sequence(F.lit(0), F.lit(n_parts - 1)))).withColumn(
            PROBES, F.array(F.col(PART))
        )
    else:
        n_parts, n_blocks = _plan(queries.sparkSession, n_items, n_queries, len(centroids), nprobe)
        if LIST_ID not in items.columns:
            items = assign_lists(items, centroids)
        items_by_part = items.withColumn(PART, F.pmod(F.col(LIST_ID), F.lit(n_parts)).cast("int"))
        query_schema = T.StructType(
            queries.schema.fields + [T.StructField(PART, T.IntegerType()), T.StructField(PROBES, T.ArrayType(T.IntegerType()))]
        )
        queries_by_part = queries.mapInArrow(partial(_route_queries, centroids, nprobe, n_parts), query_schema)
    items_by_part = _with_block(items_by_part.withColumn(ITEM_HASH, F.xxhash64(ITEM_ID)), None, n_blocks)
    queries_by_part = _with_block(queries_by_part, QUERY_ID, n_blocks)
    keys = [PART, QUERY_BLOCK]
    partials = items_by_part.groupBy(*keys).cogroup(queries_by_part.groupBy(*keys)).applyInArrow(_searcher(k, block_size), _PARTIAL)
    return _merge(partials, k)


def with_exclusions(queries: DataFrame, exclude: Optional[DataFrame]) -> DataFrame:
    """``queries`` plus ``_excluded``: the 64-bit hashes of the item ids never to return."""
    if exclude is None:
        return queries
    require_columns(exclude, [QUERY_ID, ITEM_ID], "exclude")
    lists = exclude.select(F.col(QUERY_ID).alias(QUERY_ID), F.col(ITEM_ID).alias(ITEM_ID)).groupBy(QUERY_ID).agg(
        F.collect_set(F.xxhash64(ITEM_ID)).alias(EXCLUDED)
    )
    return queries.join(lists, QUERY_ID, "left")


def assign_lists(items: DataFrame, centroids: np.ndarray) -> DataFrame:
    """``items`` (``item_id, _vec``) plus ``_list``: each item's nearest cell of ``centroids``."""
    schema = T.StructType(items.schema.fields + [T.StructField(LIST_ID, T.IntegerType(), False)])
    return items.mapInArrow(partial(_assign, centroids), schema)


def _assign(centroids: np.ndarray, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if batch.num_rows:
            yield batch.append_column(LIST_ID, pa.array(nearest_cells(to_matrix(batch.column(VEC)), centroids)))


def empty_results(spark) -> DataFrame:
    return spark.createDataFrame([], RESULTS)


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


# ---- one task ---------------------------------------------------------------------------
def _search_part(items: pa.Table, queries: pa.Table, k: int, block_size: int) -> pa.Table:
    """One task: the queries routed to one part of the index against that part's items.

    ``items`` carry their list (``_list``); each query row carries ``_probes``, the lists of
    this part it scans. Items are laid out list by list, each in ``item_id`` order, and the
    top-K columns are the items' ranks by id, so ties go to the smaller id
    (:func:`~recsys_spark.search.kernels.search_lists`). Returns partial top-Ks.
    """
    if items.num_rows == 0 or queries.num_rows == 0:
        return _PARTIAL_ARROW.empty_table()
    ids = column(items, ITEM_ID)
    by_id = pc.sort_indices(ids).to_numpy()
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[by_id] = np.arange(len(ids))
    lists = column(items, LIST_ID).to_numpy().astype(np.int64)
    layout = np.lexsort((id_rank, lists))  # list by list, each in id order
    if EXCLUDED in queries.column_names:
        excluded = excluded_positions(*list_column(queries, EXCLUDED), column(items, ITEM_HASH).to_numpy()[layout])
    else:
        excluded = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    index, values = search_lists(
        to_matrix(column(queries, VEC)),
        *list_column(queries, PROBES),
        to_matrix(column(items, VEC))[layout],
        lists[layout],
        id_rank[layout],
        excluded,
        k,
        block_size,
    )
    rows, cols = np.nonzero((index >= 0) & np.isfinite(values))
    return pa.table(
        {
            QUERY_ID: column(queries, QUERY_ID).take(pa.array(rows)),
            ITEM_ID: ids.take(pa.array(by_id[index[rows, cols]])),
            SCORE: pa.array(values[rows, cols], pa.float32()),
        }
    )


def _merge_partials(k: int, partials: pa.Table) -> pa.Table:
    """Top-``k`` per query of the partial lists: score descending, ties by item_id."""
    ranked = partials.sort_by([(QUERY_ID, "ascending"), (SCORE, "descending"), (ITEM_ID, "ascending")])
    if ranked.num_rows == 0:
        return RESULTS_ARROW.empty_table()
    queries = column(ranked, QUERY_ID).dictionary_encode().indices.to_numpy()
    starts = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(queries)]))
    rank = np.arange(len(queries)) - run_start + 1
    keep = pa.array(rank <= k)
    return pa.table(
        {
            QUERY_ID: column(ranked, QUERY_ID).filter(keep),
            ITEM_ID: column(ranked, ITEM_ID).filter(keep),
            RANK: pa.array(rank[rank <= k].astype(np.int32)),
            SCORE: column(ranked, SCORE).filter(keep),
        }
    )


# ---- planning -------------------------------------------------------------------------------
def _plan(spark, n_items: int, n_queries: int, max_parts: int, query_copies: int) -> tuple[int, int]:
    """``(parts, query blocks)``: how to cut the work into ``parts x blocks`` tasks.

    Items are split into parts, queries into blocks; a task is one (part, block) pair, so every
    item row is copied once per block and every query row once per part it probes (at most
    ``query_copies``). At least one task per core, none holding more than ``ITEMS_PER_TASK``
    items or ``QUERIES_PER_TASK`` queries, and the fewest copied rows. (Two tasks per core
    copied each IVF query twice as often and measured 5-25% slower on 2 cores.)
    """
    tasks = default_parallelism(spark)
    min_parts = min(max_parts, max(1, math.ceil(n_items / ITEMS_PER_TASK)))
    min_blocks = max(1, math.ceil(n_queries / QUERIES_PER_TASK))
    best = None
    for parts in range(min_parts, max(min_parts, min(max_parts, tasks)) + 1):
        blocks = max(min_blocks, math.ceil(tasks / parts))
        cost = n_items * blocks + n_queries * min(parts, query_copies)
        if best is None or cost < best[0]:
            best = (cost, parts, blocks)
    return best[1], best[2]


def _with_block(df: DataFrame, id_col: Optional[str], n_blocks: int) -> DataFrame:
    """Add ``_qblock``: a query's block by id hash (``id_col``), or every block for an item."""
    if id_col is not None:
        return df.withColumn(QUERY_BLOCK, F.pmod(F.xxhash64(id_col), F.lit(n_blocks)).cast("int"))
    if n_blocks == 1:
        return df.withColumn(QUERY_BLOCK, F.lit(0))
    return df.withColumn(QUERY_BLOCK, F.explode(F.sequence(F.lit(0), F.lit(n_blocks - 1))))


def _route_queries(
    centroids: np.ndarray, nprobe: int, n_parts: int, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """One row per (query, part holding any of its ``nprobe`` nearest cells), with ``_part``
    and ``_probes`` (those cells)."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        cells = nearest_lists(to_matrix(batch.column(VEC)), centroids, nprobe)
        rows = np.repeat(np.arange(batch.num_rows), cells.shape[1])
        cells = cells.ravel()
        parts = cells % n_parts
        order = np.lexsort((cells, parts, rows))
        rows, parts, cells = rows[order], parts[order], cells[order]
        starts = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (parts[1:] != parts[:-1])])
        probes = list_array(np.r_[starts, len(cells)], cells)
        yield batch.take(pa.array(rows[starts])).append_column(PART, pa.array(parts[starts].astype(np.int32))).append_column(PROBES, probes)


# ---- queries sent with the tasks ------------------------------------------------------------
def _search_with_queries(
    items: DataFrame, n_items: int, queries: DataFrame, centroids: Optional[np.ndarray], nprobe: int, k: int, block_size: int
) -> DataFrame:
    """Top-``k`` per query, the queries (``query_id, _vec[, _excluded]``) collected on the driver
    with their ``_probes`` (the ``nprobe`` nearest of ``centroids``; one cell when None) and sent
    with the tasks; every item partition is searched where it lies, its items put in their
    cells (``_list``, or the nearest centroid), in chunks of at most ``ITEMS_PER_TASK``.

    Each chunk costs a pass over every query whatever its size, so many small partitions (a
    table of many small files) are first merged, without a shuffle, into one per core or one
    per ``ITEMS_PER_TASK`` items, whichever is more.
    """
    table = queries.toArrow().combine_chunks()
    if centroids is None:
        cells = np.zeros((table.num_rows, 1), dtype=np.int32)
    else:
        cells = nearest_lists(to_matrix(column(table, VEC)), centroids, nprobe)
    n, width = cells.shape
    table = table.append_column(PROBES, list_array(np.arange(n + 1) * width, cells.ravel()))
    tasks = max(default_parallelism(items.sparkSession), math.ceil(n_items / ITEMS_PER_TASK))
    items = items.coalesce(tasks)
    if EXCLUDED in table.column_names:
        items = items.withColumn(ITEM_HASH, F.xxhash64(ITEM_ID))
    return _merge(items.mapInArrow(_local_searcher(table, centroids, ITEMS_PER_TASK, k, block_size), _PARTIAL), k)


def _local_searcher(queries: pa.Table, centroids: Optional[np.ndarray], chunk_rows: int, k: int, block_size: int):
    def search_chunk(chunk: list) -> Iterator[pa.RecordBatch]:
        items = pa.Table.from_batches(chunk)
        if LIST_ID not in items.column_names:
            if centroids is None:
                cells = np.zeros(items.num_rows, dtype=np.int32)
            else:
                cells = nearest_cells(to_matrix(column(items, VEC)), centroids)
            items = items.append_column(LIST_ID, pa.array(cells))
        yield from _search_part(items, queries, k, block_size).to_batches()

    def search_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
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

    return search_partition


# Plain closures, no annotations: applyInArrow in pyspark 4.2 fails on a functools.partial
# ("cannot access local variable 'eval_type'") while inferring the UDF kind from type hints.
def _searcher(k: int, block_size: int):
    def search_task(items, queries):
        return _search_part(items, queries, k, block_size)

    return search_task


def _merger(k: int):
    def merge(partials):
        return _merge_partials(k, partials.drop_columns([BUCKET]))

    return merge


def _merge(partials: DataFrame, k: int) -> DataFrame:
    """The final top-``k`` per query from the partial top-Ks."""
    buckets = int(partials.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    return (
        partials.withColumn(BUCKET, F.pmod(F.xxhash64(QUERY_ID), F.lit(buckets)))
        .groupBy(BUCKET)
        .applyInArrow(_merger(k), RESULTS)
    )
