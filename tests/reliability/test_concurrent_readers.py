"""Issue 8.4 — concurrent readers: a reader polling gold/recommendations while it is rewritten
again and again only ever sees complete versions (constant row count, one run_id)."""
from __future__ import annotations

import threading

from pyspark.sql import functions as F

from recsys_spark.core.schemas import (
    GENERATED_AT,
    ITEM_ID,
    MODEL_VERSION,
    RANK,
    REASON,
    RECOMMENDATIONS,
    RECOMMENDATIONS_TABLE,
    RUN_ID,
    SCORE,
    USER_ID,
)

USERS = 300
K = 10
REWRITES = 6


def recommendations(spark, run_id: str):
    """USERS x K rows of one scoring run, as the score stage writes them (full mode: one replace)."""
    rows = spark.range(USERS * K, numPartitions=4)
    return rows.select(
        F.concat(F.lit("u"), (F.col("id") / K).cast("long")).alias(USER_ID),
        ((F.col("id") % K) + 1).cast("int").alias(RANK),
        F.concat(F.lit("i"), F.col("id") % 97).alias(ITEM_ID),
        (F.lit(1.0) / (F.col("id") % K + 1)).cast("float").alias(SCORE),
        F.lit("popular").alias(REASON),
        F.lit("none").alias(MODEL_VERSION),
        F.lit(run_id).alias(RUN_ID),
        F.current_timestamp().alias(GENERATED_AT),
    ).select(*RECOMMENDATIONS.fieldNames())


def test_reader_only_sees_complete_versions(make_ctx):
    ctx = make_ctx()
    lake, spark = ctx.lake, ctx.spark
    lake.replace(recommendations(spark, "run-0"), RECOMMENDATIONS_TABLE)
    errors: list = []

    def rewrite() -> None:
        try:
            for i in range(1, REWRITES + 1):
                lake.replace(recommendations(spark, f"run-{i}"), RECOMMENDATIONS_TABLE)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    writer = threading.Thread(target=rewrite)
    writer.start()
    observations = []
    while writer.is_alive() or not observations:
        seen = lake.read(RECOMMENDATIONS_TABLE).agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(RUN_ID).alias("run_ids"),
            F.min(RUN_ID).alias("run_id"),
            F.countDistinct(USER_ID).alias("users"),
        ).first()
        observations.append(seen.asDict())
    writer.join()
    assert not errors, errors

    assert all(o["rows"] == USERS * K and o["run_ids"] == 1 and o["users"] == USERS for o in observations), [
        o for o in observations if o["rows"] != USERS * K or o["run_ids"] != 1
    ][:3]
    # The reader really overlapped the rewrites, and every committed version is complete too.
    assert len({o["run_id"] for o in observations}) >= 2
    latest = lake.version(RECOMMENDATIONS_TABLE)
    for version in range(latest + 1):
        at = lake.read(RECOMMENDATIONS_TABLE, version=version).agg(
            F.count(F.lit(1)).alias("rows"), F.countDistinct(RUN_ID).alias("run_ids")
        ).first()
        assert (at["rows"], at["run_ids"]) == (USERS * K, 1), f"version {version}: {at}"
