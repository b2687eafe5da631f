"""Ranking metrics as Spark DataFrame expressions (array functions and windows, no Python sets).

A model's predictions are ``(user_id, item_id, rank)`` rows. They are folded into one ranked,
de-duplicated list per user (``rank_lists``), joined to the held-out items of every test user
(``evaluation_frame``: users without predictions get an empty list and count as misses), and
``ranking_metrics`` averages Recall@K, NDCG@K, HitRate@K and MRR@K for several K in one pass.
``catalog_metrics`` adds coverage, novelty and the popularity percentile of what is recommended;
``sampled_ranks`` places the held-out item among N sampled negatives (the ``sampled`` protocol,
only for comparing with papers that report it).
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core.config import SAMPLED_DISTRIBUTIONS
from recsys_spark.models import popularity as popular
from recsys_spark.core.schemas import (
    HISTORY_ITEMS,
    ITEM_ID,
    K,
    METRIC,
    N_INTERACTIONS,
    N_USERS,
    PROTOCOL,
    RANK,
    SEEN_ITEMS,
    TEST_ITEMS,
    TEST_UNTIED,
    USER_ID,
    VALUE,
    require_columns,
)

log = logging.getLogger(__name__)

# Per-user columns of the evaluation frame.
RECS = "recs"  # the user's ranked, de-duplicated, unseen items
N_DUPLICATES = "n_duplicates"  # predictions repeating an item already ranked higher for the user
N_SEEN = "n_seen"  # predicted items the user has already seen (removed: full ranking is over unseen items)
HAS_PREDICTIONS = "has_predictions"
TARGET_RANK = "target_rank"  # sampled protocol: 1-based rank of the held-out item among the negatives
NEGATIVES = "negatives"
SELF_INFORMATION = "self_information"
POP_PERCENTILE = "pop_percentile"

ACCURACY_METRICS = ("recall", "ndcg", "hit_rate", "mrr")
# A metric's standard error (of its mean over users) is written as its own row, metric name + this.
STDERR_SUFFIX = "_stderr"
CATALOG_METRICS = ("coverage", "novelty", "pop_percentile")

METRIC_ROWS = T.StructType(
    [
        T.StructField(METRIC, T.StringType()),
        T.StructField(K, T.IntegerType()),
        T.StructField(VALUE, T.DoubleType()),
        T.StructField(N_USERS, T.LongType()),
    ]
)


def check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """The cut-offs sorted and unique; K <= 0, a non-integer K or no K at all is a clear error."""
    ks = tuple(ks)
    if not ks:
        raise ValueError("evaluate: no cut-off K given (evaluate.ks is empty)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"evaluate: every cut-off K must be an integer > 0; got {k!r}")
    return tuple(sorted(set(ks)))


def rank_lists(predictions: DataFrame, depth: Optional[int] = None) -> DataFrame:
    """``(user_id, item_id, rank)`` -> ``(user_id, recs, n_duplicates)``.

    ``recs`` holds the user's items in rank order (ties in rank broken by item id, so the result
    does not depend on partitioning), each item once at its best rank, cut to ``depth`` items
    when given.
    """
    require_columns(predictions, (USER_ID, ITEM_ID, RANK), "predictions")
    ranked = F.array_sort(F.collect_list(F.struct(F.col(RANK).cast("long").alias("r"), F.col(ITEM_ID).alias("i"))))
    return (
        predictions.where(F.col(USER_ID).isNotNull() & F.col(ITEM_ID).isNotNull())
        .groupBy(USER_ID)
        .agg(F.transform(ranked, lambda s: s["i"]).alias("_all"))
        .select(
            USER_ID,
            (F.slice(F.array_distinct("_all"), 1, depth) if depth else F.array_distinct("_all")).alias(RECS),
            (F.size("_all") - F.size(F.array_distinct("_all"))).alias(N_DUPLICATES),
        )
    )


def evaluation_frame(lists: DataFrame, targets: DataFrame, depth: int) -> DataFrame:
    """Join each test user to the model's list.

    Reads ``targets`` (user_id, test_items, seen_items, test_untied) and ``lists`` (from
    ``rank_lists``, cut deeper than ``depth`` so removing seen items still leaves ``depth``).
    Writes (user_id, test_items, test_untied, recs, has_predictions, n_duplicates, n_seen):
    the items of ``seen_items`` (everything the user interacted with before the held-out events)
    are removed from ``recs`` (the full ranking is over unseen items), and users missing from the
    predictions get an empty list, so they count as misses.
    """
    require_columns(targets, (USER_ID, TEST_ITEMS, SEEN_ITEMS, TEST_UNTIED), "evaluation targets")
    joined = targets.join(lists, USER_ID, "left")
    raw = F.coalesce(F.col(RECS), F.array().cast("array<string>"))
    unseen = F.array_except(raw, F.coalesce(F.col(SEEN_ITEMS), F.array().cast("array<string>")))
    return joined.select(
        USER_ID,
        F.array_distinct(TEST_ITEMS).alias(TEST_ITEMS),
        F.coalesce(F.col(TEST_UNTIED), F.lit(False)).alias(TEST_UNTIED),
        F.slice(unseen, 1, depth).alias(RECS),
        F.col(RECS).isNotNull().alias(HAS_PREDICTIONS),
        F.coalesce(F.col(N_DUPLICATES), F.lit(0)).alias(N_DUPLICATES),
        (F.size(raw) - F.size(unseen)).alias(N_SEEN),
    )


def _user_metrics(k: int) -> dict[str, Column]:
    """Per-user Recall/NDCG/HitRate/MRR at ``k`` over the columns ``recs`` and ``test_items``."""
    top = F.slice(RECS, 1, k)
    relevant = F.transform(top, lambda item: F.array_contains(TEST_ITEMS, item))
    hits = F.size(F.filter(relevant, lambda hit: hit))
    dcg = F.aggregate(
        F.transform(relevant, lambda hit, i: F.when(hit, 1.0 / F.log2(i + 2)).otherwise(0.0)),
        F.lit(0.0),
        lambda acc, x: acc + x,
    )
    ideal_hits = F.least(F.size(TEST_ITEMS), F.lit(k))
    idcg = F.aggregate(
        F.transform(F.sequence(F.lit(1), ideal_hits), lambda i: 1.0 / F.log2(i + 1)),
        F.lit(0.0),
        lambda acc, x: acc + x,
    )
    first_hit = F.array_position(relevant, True)
    return {
        "recall": hits / F.size(TEST_ITEMS),
        "ndcg": dcg / idcg,
        "hit_rate": F.when(hits > 0, 1.0).otherwise(0.0),
        "mrr": F.when(first_hit > 0, 1.0 / first_hit).otherwise(0.0),
    }


def _groups(frame: DataFrame) -> list[str]:
    """Metrics are computed per ``protocol`` when the frame has that column (one pass for all)."""
    return [PROTOCOL] if PROTOCOL in frame.columns else []


def _to_rows(aggregated: DataFrame, names: Sequence[tuple[str, int]]) -> DataFrame:
    """Aggregated rows with columns ``<metric>@<k>``, ``_n`` (and ``protocol`` when grouped) ->
    ([protocol,] metric, k, value, n_users)."""
    by = _groups(aggregated)
    entries = F.array(
        *[
            F.struct(
                F.lit(metric).alias(METRIC),
                F.lit(k).cast("int").alias(K),
                F.col(f"`{metric}@{k}`").cast("double").alias(VALUE),
            )
            for metric, k in names
        ]
    )
    return aggregated.select(*by, F.col("_n").alias(N_USERS), F.explode(entries).alias("m")).select(
        *by, "m." + METRIC, "m." + K, "m." + VALUE, N_USERS
    )


def ranking_metrics(frame: DataFrame, ks: Sequence[int], stderr: bool = False) -> DataFrame:
    """Mean Recall/NDCG/HitRate/MRR@K over the users of ``frame`` for every K, in one aggregation.

    Reads (recs, test_items[, protocol]) from ``evaluation_frame``; writes ([protocol,] metric,
    k, value, n_users), per protocol when the frame has one (a user may sit in several).
    Users whose ``test_items`` is empty are not test users and are left out. With ``stderr``,
    each metric also gets a row ``<metric>_stderr``: the standard error of its mean over the
    users, ``stddev_samp / sqrt(n)`` (null for a single user), for metrics on a sample of users.
    """
    ks = check_ks(ks)
    users = frame.where(F.size(TEST_ITEMS) > 0)
    per_user = {}
    for k in ks:
        for metric, column in _user_metrics(k).items():
            per_user[(metric, k)] = column
    names = [(metric, k) for k in ks for metric in ACCURACY_METRICS]
    errors = [(metric + STDERR_SUFFIX, k) for metric, k in names] if stderr else []
    aggregated = users.groupBy(*_groups(frame)).agg(
        F.count(F.lit(1)).alias("_n"),
        *[F.avg(per_user[name]).alias(f"{name[0]}@{name[1]}") for name in names],
        *[
            (F.stddev_samp(per_user[name]) / F.sqrt(F.count(F.lit(1)))).alias(f"{name[0]}{STDERR_SUFFIX}@{name[1]}")
            for name in (names if stderr else [])
        ],
    )
    return _to_rows(aggregated, names + errors)


def user_scores(frame: DataFrame, k: int) -> DataFrame:
    """Per test user NDCG@k and HitRate@k (what the paired bootstrap and the by-history-length
    table read). Reads (user_id, recs, test_items, test_untied) from ``evaluation_frame``;
    writes (user_id, test_untied, ndcg, hit_rate)."""
    per_user = _user_metrics(k)
    return frame.where(F.size(TEST_ITEMS) > 0).select(
        USER_ID, TEST_UNTIED, per_user["ndcg"].alias("ndcg"), per_user["hit_rate"].alias("hit_rate")
    )


def paired_bootstrap(
    differences: Sequence[float], n_users: int, samples: int, seed: int, level: float = 0.95
) -> dict:
    """Mean and ``level`` percentile interval of a per-user difference over ``n_users`` users, of
    which only the non-zero ``differences`` are given (two models usually miss the same users:
    their difference is 0 and need not reach the driver).

    A Poisson bootstrap: each replicate weighs every user by an independent Poisson(1) draw
    (the users with a zero difference by one Poisson(n_zero) draw in all), the usual
    approximation of resampling n of n users that needs no index per user. Seeded, and
    independent of the order of ``differences``: a rerun gives the same interval. Returns
    {"mean", "low", "high", "n_users", "samples"}.
    """
    import numpy as np

    # Sorted: the draws then depend on the differences, not on the order Spark collected them
    # in, so a rerun on the same users writes the same interval (the idempotency suite compares).
    values = np.sort(np.asarray(differences, dtype=np.float64))
    n_zero = n_users - len(values)
    if n_users <= 0 or n_zero < 0:
        raise ValueError(f"paired_bootstrap: {len(values)} non-zero differences for {n_users} users")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 4_000_000 // max(len(values), 1))  # bounds the weights held at once
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        weights = rng.poisson(1.0, size=(stop - start, len(values)))
        total = weights.sum(axis=1) + rng.poisson(float(n_zero), size=stop - start)
        means[start:stop] = (weights @ values) / np.maximum(total, 1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {
        "mean": float(values.sum() / n_users),
        "low": float(low),
        "high": float(high),
        "n_users": int(n_users),
        "samples": int(samples),
    }


def item_popularity(histories: DataFrame, catalog: DataFrame) -> DataFrame:
    """Popularity of every catalog item, from the users' histories.

    Reads ``histories`` (user_id, history_items) and ``catalog`` (item_id). Writes (item_id,
    n_interactions, self_information, pop_percentile): n_interactions counts the users holding
    the item; self_information = -log2 p with p = (n + 1) / (users + 1) (add-one, so items nobody
    touched have a finite value); pop_percentile is the mid-rank percentile of n among catalog items
    (0 least, 1 most popular; equal counts share one value). The percentile is computed on the
    distinct counts, so the window over them is small whatever the catalog size.
    """
    require_columns(histories, (USER_ID, HISTORY_ITEMS), "item popularity histories")
    require_columns(catalog, (ITEM_ID,), "item popularity catalog")
    n_users = histories.agg(F.countDistinct(USER_ID).alias("_u"))
    items = popular.item_counts(histories, HISTORY_ITEMS, catalog)
    by_count = items.groupBy(N_INTERACTIONS).agg(F.count(F.lit(1)).alias("_same"))
    total = by_count.agg(F.sum("_same").alias("_items"))
    below = F.sum("_same").over(Window.orderBy(N_INTERACTIONS).rowsBetween(Window.unboundedPreceding, -1))
    percentiles = by_count.crossJoin(total).select(
        N_INTERACTIONS,
        ((F.coalesce(below, F.lit(0)) + 0.5 * F.col("_same")) / F.col("_items")).alias(POP_PERCENTILE),
    )
    return (
        items.join(F.broadcast(percentiles), N_INTERACTIONS)
        .crossJoin(F.broadcast(n_users))
        .select(
            ITEM_ID,
            N_INTERACTIONS,
            (-F.log2((F.col(N_INTERACTIONS) + 1) / (F.col("_u") + 1))).alias(SELF_INFORMATION),
            POP_PERCENTILE,
        )
    )


def catalog_metrics(frame: DataFrame, popularity: DataFrame, catalog_size: int, ks: Sequence[int]) -> DataFrame:
    """Coverage, novelty and popularity percentile of the top-K lists, for every K.

    Reads ``frame`` (user_id, recs[, protocol]) and ``popularity`` (from ``item_popularity``).
    Writes ([protocol,] metric, k, value, n_users), per protocol when the frame has one: coverage@K = distinct items in any top-K / ``catalog_size``;
    novelty@K = mean self-information of the recommended items; pop_percentile@K = their mean
    popularity percentile (compare with ``interacted_pop_percentile``: above it = popularity bias).
    Averages run over recommended (user, item) pairs; with no recommendation at all they are 0.
    """
    ks = check_ks(ks)
    if catalog_size <= 0:
        raise ValueError("evaluate: the catalog is empty, coverage is undefined")
    by = _groups(frame)
    pairs = frame.select(*by, USER_ID, F.posexplode(F.slice(RECS, 1, max(ks))).alias("_pos", ITEM_ID)).join(
        popularity, ITEM_ID, "left"
    )
    pop = popularity.agg(F.max(SELF_INFORMATION).alias("_max_info"))
    # An item outside the catalog and the histories counts as never seen: the most novel value.
    pairs = pairs.crossJoin(F.broadcast(pop)).select(
        *by,
        ITEM_ID,
        "_pos",
        F.coalesce(SELF_INFORMATION, "_max_info").alias(SELF_INFORMATION),
        F.coalesce(POP_PERCENTILE, F.lit(0.0)).alias(POP_PERCENTILE),
    )
    aggregates = []
    names = []
    for k in ks:
        within = F.col("_pos") < k
        aggregates += [
            (F.countDistinct(F.when(within, F.col(ITEM_ID))) / F.lit(float(catalog_size))).alias(f"coverage@{k}"),
            F.coalesce(F.avg(F.when(within, F.col(SELF_INFORMATION))), F.lit(0.0)).alias(f"novelty@{k}"),
            F.coalesce(F.avg(F.when(within, F.col(POP_PERCENTILE))), F.lit(0.0)).alias(f"pop_percentile@{k}"),
        ]
        names += [("coverage", k), ("novelty", k), ("pop_percentile", k)]
    users = frame.groupBy(*by).agg(F.count(F.lit(1)).alias("_n"))
    recommended = pairs.groupBy(*by).agg(*aggregates)
    # Protocols whose users got no recommendation at all still get their rows (zeros).
    aggregated = users.join(recommended, by, "left") if by else users.crossJoin(recommended)
    return _to_rows(aggregated.fillna(0.0), names)


def interacted_pop_percentile(histories: DataFrame, popularity: DataFrame) -> DataFrame:
    """The mean popularity percentile of the items users interacted with (the reference for the
    recommended items' pop_percentile): one row (value). Reads (history_items)."""
    return (
        histories.select(F.explode(HISTORY_ITEMS).alias(ITEM_ID))
        .join(popularity, ITEM_ID)
        .agg(F.avg(POP_PERCENTILE).alias(VALUE))
    )


def sampled_negatives(
    targets: DataFrame,
    popularity: DataFrame,
    n: int,
    distribution: str,
    seed: int,
) -> DataFrame:
    """Draw ``n`` negatives per test user among the items it never interacted with.

    Reads ``targets`` (user_id, seen_items, test_items) and ``popularity`` (item_id,
    n_interactions). Writes (user_id, negatives array<string>). ``uniform`` draws catalog items
    with equal chance; ``popularity`` draws items in proportion to n_interactions + 1. Draws are
    seeded hashes of (user, draw, seed), so a rerun picks the same negatives; each item is drawn at
    most once per user. Every user is over-drawn (3n + 10 tries); a user whose unseen catalog is
    smaller than ``n`` gets fewer negatives (the caller counts them).
    """
    if n < 1:
        raise ValueError(f"evaluate: sampled_negatives must be >= 1; got {n}")
    if distribution not in SAMPLED_DISTRIBUTIONS:
        raise ValueError(f"evaluate: unknown sampled distribution {distribution!r}")
    require_columns(targets, (USER_ID, SEEN_ITEMS, TEST_ITEMS), "sampled targets")
    weight = F.lit(1) if distribution == "uniform" else F.col(N_INTERACTIONS) + 1
    # Consecutive integer intervals per item ([lo, hi)); a draw in [0, total) falls in exactly one.
    # The running sum is one ordered window over the catalog (one row per item): small next to
    # the events, and it is the only global order this protocol needs.
    ordered = Window.orderBy(ITEM_ID).rowsBetween(Window.unboundedPreceding, 0)
    intervals = popularity.select(ITEM_ID, weight.cast("long").alias("_w")).select(
        ITEM_ID,
        (F.sum("_w").over(ordered) - F.col("_w")).alias("_lo"),
        F.sum("_w").over(ordered).alias("_hi"),
    )
    total = intervals.agg(F.max("_hi").alias("_total"))
    tries = 3 * n + 10
    draws = (
        targets.where(F.size(TEST_ITEMS) > 0)
        .crossJoin(F.broadcast(total))
        .select(
            USER_ID,
            F.concat(F.coalesce(SEEN_ITEMS, F.array().cast("array<string>")), TEST_ITEMS).alias("_seen"),
            F.explode(F.sequence(F.lit(1), F.lit(tries))).alias("_try"),
            "_total",
        )
        .select(
            USER_ID,
            "_seen",
            "_try",
            F.pmod(F.xxhash64(USER_ID, "_try", F.lit(seed)), F.col("_total")).alias("_draw"),
        )
    )
    # Range join: bucket both sides by a coarse key so the join is an equi-join, not a cross join.
    bucket = F.lit(4096)
    drawn_items = draws.withColumn("_b", F.floor(F.col("_draw") / bucket))
    spanned = intervals.withColumn(
        "_b", F.explode(F.sequence(F.floor(F.col("_lo") / bucket), F.floor((F.col("_hi") - 1) / bucket)))
    )
    hits = drawn_items.join(spanned, "_b").where((F.col("_draw") >= F.col("_lo")) & (F.col("_draw") < F.col("_hi")))
    unseen = hits.where(~F.array_contains("_seen", F.col(ITEM_ID)))
    first_try = unseen.groupBy(USER_ID, ITEM_ID).agg(F.min("_try").alias("_try"))
    ranked = F.array_sort(F.collect_list(F.struct(F.col("_try"), F.col(ITEM_ID))))
    return first_try.groupBy(USER_ID).agg(
        F.slice(F.transform(ranked, lambda s: s[ITEM_ID]), 1, n).alias(NEGATIVES)
    )


def sampled_ranks(frame: DataFrame, negatives: DataFrame) -> DataFrame:
    """Rank of the held-out item among itself and the user's sampled negatives.

    Reads ``frame`` (user_id, recs, test_items, test_untied) and ``negatives`` (user_id,
    negatives). Writes (user_id, test_untied, target_rank, n_negatives). The model's list gives
    the order: a listed item is above every unlisted one. When the held-out item is not in the
    list, its place among the unlisted negatives is unknown and it is put in their middle (the
    expected rank under random tie-breaking, rounded down).
    """
    joined = frame.where(F.size(TEST_ITEMS) > 0).join(negatives, USER_ID, "left")
    negs = F.coalesce(F.col(NEGATIVES), F.array().cast("array<string>"))
    target = F.element_at(TEST_ITEMS, 1)
    target_pos = F.array_position(RECS, target)
    listed = F.filter(negs, lambda x: F.array_position(RECS, x) > 0)
    above = F.filter(listed, lambda x: F.array_position(RECS, x) < target_pos)
    unlisted = F.size(negs) - F.size(listed)
    rank = F.when(target_pos > 0, F.size(above) + 1).otherwise(F.size(listed) + 1 + F.floor(unlisted / 2))
    return joined.select(
        USER_ID,
        *_groups(frame),
        TEST_UNTIED,
        rank.cast("int").alias(TARGET_RANK),
        F.size(negs).alias("n_negatives"),
    )


def sampled_metrics(ranks: DataFrame, ks: Sequence[int]) -> DataFrame:
    """Recall/NDCG/HitRate/MRR@K from one held-out item's rank among sampled negatives.

    Reads (target_rank[, protocol]); writes ([protocol,] metric, k, value, n_users). With one relevant item, recall and
    hit rate coincide, NDCG is 1/log2(rank + 1) within K and MRR is 1/rank within K.
    """
    ks = check_ks(ks)
    rank = F.col(TARGET_RANK)
    per_user = {}
    for k in ks:
        within = rank <= k
        per_user[("recall", k)] = F.when(within, 1.0).otherwise(0.0)
        per_user[("ndcg", k)] = F.when(within, 1.0 / F.log2(rank + 1)).otherwise(0.0)
        per_user[("hit_rate", k)] = F.when(within, 1.0).otherwise(0.0)
        per_user[("mrr", k)] = F.when(within, 1.0 / rank).otherwise(0.0)
    names = [(metric, k) for k in ks for metric in ACCURACY_METRICS]
    aggregated = ranks.groupBy(*_groups(ranks)).agg(
        F.count(F.lit(1)).alias("_n"),
        *[F.avg(per_user[name]).alias(f"{name[0]}@{name[1]}") for name in names],
    )
    return _to_rows(aggregated, names)


def popularity_histogram(items: DataFrame, popularity: DataFrame, bins: int) -> DataFrame:
    """How many of ``items`` (item_id, one row per occurrence) fall in each popularity-percentile
    bin: (bin int 0..bins-1, n). Items unknown to ``popularity`` count in the lowest bin."""
    percentile = F.coalesce(F.col(POP_PERCENTILE), F.lit(0.0))
    return (
        items.join(popularity.select(ITEM_ID, POP_PERCENTILE), ITEM_ID, "left")
        .select(F.least(F.floor(percentile * bins), F.lit(bins - 1)).cast("int").alias("bin"))
        .groupBy("bin")
        .agg(F.count(F.lit(1)).alias("n"))
    )


def candidate_recall(candidates: DataFrame, targets: DataFrame) -> dict:
    """How many held-out items reach the candidate set: the ceiling of every ranking of it.

    ``candidates`` are ``(user_id, item_id, rank)`` rows; ``targets`` carry each user's
    ``test_items``. Returns ``targets`` (distinct held-out (user, item) pairs), ``found`` (those
    among the user's candidates), ``recall`` (their share), ``users`` (test users), ``users_found``
    (users with at least one held-out item among their candidates) and ``depth`` (the deepest
    candidate rank). A user without candidates counts as a miss.
    """
    require_columns(candidates, (USER_ID, ITEM_ID, RANK), "candidates")
    require_columns(targets, (USER_ID, TEST_ITEMS), "candidate recall targets")
    held_out = targets.select(USER_ID, F.explode(F.array_distinct(TEST_ITEMS)).alias(ITEM_ID)).dropDuplicates()
    hits = candidates.select(USER_ID, ITEM_ID).dropDuplicates().withColumn("_in", F.lit(1))
    per_user = (
        held_out.join(hits, [USER_ID, ITEM_ID], "left")
        .groupBy(USER_ID)
        .agg(F.count(F.lit(1)).alias("_targets"), F.count("_in").alias("_found"))
    )
    tally = per_user.agg(
        F.sum("_targets").alias("targets"),
        F.sum("_found").alias("found"),
        F.count(F.lit(1)).alias("users"),
        F.sum((F.col("_found") > 0).cast("long")).alias("users_found"),
    ).first()
    depth = candidates.agg(F.max(RANK)).first()[0]
    n_targets, found = int(tally["targets"] or 0), int(tally["found"] or 0)
    return {
        "targets": n_targets,
        "found": found,
        "recall": round(found / n_targets, 4) if n_targets else None,
        "users": int(tally["users"] or 0),
        "users_found": int(tally["users_found"] or 0),
        "depth": None if depth is None else int(depth),
    }
