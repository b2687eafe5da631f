"""The popularity model on tiny hand-worked histories: counts, the top-N with ties, the unseen filter."""
from __future__ import annotations

import pytest

from recsys_spark.core.schemas import HISTORY_ITEMS, ITEM_ID, ITEMS, N_INTERACTIONS, RANK, USER_ID
from recsys_spark.models import popularity as P

LISTS = f"{USER_ID} string, {ITEMS} array<string>"


@pytest.fixture
def histories(spark):
    # Users per item: a {u1,u2,u3} (u1 twice, counted once), b {u1,u2}, c {u2,u3}, d {u3}.
    return spark.createDataFrame(
        [("u1", ["a", "b", "a"]), ("u2", ["b", "a", "c"]), ("u3", ["c", "d", "a"]), ("u4", [])], LISTS
    )


def counts_of(df) -> dict:
    return {r[ITEM_ID]: r[N_INTERACTIONS] for r in df.collect()}


def by_user(df) -> dict:
    out: dict = {}
    for r in df.orderBy(USER_ID, RANK).collect():
        out.setdefault(r[USER_ID], []).append((r[RANK], r[ITEM_ID], r[N_INTERACTIONS]))
    return out


def test_counts_users_not_events_and_adds_catalog_items_at_zero(spark, histories):
    assert counts_of(P.item_counts(histories)) == {"a": 3, "b": 2, "c": 2, "d": 1}
    catalog = spark.createDataFrame([("a",), ("e",), ("e",)], f"{ITEM_ID} string")
    counted = P.item_counts(histories, catalog=catalog)
    assert counts_of(counted) == {"a": 3, "b": 2, "c": 2, "d": 1, "e": 0}
    assert counted.count() == 5  # every item once, the catalog's duplicate too
    assert dict(counted.dtypes)[N_INTERACTIONS] == "bigint"
    renamed = histories.withColumnRenamed(ITEMS, HISTORY_ITEMS)
    assert counts_of(P.item_counts(renamed, HISTORY_ITEMS)) == {"a": 3, "b": 2, "c": 2, "d": 1}
    with pytest.raises(ValueError, match=ITEMS):
        P.item_counts(renamed)


def test_top_items_orders_by_users_then_item_id(spark, histories):
    counts = P.item_counts(histories)
    top = [(r[RANK], r[ITEM_ID], r[N_INTERACTIONS]) for r in P.top_items(counts, 3).orderBy(RANK).collect()]
    # b and c tie at 2 users: b first by item id; d (1 user) is cut.
    assert top == [(1, "a", 3), (2, "b", 2), (3, "c", 2)]
    assert P.top_items(counts, 10).count() == 4


def test_top_unseen_skips_each_users_items_and_keeps_k(spark, histories):
    counts = P.item_counts(histories)
    users = spark.createDataFrame([("u1", ["a", "b"]), ("x", ["c", "a", "b"]), ("new", None), ("empty", [])], LISTS)
    result = by_user(P.top_unseen(counts, users, 2))
    assert result == {
        "u1": [(1, "c", 2), (2, "d", 1)],  # a and b are seen: the next two, ranked from 1
        "x": [(1, "d", 1)],  # only d is left unseen: fewer than k
        "new": [(1, "a", 3), (2, "b", 2)],  # no list at all counts as an empty one
        "empty": [(1, "a", 3), (2, "b", 2)],
    }
    # The shared top list reaches k + the longest seen list: a user who saw the top three still gets k.
    assert P.longest(users) == 3
    assert P.longest(spark.createDataFrame([("n", None)], LISTS)) == 0


def test_top_unseen_reads_another_seen_column(spark, histories):
    counts = P.item_counts(histories)
    users = spark.createDataFrame([("u1", ["a"])], f"{USER_ID} string, {HISTORY_ITEMS} array<string>")
    assert by_user(P.top_unseen(counts, users, 1, HISTORY_ITEMS)) == {"u1": [(1, "b", 2)]}
