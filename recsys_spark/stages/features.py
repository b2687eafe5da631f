"""Features: silver/events -> gold/user_sequences, each user's history in time order with the split.

Ordering: events sort by time; events of one user in the same instant are ordered by a seeded
pseudo-random key (``xxhash64(features.tie_break_seed, event_id)``), never by item id, so no
ordering a sequence model could learn leaks into "the last event". Sequences keep the most recent
``features.max_sequence_length`` events (truncation is counted).

Splits (``features.split``):
- ``leave_one_out`` (default): last event -> ``test_items``, second-to-last -> ``val_items``, the rest
  -> ``train_items``. Users with 2 events get no validation event, users with 1 no test event.
- ``time_cut``: events at or after ``features.time_cut`` -> ``test_items`` (distinct items the user had
  not seen before the cut), the last event before it -> ``val_items``.
- ``none``: everything is history and training data (production scoring; nothing held out).
``history_*`` = everything but the test events (what interests, retrieval and scoring see), within
the kept window.

``seen_items``: every distinct item (sorted) of the user's events before the test events (all of
them for ``none``), including the events the window cut off: the exclusion set, never recommended
again. ``train_seen_items``: the same before the validation event (what tuning excludes). The held-out
items are in neither unless the user had also seen them earlier.
"""
from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.core import progress
from recsys_spark.core.config import FeaturesConfig
from recsys_spark.core.context import StageContext
from recsys_spark.core.lakehouse import table_versions
from recsys_spark.core.schemas import (
    EVENT_ID,
    EVENT_TYPE,
    HISTORY_ITEMS,
    HISTORY_TS,
    HISTORY_WEIGHTS,
    ITEM_ID,
    ITEMS,
    N_EVENTS,
    SEEN_ITEMS,
    SILVER_EVENTS_TABLE,
    TEST_ITEMS,
    TEST_UNTIED,
    TRAIN_ITEMS,
    TRAIN_SEEN_ITEMS,
    TRAIN_TS,
    TRAIN_WEIGHTS,
    TS,
    TS_LIST,
    USER_ID,
    USER_SEQUENCES_TABLE,
    VAL_ITEMS,
    VALUE,
    WEIGHT,
    WEIGHTS,
    require_columns,
)

log = logging.getLogger(__name__)


def event_weight(cfg: FeaturesConfig) -> Column:
    """Weight of one event: per event type; a rating r weighs rating_scale * max(r - floor, min_weight)."""
    expr = None
    for etype, weight in cfg.event_weights.items():
        if etype == "rating":
            continue
        cond = F.col(EVENT_TYPE) == etype
        expr = F.when(cond, F.lit(float(weight))) if expr is None else expr.when(cond, F.lit(float(weight)))
    rating = F.lit(cfg.rating_scale) * F.greatest(
        F.col(VALUE) - F.lit(cfg.rating_floor), F.lit(cfg.rating_min_weight)
    )
    rating_weight = float(cfg.event_weights.get("rating", 1.0))
    rating_expr = F.coalesce(rating * F.lit(rating_weight), F.lit(rating_weight))
    expr = F.when(F.col(EVENT_TYPE) == "rating", rating_expr) if expr is None else expr.when(
        F.col(EVENT_TYPE) == "rating", rating_expr
    )
    return expr.otherwise(F.lit(1.0))


def build_sequences(events: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """silver/events (user_id, item_id, event_type, ts, value, event_id) -> the USER_SEQUENCES columns."""
    require_columns(events, [USER_ID, ITEM_ID, EVENT_TYPE, TS, VALUE, EVENT_ID], "features")
    tie = F.xxhash64(F.lit(cfg.tie_break_seed), F.col(EVENT_ID))
    ranked = events.select(
        USER_ID,
        ITEM_ID,
        F.unix_micros(TS).alias("t_us"),
        tie.alias("tie"),
        event_weight(cfg).alias(WEIGHT),
    )
    # Keep each user's most recent events as the sequence, so a user with millions of events
    # never becomes one huge array; of the older events only their distinct items are kept (what
    # the user has seen), and only those before the held-out events.
    newest_first = Window.partitionBy(USER_ID).orderBy(F.col("t_us").desc(), F.col("tie").desc())
    ranked = ranked.withColumn("_recency", F.row_number().over(newest_first)).withColumn(
        "_total", F.count(F.lit(1)).over(Window.partitionBy(USER_ID))
    )
    kept = F.col("_recency") <= cfg.max_sequence_length
    # Cut-off events are older than every kept one, so they are never a leave-one-out hold-out;
    # with a time cut those at or after the cut are test events (all kept ones are then too).
    older_seen = ~kept if cfg.split != "time_cut" else ~kept & (F.col("t_us") < _cut_us(cfg))
    grouped = ranked.groupBy(USER_ID).agg(
        F.array_sort(F.collect_list(F.when(kept, F.struct("t_us", "tie", ITEM_ID, WEIGHT)))).alias("ev"),
        F.first("_total").alias(N_EVENTS),
        F.collect_set(F.when(older_seen, F.col(ITEM_ID))).alias(_OLDER_SEEN),
    )
    seq = grouped.select(
        USER_ID,
        F.transform("ev", lambda e: e[ITEM_ID]).alias(ITEMS),
        F.transform("ev", lambda e: F.floor(e["t_us"] / 1_000_000).cast("long")).alias(TS_LIST),
        F.transform("ev", lambda e: e["t_us"]).alias("_t_us"),
        F.transform("ev", lambda e: e[WEIGHT].cast("double")).alias(WEIGHTS),
        N_EVENTS,
        _OLDER_SEEN,
    )
    return split_sequences(seq, cfg).drop("_t_us", "_n_hist", "_n_train", _OLDER_SEEN)


_OLDER_SEEN = "_older_seen"  # distinct items of the seen events the window cut off


def _cut_us(cfg: FeaturesConfig) -> Column:
    return F.unix_micros(F.lit(cfg.time_cut).cast("timestamp"))


def _slice(col: str, start: Column, length: Column) -> Column:
    """Elements [start, start+length) (0-based) of an array column; empty when length <= 0."""
    return F.when(length > 0, F.slice(F.col(col), start + 1, length)).otherwise(F.slice(F.col(col), 1, 0))


def split_sequences(seq: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Add history/train/val/test and seen columns to time-ordered sequences (see the module doc).

    ``seq`` holds the kept window (items, timestamps, weights, _t_us) and ``_older_seen``: the
    distinct items of the seen events the window cut off."""
    n = F.size(ITEMS)
    older = F.coalesce(F.col(_OLDER_SEEN), F.array().cast("array<string>"))
    if cfg.split == "none":
        n_hist, n_train = n, n
        test_items = F.array().cast("array<string>")
        val_items = F.array().cast("array<string>")
        untied = F.lit(None).cast("boolean")
    elif cfg.split == "leave_one_out":
        n_test = F.when(n >= 2, 1).otherwise(0)
        n_val = F.when(n >= 3, 1).otherwise(0)
        n_hist = n - n_test
        n_train = n_hist - n_val
        test_items = _slice(ITEMS, n_hist, n_test)
        val_items = _slice(ITEMS, n_train, n_val)
        last_t = F.element_at("_t_us", -1)
        prev_t = F.element_at("_t_us", -2)
        untied = F.when(n >= 2, last_t > prev_t)
    else:
        cut_us = _cut_us(cfg)
        n_hist = F.size(F.filter("_t_us", lambda t: t < cut_us))
        n_val = F.when(n_hist >= 2, 1).otherwise(0)
        n_train = n_hist - n_val
        seen = F.array_union(_slice(ITEMS, F.lit(0), n_hist), older)
        test_items = F.array_except(_slice(ITEMS, n_hist, n - n_hist), seen)
        val_items = _slice(ITEMS, n_train, n_val)
        untied = F.when(n > n_hist, F.lit(True))
    out = seq.select(
        "*",
        n_hist.alias("_n_hist"),
        n_train.alias("_n_train"),
        test_items.alias(TEST_ITEMS),
        val_items.alias(VAL_ITEMS),
        untied.alias(TEST_UNTIED),
    )
    zero = F.lit(0)
    return out.select(
        "*",
        _slice(ITEMS, zero, F.col("_n_hist")).alias(HISTORY_ITEMS),
        _slice(TS_LIST, zero, F.col("_n_hist")).alias(HISTORY_TS),
        _slice(WEIGHTS, zero, F.col("_n_hist")).alias(HISTORY_WEIGHTS),
        _slice(ITEMS, zero, F.col("_n_train")).alias(TRAIN_ITEMS),
        _slice(TS_LIST, zero, F.col("_n_train")).alias(TRAIN_TS),
        _slice(WEIGHTS, zero, F.col("_n_train")).alias(TRAIN_WEIGHTS),
        # array_union de-duplicates; sorted so the set does not depend on the event order.
        F.array_sort(F.array_union(_slice(ITEMS, zero, F.col("_n_hist")), older)).alias(SEEN_ITEMS),
        F.array_sort(F.array_union(_slice(ITEMS, zero, F.col("_n_train")), older)).alias(TRAIN_SEEN_ITEMS),
    )


def run(ctx: StageContext) -> dict:
    """The features stage: replace gold/user_sequences in one commit; summary of users and split."""
    events = ctx.lake.read(SILVER_EVENTS_TABLE)
    sequences = build_sequences(events, ctx.cfg.features)
    progress.describe(ctx.spark, "silver/events -> gold/user_sequences (sort, split)")
    written = ctx.lake.replace(sequences, USER_SEQUENCES_TABLE)
    progress.describe(ctx.spark, "counting users and the split")
    stored = ctx.lake.read(USER_SEQUENCES_TABLE, version=written.version)
    stats = stored.agg(
        F.count(F.lit(1)).alias("users"),
        F.coalesce(F.sum(N_EVENTS), F.lit(0)).alias("events"),
        F.coalesce(F.sum(F.size(ITEMS)), F.lit(0)).alias("events_kept"),
        F.count(F.when(F.col(N_EVENTS) > F.size(ITEMS), 1)).alias("users_truncated"),
        F.count(F.when(F.size(TEST_ITEMS) > 0, 1)).alias("users_with_test"),
        F.count(F.when(F.size(VAL_ITEMS) > 0, 1)).alias("users_with_validation"),
        F.count(F.when(F.size(TRAIN_ITEMS) == 0, 1)).alias("users_without_train"),
        F.count(F.when(F.col(TEST_UNTIED), 1)).alias("users_test_untied"),
    ).first()
    events_total = int(stats["events"])
    summary = {k: int(stats[k]) for k in stats.asDict() if k != "events"}
    summary.update(
        {
            "events": events_total,
            "events_truncated": events_total - summary["events_kept"],
            "split": ctx.cfg.features.split,
            "max_sequence_length": ctx.cfg.features.max_sequence_length,
            "tables": table_versions(written),
        }
    )
    log.info("features: %d users, %d events kept", summary["users"], summary["events_kept"])
    return summary
