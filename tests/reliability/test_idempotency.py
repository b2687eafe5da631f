"""Issue 8.2 — idempotency: every stage run twice on the same input leaves the same tables, and
a rerun after a partial failure completes the work without duplicates."""
from __future__ import annotations

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from recsys_spark.stages import generate, ingest
from recsys_spark.pipeline import run_stage
from recsys_spark.core.schemas import (
    BRONZE_EVENTS_TABLE,
    CANDIDATES_TABLE,
    ITEM_EMBEDDINGS_TABLE,
    METRICS_TABLE,
    QUARANTINE_TABLE,
    RECOMMENDATIONS_TABLE,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
    SIMILAR_ITEMS_TABLE,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
)

TINY = (
    "generate.users=30",
    "generate.items=40",
    "generate.events=1500",
    "generate.topics=4",
    "generate.partitions=2",
    "generate.bad_fraction=0.04",
)

# When a row was written, not what it says: differs between runs by design.
WRITE_TIMES = {"_ingested_at", "encoded_at", "computed_at", "generated_at"}

STAGE_TABLES = {
    "ingest": (BRONZE_EVENTS_TABLE, SILVER_EVENTS_TABLE, QUARANTINE_TABLE, SILVER_ITEMS_TABLE),
    "features": (USER_SEQUENCES_TABLE,),
    "encode": (ITEM_EMBEDDINGS_TABLE,),
    "interests": (USER_VECTORS_TABLE,),
    "retrieve": (CANDIDATES_TABLE, SIMILAR_ITEMS_TABLE),
    "score": (RECOMMENDATIONS_TABLE,),
    # A rerun with the same run_id replaces that run's metric rows instead of adding them again.
    "evaluate": (METRICS_TABLE,),
}


def _plain(value, dtype):
    """Rows made comparable: arrays as tuples, floats rounded (sums may add up in another order)."""
    if value is None:
        return None
    if isinstance(dtype, T.ArrayType):
        return tuple(_plain(v, dtype.elementType) for v in value)
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        return round(float(value), 4)
    return value


def snapshot(df: DataFrame) -> list:
    fields = [f for f in df.schema.fields if f.name not in WRITE_TIMES]
    rows = df.select([f.name for f in fields]).collect()
    return sorted((tuple(_plain(r[f.name], f.dataType) for f in fields) for r in rows), key=repr)


def generated_input(make_ctx) -> tuple[dict, tuple]:
    gen = generate.run(make_ctx(*TINY))
    inputs = ("input.format=events", f"input.events={gen['events_path']}", f"input.items={gen['items_path']}")
    return gen, inputs


@pytest.mark.slow
def test_every_stage_twice_leaves_the_same_tables(make_ctx):
    gen, inputs = generated_input(make_ctx)
    # Untracked: the tables are what is compared (tests/unit/tracking covers run_stage's MLflow records).
    ctx = make_ctx(*TINY, *inputs, "retrieve.candidates=20", "evaluate.baselines=[popularity, item_knn, next_item]",
                   "tracking.enabled=false")
    differences = {}
    for stage, tables in STAGE_TABLES.items():
        first = run_stage(ctx, stage)
        before = {t: snapshot(ctx.lake.read(t)) for t in tables}
        run_stage(ctx, stage)
        after = {t: snapshot(ctx.lake.read(t)) for t in tables}
        for t in tables:
            if before[t] != after[t]:
                differences[str(t)] = (len(before[t]), len(after[t]))
        if stage == "ingest":
            assert first["rows_good"] == gen["events_good"]
    print(f"compared {sum(len(t) for t in STAGE_TABLES.values())} tables of {len(STAGE_TABLES)} stages, each run twice")
    assert not differences, f"tables changed by a second identical run (rows before, after): {differences}"


def fail_before_silver_merge(make_ctx, monkeypatch):
    """Run ingest with its silver MERGE failing, then again normally; returns (generated, ctx)."""
    gen, inputs = generated_input(make_ctx)
    ctx = make_ctx(*TINY, *inputs)

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure before the silver MERGE")

    with monkeypatch.context() as patch:
        patch.setattr(ingest, "_merge_insert_only", fail)
        with pytest.raises(RuntimeError, match="injected"):
            ingest.run(ctx)
    summary = ingest.run(ctx)
    assert summary["rows_in"] == summary["rows_good"] + summary["rows_quarantined"] + summary["rows_duplicate"]
    return gen, ctx


@pytest.mark.slow
def test_ingest_rerun_after_a_failure_stores_each_event_once(make_ctx, monkeypatch):
    gen, ctx = fail_before_silver_merge(make_ctx, monkeypatch)
    assert ctx.lake.read(SILVER_EVENTS_TABLE).count() == gen["events_good"]
    assert ctx.lake.read(SILVER_ITEMS_TABLE).count() == gen["items_good"]


@pytest.mark.slow
def test_ingest_rerun_after_a_failure_quarantines_each_line_once(make_ctx, monkeypatch):
    gen, ctx = fail_before_silver_merge(make_ctx, monkeypatch)
    assert ctx.lake.read(QUARANTINE_TABLE).where("kind = 'events'").count() == gen["events_malformed"]
