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
from typing import Iterable

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


def als(histories: DataFrame, queries: DataFrame, k: int, params: AlsParams) -> DataFrame:
    """Spark ML ALS for implicit feedback (``implicitPrefs=True``) on the summed event weights.

    Reads ``histories`` (user_id, items, weights). Users and items get integer ids from
    ``StringIndexer`` (ids are strings everywhere else). Each query user receives the top
    ``k + longest seen list`` items of the model, seen ones are dropped, the first k kept (the
    seen lists are complete, so this reaches past k by as many items as the heaviest user holds).
    Query users the model never saw get no predictions (the evaluation counts them as misses).
    """
    from pyspark.ml.feature import IndexToString, StringIndexer
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
    query_ids = users.transform(queries.select(USER_ID)).select(F.col("_u").cast("int").alias("_u"))
    depth = k + popular.longest(queries, seen_column(queries))
    recommended = model.recommendForUserSubset(query_ids, depth).select(
        "_u", F.posexplode("recommendations").alias("_pos", "_rec")
    )
    to_user = IndexToString(inputCol="_u", outputCol=USER_ID, labels=users.labels)
    to_item = IndexToString(inputCol="_i", outputCol=ITEM_ID, labels=items.labels)
    scored = to_item.transform(
        to_user.transform(recommended.select("_u", "_pos", F.col("_rec._i").alias("_i")))
    ).select(USER_ID, ITEM_ID, "_pos")
    predictions = _top_k(_unseen(scored, queries), k, [F.col("_pos")]).cache()
    predictions.count()  # materialise before the ratings cache goes
    indexed.unpersist()
    return predictions


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


def next_item(histories: DataFrame, queries: DataFrame, k: int) -> DataFrame:
    """First-order next item: items that most often followed the user's last seen item.

    Transitions are counted over ``histories``, which hold no test event, so the held-out item
    cannot leak. A user's own transitions only lead to items it has seen, which are never
    recommended, so they cannot inflate its candidates. Ties and users whose last item has fewer
    than k unseen successors are filled by popularity (then item id).
    """
    require_columns(queries, (USER_ID, ITEMS), "next_item queries")
    counts = item_counts(histories)
    last = queries.where(F.size(ITEMS) > 0).select(USER_ID, F.element_at(ITEMS, -1).alias("_last"))
    following = (
        last.join(transitions(histories).withColumnRenamed(ITEM_ID, "_last"), "_last")
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
    item_vectors: DataFrame,
    queries: DataFrame,
    k: int,
    block_size: int = 4096,
) -> DataFrame:
    """Content only: the items whose text vector is nearest (cosine) to the user's interest vector.

    Reads ``user_vectors`` (user_id, vector), ``item_vectors`` (item_id, vector; L2-normalised)
    and ``queries`` (user_id, items); exact search through an
    :class:`~recsys_spark.search.index.ExactIndex` of the items, with the seen items excluded.
    Query users without a vector get no predictions; items without one usable vector are an error.
    """
    from recsys_spark.search.index import ExactIndex

    require_columns(user_vectors, (USER_ID, VECTOR), "content user vectors")
    require_columns(item_vectors, (ITEM_ID, VECTOR), "content item vectors")
    query_vectors = user_vectors.join(queries.select(USER_ID), USER_ID).select(
        F.col(USER_ID).alias(QUERY_ID), VECTOR
    )
    exclude = queries.select(
        F.col(USER_ID).alias(QUERY_ID), F.explode(F.array_distinct(seen_column(queries))).alias(ITEM_ID)
    )
    found = ExactIndex.fit(item_vectors, block_size=block_size).search(query_vectors, k, exclude)
    return found.select(F.col(QUERY_ID).alias(USER_ID), ITEM_ID, F.col(RANK).cast("int").alias(RANK))


def grid(ranks: Iterable[int], reg_params: Iterable[float], alphas: Iterable[float], max_iter: int, seed: int) -> list[AlsParams]:
    """Every combination of the configured ALS values."""
    return [
        AlsParams(rank=int(r), reg_param=float(g), alpha=float(a), max_iter=max_iter, seed=seed)
        for r in ranks
        for g in reg_params
        for a in alphas
    ]

