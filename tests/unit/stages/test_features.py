"""User sequences and splits on hand-made events."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from recsys_spark.core.config import load_config
from recsys_spark.stages.features import build_sequences
from recsys_spark.core.schemas import SILVER_EVENTS


def _events(spark, rows):
    full = [
        (eid, user, item, etype, datetime.fromtimestamp(ts, tz=timezone.utc), value, None, "test", None)
        for eid, user, item, etype, ts, value in rows
    ]
    return spark.createDataFrame(full, SILVER_EVENTS)


def _features(*overrides):
    return load_config("local", list(overrides)).features


def _by_user(df):
    return {r["user_id"]: r for r in df.collect()}


BASE = 1_700_000_000


def test_leave_one_out_split(spark):
    rows = [
        ("a1", "u", "i1", "click", BASE + 1, None),
        ("a2", "u", "i2", "purchase", BASE + 2, None),
        ("a3", "u", "i3", "cart", BASE + 3, None),
        ("a4", "u", "i4", "rating", BASE + 4, 5.0),
        ("b1", "two", "i1", "view", BASE + 1, None),
        ("b2", "two", "i2", "view", BASE + 5, None),
        ("c1", "one", "i9", "view", BASE, None),
    ]
    seq = _by_user(build_sequences(_events(spark, rows), _features()))
    u = seq["u"]
    assert u["items"] == ["i1", "i2", "i3", "i4"]
    assert u["timestamps"] == [BASE + 1, BASE + 2, BASE + 3, BASE + 4]
    assert u["test_items"] == ["i4"] and u["val_items"] == ["i3"]
    assert u["history_items"] == ["i1", "i2", "i3"] and u["train_items"] == ["i1", "i2"]
    assert u["test_untied"] is True
    # weights: click 1, purchase 4, cart 2, rating 5 -> 0.5 * (5 - 2) = 1.5
    assert u["weights"] == [1.0, 4.0, 2.0, 1.5]
    assert u["train_weights"] == [1.0, 4.0]
    two = seq["two"]
    assert two["test_items"] == ["i2"] and two["val_items"] == [] and two["train_items"] == ["i1"]
    one = seq["one"]
    assert one["test_items"] == [] and one["history_items"] == ["i9"] and one["test_untied"] is None
    assert u["seen_items"] == ["i1", "i2", "i3"] and u["train_seen_items"] == ["i1", "i2"]
    assert two["seen_items"] == two["train_seen_items"] == ["i1"] and one["seen_items"] == ["i9"]


def test_ties_are_broken_by_seeded_random_order_not_item_id(spark):
    # 30 users, each with three events in the same second: items z, y, x by id order.
    rows = []
    for n in range(30):
        for item in ("x", "y", "z"):
            rows.append((f"e{n}{item}", f"u{n}", item, "view", BASE, None))
    events = _events(spark, rows)
    first = _by_user(build_sequences(events, _features()))
    again = _by_user(build_sequences(events, _features()))
    other_seed = _by_user(build_sequences(events, _features("features.tie_break_seed=99")))
    orders = {tuple(r["items"]) for r in first.values()}
    assert len(orders) > 1  # not a fixed order such as item id
    assert all(first[u]["items"] == again[u]["items"] for u in first)  # stable for a seed
    assert any(first[u]["items"] != other_seed[u]["items"] for u in first)
    assert all(r["test_untied"] is False for r in first.values())


def test_truncation_keeps_most_recent(spark):
    rows = [(f"e{i}", "u", f"i{i}", "view", BASE + i, None) for i in range(10)]
    seq = _by_user(build_sequences(_events(spark, rows), _features("features.max_sequence_length=4")))
    assert seq["u"]["items"] == ["i6", "i7", "i8", "i9"]
    assert seq["u"]["n_events"] == 10


def test_time_cut_and_none_splits(spark):
    cut = datetime.fromtimestamp(BASE + 10, tz=timezone.utc).isoformat()
    rows = [
        ("e1", "u", "a", "view", BASE + 1, None),
        ("e2", "u", "b", "view", BASE + 2, None),
        ("e3", "u", "c", "view", BASE + 3, None),
        ("e4", "u", "d", "view", BASE + 11, None),
        ("e5", "u", "a", "view", BASE + 12, None),  # already in history: not a test target
        ("e6", "u", "e", "view", BASE + 13, None),
    ]
    events = _events(spark, rows)
    cutseq = _by_user(build_sequences(events, _features("features.split=time_cut", f"features.time_cut={cut}")))["u"]
    assert cutseq["history_items"] == ["a", "b", "c"]
    assert cutseq["val_items"] == ["c"] and cutseq["train_items"] == ["a", "b"]
    assert sorted(cutseq["test_items"]) == ["d", "e"]
    none = _by_user(build_sequences(events, _features("features.split=none")))["u"]
    assert none["history_items"] == none["train_items"] == ["a", "b", "c", "d", "a", "e"]
    assert none["test_items"] == [] and none["val_items"] == []
    assert none["seen_items"] == ["a", "b", "c", "d", "e"]
    assert cutseq["seen_items"] == ["a", "b", "c"] and cutseq["train_seen_items"] == ["a", "b"]


def test_time_cut_requires_a_cut():
    from recsys_spark.core.config import ConfigError

    with pytest.raises(ConfigError, match="features.time_cut"):
        _features("features.split=time_cut")


def test_seen_items_hold_every_event_before_the_held_out_ones_beyond_the_window(spark):
    # 300 events: s0..s289, then s0..s7 again, then the validation item v and the test item t.
    items = [f"s{i}" for i in range(290)] + [f"s{i}" for i in range(8)] + ["v", "t"]
    rows = [(f"e{i}", "u", item, "view", BASE + i, None) for i, item in enumerate(items)]
    events = _events(spark, rows)
    seen_before_val = sorted({f"s{i}" for i in range(290)})

    u = _by_user(build_sequences(events, _features()))["u"]
    assert u["n_events"] == 300 and len(u["items"]) == 200  # the window stays bounded
    assert len(u["history_items"]) == 199 and u["history_items"][0] == "s100"
    assert u["test_items"] == ["t"] and u["val_items"] == ["v"]
    assert u["seen_items"] == sorted(seen_before_val + ["v"])  # distinct, sorted, complete
    assert u["train_seen_items"] == seen_before_val  # the validation item is held out there

    none = _by_user(build_sequences(events, _features("features.split=none")))["u"]
    assert none["seen_items"] == none["train_seen_items"] == sorted(seen_before_val + ["v", "t"])

    # A time cut before t; s50 again after it: seen before the window, so not a test target.
    cut = datetime.fromtimestamp(BASE + 299, tz=timezone.utc).isoformat()
    later = _events(spark, rows + [("late", "u", "s50", "view", BASE + 400, None)])
    cutseq = _by_user(build_sequences(later, _features("features.split=time_cut", f"features.time_cut={cut}")))["u"]
    assert cutseq["test_items"] == ["t"] and cutseq["val_items"] == ["v"]
    assert cutseq["seen_items"] == sorted(seen_before_val + ["v"])
    assert cutseq["train_seen_items"] == seen_before_val
