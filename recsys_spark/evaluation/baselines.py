"""Baselines evaluated on the same split as the pipeline: popularity, ALS, item-kNN, next-item, content.

Every baseline is fitted on ``histories`` (user_id, items[, weights]: each user's time-ordered
sequence) and recommends for ``queries`` (user_id, items: the user's recent items in time order,
what a model reads; optional seen_items: every item the user has interacted with). It returns
predictions (user_id, item_id, rank int 1..k), never an item of the query's ``seen_items`` (its
``items`` when the column is absent): the full ranking is over the items the user has not
interacted with.
For the test protocol the caller passes ``history_items`` for both and ``seen_items`` (every test
event is held out, so nothing is learned from it); for tuning it passes ``train_items`` and
``train_seen_items`` and scores ``val_items``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.core import progress
from recsys_spark.evaluation import metrics
from recsys_spark.models import popularity as popular
from recsys_spark.models.popularity import item_counts
from recsys_spark.core.schemas import (
    ITEM_ID,
    ITEMS,
    N_INTERACTIONS,
    QUERY_ID,
    RANK,
    SCORE,
    SEEN_ITEMS,
    USER_ID,
    VECTOR,
    WEIGHTS,
    empty_items,
    require_columns,
)

log = logging.getLogger(__name__)


def _top_k(scored: DataFrame, k: int, order: Iterable[Column]) -> DataFrame:
    """(user_id, item_id, ...) -> (user_id, item_id, rank) keeping the first ``k`` per user in ``order``."""
    window = Window.partitionBy(USER_ID).orderBy(*order, F.col(ITEM_ID))
    return (
        scored.withColumn(RANK, F.row_number().over(window))
        .where(F.col(RANK) <= k)
        .select(USER_ID, ITEM_ID, F.col(RANK).cast("int").alias(RANK))
    )


def seen_column(queries: DataFrame) -> str:
    """The column of ``queries`` holding what a user must never be recommended: ``seen_items``
    when present (the complete set), else ``items``."""
    return SEEN_ITEMS if SEEN_ITEMS in queries.columns else ITEMS


def _unseen(scored: DataFrame, queries: DataFrame) -> DataFrame:
    """Drop (user_id, item_id) rows whose item the query user has seen; keeps only query users."""
    seen = queries.select(USER_ID, F.coalesce(seen_column(queries), empty_items()).alias("_seen"))
    return scored.join(seen, USER_ID).where(~F.array_contains("_seen", F.col(ITEM_ID))).drop("_seen")


def popularity(histories: DataFrame, queries: DataFrame, k: int) -> DataFrame:
    """The most popular items (most users; ties by item id) the user has not seen
    (``recsys_spark.models.popularity.top_unseen``)."""
    require_columns(queries, (USER_ID, ITEMS), "popularity queries")
    return popular.top_unseen(item_counts(histories), queries, k, seen_column(queries)).select(USER_ID, ITEM_ID, RANK)


@dataclass(frozen=True)
class AlsParams:
    rank: int
    reg_param: float
    alpha: float
    max_iter: int = 10
    seed: int = 3


def als(histories: DataFrame, queries: DataFrame, k: int, params: AlsParams, block_size: int = 4096) -> DataFrame:
    """Spark ML ALS for implicit feedback (``implicitPrefs=True``) on the summed event weights.

    Reads ``histories`` (user_id, items, weights). Users and items get integer ids from
    ``StringIndexer`` (ids are strings everywhere else). Each query user receives the ``k``
    unseen items of highest model score ``u·v``, found by the search's exact blocked kernel
    (:func:`als_top_k`) with the user's seen items excluded, so the cost grows with users x k and
    not with the longest seen list (Spark's ``recommendForUserSubset`` had to reach ``k + longest
    seen list`` deep for every user before the seen ones could be dropped). Query users the model
    never saw get no predictions (the evaluation counts them as misses).
    """
    model, user_factors, item_factors = fit_als(histories, params)
    predictions = als_top_k(
        user_factors.join(queries.select(USER_ID), USER_ID).select(USER_ID, "features"),
        item_factors.select(ITEM_ID, "features"), queries, k, block_size,
    ).cache()
    predictions.count()  # materialise while the model's factors are cached
    return predictions


def fit_als(histories: DataFrame, params: AlsParams):
    """The ALS model of ``histories`` (user_id, items, weights) and its factors under the string
    ids: ``(model, user_factors (id, user_id, features), item_factors (id, item_id, features))``,
    ``id`` being the model's own integer ids."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.recommendation import ALS

    require_columns(histories, (USER_ID, ITEMS, WEIGHTS), "als histories")
    ratings = (
        histories.select(USER_ID, F.explode(F.arrays_zip(ITEMS, WEIGHTS)).alias("_e"))
        .select(USER_ID, F.col("_e").getField(ITEMS).alias(ITEM_ID), F.col("_e").getField(WEIGHTS).alias("_w"))
        .where(F.col(ITEM_ID).isNotNull())
        .groupBy(USER_ID, ITEM_ID)
        .agg(F.sum(F.coalesce("_w", F.lit(1.0))).cast("float").alias("_r"))
    )
    users = StringIndexer(inputCol=USER_ID, outputCol="_u", handleInvalid="skip").fit(ratings)
    items = StringIndexer(inputCol=ITEM_ID, outputCol="_i").fit(ratings)
    indexed = items.transform(users.transform(ratings)).select(
        F.col("_u").cast("int"), F.col("_i").cast("int"), "_r"
    ).cache()
    model = ALS(
        userCol="_u",
        itemCol="_i",
        ratingCol="_r",
        implicitPrefs=True,
        rank=params.rank,
        regParam=params.reg_param,
        alpha=params.alpha,
        maxIter=params.max_iter,
        seed=params.seed,
        coldStartStrategy="drop",
    ).fit(indexed)
    indexed.unpersist()  # the model's factors are cached by the fit
    spark = histories.sparkSession
    user_ids = spark.createDataFrame(list(enumerate(users.labels)), f"id int, {USER_ID} string")
    item_ids = spark.createDataFrame(list(enumerate(items.labels)), f"id int, {ITEM_ID} string")
    return model, model.userFactors.join(user_ids, "id"), model.itemFactors.join(item_ids, "id")


def als_top_k(user_factors: DataFrame, item_factors: DataFrame, queries: DataFrame, k: int, block_size: int = 4096) -> DataFrame:
    """(user_id, item_id, rank): per user of ``user_factors`` (user_id, features) the ``k`` items
    of ``item_factors`` (item_id, features) with the highest inner product, never one of the
    user's seen items (``queries``); ties by item id.

    Maximum inner product through the cosine search: with ``M`` the largest item norm, items
    become the unit vectors ``[v/M, sqrt(1 - |v|²/M²)]`` and users ``[u, 0]``, whose cosine is
    ``u·v / (|u| M)``: per user the same order as ``u·v``.
    """
    from recsys_spark.search.index import ExactIndex

    squared = F.aggregate("features", F.lit(0.0).cast("double"), lambda acc, x: acc + x.cast("double") * x.cast("double"))
    largest = item_factors.agg(F.max(F.sqrt(squared))).first()[0]
    if not largest:  # no item, or every item vector zero: nothing can be ranked
        return item_factors.sparkSession.createDataFrame([], f"{USER_ID} string, {ITEM_ID} string, {RANK} int")
    m = F.lit(float(largest))
    item_vectors = item_factors.select(
        ITEM_ID,
        F.concat(
            F.transform("features", lambda x: x.cast("double") / m),
            F.array(F.sqrt(F.greatest(F.lit(0.0), F.lit(1.0) - squared / (m * m)))),
        ).cast("array<float>").alias(VECTOR),
    )
    query_vectors = user_factors.select(
        F.col(USER_ID).alias(QUERY_ID), F.concat("features", F.array(F.lit(0.0).cast("float"))).alias(VECTOR)
    )
    exclude = queries.select(
        F.col(USER_ID).alias(QUERY_ID), F.explode(F.array_distinct(seen_column(queries))).alias(ITEM_ID)
    )
    found = ExactIndex.fit(item_vectors, block_size=block_size).search(query_vectors, k, exclude)
    return found.select(F.col(QUERY_ID).alias(USER_ID), ITEM_ID, F.col(RANK).cast("int").alias(RANK))


def tune_als(
    train_histories: DataFrame,
    val_queries: DataFrame,
    val_targets: DataFrame,
    k: int,
    grid: list[AlsParams],
) -> tuple[AlsParams, list[dict]]:
    """Choose ALS params on the validation item: NDCG@k of each grid point, the best first.

    ``val_targets`` (user_id, test_items, seen_items, test_untied) carries the validation
    item as its target and what the user had seen before it (see ``evaluate``).
    Returns the best params and every point's score (for the summary).
    """
    if not grid:
        raise ValueError("evaluate: the ALS grid is empty (evaluate.als_ranks / als_reg_params / als_alphas)")
    scores = []
    for point, params in enumerate(grid):
        progress.step("ALS grid", point, len(grid), unit="points")
        predictions = als(train_histories, val_queries, k, params)
        frame = metrics.evaluation_frame(metrics.rank_lists(predictions, k), val_targets, k)
        rows = metrics.ranking_metrics(frame, [k]).where(F.col("metric") == "ndcg").first()
        predictions.unpersist()
        scores.append({"rank": params.rank, "reg_param": params.reg_param, "alpha": params.alpha, f"val_ndcg@{k}": rows["value"]})
        log.info("als grid point %s: validation NDCG@%d = %.4f", params, k, rows["value"])
    progress.step("ALS grid", len(grid), len(grid), unit="points")
    best = max(range(len(scores)), key=lambda i: scores[i][f"val_ndcg@{k}"])
    return grid[best], scores


def item_similarities(histories: DataFrame, neighbours: int) -> DataFrame:
    """Cosine between items' user sets, top ``neighbours`` per item.

    (user_id, items) -> (item_id, neighbour_id, cosine) with cosine = |U_a ∩ U_b| / sqrt(|U_a| |U_b|).
    Only co-occurring pairs are generated (a self-join on the user), so the result stays sparse.
    """
    incidence = histories.select(USER_ID, F.explode(F.array_distinct(ITEMS)).alias(ITEM_ID))
    counts = item_counts(histories)
    pairs = (
        incidence.alias("a")
        .join(incidence.alias("b"), USER_ID)
        .where(F.col("a." + ITEM_ID) != F.col("b." + ITEM_ID))
        .groupBy(F.col("a." + ITEM_ID).alias(ITEM_ID), F.col("b." + ITEM_ID).alias("neighbour_id"))
        .agg(F.count(F.lit(1)).alias("_co"))
    )
    ca = counts.select(F.col(ITEM_ID), F.col(N_INTERACTIONS).alias("_na"))
    cb = counts.select(F.col(ITEM_ID).alias("neighbour_id"), F.col(N_INTERACTIONS).alias("_nb"))
    cosine = pairs.join(ca, ITEM_ID).join(cb, "neighbour_id").select(
        ITEM_ID, "neighbour_id", (F.col("_co") / F.sqrt(F.col("_na") * F.col("_nb"))).alias("cosine")
    )
    window = Window.partitionBy(ITEM_ID).orderBy(F.col("cosine").desc(), F.col("neighbour_id"))
    return cosine.withColumn("_r", F.row_number().over(window)).where(F.col("_r") <= neighbours).drop("_r")


def item_knn(histories: DataFrame, queries: DataFrame, k: int, neighbours: int) -> DataFrame:
    """Score each unseen item by the summed cosine to the user's seen items (over each seen
    item's top ``neighbours``); the top k per user."""
    require_columns(queries, (USER_ID, ITEMS), "item_knn queries")
    similar = item_similarities(histories, neighbours)
    seen = queries.select(USER_ID, F.explode(F.array_distinct(ITEMS)).alias(ITEM_ID))
    scored = (
        seen.join(similar, ITEM_ID)
        .groupBy(USER_ID, F.col("neighbour_id").alias(ITEM_ID))
        .agg(F.sum("cosine").alias(SCORE))
    )
    return _top_k(_unseen(scored, queries), k, [F.col(SCORE).desc()])


def transitions(histories: DataFrame) -> DataFrame:
    """(user_id, items) -> (item_id, next_id, n): how often ``next_id`` directly followed ``item_id``."""
    pairs = F.arrays_zip(F.slice(ITEMS, 1, F.size(ITEMS) - 1), F.slice(ITEMS, 2, F.size(ITEMS) - 1))
    return (
        histories.where(F.size(ITEMS) >= 2)
        .select(F.explode(pairs).alias("_p"))
        .select(F.col("_p").getField("0").alias(ITEM_ID), F.col("_p").getField("1").alias("next_id"))
        .groupBy(ITEM_ID, "next_id")
        .agg(F.count(F.lit(1)).alias("n"))
    )


def top_successors(histories: DataFrame, limit: int, counts: Optional[DataFrame] = None) -> DataFrame:
    """``transitions`` cut to each item's ``limit`` most frequent successors, in next-item's own
    order (count, then the successor's popularity, then its id); ``limit`` 0 keeps them all."""
    following = transitions(histories)
    if limit <= 0:
        return following
    counts = item_counts(histories) if counts is None else counts
    order = Window.partitionBy(ITEM_ID).orderBy(
        F.col("n").desc(), F.coalesce(F.col(N_INTERACTIONS), F.lit(0)).desc(), F.col("next_id")
    )
    popular_next = counts.select(F.col(ITEM_ID).alias("next_id"), N_INTERACTIONS)
    return (
        following.join(popular_next, "next_id", "left")
        .withColumn("_order", F.row_number().over(order))
        .where(F.col("_order") <= limit)
        .select(ITEM_ID, "next_id", "n")
    )


def next_item(histories: DataFrame, queries: DataFrame, k: int, successors: int = 0) -> DataFrame:
    """First-order next item: items that most often followed the user's last seen item.

    Transitions are counted over ``histories``, which hold no test event, so the held-out item
    cannot leak. A user's own transitions only lead to items it has seen, which are never
    recommended, so they cannot inflate its candidates. Ties and users whose last item has fewer
    than k unseen successors are filled by popularity (then item id).

    ``successors`` > 0 keeps only each item's that many most frequent successors
    (``top_successors``), so the join of every user's last item with its successors grows with
    users x ``successors``, not with how many distinct items followed a hot item. The lists equal
    the exact ones whenever no item has more successors than that; a user who has seen almost all
    of their last item's top successors gets popularity earlier instead.
    """
    require_columns(queries, (USER_ID, ITEMS), "next_item queries")
    counts = item_counts(histories)
    last = queries.where(F.size(ITEMS) > 0).select(USER_ID, F.element_at(ITEMS, -1).alias("_last"))
    following = (
        last.join(top_successors(histories, successors, counts).withColumnRenamed(ITEM_ID, "_last"), "_last")
        .select(USER_ID, F.col("next_id").alias(ITEM_ID), F.col("n").alias("_n"))
    )
    fallback = popularity(histories, queries, k).select(USER_ID, ITEM_ID, F.lit(0).cast("long").alias("_n"))
    scored = (
        following.unionByName(fallback)
        .groupBy(USER_ID, ITEM_ID)
        .agg(F.max("_n").alias("_n"))
        .join(counts, ITEM_ID, "left")
    )
    return _top_k(
        _unseen(scored, queries), k, [F.col("_n").desc(), F.coalesce(F.col(N_INTERACTIONS), F.lit(0)).desc()]
    )


def content(
    user_vectors: DataFrame,
    item_vectors,
    queries: DataFrame,
    k: int,
    block_size: int = 4096,
) -> DataFrame:
    """Content only: the items whose text vector is nearest (cosine) to the user's interest vector.

    Reads ``user_vectors`` (user_id, vector), ``item_vectors`` (item_id, vector; L2-normalised:
    searched exactly through an :class:`~recsys_spark.search.index.ExactIndex`) or an index
    already built over them (``ExactIndex`` or ``IVFIndex``, e.g. the warehouse's saved text
    index) and ``queries`` (user_id, items); the seen items are excluded in the search.
    Query users without a vector get no predictions; items without one usable vector are an error.
    """
    from recsys_spark.search.index import ExactIndex

    require_columns(user_vectors, (USER_ID, VECTOR), "content user vectors")
    if isinstance(item_vectors, DataFrame):
        require_columns(item_vectors, (ITEM_ID, VECTOR), "content item vectors")
        index = ExactIndex.fit(item_vectors, block_size=block_size)
    else:
        index = item_vectors
    query_vectors = user_vectors.join(queries.select(USER_ID), USER_ID).select(
        F.col(USER_ID).alias(QUERY_ID), VECTOR
    )
    exclude = queries.select(
        F.col(USER_ID).alias(QUERY_ID), F.explode(F.array_distinct(seen_column(queries))).alias(ITEM_ID)
    )
    found = index.search(query_vectors, k, exclude)
    return found.select(F.col(QUERY_ID).alias(USER_ID), ITEM_ID, F.col(RANK).cast("int").alias(RANK))


def grid(ranks: Iterable[int], reg_params: Iterable[float], alphas: Iterable[float], max_iter: int, seed: int) -> list[AlsParams]:
    """Every combination of the configured ALS values."""
    return [
        AlsParams(rank=int(r), reg_param=float(g), alpha=float(a), max_iter=max_iter, seed=seed)
        for r in ranks
        for g in reg_params
        for a in alphas
    ]

