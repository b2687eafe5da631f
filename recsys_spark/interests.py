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
whose history has no usable event, get no vector and are counted. All work is Spark
(explode, join, aggregate): nothing is collected to the driver.
"""
from __future__ import annotations

import logging

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark.pipeline import StageContext
from recsys_spark.schemas import (
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
    USER_VECTORS,
    USER_VECTORS_TABLE,
    VECTOR,
    WEIGHT,
    conform,
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


def _l2_normalised(vector: Column) -> Column:
    norm = F.sqrt(F.aggregate(vector, F.lit(0.0).cast("double"), lambda total, x: total + x * x))
    return F.when(norm > 0, F.transform(vector, lambda x: x / norm).cast("array<float>"))


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
    dim = F.size(F.element_at("terms", 1)[VECTOR])
    weighted_sum = F.aggregate(
        "terms",
        F.array_repeat(F.lit(0.0).cast("double"), dim),
        lambda total, term: F.zip_with(
            total, term[VECTOR], lambda acc, x: acc + term[DECAY_WEIGHT] * x.cast("double")
        ),
    )
    return per_user.select(
        USER_ID,
        _l2_normalised(weighted_sum).alias(VECTOR),
        N_HISTORY,
        MODEL,
    ).filter(F.col(VECTOR).isNotNull())


def run(ctx: StageContext) -> dict:
    """gold/user_sequences + gold/item_embeddings (active rows) -> gold/user_vectors (replaced in one
    commit). Summary: users_total, users_with_vector, users_without_history,
    users_without_usable_history, history_events, history_events_invalid, history_items_unknown,
    half_life_days, table_version."""
    half_life_days = ctx.cfg.interests.half_life_days
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    embeddings = ctx.lake.read(ITEM_EMBEDDINGS_TABLE)
    require_columns(embeddings, [ITEM_ID, VECTOR, MODEL, ACTIVE], "interests: gold/item_embeddings")
    active = embeddings.filter(F.col(ACTIVE)).select(ITEM_ID, VECTOR, MODEL)

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
    table_version = ctx.lake.replace(conform(vectors, USER_VECTORS, "interests: user_vectors rows"), USER_VECTORS_TABLE)
    with_vector = ctx.lake.read(USER_VECTORS_TABLE).count()

    summary = {
        "users_total": users["total"],
        "users_with_vector": with_vector,
        "users_without_history": users["without_history"],
        "users_without_usable_history": users["total"] - users["without_history"] - with_vector,
        "history_events": event_counts["events"],
        "history_events_invalid": event_counts["invalid"],
        "history_items_unknown": event_counts["unknown"],
        "half_life_days": half_life_days,
        "table_version": table_version,
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
