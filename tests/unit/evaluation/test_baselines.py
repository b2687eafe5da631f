"""Baselines on hand-worked histories: popularity, next-item, item-kNN, ALS, content."""
from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from recsys_spark.evaluation import baselines as B
from recsys_spark.core.schemas import ITEM_ID, ITEMS, RANK, SEEN_ITEMS, USER_ID, VECTOR, WEIGHTS

HISTORY_SCHEMA = f"{USER_ID} string, {ITEMS} array<string>, {WEIGHTS} array<double>"
QUERY_SCHEMA = f"{USER_ID} string, {ITEMS} array<string>"
SEEN_QUERY_SCHEMA = f"{QUERY_SCHEMA}, {SEEN_ITEMS} array<string>"


def lists(predictions) -> dict:
    """{user: [items in rank order]}, checking ranks run 1..n without gaps."""
    out: dict = {}
    for row in predictions.orderBy(USER_ID, RANK).collect():
        out.setdefault(row[USER_ID], []).append((row[RANK], row[ITEM_ID]))
    for user, ranked in out.items():
        assert [r for r, _ in ranked] == list(range(1, len(ranked) + 1)), user
    return {user: [i for _, i in ranked] for user, ranked in out.items()}


@pytest.fixture
def histories(spark):
    # User sets: a {u1,u2,u4}, b {u1,u2,u3}, c {u1,u3}, d {u2}. Transitions: a->b twice,
    # b->c twice, b->d once.
    rows = [("u1", ["a", "b", "c"]), ("u2", ["a", "b", "d"]), ("u3", ["b", "c"]), ("u4", ["a"])]
    return spark.createDataFrame([(u, s, [1.0] * len(s)) for u, s in rows], HISTORY_SCHEMA)


def test_popularity_skips_seen_and_breaks_ties_by_item(spark, histories):
    queries = spark.createDataFrame([("u4", ["a"]), ("u3", ["b", "c"]), ("new", [])], QUERY_SCHEMA)
    assert lists(B.popularity(histories, queries, 2)) == {"u4": ["b", "c"], "u3": ["a", "d"], "new": ["a", "b"]}


def test_next_item_follows_the_last_item_then_popularity(spark, histories):
    queries = spark.createDataFrame([("u4", ["a"]), ("x", ["b"]), ("y", ["a", "b"])], QUERY_SCHEMA)
    result = lists(B.next_item(histories, queries, 3))
    assert result["u4"] == ["b", "c", "d"]  # b followed a twice; then popularity c (2 users), d (1)
    assert result["x"] == ["c", "d", "a"]  # c twice, d once after b; a only by popularity
    assert result["y"] == ["c", "d"]  # every other item is seen


def test_bounded_next_item_equals_the_exact_one_when_the_bound_exceeds_the_successors(spark):
    """A hot item ``h`` is followed by 30 different items (each once, ``s07`` four times);
    bounded at >= 30 successors next-item equals the exact lists, at 3 it keeps h's three most
    frequent successors (count, then popularity, then id) and fills with popularity after them."""
    rows = [(f"u{i:02d}", ["h", f"s{i:02d}"]) for i in range(30)]
    rows += [(f"v{i}", ["h", "s07", "p"]) for i in range(3)] + [(f"w{i}", ["p", "s20"]) for i in range(2)]
    histories = spark.createDataFrame([(u, s, [1.0] * len(s)) for u, s in rows], HISTORY_SCHEMA)
    queries = spark.createDataFrame([("q1", ["h"]), ("q2", ["x", "h"]), ("q3", ["p"])], QUERY_SCHEMA)
    successors = {r["next_id"] for r in B.transitions(histories).where(F.col(ITEM_ID) == "h").collect()}
    assert len(successors) == 30
    exact = lists(B.next_item(histories, queries, 10))
    for bound in (30, 31, 500):
        assert lists(B.next_item(histories, queries, 10, successors=bound)) == exact, bound
    assert lists(B.next_item(histories, queries, 10, successors=0)) == exact
    # h's successors by count: s07 (4), then the ones once each by popularity: s20 (3 users) and
    # the rest (1 user each) by id, s00 first.
    top = [r["next_id"] for r in B.top_successors(histories, 3).where(F.col(ITEM_ID) == "h").collect()]
    assert sorted(top) == ["s00", "s07", "s20"]
    bounded = lists(B.next_item(histories, queries, 10, successors=3))
    assert bounded["q1"][:3] == exact["q1"][:3] == ["s07", "s20", "s00"]
    assert bounded["q1"][3] == "p"  # then popularity (p: 5 users), not h's fourth successor s01
    assert exact["q1"][3] == "s01"


def test_transitions_count_adjacent_pairs(spark, histories):
    counts = {(r[ITEM_ID], r["next_id"]): r["n"] for r in B.transitions(histories).collect()}
    assert counts == {("a", "b"): 2, ("b", "c"): 2, ("b", "d"): 1}


def test_item_knn_cosine_of_user_sets(spark, histories):
    sims = {(r[ITEM_ID], r["neighbour_id"]): r["cosine"] for r in B.item_similarities(histories, 10).collect()}
    assert sims[("a", "b")] == pytest.approx(2 / 3)
    assert sims[("b", "c")] == pytest.approx(2 / math.sqrt(6))
    assert sims[("a", "d")] == pytest.approx(1 / math.sqrt(3))
    assert ("c", "d") not in sims  # never co-occur: the similarity table stays sparse
    queries = spark.createDataFrame([("q1", ["a"]), ("q2", ["c"])], QUERY_SCHEMA)
    assert lists(B.item_knn(histories, queries, 3, neighbours=10)) == {"q1": ["b", "d", "c"], "q2": ["b", "a"]}
    # With one neighbour per item, a only reaches b.
    assert lists(B.item_knn(histories, queries, 3, neighbours=1))["q1"] == ["b"]


def test_seen_items_beyond_the_query_window_are_never_recommended(spark, histories):
    # The model reads ``items`` (the recent window); ``seen_items`` also holds older items.
    queries = spark.createDataFrame([("u4", ["a"], ["a", "b"]), ("q2", ["c"], ["a", "c"])], SEEN_QUERY_SCHEMA)
    assert lists(B.popularity(histories, queries, 2)) == {"u4": ["c", "d"], "q2": ["b", "d"]}
    # a -> b is excluded, so popularity fills after nothing else followed a.
    assert lists(B.next_item(histories, queries, 3)) == {"u4": ["c", "d"], "q2": ["b", "d"]}
    # Scored from "a" (b, d, c without the exclusion) and "c" (b, a).
    assert lists(B.item_knn(histories, queries, 3, neighbours=10)) == {"u4": ["d", "c"], "q2": ["b"]}
    s = math.sqrt(0.5)
    items = spark.createDataFrame(
        [("x", [1.0, 0.0]), ("y", [0.0, 1.0]), ("z", [s, s])], f"{ITEM_ID} string, {VECTOR} array<float>"
    )
    users = spark.createDataFrame([("u", [1.0, 0.0])], f"{USER_ID} string, {VECTOR} array<float>")
    content_queries = spark.createDataFrame([("u", ["x"], ["x", "z"])], SEEN_QUERY_SCHEMA)
    assert lists(B.content(users, items, content_queries, 2)) == {"u": ["y"]}


@pytest.fixture
def clustered(spark):
    """Two tastes: users u0..u7 hold items p0..p4 but one, users v0..v7 hold q0..q4 but one."""
    rows, queries = [], []
    for prefix, items in (("u", "p"), ("v", "q")):
        for n in range(8):
            held_out = f"{items}{n % 5}"
            seen = [f"{items}{i}" for i in range(5) if f"{items}{i}" != held_out]
            rows.append((f"{prefix}{n}", seen, [1.0] * len(seen)))
            queries.append((f"{prefix}{n}", seen, held_out))
    return spark.createDataFrame(rows, HISTORY_SCHEMA), queries


def test_als_top_k_equals_spark_recommend_for_user_subset(spark):
    """The exact search over [v/M, sqrt(1 - |v|²/M²)] gives every user the same unseen top k as
    Spark's own recommendForUserSubset, reached k + longest seen list deep and cut after the seen
    items are dropped."""
    import random

    rng = random.Random(11)
    rows = []
    for u in range(40):
        items = rng.sample([f"i{i:02d}" for i in range(60)], rng.randint(2, 15))
        rows.append((f"u{u:02d}", items, [float(rng.randint(1, 5)) for _ in items]))
    histories = spark.createDataFrame(rows, HISTORY_SCHEMA)
    # Queries: every user with what they have seen, plus one user unknown to the model.
    queries = spark.createDataFrame([(u, items) for u, items, _ in rows] + [("nobody", ["i01"])], QUERY_SCHEMA)
    model, user_factors, item_factors = B.fit_als(histories, B.AlsParams(rank=6, reg_param=0.05, alpha=5.0, max_iter=6, seed=2))
    k = 5
    ours = lists(B.als_top_k(user_factors.select(USER_ID, "features"), item_factors.select(ITEM_ID, "features"), queries, k))

    longest = max(len(items) for _, items, _ in rows)
    user_of = {r["id"]: r[USER_ID] for r in user_factors.collect()}
    item_of = {r["id"]: r[ITEM_ID] for r in item_factors.collect()}
    seen = {u: set(items) for u, items, _ in rows}
    theirs = {}
    for r in model.recommendForAllUsers(k + longest).collect():
        user = user_of[r["_u"]]
        ranked = [(item_of[rec["_i"]], rec["rating"]) for rec in r["recommendations"]]
        theirs[user] = [item for item, _ in ranked if item not in seen[user]][:k]
        ratings = [rating for _, rating in ranked]
        assert len(set(ratings)) == len(ratings), f"{user}: tied ratings, the order would be arbitrary"
    assert "nobody" not in ours and set(ours) == set(theirs) == set(seen)
    assert ours == theirs
    assert all(len(items) == k and not set(items) & seen[u] for u, items in ours.items())


@pytest.mark.slow
def test_als_recommends_within_the_users_taste(spark, clustered):
    histories, queries = clustered
    query_df = spark.createDataFrame([(u, s) for u, s, _ in queries], QUERY_SCHEMA)
    params = B.AlsParams(rank=4, reg_param=0.05, alpha=10.0, max_iter=8, seed=1)
    result = lists(B.als(histories, query_df, 1, params))
    assert result == {u: [held_out] for u, _, held_out in queries}


@pytest.mark.slow
def test_tune_als_scores_every_grid_point_and_picks_the_best(spark, clustered):
    histories, queries = clustered
    query_df = spark.createDataFrame([(u, s) for u, s, _ in queries], QUERY_SCHEMA)
    targets = spark.createDataFrame(
        [(u, [h], s, False) for u, s, h in queries],
        f"{USER_ID} string, test_items array<string>, {SEEN_ITEMS} array<string>, test_untied boolean",
    )
    grid = B.grid([1, 4], [0.05], [10.0], max_iter=8, seed=1)
    best, scores = B.tune_als(histories, query_df, targets, 1, grid)
    assert [s["rank"] for s in scores] == [1, 4]
    assert best.rank == max(scores, key=lambda s: s["val_ndcg@1"])["rank"]
    assert max(s["val_ndcg@1"] for s in scores) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="grid is empty"):
        B.tune_als(histories, query_df, targets, 1, [])


def test_content_ranks_items_by_cosine_to_the_user_vector(spark):
    s = math.sqrt(0.5)
    items = spark.createDataFrame(
        [("x", [1.0, 0.0]), ("y", [0.0, 1.0]), ("z", [s, s])], f"{ITEM_ID} string, {VECTOR} array<float>"
    )
    users = spark.createDataFrame([("u", [1.0, 0.0]), ("w", [0.0, 1.0])], f"{USER_ID} string, {VECTOR} array<float>")
    queries = spark.createDataFrame([("u", ["x"]), ("w", [])], QUERY_SCHEMA)
    assert lists(B.content(users, items, queries, 2)) == {"u": ["z", "y"], "w": ["y", "z"]}
