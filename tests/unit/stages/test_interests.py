"""interests: weighted, time-decayed sums of item vectors, checked against a hand computation."""
from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark.stages import interests
from recsys_spark.core.schemas import (
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    N_HISTORY,
    USER_ID,
    USER_SEQUENCES,
    USER_SEQUENCES_TABLE,
    USER_VECTORS,
    USER_VECTORS_TABLE,
    VECTOR,
)

DAY = 86400
ENCODED_AT = datetime(2026, 1, 1)


def _embedding(item_id, vector, active=True):
    return (item_id, f"h-{item_id}", "test-model", "v1", len(vector), [float(x) for x in vector], ENCODED_AT, active)


EMBEDDINGS = [
    _embedding("a", [1, 0, 0]),
    _embedding("b", [0, 1, 0]),
    _embedding("c", [0, 0, 1]),
    _embedding("e", [0.6, 0.8, 0], active=False),  # left the catalog
]


def _sequence(user_id, items, timestamps, weights):
    # Only history_* matters here; the other columns carry the same lists.
    return (user_id, items, timestamps, weights, items, timestamps, weights, items, timestamps, weights, [], [], False, len(items),
            sorted(set(items)), sorted(set(items)))


SEQUENCES = [
    # a at day 0, b at day 10, a at day 20, plus unknown d at day 5: t_ref = day 20.
    _sequence("u1", ["a", "b", "a", "d"], [0, 10 * DAY, 20 * DAY, 5 * DAY], [1.0, 2.0, 1.0, 4.0]),
    _sequence("u2", [], [], []),
    _sequence("u3", ["d", "e"], [DAY, 2 * DAY], [1.0, 1.0]),  # nothing known: no vector
    _sequence("u4", ["c"], [DAY], [0.0]),  # zero weight: zero vector, no vector
    _sequence("u5", ["c", "a"], [100], [1.0, 1.0]),  # second event has no time: invalid
]


def _write_inputs(ctx, spark):
    ctx.lake.replace(spark.createDataFrame(EMBEDDINGS, ITEM_EMBEDDINGS), ITEM_EMBEDDINGS_TABLE)
    ctx.lake.replace(spark.createDataFrame(SEQUENCES, USER_SEQUENCES), USER_SEQUENCES_TABLE)


def test_decay_weight_halves_every_half_life(spark):
    df = spark.createDataFrame([(2.0, 0, 20 * DAY), (2.0, 10 * DAY, 20 * DAY), (3.0, 5, 5)], "w double, t long, ref long")
    got = [r[0] for r in df.select(interests.decay_weight(F.col("w"), F.col("t"), F.col("ref"), 10.0)).collect()]
    assert got == pytest.approx([0.5, 1.0, 3.0])


def test_history_events_explode_aligned_arrays_with_the_users_latest_time(spark):
    sequences = spark.createDataFrame(SEQUENCES, USER_SEQUENCES)
    events = interests.history_events(sequences).filter(F.col(USER_ID).isin("u1", "u5")).collect()
    u1 = sorted((r["item_id"], r["ts"], r["weight"], r["t_ref"]) for r in events if r[USER_ID] == "u1")
    assert u1 == [("a", 0, 1.0, 20 * DAY), ("a", 20 * DAY, 1.0, 20 * DAY), ("b", 10 * DAY, 2.0, 20 * DAY), ("d", 5 * DAY, 4.0, 20 * DAY)]
    u5 = sorted((r["item_id"], r["ts"]) for r in events if r[USER_ID] == "u5")
    assert u5 == [("a", None), ("c", 100)]


def test_user_vectors_match_a_hand_computation(make_ctx, spark):
    ctx = make_ctx("interests.half_life_days=10")
    _write_inputs(ctx, spark)

    summary = interests.run(ctx)

    assert summary["users_total"] == 5
    assert summary["users_with_vector"] == 2
    assert summary["users_without_history"] == 1
    assert summary["users_without_usable_history"] == 2  # u3 (unknown items), u4 (zero weight)
    assert summary["history_events"] == 9
    assert summary["history_events_invalid"] == 1
    assert summary["history_items_unknown"] == 3  # d twice, e (inactive) once

    table = ctx.lake.read(USER_VECTORS_TABLE)
    assert [(f.name, f.dataType) for f in table.schema] == [(f.name, f.dataType) for f in USER_VECTORS]
    rows = {r[USER_ID]: r for r in table.collect()}
    assert set(rows) == {"u1", "u5"}
    # u1: a@day0 weighs 1 * 0.5**2, b@day10 weighs 2 * 0.5**1, a@day20 weighs 1 * 0.5**0.
    expected = np.array([0.25 + 1.0, 1.0, 0.0])
    expected /= math.sqrt(1.25**2 + 1.0)
    assert np.asarray(rows["u1"][VECTOR]) == pytest.approx(expected, abs=1e-6)
    assert rows["u1"][N_HISTORY] == 3
    assert np.asarray(rows["u5"][VECTOR]) == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)
    assert rows["u1"]["model"] == "test-model"


def test_half_life_changes_the_mix(make_ctx, spark):
    ctx = make_ctx("interests.half_life_days=1000")
    _write_inputs(ctx, spark)
    interests.run(ctx)
    u1 = np.asarray(ctx.lake.read(USER_VECTORS_TABLE).filter(F.col(USER_ID) == "u1").first()[VECTOR])
    # Almost no decay: a counts twice (weight 1 + 1), b once with weight 2.
    factor_a = 0.5 ** (20 / 1000) + 1.0
    factor_b = 2.0 * 0.5 ** (10 / 1000)
    assert u1 == pytest.approx(np.array([factor_a, factor_b, 0.0]) / math.hypot(factor_a, factor_b), abs=1e-6)


def test_missing_inputs_are_named(make_ctx, spark):
    ctx = make_ctx()
    ctx.lake.replace(spark.createDataFrame(SEQUENCES, USER_SEQUENCES), USER_SEQUENCES_TABLE)
    with pytest.raises(FileNotFoundError, match="gold/item_embeddings"):
        interests.run(ctx)
    with pytest.raises(ValueError, match="missing column.*history_weights"):
        interests.history_events(spark.createDataFrame(SEQUENCES, USER_SEQUENCES).drop("history_weights"))
