"""Issue 8.1 — fuzzed input: 10,000 malformed lines of every kind mixed with good ones, and
hypothesis-generated records and byte strings. Ingest must not crash, must account for every
line (rows_in == good + quarantined + duplicate), and every quarantine row must say why."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from tests.support.fuzz_lines import KINDS, write_fuzz_file
from recsys_spark.stages import ingest
from recsys_spark.io import sources
from recsys_spark.core.config import IngestConfig
from recsys_spark.core.schemas import EVENT_ID, QUARANTINE_TABLE, RAW, REASON, SILVER_EVENTS_TABLE


def kind_of(event_id: str) -> str:
    return event_id.rsplit("-", 1)[0]


@pytest.mark.slow
def test_ten_thousand_malformed_lines(make_ctx, tmp_path):
    manifest = write_fuzz_file(tmp_path / "input", n_malformed=10_000, n_good=2_000)
    ctx = make_ctx("input.format=events", f"input.events={tmp_path / 'input'}")
    summary = ingest.run(ctx)  # 0 crashes: any exception fails the test here

    assert summary["rows_in"] == manifest.lines == 12_000
    assert summary["rows_in"] == summary["rows_good"] + summary["rows_quarantined"] + summary["rows_duplicate"]
    assert summary["rows_duplicate"] == manifest.duplicates
    # Judgement calls (numeric ids, replaced invalid bytes...) may go either way; nothing else.
    assert len(manifest.good_ids) <= summary["rows_good"] <= len(manifest.good_ids) + manifest.either_lines

    silver = ctx.lake.read(SILVER_EVENTS_TABLE)
    quarantine = ctx.lake.read(QUARANTINE_TABLE)
    assert silver.count() == summary["rows_good"]
    assert quarantine.count() == summary["rows_quarantined"]
    assert quarantine.where(F.col(REASON).isNull() | (F.trim(F.col(REASON)) == "")).count() == 0
    assert quarantine.where(F.col(RAW).isNull()).count() == 0
    assert sum(summary["quarantine_reasons"].values()) == summary["rows_quarantined"]

    stored_ids = {r[0] for r in silver.select(EVENT_ID).collect()}
    assert manifest.good_ids <= stored_ids, f"good events lost: {sorted(manifest.good_ids - stored_ids)[:5]}"
    wrongly_accepted = Counter(kind_of(e) for e in manifest.bad_ids & stored_ids)
    assert not wrongly_accepted, f"malformed lines stored as good, by kind: {dict(wrongly_accepted)}"
    kinds_seen = {kind_of(e) for e in stored_ids}
    assert kinds_seen <= {"good"} | {k.name for k in KINDS if k.expect == "either"}


@pytest.mark.slow
def test_rerun_on_fuzzed_input_adds_nothing(make_ctx, tmp_path):
    write_fuzz_file(tmp_path / "input", n_malformed=800, n_good=200, seed=1)
    ctx = make_ctx("input.format=events", f"input.events={tmp_path / 'input'}", "ingest.incremental=false")
    first = ingest.run(ctx)
    second = ingest.run(ctx)
    assert second["rows_in"] == first["rows_in"]
    assert second["rows_good"] == 0
    assert second["rows_duplicate"] == first["rows_good"] + first["rows_duplicate"]
    assert ctx.lake.read(SILVER_EVENTS_TABLE).count() == first["rows_good"]


# ---- property-based -------------------------------------------------------------------
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
FIELD_VALUES = st.one_of(
    JSON_SCALARS,
    st.lists(JSON_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=2),
    st.sampled_from(["view", "click", "rating", "purchase", "2023-05-01T10:00:00Z", "1680000000", " ", ""]),
)
FIELDS = ("user_id", "item_id", "event_type", "timestamp", "value", "session_id", "event_id")
RECORDS = st.dictionaries(st.sampled_from(FIELDS + ("extra",)), FIELD_VALUES, max_size=8)


def render(record: dict, cut: int | None, ascii_only: bool) -> bytes:
    line = json.dumps(record, ensure_ascii=ascii_only).encode("utf-8")
    return line if cut is None else line[: max(1, cut % max(1, len(line)))]


def validated_rows(spark, path) -> list:
    files = sources.list_files(spark, str(path))
    raw_events = sources.read_event_files(spark, files)
    return ingest.validate_events(raw_events, IngestConfig(), datetime(2026, 1, 1)).collect()


def check_rows(rows: list, expected_rows: int) -> None:
    cfg = IngestConfig()
    assert len(rows) == expected_rows  # one row per non-blank line: nothing dropped, nothing split
    for row in rows:
        if row[REASON] is not None:
            assert row[REASON].strip(), "empty reason"
            continue
        # A row without a reason is complete and typed.
        assert row["user_id"] and row["user_id"].strip()
        assert row["item_id"] and row["item_id"].strip()
        assert row["event_type"].strip().lower() in cfg.event_types
        assert row["ts"] is not None
        assert datetime(1990, 1, 1) <= row["ts"] <= datetime(2026, 1, 2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.tuples(RECORDS, st.one_of(st.none(), st.integers(0, 400)), st.booleans()), min_size=1, max_size=40
    )
)
def test_any_json_record_is_typed_or_quarantined(spark, tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("hypothesis-json")
    rendered = [render(record, cut, ascii_only) for record, cut, ascii_only in lines]
    rendered = [line for line in rendered if line.strip()]
    (folder / "events.jsonl").write_bytes(b"\n".join(rendered) + b"\n")
    check_rows(validated_rows(spark, folder), len(rendered))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=40))
def test_any_bytes_are_counted_never_crash(spark, tmp_path_factory, lines):
    # Arbitrary bytes, one line each (line breaks taken out): invalid UTF-8, NULs, control codes.
    folder = tmp_path_factory.mktemp("hypothesis-bytes")
    cleaned = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    # Ingest skips blank lines: nothing but ASCII whitespace (Java's \s, Python's bytes.strip()).
    kept = [line for line in cleaned if line.strip()]
    (folder / "events.jsonl").write_bytes(b"\n".join(cleaned) + b"\n")
    check_rows(validated_rows(spark, folder), len(kept))
