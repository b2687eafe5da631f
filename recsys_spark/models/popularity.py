"""The simplest model: an item is as good as the number of users who hold it.

One home for what the popularity baseline (``evaluation.baselines.popularity``), the popularity
statistics of the metrics (``evaluation.metrics.item_popularity``) and the cold-start fill of the
``score`` stage share:

- ``item_counts``: (item_id, n_interactions), how many users hold each item (an item repeated in
  one history counts once), optionally over a catalog so items nobody holds count 0;
- ``top_items``: the N most popular items, most users first, ties by item id;
- ``top_unseen``: per user, the k most popular items it has not seen, in that order.
"""
from __future__ import annotations

from typing import Optional

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.core.schemas import ITEM_ID, ITEMS, N_INTERACTIONS, RANK, USER_ID, empty_items, require_columns

_TOP = "_top"  # one row: array<struct<c: -n_interactions, i: item_id>> in popularity order


def item_counts(histories: DataFrame, items: str = ITEMS, catalog: Optional[DataFrame] = None) -> DataFrame:
    """(user_id, ``items``: one row per user) -> (item_id, n_interactions long): how many users hold
    each item. With ``catalog`` (item_id), every catalog item is present too, with 0 when nobody holds it."""
    require_columns(histories, (USER_ID, items), "popularity histories")
    counts = (
        histories.select(USER_ID, F.explode(F.array_distinct(items)).alias(ITEM_ID))
        .groupBy(ITEM_ID)
        .agg(F.count(F.lit(1)).cast("long").alias(N_INTERACTIONS))
    )
    if catalog is None:
        return counts
    require_columns(catalog, (ITEM_ID,), "popularity catalog")
    return (
        catalog.select(ITEM_ID)
        .unionByName(counts.select(ITEM_ID))
        .distinct()
        .join(counts, ITEM_ID, "left")
        .select(ITEM_ID, F.coalesce(N_INTERACTIONS, F.lit(0)).cast("long").alias(N_INTERACTIONS))
    )


def longest(lists: DataFrame, column: str = ITEMS) -> int:
    """The length of the longest list in ``column`` (0 when there is none): how far past k a shared
    ranking must reach so that every user still keeps k items once its own are removed."""
    return max(0, int(lists.agg(F.coalesce(F.max(F.size(column)), F.lit(0))).first()[0]))


def _top(counts: DataFrame, n: int) -> DataFrame:
    """One row holding the ``n`` most popular items of ``counts`` as an array, in popularity order.

    A top-N (``orderBy().limit()``), not a sort of the catalog; equal counts are ordered by item id."""
    require_columns(counts, (ITEM_ID, N_INTERACTIONS), "popularity counts")
    entry = F.struct((-F.col(N_INTERACTIONS)).alias("c"), F.col(ITEM_ID).alias("i"))
    return (
        counts.orderBy(F.col(N_INTERACTIONS).desc(), F.col(ITEM_ID))
        .limit(n)
        .agg(F.array_sort(F.collect_list(entry)).alias(_TOP))
    )


def top_items(counts: DataFrame, n: int) -> DataFrame:
    """(item_id, n_interactions, rank int 1..n): the ``n`` items most users hold, ties by item id."""
    return _top(counts, n).select(F.posexplode(_TOP).alias("_pos", "_e")).select(
        F.col("_e.i").alias(ITEM_ID),
        (-F.col("_e.c")).alias(N_INTERACTIONS),
        (F.col("_pos") + 1).cast("int").alias(RANK),
    )


def top_unseen(counts: DataFrame, users: DataFrame, k: int, seen: str = ITEMS) -> DataFrame:
    """(user_id, item_id, rank int 1..k, n_interactions): for every row of ``users`` (user_id,
    ``seen``), the ``k`` most popular items of ``counts`` that are not in its ``seen`` list (a
    missing list is empty). Fewer than k when the counted items run out.

    Only the top ``k + longest seen list`` items can reach anyone's top k, so that short list is
    built once and sent to every user as an array."""
    require_columns(users, (USER_ID, seen), "popularity users")
    top = _top(counts, k + longest(users, seen)).select(
        F.transform(_TOP, lambda e: e["i"]).alias("_ids"), F.transform(_TOP, lambda e: -e["c"]).alias("_ns")
    )
    picks = users.crossJoin(F.broadcast(top)).select(
        USER_ID,
        "_ids",
        "_ns",
        F.posexplode(F.slice(F.array_except("_ids", F.coalesce(seen, empty_items())), 1, k)).alias("_pos", ITEM_ID),
    )
    return picks.select(
        USER_ID,
        ITEM_ID,
        (F.col("_pos") + 1).cast("int").alias(RANK),
        F.element_at("_ns", F.array_position("_ids", F.col(ITEM_ID)).cast("int")).alias(N_INTERACTIONS),
    )
