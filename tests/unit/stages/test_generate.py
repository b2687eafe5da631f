"""The synthetic generator: exact counts of every kind of line, determinism, and the structure
(topics, sessions, popularity, time order) that makes the data worth learning from."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from recsys_spark.stages import generate, ingest
from recsys_spark.core.config import ConfigError, GenerateConfig, load_config
from recsys_spark.core.schemas import EVENT_TYPES

SMALL = (
    "generate.users=60",
    "generate.items=50",
    "generate.events=3000",
    "generate.topics=5",
    "generate.partitions=3",
)


def read_lines(folder: str) -> list[str]:
    files = sorted(Path(folder).glob("*.jsonl"))
    assert files, f"no .jsonl files in {folder}"
    return [line.rstrip("\n") for f in files for line in f.read_text(encoding="utf-8").splitlines()]


def parse(line: str):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record


def classify(record: dict | None) -> str:
    """The generator's own kinds, recognised from the line's content."""
    if record is None:
        return "broken_json"
    if "user_id" not in record:
        return "missing_user_id"
    if "item_id" not in record:
        return "missing_item_id"
    if record["event_type"] not in EVENT_TYPES:
        return "unknown_event_type"
    ts = record["timestamp"]
    if isinstance(ts, str):
        try:
            seconds = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return "bad_timestamp"
    else:
        seconds = ts
    if seconds >= generate.EPOCH_START + 2 * generate.SPAN_SECONDS:
        return "future_timestamp"
    if seconds < generate.EPOCH_START:
        return "past_timestamp"
    return "good"


def epoch(ts) -> int:
    if isinstance(ts, str):
        return int(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
    return int(ts)


def test_counts_of_every_kind_match_the_summary(make_ctx):
    ctx = make_ctx(*SMALL, "generate.bad_fraction=0.08")
    summary = generate.run(ctx)
    lines = read_lines(summary["events_path"])
    assert len(lines) == summary["event_lines"] == 3000

    kinds = Counter()
    seen_ids = Counter()
    for line in lines:
        record = parse(line)
        kind = classify(record)
        if kind == "good":
            seen_ids[record["event_id"]] += 1
        kinds[kind] += 1
    duplicates = sum(n - 1 for n in seen_ids.values())
    expected = dict(summary["bad_event_kinds"])
    assert duplicates == expected.pop("duplicate") == summary["events_duplicate"] > 0
    assert {k: kinds[k] for k in expected} == expected
    assert len(seen_ids) == summary["events_good"] == 3000 - round(3000 * 0.08)
    assert summary["events_malformed"] == sum(expected.values())

    items = read_lines(summary["items_path"])
    assert len(items) == summary["item_lines"] == 50 + 4
    good_items = [parse(line) for line in items]
    good_items = [r for r in good_items if r is not None and "item_id" in r]
    assert sorted(r["item_id"] for r in good_items) == sorted(f"i{i}" for i in range(50))
    assert summary["bad_item_kinds"] == {"broken_json": 2, "missing_item_id": 2}


def test_writes_under_the_warehouse_raw_folder_or_generate_output(make_ctx, tmp_path):
    ctx = make_ctx(*SMALL)
    summary = generate.run(ctx)
    assert summary["events_path"] == ctx.lake.raw_path("events")
    assert summary["items_path"] == ctx.lake.raw_path("items")
    out = tmp_path / "elsewhere"
    summary = generate.run(make_ctx(*SMALL, f"generate.output={out}"))
    assert summary["events_path"] == f"{out}/events"
    assert sorted(p.name for p in (out / "events").glob("*.jsonl")) == [
        "events-00000.jsonl", "events-00001.jsonl", "events-00002.jsonl"
    ]
    assert [p.name for p in (out / "items").glob("*.jsonl")] == ["items-00000.jsonl"]


def test_same_seed_same_lines_other_seed_other_lines(make_ctx, tmp_path):
    first = generate.run(make_ctx(*SMALL, "generate.bad_fraction=0.05", f"generate.output={tmp_path / 'a'}"))
    again = generate.run(make_ctx(*SMALL, "generate.bad_fraction=0.05", f"generate.output={tmp_path / 'b'}"))
    other = generate.run(
        make_ctx(*SMALL, "generate.bad_fraction=0.05", "generate.seed=8", f"generate.output={tmp_path / 'c'}")
    )
    assert read_lines(first["events_path"]) == read_lines(again["events_path"])
    assert read_lines(first["items_path"]) == read_lines(again["items_path"])
    assert read_lines(first["events_path"]) != read_lines(other["events_path"])
    assert read_lines(first["items_path"]) != read_lines(other["items_path"])


def test_rerun_into_the_same_folder_replaces_it(make_ctx):
    generate.run(make_ctx(*SMALL))
    summary = generate.run(make_ctx(*SMALL))
    assert len(read_lines(summary["events_path"])) == 3000


def test_sessions_stay_in_one_topic_and_time_increases_per_user(make_ctx):
    summary = generate.run(make_ctx(*SMALL))
    records = [json.loads(line) for line in read_lines(summary["events_path"])]
    topics = 5
    by_session: dict[str, set] = {}
    by_user: dict[str, list] = {}
    for r in records:
        topic = int(r["item_id"][1:]) % topics
        by_session.setdefault(r["session_id"], set()).add(topic)
        by_user.setdefault(r["user_id"], []).append(epoch(r["timestamp"]))
    assert all(len(t) == 1 for t in by_session.values())
    assert len(by_session) > len(by_user)  # users come back in several sessions
    for times in by_user.values():
        assert all(b > a for a, b in zip(times, times[1:]))
    all_times = [t for times in by_user.values() for t in times]
    assert generate.EPOCH_START <= min(all_times) and max(all_times) < generate.EPOCH_START + generate.SPAN_SECONDS
    formats = Counter(type(r["timestamp"]).__name__ for r in records)
    assert formats["str"] > 0 and formats["int"] > 0


def test_users_prefer_few_topics_and_popularity_is_skewed(make_ctx):
    summary = generate.run(make_ctx(*SMALL))
    records = [json.loads(line) for line in read_lines(summary["events_path"])]
    per_user: dict[str, Counter] = {}
    for r in records:
        per_user.setdefault(r["user_id"], Counter())[int(r["item_id"][1:]) % 5] += 1
    heavy = [c for c in per_user.values() if sum(c.values()) >= 30]
    assert heavy
    # At most three preferred topics (plus rare exploration): the top three hold most events.
    top_share = [sum(n for _, n in c.most_common(3)) / sum(c.values()) for c in heavy]
    assert float(np.median(top_share)) >= 0.85
    item_counts = Counter(r["item_id"] for r in records)
    top_tenth = sum(n for _, n in item_counts.most_common(5))
    assert top_tenth / len(records) > 0.3  # uniform would give 0.1
    kinds = Counter(r["event_type"] for r in records)
    assert set(kinds) == set(EVENT_TYPES)
    assert all(("value" in r) == (r["event_type"] in ("rating", "purchase")) for r in records)


def test_item_texts_use_their_topic_words():
    plan = generate.GenerationPlan.from_config(GenerateConfig(items=30, topics=3, events=10, users=2))
    records = [json.loads(line) for line in generate.item_lines(plan, 0)]
    shapes = Counter(type(r["tags"]).__name__ for r in records)
    assert shapes["list"] > 0 and shapes["str"] > 0
    for r in records:
        topic = int(r["item_id"][1:]) % 3
        words = set(generate.topic_words(topic))
        assert r["category"] == generate.topic_name(topic)
        tags = r["tags"] if isinstance(r["tags"], list) else r["tags"].split(",")
        assert set(tags) <= words
        described = set(r["description"].lower().rstrip(".").split())
        assert described & words and described <= words | set(generate.FILLER_WORDS)


def test_many_topics_reuse_word_lists_under_distinct_names():
    count = len(generate.TOPIC_NAMES) * 2 + 3
    names = [generate.topic_name(t) for t in range(count)]
    assert len(set(names)) == count
    assert generate.topic_words(0) != generate.topic_words(len(generate.TOPIC_NAMES))


def test_heavy_user_timestamps_fit_the_year_without_ties():
    rng = np.random.default_rng(0)
    n = 1_000_000
    counts = np.array([n, 3])
    user_of_row = np.repeat([0, 1], counts)
    new_session = rng.random(n + 3) < 0.2
    seconds = generate._timestamps(rng, counts, user_of_row, new_session)
    heavy = seconds[:n]
    assert np.all(np.diff(heavy) >= 1)
    assert heavy[-1] < generate.EPOCH_START + generate.SPAN_SECONDS
    assert np.all(np.diff(seconds[n:]) >= 1)


def test_every_line_bad_leaves_nothing_to_duplicate():
    plan = generate.GenerationPlan.from_config(GenerateConfig(users=4, items=4, topics=2, events=40, bad_fraction=1.0, partitions=2))
    counts = generate.expected_counts(plan)
    assert counts["events_good"] == 0 and counts["events_duplicate"] == 0
    assert sum(counts["bad_event_kinds"].values()) == 40


def test_plan_splits_users_and_events_exactly():
    plan = generate.GenerationPlan.from_config(GenerateConfig(users=7, items=5, topics=2, events=1001, partitions=3))
    assert sum(hi - lo for lo, hi in map(plan.event_range, range(3))) == 1001
    assert [plan.user_range(p) for p in range(3)] == [(0, 2), (2, 4), (4, 7)]
    # More partitions than users: every partition still owns a user.
    assert generate.GenerationPlan.from_config(GenerateConfig(users=2, items=5, topics=2, partitions=9)).partitions == 2
    assert generate.GenerationPlan.from_config(GenerateConfig(events=600_000)).partitions == 3


@pytest.mark.parametrize(
    "override, key",
    [
        ("generate.topics=60", "generate.topics"),
        ("generate.bad_fraction=1.5", "generate.bad_fraction"),
        ("generate.events=0", "generate.events"),
        ("generate.partitions=-1", "generate.partitions"),
        ("generate.seed=abc", "generate.seed"),
    ],
)
def test_invalid_generate_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("local", ["generate.items=50", override])


def test_ingest_finds_exactly_what_was_planted(make_ctx):
    summary = generate.run(make_ctx(*SMALL, "generate.bad_fraction=0.1"))
    ctx = make_ctx(
        "input.format=events", f"input.events={summary['events_path']}", f"input.items={summary['items_path']}"
    )
    ingested = ingest.run(ctx)
    assert ingested["rows_in"] == summary["event_lines"]
    assert ingested["rows_good"] == summary["events_good"]
    assert ingested["rows_quarantined"] == summary["events_malformed"]
    assert ingested["rows_duplicate"] == summary["events_duplicate"]
    planted = {k: n for k, n in summary["bad_event_kinds"].items() if k != "duplicate"}
    reasons = dict(ingested["quarantine_reasons"])
    # The generator's kinds under ingest's reason names.
    assert reasons.pop("malformed_json") == planted.pop("broken_json")
    assert reasons.pop("unparsable_timestamp") == planted.pop("bad_timestamp")
    assert reasons == planted
    assert ingested["items_in"] == summary["item_lines"]
    assert ingested["items_quarantined"] == summary["items_bad"]
