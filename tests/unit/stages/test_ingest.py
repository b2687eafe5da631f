"""Ingestion on tiny data: counts add up, reruns add nothing, quarantine reasons, every format."""
from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from recsys_spark.stages import ingest
from recsys_spark.core.schemas import (
    BRONZE_EVENTS_TABLE,
    QUARANTINE_TABLE,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
)
from recsys_spark.io.sources import InputError

from tests.support import FIXTURES


def _invariant(summary: dict) -> None:
    assert summary["rows_in"] == summary["rows_good"] + summary["rows_quarantined"] + summary["rows_duplicate"]


def test_movielens_csv_counts_rerun_and_items(make_ctx, tmp_path):
    data = tmp_path / "ml"
    shutil.copytree(FIXTURES / "ml-latest-tiny", data)
    ctx = make_ctx(f"input.events={data}")
    first = ingest.run(ctx)
    assert first["format"] == "movielens"
    assert first["rows_in"] == 1073 and first["rows_good"] == 1073
    assert first["rows_quarantined"] == 0 and first["rows_duplicate"] == 0
    events = ctx.lake.read(SILVER_EVENTS_TABLE)
    assert events.count() == 1073
    row = events.where((F.col("user_id") == "1") & (F.col("item_id") == "1")).first()
    assert row["event_type"] == "rating" and row["value"] == 4.0
    assert row["ts"].year == 2000  # 964982703 = 2000-07-30 UTC
    items = ctx.lake.read(SILVER_ITEMS_TABLE)
    assert items.count() == 828
    toy = items.where(F.col("item_id") == "1").first()
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert "pixar" in toy["tags"]
    # ids stay strings, and a title with a comma inside quotes is kept whole
    assert dict(items.dtypes)["item_id"] == "string"
    assert items.where(F.col("title").contains(", The")).count() > 0

    again = ingest.run(ctx)
    assert again["rows_in"] == 0 and again["files_new"] == 0
    assert ctx.lake.read(SILVER_EVENTS_TABLE).count() == 1073

    # A MovieLens ratings file read as a generic event log lacks user_id/item_id: a clear error.
    (data / "more").mkdir()
    shutil.copy(data / "ratings.csv", data / "more" / "ratings_copy.csv")
    ctx2 = make_ctx(f"input.events={data / 'more'}", "input.format=events", warehouse=Path(ctx.cfg.warehouse))
    with pytest.raises(InputError, match="ratings_copy.csv"):
        ingest.run(ctx2)


def _write_jsonl(path: Path, rows: list) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


GOOD = {"user_id": "u1", "item_id": "sku-1", "event_type": "click", "timestamp": "2024-01-02T03:04:05Z"}


def test_generic_logs_quarantine_reasons_and_dedupe(make_ctx, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write_jsonl(
        logs / "a.jsonl",
        [
            GOOD,
            GOOD,  # exact duplicate -> rows_duplicate
            {**GOOD, "item_id": "sku-2", "event_type": "purchase", "value": 19.9, "event_id": "e-2"},
            {**GOOD, "event_id": "e-2", "item_id": "sku-2", "event_type": "purchase"},  # same event_id
            {**GOOD, "user_id": 42, "item_id": 7, "timestamp": 1704164645},  # numbers become string ids
            "{not json",
            "[1, 2, 3]",
            {**GOOD, "user_id": ""},
            {**GOOD, "item_id": None},
            {**GOOD, "event_type": "teleport"},
            {**GOOD, "timestamp": "yesterday"},
            {**GOOD, "timestamp": "2999-01-01T00:00:00Z"},
            {**GOOD, "timestamp": "1970-01-01T00:00:00Z"},
            {**GOOD, "value": "lots"},
            {**GOOD, "event_type": "rating"},
        ],
    )
    with (logs / "b.csv").open("w") as f:
        f.write("item_id,user_id,event_type,timestamp,value\n")
        f.write("sku-3,u2,view,2024-01-03 10:00:00,\n")
        f.write("sku-4,u2,rating,1704276000,4.5\n")
        f.write("sku-5,u2,view\n")  # missing fields
    ctx = make_ctx(f"input.events={logs}", "input.format=events")
    summary = ingest.run(ctx)
    _invariant(summary)
    assert summary["rows_in"] == 18
    assert summary["rows_good"] == 5
    assert summary["rows_duplicate"] == 2
    assert summary["rows_quarantined"] == 11
    reasons = summary["quarantine_reasons"]
    assert reasons == {
        "malformed_json": 2,
        "malformed_csv": 1,
        "missing_user_id": 1,
        "missing_item_id": 1,
        "unknown_event_type": 1,
        "unparsable_timestamp": 1,
        "future_timestamp": 1,
        "past_timestamp": 1,
        "invalid_value": 1,
        "missing_rating_value": 1,
    }
    quarantine = ctx.lake.read(QUARANTINE_TABLE)
    assert quarantine.count() == 11
    assert quarantine.where(F.col("reason").isNull() | F.col("raw").isNull()).count() == 0
    assert quarantine.where(F.col("raw") == "{not json").count() == 1
    silver = ctx.lake.read(SILVER_EVENTS_TABLE)
    numeric = silver.where(F.col("user_id") == "42").first()
    assert numeric["item_id"] == "7" and numeric["ts"].year == 2024
    assert silver.where(F.col("event_id") == "e-2").first()["value"] == pytest.approx(19.9)
    assert silver.where(F.col("item_id") == "sku-4").first()["value"] == 4.5
    # bronze keeps every row as received, with its source file
    bronze = ctx.lake.read(BRONZE_EVENTS_TABLE)
    assert bronze.count() == 18
    assert bronze.where(F.col("_source").endswith("b.csv")).count() == 3

    # A new file in the folder is picked up on the next run; old ones are skipped.
    _write_jsonl(logs / "c.jsonl", [{**GOOD, "item_id": "sku-9"}, GOOD])
    second = ingest.run(ctx)
    _invariant(second)
    assert second["files_new"] == 1 and second["files_skipped"] == 2
    assert (second["rows_in"], second["rows_good"], second["rows_duplicate"]) == (2, 1, 1)
    assert ctx.lake.read(SILVER_EVENTS_TABLE).count() == 6


def test_parquet_logs_and_item_catalog_upsert(make_ctx, spark, tmp_path):
    logs, catalog = tmp_path / "logs", tmp_path / "catalog"
    spark.createDataFrame(
        [(1, 10, "view", "2024-02-01T00:00:00Z"), (2, 11, "cart", "2024-02-01T00:00:01Z")],
        "user_id long, item_id long, event_type string, timestamp string",
    ).coalesce(1).write.parquet(str(logs))
    catalog.mkdir()
    _write_jsonl(
        catalog / "items.jsonl",
        [
            {"item_id": "10", "title": "Red shoes", "description": "Running shoes", "tags": ["run", "shoe"], "category": "sport"},
            {"item_id": "11", "title": "Blue hat", "tags": "hat|blue", "category": "fashion"},
            {"title": "no id"},
        ],
    )
    ctx = make_ctx(f"input.events={logs}", f"input.items={catalog}", "input.format=events")
    summary = ingest.run(ctx)
    _invariant(summary)
    assert (summary["rows_good"], summary["items_inserted"], summary["items_quarantined"]) == (2, 2, 1)
    items = {r["item_id"]: r for r in ctx.lake.read(SILVER_ITEMS_TABLE).collect()}
    assert items["11"]["tags"] == ["hat", "blue"] and items["10"]["tags"] == ["run", "shoe"]
    old_hash = items["10"]["content_hash"]

    # Change one description: only that item is updated, with a new content hash.
    _write_jsonl(
        catalog / "items.jsonl",
        [
            {"item_id": "10", "title": "Red shoes", "description": "Trail running shoes", "tags": ["run", "shoe"], "category": "sport"},
            {"item_id": "11", "title": "Blue hat", "tags": "hat|blue", "category": "fashion"},
        ],
    )
    second = ingest.run(ctx)
    assert (second["items_updated"], second["items_inserted"], second["items_unchanged"]) == (1, 0, 1)
    assert ctx.lake.read(SILVER_ITEMS_TABLE).where(F.col("item_id") == "10").first()["content_hash"] != old_hash


def test_movielens_dat_and_100k_layouts(make_ctx, tmp_path):
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_bytes(b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n2::x\n")
    (ml1m / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Am\xe9lie (2001)::Comedy|Romance\n".encode("latin-1")
    )
    ctx = make_ctx(f"input.events={ml1m}")
    s1 = ingest.run(ctx)
    _invariant(s1)
    assert (s1["rows_good"], s1["rows_quarantined"], s1["items_inserted"]) == (3, 1, 2)
    titles = {r["item_id"]: r["title"] for r in ctx.lake.read(SILVER_ITEMS_TABLE).collect()}
    assert titles["661"] == "Amélie (2001)"

    ml100k = tmp_path / "ml-100k"
    ml100k.mkdir()
    (ml100k / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    flags = ["0"] * 19
    flags[5] = "1"  # Comedy
    (ml100k / "u.item").write_bytes(
        ("242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(flags) + "\n").encode("latin-1")
        + ("302|L.A. Confidential (1997)|01-Jan-1997||http://y|" + "|".join(["0"] * 16 + ["1", "0", "0"]) + "\n").encode("latin-1")
    )
    ctx100 = make_ctx(f"input.events={ml100k}", warehouse=tmp_path / "wh100")
    s2 = ingest.run(ctx100)
    assert (s2["rows_good"], s2["items_inserted"]) == (2, 2)
    genres = {r["item_id"]: r["genres"] for r in ctx100.lake.read(SILVER_ITEMS_TABLE).collect()}
    assert genres == {"242": ["Comedy"], "302": ["Thriller"]}


def test_bad_paths_and_formats_are_clear_errors(make_ctx, tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ingest.run(make_ctx(f"input.events={tmp_path / 'does-not-exist'}"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no input files"):
        ingest.run(make_ctx(f"input.events={empty}"))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "events.xlsx").write_text("?")
    with pytest.raises(InputError, match="events.xlsx"):
        ingest.run(make_ctx(f"input.events={odd}", "input.format=events"))
    with pytest.raises(InputError, match="movielens"):
        ingest.run(make_ctx(f"input.events={odd}", "input.format=movielens"))


def test_pseudonymisation_is_keyed_and_stable(make_ctx, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    _write_jsonl(logs / "a.jsonl", [GOOD, {**GOOD, "item_id": "sku-2"}, {**GOOD, "timestamp": "bad"}])
    monkeypatch.delenv("RECSYS_PSEUDONYM_KEY", raising=False)
    ctx = make_ctx(f"input.events={logs}", "input.format=events", "privacy.pseudonymize_users=true")
    with pytest.raises(ingest.PrivacyKeyError, match="RECSYS_PSEUDONYM_KEY"):
        ingest.run(ctx)
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", "secret-key-1")
    ingest.run(ctx)
    expected = hmac.new(b"secret-key-1", b"u1", hashlib.sha256).hexdigest()[:32]
    users = {r["user_id"] for r in ctx.lake.read(SILVER_EVENTS_TABLE).collect()}
    assert users == {expected}
    # the raw record in bronze and quarantine carries the pseudonym, not the id, nor the key
    for table in (BRONZE_EVENTS_TABLE, QUARANTINE_TABLE):
        raws = [r["raw"] for r in ctx.lake.read(table).collect()]
        assert raws and all('"u1"' not in r and "secret-key-1" not in r for r in raws)
    # another key gives other pseudonyms
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", "secret-key-2")
    other = make_ctx(f"input.events={logs}", "input.format=events", "privacy.pseudonymize_users=true", warehouse=tmp_path / "wh2")
    ingest.run(other)
    assert {r["user_id"] for r in other.lake.read(SILVER_EVENTS_TABLE).collect()} != {expected}
