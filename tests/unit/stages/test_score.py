"""Stage score: ranking, reasons, cold start, atomic publishing, incremental merge."""
from __future__ import annotations

import dataclasses
import sys
import threading
from datetime import datetime

import numpy as np
from pyspark import cloudpickle

from recsys_spark.stages import score
from recsys_spark.core.schemas import (
    CANDIDATES,
    CANDIDATES_TABLE,
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    MODEL_VERSION,
    RANK,
    REASON,
    RECOMMENDATIONS_TABLE,
    RUN_ID,
    SCORE,
    SILVER_EVENTS,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS,
    SILVER_ITEMS_TABLE,
    USER_ID,
    USER_SEQUENCES,
    USER_SEQUENCES_TABLE,
)

# Workers unpickle the fake ranker by value: this test module is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

T0 = datetime(2026, 1, 1)
# 2-d text vectors: a/e point one way, b/f another, c/g/h a third; d is alone.
VECTORS = {
    "a": [1.0, 0.0], "b": [0.0, 1.0], "c": [-1.0, 0.0], "d": [0.0, -1.0],
    "e": [0.95, 0.31], "f": [0.31, 0.95], "g": [-0.95, 0.31], "h": [-0.9, -0.43],
}
TITLES = {item: f"Title {item.upper()}" for item in VECTORS}
HISTORIES = {"u1": ["a", "b", "c"], "u2": ["a", "b", "c", "d"], "u3": ["a"], "u4": ["b", "d"]}
CANDIDATE_LISTS = {"u1": ["e", "f", "g"], "u2": ["e", "h"], "u3": ["f", "g"]}


def seq_row(user, history):
    n = len(history)
    ts = list(range(n))
    seen = sorted(set(history))
    return (user, history, ts, [1.0] * n, history, ts, [1.0] * n, history, ts, [1.0] * n, [], [], False, n, seen, seen)


def write_inputs(ctx, histories=HISTORIES, candidate_lists=CANDIDATE_LISTS, ingested=T0):
    spark, lake = ctx.spark, ctx.lake
    lake.replace(
        spark.createDataFrame(
            [(i, "h", "t", "v", 2, v, T0, True) for i, v in VECTORS.items()], ITEM_EMBEDDINGS
        ),
        ITEM_EMBEDDINGS_TABLE,
    )
    lake.replace(
        spark.createDataFrame(
            [(i, TITLES[i], None, None, [], [], "h", "s", T0) for i in VECTORS], SILVER_ITEMS
        ),
        SILVER_ITEMS_TABLE,
    )
    lake.replace(spark.createDataFrame([seq_row(u, h) for u, h in histories.items()], USER_SEQUENCES), USER_SEQUENCES_TABLE)
    write_candidates(ctx, candidate_lists)
    events = [
        (f"{u}-{j}", u, item, "view", T0, None, None, "s", ingested)
        for u, h in histories.items()
        for j, item in enumerate(h)
    ]
    lake.replace(spark.createDataFrame(events, SILVER_EVENTS), SILVER_EVENTS_TABLE)


def write_candidates(ctx, candidate_lists):
    rows = [
        (u, item, r + 1, float(1.0 - 0.1 * r), "exact", "retrieve-run")
        for u, items in candidate_lists.items()
        for r, item in enumerate(items)
    ]
    ctx.lake.replace(ctx.spark.createDataFrame(rows, CANDIDATES), CANDIDATES_TABLE)


def recommendations(ctx, version=None):
    rows = ctx.lake.read(RECOMMENDATIONS_TABLE, version).collect()
    out = {}
    for r in sorted(rows, key=lambda r: (r[USER_ID], r[RANK])):
        out.setdefault(r[USER_ID], []).append(r)
    return out


def test_without_model_ranks_by_retrieval_explains_and_serves_cold_users(make_ctx):
    ctx = make_ctx("score.k=3", "score.min_history=2", "train.models_dir=/nonexistent/models")
    write_inputs(ctx)
    summary = score.run(ctx)
    recs = recommendations(ctx)
    assert summary["model_version"] == "none" and summary["mode"] == "full"
    assert set(recs) == {"u1", "u2", "u3", "u4"}
    for user, rows in recs.items():
        assert [r[RANK] for r in rows] == [1, 2, 3], user
        assert not {r[ITEM_ID] for r in rows} & set(HISTORIES[user]), user
        assert {r[MODEL_VERSION] for r in rows} == {"none"}
        assert {r[RUN_ID] for r in rows} == {"test-run"}
    assert [r[ITEM_ID] for r in recs["u1"]] == ["e", "f", "g"]
    assert [r[REASON] for r in recs["u1"]] == [
        "because you watched Title A", "because you watched Title B", "because you watched Title C"
    ]
    # u2 has two candidates; the third row is the most popular unseen item, flagged.
    assert [r[ITEM_ID] for r in recs["u2"][:2]] == ["e", "h"]
    assert recs["u2"][1][REASON] == "because you watched Title C"
    assert recs["u2"][2][REASON].startswith("popular: ")
    # u3 (one event < min_history) and u4 (no candidates) are cold: popular items only.
    for user in ("u3", "u4"):
        assert all(r[REASON].startswith("popular: ") for r in recs[user]), user
    assert recs["u3"][0][ITEM_ID] == "b" and recs["u3"][0][REASON] == "popular: Title B is in the history of 3 users"
    assert summary["cold_start_users"] == 2 and summary["rows"] == 12


class ReversingRanker:
    """Scores candidates in reverse retrieval order; unknown item 'x' gets 0."""

    version = "fake-1"

    def score(self, histories, candidates):
        return [np.array([0.0 if c == "x" else float(j + 1) for j, c in enumerate(cands)]) for cands in candidates]


def load_fake():
    return ReversingRanker()


def test_model_scores_reorder_candidates_in_the_udf(spark):
    lists = spark.createDataFrame(
        [("u1", ["a"], ["p", "q", "r", "x"]), ("u2", ["b", "c"], ["s", "t"])],
        "user_id string, history_items array<string>, _candidate_items array<string>",
    )
    rows = score.score_candidates(lists, load_fake, 3).collect()
    got = {}
    for r in rows:
        got.setdefault(r[USER_ID], []).append((r[ITEM_ID], r[SCORE]))
    assert got["u1"] == [("r", 3.0), ("q", 2.0), ("p", 1.0)]
    assert got["u2"] == [("t", 2.0), ("s", 1.0)]


def test_readers_see_whole_versions_and_incremental_touches_only_changed_users(make_ctx):
    # u5's list is all ranked candidates; u2's, u3's and u4's hold popular items.
    histories = {**HISTORIES, "u5": ["c", "d"]}
    candidate_lists = {**CANDIDATE_LISTS, "u5": ["e", "f", "g"]}
    ctx = make_ctx("score.k=3", "score.min_history=2", "train.models_dir=/nonexistent/models")
    write_inputs(ctx, histories, candidate_lists)
    first = score.run(dataclasses.replace(ctx, run_id="r1"))
    table = ctx.lake.location(RECOMMENDATIONS_TABLE)

    seen = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            rows = ctx.spark.read.format("delta").load(table).groupBy(RUN_ID).count().collect()
            seen.append({r[RUN_ID]: r["count"] for r in rows})

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        score.run(dataclasses.replace(ctx, run_id="r2"))
    finally:
        done.set()
        thread.join()
    assert seen and all(s in ({"r1": 15}, {"r2": 15}) for s in seen), seen
    assert {r[RUN_ID] for rows in recommendations(ctx, first["tables"]["gold/recommendations"]).values() for r in rows} == {"r1"}

    # New events for u1 only; u1's and u5's candidates both change. u1 is rescored, and so are
    # the lists with popular items (popularity moved); u5's list stays as it was.
    later = datetime(2026, 2, 1)
    ctx.lake.append(
        ctx.spark.createDataFrame([("u1-new", "u1", "d", "view", later, None, None, "s", later)], SILVER_EVENTS),
        SILVER_EVENTS_TABLE,
    )
    write_candidates(ctx, {"u1": ["g", "h", "e"], "u2": ["e", "h"], "u3": ["f", "g"], "u5": ["g", "f", "e"]})
    incremental = make_ctx("score.k=3", "score.min_history=2", "score.mode=incremental",
                           "train.models_dir=/nonexistent/models", warehouse=ctx.cfg.warehouse)
    summary = score.run(dataclasses.replace(incremental, run_id="r3"))
    assert summary["mode"] == "incremental" and summary["users"] == 4
    recs = recommendations(ctx)
    assert [r[ITEM_ID] for r in recs["u1"]] == ["g", "h", "e"]
    for user in ("u1", "u2", "u3", "u4"):
        assert {r[RUN_ID] for r in recs[user]} == {"r3"}, user
    assert {r[RUN_ID] for r in recs["u5"]} == {"r2"}
    assert [r[ITEM_ID] for r in recs["u5"]] == ["e", "f", "g"]
    assert [r[ITEM_ID] for r in recs["u2"][:2]] == ["e", "h"]

    # u2 has now seen all but h: its rescored list is one row long, and its old ranks 2-3 go.
    ctx.lake.append(
        ctx.spark.createDataFrame(
            [(f"u2-new-{i}", "u2", i, "view", later, None, None, "s", datetime(2026, 3, 1)) for i in "efg"], SILVER_EVENTS
        ),
        SILVER_EVENTS_TABLE,
    )
    ctx.lake.replace(
        ctx.spark.createDataFrame(
            [seq_row(u, h + (["d"] if u == "u1" else ["e", "f", "g"] if u == "u2" else [])) for u, h in histories.items()],
            USER_SEQUENCES,
        ),
        USER_SEQUENCES_TABLE,
    )
    score.run(dataclasses.replace(incremental, run_id="r4"))
    recs = recommendations(ctx)
    assert [(r[RANK], r[ITEM_ID], r[RUN_ID]) for r in recs["u2"]] == [(1, "h", "r4")]
    assert {r[RUN_ID] for r in recs["u5"]} == {"r2"}


def test_reason_buckets_bound_the_rows_of_a_group():
    # 1M users x (200 history + 10 recommended) rows at 100k rows a group: 2,100 buckets
    assert score.reason_buckets(1_000_000, 210, 100_000, 8) == 2100
    assert score.reason_buckets(40, 210, 100_000, 8) == 8  # never fewer than the shuffle's partitions
    assert score.reason_buckets(0, 210, 100_000, 0) == 1
    assert score.reason_buckets(101, 1, 100, 1) == 2  # rounded up


def test_reasons_are_the_same_however_many_groups_hold_the_users(spark):
    """The nearest history item of every recommendation does not depend on how users are
    bucketed: one group, a few, or one per user and more."""
    rng = np.random.default_rng(3)
    items = [f"i{n}" for n in range(30)]
    vectors = rng.normal(size=(len(items), 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = spark.createDataFrame(
        [(item, [float(x) for x in vector]) for item, vector in zip(items, vectors)], "item_id string, vector array<float>"
    )
    sequences, recs = [], []
    for u in range(25):
        picked = [str(i) for i in rng.choice(items, size=12, replace=False)]
        sequences.append((f"u{u}", picked[:8]))
        recs += [(f"u{u}", rank, item, None) for rank, item in enumerate(picked[8:], 1)]
    sequences = spark.createDataFrame(sequences, "user_id string, history_items array<string>")
    recs = spark.createDataFrame(recs, "user_id string, rank int, item_id string, _popularity long")

    def reasons(buckets):
        rows = score.most_similar_history_item(recs, sequences, embeddings, buckets).collect()
        return {(r[USER_ID], r[RANK]): r[score.BECAUSE] for r in rows}

    one = reasons(1)
    assert len(one) == 25 * 4
    by_id = dict(zip(items, vectors))
    for (user, rank), because in list(one.items())[:10]:  # the true nearest history item
        history = next(r["history_items"] for r in sequences.collect() if r[USER_ID] == user)
        item = next(r[ITEM_ID] for r in recs.collect() if r[USER_ID] == user and r[RANK] == rank)
        assert because == max(history, key=lambda h: float(by_id[h] @ by_id[item]))
    assert reasons(3) == one and reasons(40) == one
