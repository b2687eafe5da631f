"""Features: silver/events -> gold/user_sequences, each user's history in time order with the split.

Ordering: events sort by time; events of one user in the same instant are ordered by a seeded
pseudo-random key (``xxhash64(features.tie_break_seed, event_id)``), never by item id, so no
ordering a sequence model could learn leaks into "the last event". Sequences keep the most recent
``features.max_sequence_length`` events (truncation is counted).

Splits (``features.split``):
- ``leave_one_out`` (default): last event -> ``test_items``, second-to-last -> ``val_items``, the rest
  -> ``train_items``. Users with 2 events get no validation event, users with 1 no test event.
- ``time_cut``: events at or after ``features.time_cut`` -> ``test_items`` (distinct items, not already in
  the history), the last event before it -> ``val_items``.
- ``none``: everything is history and training data (production scoring; nothing held out).
``history_*`` = everything but the test events (what interests, retrieval and scoring see).
"""
from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

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
    SILVER_EVENTS_TABLE,
    TEST_ITEMS,
    TEST_UNTIED,
    TRAIN_ITEMS,
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
    # Keep each user's most recent events before collecting, so a user with millions of events
    # never becomes one huge array.
    newest_first = Window.partitionBy(USER_ID).orderBy(F.col("t_us").desc(), F.col("tie").desc())
    ranked = ranked.withColumn("_recency", F.row_number().over(newest_first)).withColumn(
        "_total", F.count(F.lit(1)).over(Window.partitionBy(USER_ID))
    )
    kept = ranked.where(F.col("_recency") <= cfg.max_sequence_length)
    grouped = kept.groupBy(USER_ID).agg(
        F.array_sort(F.collect_list(F.struct("t_us", "tie", ITEM_ID, WEIGHT))).alias("ev"),
        F.first("_total").alias(N_EVENTS),
    )
    seq = grouped.select(
        USER_ID,
        F.transform("ev", lambda e: e[ITEM_ID]).alias(ITEMS),
        F.transform("ev", lambda e: F.floor(e["t_us"] / 1_000_000).cast("long")).alias(TS_LIST),
        F.transform("ev", lambda e: e["t_us"]).alias("_t_us"),
        F.transform("ev", lambda e: e[WEIGHT].cast("double")).alias(WEIGHTS),
        N_EVENTS,
    )
    return split_sequences(seq, cfg).drop("_t_us", "_n_hist", "_n_train")


def _slice(col: str, start: Column, length: Column) -> Column:
    """Elements [start, start+length) (0-based) of an array column; empty when length <= 0."""
    return F.when(length > 0, F.slice(F.col(col), start + 1, length)).otherwise(F.slice(F.col(col), 1, 0))


def split_sequences(seq: DataFrame, cfg: FeaturesConfig) -> DataFrame:
    """Add history/train/val/test columns to time-ordered sequences (see the module doc)."""
    n = F.size(ITEMS)
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
        cut_us = F.unix_micros(F.lit(cfg.time_cut).cast("timestamp"))
        n_hist = F.size(F.filter("_t_us", lambda t: t < cut_us))
        n_val = F.when(n_hist >= 2, 1).otherwise(0)
        n_train = n_hist - n_val
        history = _slice(ITEMS, F.lit(0), n_hist)
        test_items = F.array_except(_slice(ITEMS, n_hist, n - n_hist), history)
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
    )


def run(ctx: StageContext) -> dict:
    """The features stage: replace gold/user_sequences in one commit; summary of users and split."""
    events = ctx.lake.read(SILVER_EVENTS_TABLE)
    sequences = build_sequences(events, ctx.cfg.features)
    written = ctx.lake.replace(sequences, USER_SEQUENCES_TABLE)
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
