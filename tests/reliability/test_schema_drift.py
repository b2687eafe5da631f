"""Issue 20.3 — input files whose schema drifts between files: a new column, a column whose type
changes (``user_id`` numeric in one file and text in another; ``timestamp`` as epoch seconds in
one and ISO text in another), a required column missing from one file, a nested struct where a
string is expected. Each ends in good rows, quarantine rows with a reason, or one clear error
naming the file: never a crash deep in Spark, never a silent drop."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from recsys_spark.core.schemas import BRONZE_EVENTS_TABLE, QUARANTINE_TABLE, RAW, REASON, SILVER_EVENTS_TABLE, SOURCE
from recsys_spark.io import sources
from recsys_spark.stages import ingest

ISO = "2024-03-01T10:00:00"
EPOCH = 1709287200  # 2024-03-01 10:00:00 UTC


def write_parquet(path, columns: dict) -> None:
    pq.write_table(pa.table(columns), path)


def events_ctx(make_ctx, folder):
    return make_ctx("input.format=events", f"input.events={folder}", "ingest.incremental=false")


def accounted(summary: dict) -> bool:
    return summary["rows_in"] == summary["rows_good"] + summary["rows_quarantined"] + summary["rows_duplicate"]


def test_parquet_files_whose_types_drift_are_read_file_by_file(make_ctx, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    # user_id and item_id numeric, timestamp as epoch seconds, plus a column no other file has.
    write_parquet(folder / "a.parquet", {
        "user_id": pa.array([1, 2], pa.int64()), "item_id": pa.array([10, 11], pa.int32()),
        "event_type": ["rating", "rating"], "timestamp": pa.array([EPOCH, EPOCH + 60], pa.int64()),
        "value": pa.array([4.0, 3.5]), "device": ["phone", "tv"],
    })
    # The same columns as text, timestamp as ISO text, value as text.
    write_parquet(folder / "b.parquet", {
        "user_id": ["u3", "u4"], "item_id": ["10", "12"], "event_type": ["rating", "click"],
        "timestamp": [ISO, ISO], "value": ["5", None],
    })
    # A real timestamp column and a nested struct where user_id's text is expected.
    write_parquet(folder / "c.parquet", {
        "user_id": pa.array([{"id": 5, "src": "x"}, {"id": 6, "src": "y"}]), "item_id": ["13", "14"],
        "event_type": ["click", "click"], "timestamp": pa.array([EPOCH * 1_000_000] * 2, pa.timestamp("us")),
    })
    ctx = events_ctx(make_ctx, folder)
    summary = ingest.run(ctx)

    assert summary["rows_in"] == 6 and accounted(summary)
    assert summary["rows_good"] == 4
    assert summary["quarantine_reasons"] == {"invalid_user_id": 2}
    silver = {(r["user_id"], r["item_id"]) for r in ctx.lake.read(SILVER_EVENTS_TABLE).collect()}
    assert silver == {("1", "10"), ("2", "11"), ("u3", "10"), ("u4", "12")}
    quarantined = ctx.lake.read(QUARANTINE_TABLE).collect()
    assert {r[SOURCE].rsplit("/", 1)[-1] for r in quarantined} == {"c.parquet"}
    # The raw record keeps the nested value as JSON, for whoever repairs the file.
    assert all(json.loads(r[RAW])["user_id"]["src"] in ("x", "y") for r in quarantined)
    # The new column is kept in bronze's raw record, and ignored downstream.
    device = ctx.lake.read(BRONZE_EVENTS_TABLE).where(F.col(RAW).contains('"device"')).count()
    assert device == 2
    assert "device" not in ctx.lake.read(SILVER_EVENTS_TABLE).columns


def test_a_parquet_file_without_a_required_column_is_one_error_naming_it(make_ctx, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    write_parquet(folder / "good.parquet", {"user_id": ["u1"], "item_id": ["i1"], "event_type": ["click"], "timestamp": [ISO]})
    write_parquet(folder / "no-item.parquet", {"user_id": ["u2"], "event_type": ["click"], "timestamp": [ISO]})
    ctx = events_ctx(make_ctx, folder)
    with pytest.raises(sources.InputError, match=r"no-item\.parquet.*lack user_id/item_id"):
        ingest.run(ctx)
    assert not ctx.lake.exists(SILVER_EVENTS_TABLE), "nothing is written before the error"


def test_json_and_csv_files_whose_types_drift(make_ctx, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    lines = [
        {"user_id": 7, "item_id": 70, "event_type": "rating", "timestamp": EPOCH, "value": 4},  # numbers
        {"user_id": "u8", "item_id": "71", "event_type": "click", "timestamp": ISO, "extra": [1, 2]},  # text, new column
        {"user_id": {"id": 9}, "item_id": "72", "event_type": "click", "timestamp": ISO},  # nested object
        {"user_id": "u10", "item_id": "73", "event_type": "click", "timestamp": {"s": EPOCH}},  # nested time
    ]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    # A CSV whose header orders the columns differently and adds one; a second one without item_id.
    (folder / "b.csv").write_text(f"timestamp,item_id,user_id,event_type,country\n{EPOCH},74,11,click,fr\n", encoding="utf-8")
    ctx = events_ctx(make_ctx, folder)
    summary = ingest.run(ctx)
    assert summary["rows_in"] == 5 and accounted(summary)
    assert summary["rows_good"] == 3
    assert summary["quarantine_reasons"] == {"invalid_user_id": 1, "unparsable_timestamp": 1}
    silver = {(r["user_id"], r["item_id"]) for r in ctx.lake.read(SILVER_EVENTS_TABLE).collect()}
    assert silver == {("7", "70"), ("u8", "71"), ("11", "74")}
    assert ctx.lake.read(QUARANTINE_TABLE).where(F.col(REASON).isNull()).count() == 0

    (folder / "c.csv").write_text(f"user_id,event_type,timestamp\nu12,click,{EPOCH}\n", encoding="utf-8")
    with pytest.raises(sources.InputError, match=r"c\.csv.*lacks user_id/item_id"):
        ingest.run(events_ctx(make_ctx, folder))
