"""Issue 8.6 — resource limits: a user with 1,000,000 events and an item with a 1 MB description
pass through without blowing up the driver or a worker; the sequence and the text are
truncated, and the truncation is counted in the stage summaries."""
from __future__ import annotations

import json
import resource

import pytest
from pyspark.sql import functions as F

from recsys_spark.stages import encode, features, generate, ingest
from recsys_spark.core.schemas import ITEM_EMBEDDINGS_TABLE, ITEMS, N_EVENTS, SILVER_ITEMS_TABLE, USER_SEQUENCES_TABLE

MIB = 2**20
# The Python driver must not hold a table: its peak memory may grow by less than this.
DRIVER_GROWTH_LIMIT_MIB = 512


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_user_with_a_million_events(make_ctx):
    events = 1_000_000
    gen = generate.run(
        make_ctx("generate.users=1", "generate.items=50", "generate.topics=5", f"generate.events={events}")
    )
    start_rss = peak_rss_mib()
    ctx = make_ctx(
        "input.format=events",
        f"input.events={gen['events_path']}",
        f"input.items={gen['items_path']}",
        "features.max_sequence_length=200",
    )
    ingested = ingest.run(ctx)
    assert ingested["rows_good"] == events
    summary = features.run(ctx)
    assert summary["users"] == 1
    assert summary["users_truncated"] == 1
    assert summary["events_truncated"] == events - 200
    row = ctx.lake.read(USER_SEQUENCES_TABLE).select(F.size(ITEMS).alias("n"), N_EVENTS).first()
    assert (row["n"], row[N_EVENTS]) == (200, events)
    assert peak_rss_mib() - start_rss < DRIVER_GROWTH_LIMIT_MIB


@pytest.mark.slow
def test_item_with_a_one_megabyte_description(make_ctx, tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    huge = ("a very long description of a telescope " * (MIB // 39 + 1))[:MIB]
    catalog = [{"item_id": "big", "title": "Big", "description": huge, "tags": ["space"], "category": "astronomy"}]
    catalog += [{"item_id": f"i{n}", "title": f"Item {n}", "description": "short", "category": "misc"} for n in range(4)]
    (folder / "items.jsonl").write_text("\n".join(json.dumps(r) for r in catalog) + "\n", encoding="utf-8")
    events = [{"user_id": "u1", "item_id": r["item_id"], "event_type": "view", "timestamp": 1680000000 + n} for n, r in enumerate(catalog)]
    (folder / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
    start_rss = peak_rss_mib()
    ctx = make_ctx(
        "input.format=events",
        f"input.events={folder / 'events.jsonl'}",
        f"input.items={folder / 'items.jsonl'}",
        "encode.max_text_chars=2000",
    )
    ingested = ingest.run(ctx)
    assert ingested["items_in"] == 5 and ingested["items_quarantined"] == 0
    stored = ctx.lake.read(SILVER_ITEMS_TABLE).where("item_id = 'big'").select(F.length("description")).first()[0]
    assert stored == MIB  # silver keeps what was received
    summary = encode.run(ctx)
    assert summary["items_encoded"] == 5
    assert summary["items_truncated"] == 1
    vectors = ctx.lake.read(ITEM_EMBEDDINGS_TABLE).where("item_id = 'big'").select("vector").first()[0]
    assert len(vectors) == summary["dim"]
    assert peak_rss_mib() - start_rss < DRIVER_GROWTH_LIMIT_MIB
