"""Stage maintain: every existing table compacted and vacuumed, its rows and its time travel kept."""
from __future__ import annotations

from pyspark.sql import functions as F

from recsys_spark import pipeline
from recsys_spark.core.schemas import SILVER_ITEMS_TABLE, TABLES, USER_SEQUENCES_TABLE


def append_rows(lake, spark, table, keys):
    """One append per key (one file each): a table fragmented as incremental runs leave it."""
    for key in keys:
        row = tuple(key if f.name in ("item_id", "user_id", "content_hash") else None for f in table.schema.fields)
        lake.append(spark.createDataFrame([row], table.schema, verifySchema=False).coalesce(1), table)


def rows(lake, table, version=None):
    return sorted(tuple(r) for r in lake.read(table, version).select(*table.schema.fieldNames()[:1]).collect())


def test_maintain_compacts_every_table_and_keeps_rows_and_time_travel(make_ctx):
    ctx = make_ctx("tables.compact_min_files=0", "tracking.enabled=false")
    lake, spark = ctx.lake, ctx.spark
    append_rows(lake, spark, SILVER_ITEMS_TABLE, ["i1", "i2", "i3", "i4"])
    append_rows(lake, spark, USER_SEQUENCES_TABLE, ["u1"])
    before = {t: rows(lake, t) for t in (SILVER_ITEMS_TABLE, USER_SEQUENCES_TABLE)}

    summary = pipeline.run_stage(ctx, "maintain")

    assert summary["tables_maintained"] == 2
    assert sorted(summary["tables_missing"]) == sorted(str(t) for t in TABLES if t not in (SILVER_ITEMS_TABLE, USER_SEQUENCES_TABLE))
    assert summary["files"] == {
        "silver/items": {"before": 4, "after": 1, "vacuumed": 0},  # nothing older than a week
        "gold/user_sequences": {"before": 1, "after": 1, "vacuumed": 0},
    }
    assert (summary["tables_compacted"], summary["files_before"], summary["files_after"]) == (1, 5, 2)
    # Four appends, the OPTIMIZE, and the retention window set as the table property VACUUM reads.
    assert summary["tables"] == {"silver/items": 5, "gold/user_sequences": 1}
    history = lake.history(SILVER_ITEMS_TABLE, 2)
    assert [c.operation for c in history] == ["SET TBLPROPERTIES", "OPTIMIZE"]
    assert history[1].metadata == {"maintain": "test-run"}
    assert {t: rows(lake, t) for t in before} == before
    assert rows(lake, SILVER_ITEMS_TABLE, version=0) == [("i1",)]  # time travel still reaches the first version

    again = pipeline.run_stage(ctx, "maintain")  # nothing left to do: no new commit anywhere
    assert again["tables_compacted"] == 0 and again["tables"] == summary["tables"]
    assert lake.read(SILVER_ITEMS_TABLE).where(F.col("item_id") == "i3").count() == 1
