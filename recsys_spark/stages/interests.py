"""Stage interests: gold/user_sequences + gold/item_embeddings -> gold/user_vectors.

A user's interest vector is the weighted, time-decayed sum of the vectors of the items in their
history, L2-normalised::

    vector(u) = normalise( sum_i  w_i * 0.5 ** ((t_ref - t_i) / half_life) * v_i )

over every history event i (an item seen twice counts twice), with w_i the event's weight from
gold/user_sequences (event type and rating, see ``features``), t_i its time in epoch seconds,
``half_life`` = ``interests.half_life_days`` and t_ref = the user's latest history timestamp: the
most recent event weighs its full w_i, one half-life earlier half of it. Tying t_ref to each user
(not to the wall clock) keeps a user who was away for a year from decaying to nothing.

Only ``history_*`` columns are read (never the held-out test events). Events whose item has no
active embedding are counted (``history_items_unknown``) and left out; users with no history, or
whose history has no usable event, get no vector and are counted. All work is Spark (explode,
join, ``collect_list`` per user, then the weighted sum in numpy inside ``mapInPandas`` on the
executors): nothing is collected to the driver.

Why numpy and not ``aggregate``/``zip_with``: Spark evaluates higher-order functions without code
generation, and the normalisation ``transform(v, x -> x / norm(v))`` re-evaluated the whole
weighted sum for every element, O(dim^2 x history) per user: minutes for 30 users, hours for
MovieLens ml-latest-small.
"""
from __future__ import annotations

import logging

from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core import progress
from recsys_spark.core.context import StageContext
from recsys_spark.core.lakehouse import table_versions
from recsys_spark.core.schemas import (
    ACTIVE,
    COMPUTED_AT,
    HISTORY_ITEMS,
    HISTORY_TS,
    HISTORY_WEIGHTS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    MODEL,
    N_HISTORY,
    TS,
    USER_ID,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
    VECTOR,
    WEIGHT,
    require_columns,
)

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400.0
T_REF = "t_ref"
DECAY_WEIGHT = "decay_weight"


def history_events(sequences: DataFrame) -> DataFrame:
    """gold/user_sequences -> one row per history event: user_id, item_id, ts, weight, t_ref.

    Reads user_id, history_items, history_timestamps, history_weights. ``t_ref`` is the user's
    latest history timestamp. Arrays of unequal length leave nulls in the shorter ones' places;
    such events (and any null field) keep their nulls for the caller to count."""
    require_columns(sequences, [USER_ID, HISTORY_ITEMS, HISTORY_TS, HISTORY_WEIGHTS], "interests: gold/user_sequences")
    exploded = sequences.select(
        USER_ID,
        F.array_max(HISTORY_TS).alias(T_REF),
        F.explode(F.arrays_zip(HISTORY_ITEMS, HISTORY_TS, HISTORY_WEIGHTS)).alias("event"),
    )
    return exploded.select(
        USER_ID,
        F.col(f"event.{HISTORY_ITEMS}").alias(ITEM_ID),
        F.col(f"event.{HISTORY_TS}").alias(TS),
        F.col(f"event.{HISTORY_WEIGHTS}").alias(WEIGHT),
        T_REF,
    )


def decay_weight(weight: Column, ts: Column, t_ref: Column, half_life_days: float) -> Column:
    """w * 0.5 ** ((t_ref - t) / half_life), with times in epoch seconds."""
    return weight * F.pow(F.lit(0.5), (t_ref - ts).cast("double") / F.lit(half_life_days * SECONDS_PER_DAY))


def _weighted_unit_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Per user row: ``terms`` (list of {decay_weight, vector}) -> the L2-normalised weighted sum
    as float32, or None when the sum is the zero vector (every weight 0)."""
    for batch in batches:
        vectors = []
        for user, terms in zip(batch[USER_ID], batch["terms"]):
            weights = np.fromiter((t[DECAY_WEIGHT] for t in terms), dtype=np.float64, count=len(terms))
            dims = {len(t[VECTOR]) for t in terms}
            if len(dims) != 1:
                raise ValueError(
                    f"interests: user {user!r} has history items with vectors of different dimensions "
                    f"{sorted(dims)}: gold/item_embeddings mixes models; rerun encode"
                )
            total = weights @ np.stack([np.asarray(t[VECTOR], dtype=np.float64) for t in terms])
            norm = float(np.sqrt(total @ total))
            vectors.append((total / norm).astype(np.float32) if norm > 0 and np.isfinite(norm) else None)
        yield pd.DataFrame(
            {USER_ID: batch[USER_ID], VECTOR: vectors, N_HISTORY: batch[N_HISTORY], MODEL: batch[MODEL]}
        )


_SUMS_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType()),
        T.StructField(VECTOR, T.ArrayType(T.FloatType())),
        T.StructField(N_HISTORY, T.LongType()),
        T.StructField(MODEL, T.StringType()),
    ]
)


def interest_vectors(events: DataFrame, embeddings: DataFrame, half_life_days: float) -> DataFrame:
    """Usable history events + item vectors -> user_id, vector (L2-normalised array<float>),
    n_history (events that contributed), model.

    events: user_id, item_id, ts, weight, t_ref (``history_events``, invalid events removed);
    embeddings: item_id, vector, model (active rows). Users whose weighted sum is the zero vector
    (every weight 0) get no row."""
    terms = events.join(embeddings.select(ITEM_ID, VECTOR, MODEL), ITEM_ID).select(
        USER_ID,
        MODEL,
        F.struct(
            decay_weight(F.col(WEIGHT), F.col(TS), F.col(T_REF), half_life_days).alias(DECAY_WEIGHT),
            F.col(VECTOR).alias(VECTOR),
        ).alias("term"),
    )
    per_user = terms.groupBy(USER_ID).agg(
        F.collect_list("term").alias("terms"),
        F.count(F.lit(1)).alias(N_HISTORY),
        F.max(MODEL).alias(MODEL),
    )
    return per_user.mapInPandas(_weighted_unit_sums, _SUMS_SCHEMA).filter(F.col(VECTOR).isNotNull())


def run(ctx: StageContext) -> dict:
    """gold/user_sequences + gold/item_embeddings (active rows) -> gold/user_vectors (replaced in one
    commit). Summary: users_total, users_with_vector, users_without_history,
    users_without_usable_history, history_events, history_events_invalid, history_items_unknown,
    half_life_days, tables."""
    half_life_days = ctx.cfg.interests.half_life_days
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    embeddings = ctx.lake.read(ITEM_EMBEDDINGS_TABLE)
    require_columns(embeddings, [ITEM_ID, VECTOR, MODEL, ACTIVE], "interests: gold/item_embeddings")
    active = embeddings.filter(F.col(ACTIVE)).select(ITEM_ID, VECTOR, MODEL)

    progress.describe(ctx.spark, "counting users and history events")
    users = sequences.agg(
        F.count(F.lit(1)).alias("total"),
        F.count_if(F.coalesce(F.size(HISTORY_ITEMS), F.lit(0)) <= 0).alias("without_history"),
    ).first()

    events = history_events(sequences)
    valid = F.col(ITEM_ID).isNotNull() & F.col(TS).isNotNull() & F.col(WEIGHT).isNotNull()
    known_items = active.select(ITEM_ID, F.lit(True).alias("_known"))
    checked = events.join(known_items, ITEM_ID, "left")
    event_counts = checked.agg(
        F.count(F.lit(1)).alias("events"),
        F.count_if(~valid).alias("invalid"),
        F.count_if(valid & F.col("_known").isNull()).alias("unknown"),
    ).first()

    vectors = interest_vectors(events.filter(valid), active, half_life_days).select(
        USER_ID, VECTOR, N_HISTORY, MODEL, F.current_timestamp().alias(COMPUTED_AT)
    )
    progress.describe(ctx.spark, "time-decayed interest vectors -> gold/user_vectors")
    written = ctx.lake.replace(vectors, USER_VECTORS_TABLE)
    with_vector = ctx.lake.read(USER_VECTORS_TABLE, version=written.version).count()

    summary = {
        "users_total": users["total"],
        "users_with_vector": with_vector,
        "users_without_history": users["without_history"],
        "users_without_usable_history": users["total"] - users["without_history"] - with_vector,
        "history_events": event_counts["events"],
        "history_events_invalid": event_counts["invalid"],
        "history_items_unknown": event_counts["unknown"],
        "half_life_days": half_life_days,
        "tables": table_versions(written),
    }
    if summary["history_items_unknown"] or summary["history_events_invalid"]:
        log.warning(
            "interests: %d history event(s) refer to items without an active embedding and %d are "
            "incomplete (null item, time or weight); both left out",
            summary["history_items_unknown"],
            summary["history_events_invalid"],
        )
    log.info("interests: %s", summary)
    return summary
