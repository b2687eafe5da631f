"""Ranking metrics: hand-worked examples (ties, duplicates, seen items, users with no hits or no
predictions) and agreement with a small pure-Python reference on random data."""
from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from recsys_spark.evaluation import metrics as M
from recsys_spark.core.schemas import HISTORY_ITEMS, ITEM_ID, RANK, SEEN_ITEMS, TEST_ITEMS, TEST_UNTIED, USER_ID

TARGET_SCHEMA = f"{USER_ID} string, {TEST_ITEMS} array<string>, {SEEN_ITEMS} array<string>, {TEST_UNTIED} boolean"
PRED_SCHEMA = f"{USER_ID} string, {ITEM_ID} string, {RANK} int"


def as_dict(rows_df) -> dict:
    return {(r["metric"], r["k"]): (r["value"], r["n_users"]) for r in rows_df.collect()}


@pytest.fixture
def hand_worked(spark):
    targets = spark.createDataFrame(
        [
            ("a", ["x"], ["h1"], True),
            ("b", ["y"], ["h2"], False),
            ("c", ["z"], ["h3"], True),  # no predictions at all: a miss
            ("d", ["w"], ["h4"], True),  # its first prediction is a seen item
            ("e", [], ["h5"], False),  # no test event: not a test user
        ],
        TARGET_SCHEMA,
    )
    predictions = spark.createDataFrame(
        [
            ("a", "q", 1),
            ("a", "p", 1),  # tie in rank with q: broken by item id, so p comes first
            ("a", "x", 3),
            ("a", "x", 5),  # duplicate of x at a worse rank: dropped and counted
            ("b", "y", 1),
            ("d", "h4", 1),
            ("d", "w", 2),
            ("zz", "y", 1),  # a user outside the test set: ignored
        ],
        PRED_SCHEMA,
    )
    return targets, predictions


def test_rank_lists_orders_dedupes_and_breaks_rank_ties_by_item(spark, hand_worked):
    _, predictions = hand_worked
    lists = {r[USER_ID]: (r[M.RECS], r[M.N_DUPLICATES]) for r in M.rank_lists(predictions, 10).collect()}
    assert lists["a"] == (["p", "q", "x"], 1)
    assert lists["d"] == (["h4", "w"], 0)
    assert M.rank_lists(predictions, 2).where(f"{USER_ID} = 'a'").first()[M.RECS] == ["p", "q"]


def test_hand_worked_metrics(spark, hand_worked):
    targets, predictions = hand_worked
    frame = M.evaluation_frame(M.rank_lists(predictions, 10), targets, 10)
    per_user = {r[USER_ID]: r for r in frame.collect()}
    assert per_user["c"][M.RECS] == [] and not per_user["c"][M.HAS_PREDICTIONS]
    assert per_user["d"][M.RECS] == ["w"] and per_user["d"][M.N_SEEN] == 1
    assert per_user["a"][M.N_DUPLICATES] == 1

    counted = as_dict(M.ranking_metrics(frame, [1, 3, 10]))
    result = {key: value for key, (value, _) in counted.items()}
    # Test users a, b, c, d (e has no test item). Per user at K=1: a 0, b 1, c 0, d 1 (w moves up
    # once the seen h4 is removed). At K=3, a hits at position 3.
    assert result[("recall", 1)] == pytest.approx(2 / 4)
    assert result[("hit_rate", 1)] == pytest.approx(2 / 4)
    assert result[("ndcg", 1)] == pytest.approx(2 / 4)
    assert result[("mrr", 1)] == pytest.approx(2 / 4)
    assert result[("recall", 3)] == pytest.approx(3 / 4)
    assert result[("ndcg", 3)] == pytest.approx((1 / math.log2(4) + 1 + 1) / 4)
    assert result[("mrr", 3)] == pytest.approx((1 / 3 + 1 + 1) / 4)
    assert result[("ndcg", 10)] == result[("ndcg", 3)]
    assert {n for _, n in counted.values()} == {4}


def test_several_held_out_items_use_ideal_dcg(spark):
    targets = spark.createDataFrame([("u", ["a", "b", "c"], [], True)], TARGET_SCHEMA)
    predictions = spark.createDataFrame([("u", "a", 1), ("u", "n", 2), ("u", "b", 3)], PRED_SCHEMA)
    frame = M.evaluation_frame(M.rank_lists(predictions, 5), targets, 5)
    result = as_dict(M.ranking_metrics(frame, [2]))
    assert result[("recall", 2)][0] == pytest.approx(1 / 3)
    assert result[("ndcg", 2)][0] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert result[("mrr", 2)][0] == pytest.approx(1.0)


@pytest.mark.parametrize("ks", [[0], [5, -1], [], [2.5]])
def test_bad_k_is_a_clear_error(ks):
    with pytest.raises(ValueError, match="K"):
        M.check_ks(ks)


def python_reference(targets: dict, predictions: list, history: dict, ks: list, stderr: bool = False) -> dict:
    """Textbook metrics on Python lists: the oracle for the Spark expressions."""
    lists: dict = {}
    for user, item, rank in sorted(predictions, key=lambda p: (p[0], p[2], p[1])):
        ranked = lists.setdefault(user, [])
        if item not in ranked:
            ranked.append(item)
    out = {}
    for k in ks:
        values = {metric: [] for metric in M.ACCURACY_METRICS}
        for user, test in targets.items():
            top = [i for i in lists.get(user, []) if i not in history[user]][:k]
            hits = [pos for pos, item in enumerate(top) if item in test]
            values["recall"].append(len(hits) / len(test))
            values["hit_rate"].append(1.0 if hits else 0.0)
            values["mrr"].append(1.0 / (hits[0] + 1) if hits else 0.0)
            ideal = sum(1 / math.log2(i + 2) for i in range(min(len(test), k)))
            values["ndcg"].append(sum(1 / math.log2(p + 2) for p in hits) / ideal)
        for metric, per_user in values.items():
            out[(metric, k)] = sum(per_user) / len(per_user)
            if stderr:  # the standard error of the mean over users: sample sd / sqrt(n)
                out[(metric + M.STDERR_SUFFIX, k)] = statistics.stdev(per_user) / math.sqrt(len(per_user))
    return out


def test_spark_metrics_equal_python_reference_on_random_data(spark):
    rng = random.Random(11)
    items = [f"i{n}" for n in range(25)]
    targets, history, predictions, rows = {}, {}, [], []
    for u in range(40):
        user = f"u{u}"
        seen = rng.sample(items, rng.randint(0, 5))
        test = rng.sample([i for i in items if i not in seen], rng.randint(1, 3))
        targets[user], history[user] = test, set(seen)
        rows.append((user, test, seen, rng.random() < 0.5))
        if rng.random() < 0.15:
            continue  # some users get no predictions
        for _ in range(rng.randint(1, 15)):
            predictions.append((user, rng.choice(items), rng.randint(1, 12)))  # ties and duplicates
    ks = [1, 3, 5, 10]
    frame = M.evaluation_frame(
        M.rank_lists(spark.createDataFrame(predictions, PRED_SCHEMA), 30),
        spark.createDataFrame(rows, TARGET_SCHEMA),
        10,
    )
    result = as_dict(M.ranking_metrics(frame, ks))
    expected = python_reference(targets, predictions, history, ks)
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key][0] == pytest.approx(value), key
        assert result[key][1] == 40
    # With standard errors (metrics on a sample of users): a row <metric>_stderr per metric.
    with_errors = as_dict(M.ranking_metrics(frame, ks, stderr=True))
    expected = python_reference(targets, predictions, history, ks, stderr=True)
    assert set(with_errors) == set(expected) and len(expected) == 2 * len(ks) * len(M.ACCURACY_METRICS)
    for key, value in expected.items():
        assert with_errors[key][0] == pytest.approx(value), key
    assert all(with_errors[(m + M.STDERR_SUFFIX, 10)][0] > 0 for m in M.ACCURACY_METRICS)


def test_item_popularity_percentiles_and_self_information(spark):
    histories = spark.createDataFrame(
        [("u1", ["A", "B", "A"]), ("u2", ["A"]), ("u3", ["A", "C"])],
        f"{USER_ID} string, {HISTORY_ITEMS} array<string>",
    )
    catalog = spark.createDataFrame([("A",), ("B",), ("C",), ("D",)], f"{ITEM_ID} string")
    pop = {r[ITEM_ID]: r for r in M.item_popularity(histories, catalog).collect()}
    assert {i: pop[i][M.N_INTERACTIONS] for i in pop} == {"A": 3, "B": 1, "C": 1, "D": 0}
    assert pop["D"][M.POP_PERCENTILE] == pytest.approx(0.125)
    assert pop["B"][M.POP_PERCENTILE] == pytest.approx(0.5) == pop["C"][M.POP_PERCENTILE]
    assert pop["A"][M.POP_PERCENTILE] == pytest.approx(0.875)
    assert pop["A"][M.SELF_INFORMATION] == pytest.approx(0.0)
    assert pop["B"][M.SELF_INFORMATION] == pytest.approx(1.0)
    assert pop["D"][M.SELF_INFORMATION] == pytest.approx(2.0)

    frame = spark.createDataFrame(
        [("u1", ["D", "C"]), ("u2", ["D", "A"]), ("u3", [])], f"{USER_ID} string, {M.RECS} array<string>"
    )
    result = as_dict(M.catalog_metrics(frame, M.item_popularity(histories, catalog), 4, [1, 2]))
    assert result[("coverage", 1)] == (pytest.approx(1 / 4), 3)
    assert result[("coverage", 2)][0] == pytest.approx(3 / 4)
    assert result[("novelty", 1)][0] == pytest.approx(2.0)
    assert result[("novelty", 2)][0] == pytest.approx((2 + 2 + 1 + 0) / 4)
    assert result[("pop_percentile", 2)][0] == pytest.approx((0.125 * 2 + 0.5 + 0.875) / 4)
    reference = M.interacted_pop_percentile(histories, M.item_popularity(histories, catalog)).first()[0]
    assert reference == pytest.approx((0.875 * 4 + 0.5 * 2) / 6)


def test_sampled_rank_of_held_out_item(spark):
    frame = spark.createDataFrame(
        [
            ("listed", ["t"], True, ["n1", "t", "n2"]),
            ("unlisted", ["t"], False, ["n1"]),
        ],
        f"{USER_ID} string, {TEST_ITEMS} array<string>, {TEST_UNTIED} boolean, {M.RECS} array<string>",
    )
    negatives = spark.createDataFrame(
        [("listed", ["n1", "n2", "n3", "n4"]), ("unlisted", ["n1", "n2", "n3"])],
        f"{USER_ID} string, {M.NEGATIVES} array<string>",
    )
    ranks = {r[USER_ID]: r[M.TARGET_RANK] for r in M.sampled_ranks(frame, negatives).collect()}
    # listed: only n1 is above t. unlisted: n1 is listed (above), t sits in the middle of n2, n3.
    assert ranks == {"listed": 2, "unlisted": 3}
    result = as_dict(M.sampled_metrics(M.sampled_ranks(frame, negatives), [2]))
    assert result[("hit_rate", 2)][0] == pytest.approx(0.5)
    assert result[("ndcg", 2)][0] == pytest.approx(0.5 / math.log2(3))


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_sampled_negatives_are_unseen_distinct_and_seeded(spark, distribution):
    catalog = spark.createDataFrame([(f"i{n}",) for n in range(30)], f"{ITEM_ID} string")
    histories = spark.createDataFrame(
        [(f"u{u}", ["i0", "i1"] + ([f"i{u + 2}"] if u < 5 else [])) for u in range(12)],
        f"{USER_ID} string, {HISTORY_ITEMS} array<string>",
    )
    # i28 was seen before the history window: never a negative either.
    targets = histories.selectExpr(
        USER_ID, f"array_union({HISTORY_ITEMS}, array('i28')) as {SEEN_ITEMS}", f"array('i29') as {TEST_ITEMS}"
    )
    pop = M.item_popularity(histories, catalog)
    drawn = M.sampled_negatives(targets, pop, 8, distribution, seed=5)
    rows = {r[USER_ID]: r[M.NEGATIVES] for r in drawn.collect()}
    assert len(rows) == 12
    for user, negatives in rows.items():
        assert len(negatives) == 8 == len(set(negatives))
        assert not {"i0", "i1", "i28", "i29"} & set(negatives)
    again = {r[USER_ID]: r[M.NEGATIVES] for r in M.sampled_negatives(targets, pop, 8, distribution, seed=5).collect()}
    assert again == rows


def test_paired_bootstrap_matches_resampling_users_and_ignores_order():
    rng = np.random.default_rng(0)
    n_users = 2_000
    differences = np.where(rng.random(n_users) < 0.1, rng.normal(0.05, 0.3, n_users), 0.0)
    non_zero = differences[differences != 0]
    got = M.paired_bootstrap(non_zero.tolist(), n_users, samples=2_000, seed=3)
    # The textbook paired bootstrap (n of n users with replacement, zeros included) as the oracle.
    resampled = differences[rng.integers(0, n_users, size=(2_000, n_users))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    assert got["mean"] == pytest.approx(differences.mean())
    assert got["low"] == pytest.approx(low, abs=0.003) and got["high"] == pytest.approx(high, abs=0.003)
    assert got["low"] < got["mean"] < got["high"] and (got["n_users"], got["samples"]) == (n_users, 2_000)
    assert M.paired_bootstrap(non_zero[::-1].tolist(), n_users, 2_000, 3) == got  # order-free, seeded
    assert M.paired_bootstrap([], 10, 100, 3) == {"mean": 0.0, "low": 0.0, "high": 0.0, "n_users": 10, "samples": 100}
    with pytest.raises(ValueError, match="3 non-zero differences for 2 users"):
        M.paired_bootstrap([0.1, 0.2, 0.3], 2, 100, 3)


def test_user_scores_average_to_the_ranking_metrics(spark, hand_worked):
    frame = M.evaluation_frame(M.rank_lists(hand_worked[1]), hand_worked[0], 3)
    per_user = {r["user_id"]: r for r in M.user_scores(frame, 3).collect()}
    means = {(r["metric"], r["k"]): r["value"] for r in M.ranking_metrics(frame, [3]).collect()}
    assert sum(r["ndcg"] for r in per_user.values()) / len(per_user) == pytest.approx(means[("ndcg", 3)])
    assert sum(r["hit_rate"] for r in per_user.values()) / len(per_user) == pytest.approx(means[("hit_rate", 3)])
