"""The lakehouse's writes: one conform, a WriteResult per write, commit metadata, history, catalog mode."""
from __future__ import annotations

import os
import uuid

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core.lakehouse import LISTING_TASKS_CONF, USER_METADATA_CONF, WriteResult, table_versions
from recsys_spark.core.schemas import TableRef

ROWS = T.StructType(
    [
        T.StructField("key", T.StringType(), False),
        T.StructField("n", T.LongType()),
        T.StructField("label", T.StringType()),
    ]
)
TABLE = TableRef("gold", "lake_test", ROWS)


def frame(spark, rows):
    return spark.createDataFrame(rows, ROWS)


def content(lake, table=TABLE, version=None):
    return sorted(tuple(r) for r in lake.read(table, version).collect())


def test_writes_return_their_version_operation_and_metrics(make_ctx):
    ctx = make_ctx()
    lake, spark = ctx.lake, ctx.spark

    first = lake.replace(frame(spark, [("a", 1, "x"), ("b", 2, "y")]), TABLE)
    assert (first.version, first.operation, first.committed) == (0, "WRITE", True)
    assert first.metric("numOutputRows") == 2
    assert all(isinstance(v, int) for v in first.metrics.values())

    appended = lake.append(frame(spark, [("c", 3, "z")]), TABLE)
    assert (appended.version, appended.operation, appended.metric("numOutputRows")) == (1, "WRITE", 1)

    swapped = lake.replace_where(frame(spark, [("c", 30, "z2")]), TABLE, "key = 'c'")
    assert (swapped.version, swapped.operation, swapped.metric("numOutputRows")) == (2, "WRITE", 1)
    assert content(lake) == [("a", 1, "x"), ("b", 2, "y"), ("c", 30, "z2")]

    merged = lake.merge(frame(spark, [("a", 10, "x2"), ("d", 4, "w")]), TABLE, ["key"])
    assert (merged.version, merged.operation) == (3, "MERGE")
    assert merged.metric("numTargetRowsInserted") == 1 and merged.metric("numTargetRowsUpdated") == 1
    assert content(lake) == [("a", 10, "x2"), ("b", 2, "y"), ("c", 30, "z2"), ("d", 4, "w")]

    again = lake.replace(frame(spark, [("e", 5, None)]), TABLE)
    assert (again.version, again.metric("numOutputRows")) == (4, 1)
    assert content(lake) == [("e", 5, None)] and content(lake, version=first.version) == [("a", 1, "x"), ("b", 2, "y")]
    assert table_versions(first, again) == {"gold/lake_test": 4}


def test_writes_to_a_missing_table_create_it_from_its_schema(make_ctx):
    ctx = make_ctx()
    lake, spark = ctx.lake, ctx.spark
    merged = lake.merge(frame(spark, [("a", 1, "x")]), TABLE, ["key"])
    # Created empty with the table's schema, then one MERGE: the result holds MERGE metrics.
    assert (merged.version, merged.operation, merged.metric("numTargetRowsInserted")) == (1, "MERGE", 1)
    assert [c.operation for c in lake.history(TABLE, 5)] == ["MERGE", "CREATE TABLE"]
    assert lake.read(TABLE, version=0).count() == 0 and lake.read(TABLE).columns == ROWS.fieldNames()

    other = TableRef("gold", "lake_test_where", ROWS)
    swapped = lake.replace_where(frame(spark, [("a", 1, "x")]), other, "key = 'a'")
    assert (swapped.version, swapped.metric("numOutputRows")) == (1, 1)
    assert content(lake, other) == [("a", 1, "x")]


def test_a_merge_that_changes_nothing_reports_no_changes(make_ctx):
    ctx = make_ctx()
    lake, spark = ctx.lake, ctx.spark
    rows = [("a", 1, "x"), ("b", 2, "y")]
    first = lake.merge(frame(spark, rows), TABLE, ["key"], update=False)
    assert first.metric("numTargetRowsInserted") == 2

    # Insert-only MERGE of keys already there: no commit, so no metrics of the previous commit.
    noop = lake.merge(frame(spark, rows), TABLE, ["key"], update=False)
    assert noop == WriteResult(TABLE, first.version)
    assert not noop.committed and noop.metric("numTargetRowsInserted") == 0 and noop.metrics == {}
    assert lake.version(TABLE) == first.version

    unchanged = lake.merge(
        frame(spark, [("a", 1, "other label")]), TABLE, ["key"], update_condition="t.n <> s.n"
    )
    # (Delta may still commit a rewrite here; either way nothing counts as updated or inserted.)
    assert unchanged.metric("numTargetRowsUpdated") == 0 and unchanged.metric("numTargetRowsInserted") == 0
    changed = lake.merge(frame(spark, [("a", 7, "new")]), TABLE, ["key"], update_condition="t.n <> s.n")
    assert (changed.version, changed.metric("numTargetRowsUpdated")) == (unchanged.version + 1, 1)
    assert content(lake) == [("a", 7, "new"), ("b", 2, "y")]


def test_conform_orders_casts_and_rejects_a_missing_column(make_ctx):
    ctx = make_ctx()
    lake, spark = ctx.lake, ctx.spark
    # Columns out of order, n as int, an extra column: the table gets its own schema.
    loose = spark.createDataFrame([(7, "x", "a", True)], "n int, label string, key string, extra boolean")
    lake.replace(loose, TABLE)
    stored = lake.read(TABLE)
    assert [(f.name, f.dataType) for f in stored.schema] == [(f.name, f.dataType) for f in ROWS]
    assert content(lake) == [("a", 7, "x")]

    missing = spark.createDataFrame([("b", "y")], "key string, label string")
    for write in (
        lambda: lake.replace(missing, TABLE),
        lambda: lake.append(missing, TABLE),
        lambda: lake.replace_where(missing, TABLE, "key = 'b'"),
        lambda: lake.merge(missing, TABLE, ["key"]),
    ):
        with pytest.raises(ValueError, match=r"table gold/lake_test: missing column\(s\) n\b"):
            write()
    assert lake.version(TABLE) == 0 and content(lake) == [("a", 7, "x")]


def test_metadata_round_trips_through_history(make_ctx):
    ctx = make_ctx()
    lake, spark = ctx.lake, ctx.spark
    spark.conf.unset(USER_METADATA_CONF)
    lake.replace(frame(spark, [("a", 1, "x")]), TABLE, metadata={"watermark": "2026-01-01 00:00:00", "k": 3})
    assert spark.conf.get(USER_METADATA_CONF, None) is None  # unset again after the write
    lake.append(frame(spark, [("b", 2, "y")]), TABLE)  # no metadata: none recorded
    lake.merge(frame(spark, [("c", 3, "z")]), TABLE, ["key"], metadata={"run_id": "r2"})

    history = lake.history(TABLE, 10)
    assert [c.version for c in history] == [2, 1, 0]
    assert [c.operation for c in history] == ["MERGE", "WRITE", "WRITE"]
    assert [c.metadata for c in history] == [{"run_id": "r2"}, None, {"watermark": "2026-01-01 00:00:00", "k": 3}]
    assert history[1].userMetadata is None
    assert history[0].operationMetrics["numTargetRowsInserted"] == 1
    assert history[2].operationMetrics["numOutputRows"] == 1 and history[2].timestamp is not None
    assert [c.version for c in lake.history(TABLE, 1)] == [2]

    # A value the session already had is restored, also when the write fails.
    spark.conf.set(USER_METADATA_CONF, "outer")
    try:
        with pytest.raises(ValueError, match="missing column"):
            lake.append(spark.createDataFrame([("d",)], "key string"), TABLE, metadata={"x": 1})
        assert spark.conf.get(USER_METADATA_CONF) == "outer"
    finally:
        spark.conf.unset(USER_METADATA_CONF)

    with pytest.raises(FileNotFoundError, match="gold/missing"):
        lake.history(TableRef("gold", "missing", ROWS), 1)


def test_catalog_mode_writes_and_reads_back(make_ctx, tmp_path):
    schema = f"lake_test_{uuid.uuid4().hex[:8]}"
    ctx = make_ctx("tables.mode=catalog", "tables.catalog=spark_catalog", f"tables.schema={schema}")
    lake, spark = ctx.lake, ctx.spark
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{schema} LOCATION '{tmp_path / 'schema'}'")
    try:
        assert lake.location(TABLE) == f"spark_catalog.{schema}.gold_lake_test"
        assert not lake.exists(TABLE)
        first = lake.replace(frame(spark, [("a", 1, "x")]), TABLE, metadata={"run_id": "c1"})
        assert first.version == 0 and first.metric("numOutputRows") == 1
        assert lake.exists(TABLE) and lake.version(TABLE) == 0
        merged = lake.merge(frame(spark, [("a", 2, "x"), ("b", 3, "y")]), TABLE, ["key"])
        assert (merged.version, merged.metric("numTargetRowsInserted"), merged.metric("numTargetRowsUpdated")) == (1, 1, 1)
        appended = lake.append(frame(spark, [("c", 4, None)]), TABLE)
        swapped = lake.replace_where(frame(spark, [("c", 5, "z")]), TABLE, "key = 'c'")
        assert (appended.version, swapped.version) == (2, 3)
        assert content(lake) == [("a", 2, "x"), ("b", 3, "y"), ("c", 5, "z")]
        assert content(lake, version=0) == [("a", 1, "x")]
        assert spark.table(lake.location(TABLE)).where(F.col("key") == "b").count() == 1
        history = lake.history(TABLE, 10)
        assert [c.version for c in history] == [3, 2, 1, 0] and history[-1].metadata == {"run_id": "c1"}
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{schema} CASCADE")


def test_a_relative_warehouse_works_for_merge_and_history(make_ctx, tmp_path):
    """The embedded default is ``warehouse: ./warehouse``; Delta's SQL (MERGE INTO, DESCRIBE
    HISTORY) takes a path only when it is absolute, so a relative one must be resolved. (Relative
    to this process's directory, which the JVM shares: a chdir here would not move the JVM.)"""
    relative = os.path.relpath(tmp_path / "relative-warehouse")
    assert not os.path.isabs(relative)
    ctx = make_ctx(warehouse=relative)
    lake, spark = ctx.lake, ctx.spark
    assert not lake.exists(TABLE) and lake.version(TABLE) is None
    first = lake.merge(frame(spark, [("a", 1, "x")]), TABLE, ["key"])
    second = lake.merge(frame(spark, [("a", 2, "y"), ("b", 3, "z")]), TABLE, ["key"])
    assert second.version == first.version + 1 and second.metric("numTargetRowsInserted") == 1
    assert [c.version for c in lake.history(TABLE, 2)] == [second.version, first.version]
    assert content(lake) == [("a", 2, "y"), ("b", 3, "z")]
    assert (tmp_path / "relative-warehouse" / TABLE.layer / TABLE.name / "_delta_log").is_dir()


def test_the_log_fast_path_answers_as_sql_does(make_ctx, tmp_path, monkeypatch):
    """On a classic session in path mode ``version``, ``exists`` and ``history`` read Delta's log
    object (a listing and one small file per commit) instead of planning DESCRIBE HISTORY; the
    answers must be SQL's, to the commit's timestamp, also for what is not a Delta table."""
    ctx = make_ctx()
    lake, spark = ctx.lake, ctx.spark
    lake.replace(frame(spark, [("a", 1, "x")]), TABLE, metadata={"run_id": "f1"})
    lake.merge(frame(spark, [("a", 2, "y"), ("b", 3, "z")]), TABLE, ["key"])
    lake.append(frame(spark, [("c", 4, None)]), TABLE)
    missing = TableRef("gold", "never_written", ROWS)
    plain = TableRef("gold", "plain_parquet", ROWS)
    frame(spark, [("p", 1, "q")]).write.parquet(lake.location(plain))
    assert lake._delta_log(TABLE) is not None, "no fast path on a classic session in path mode"

    def answers():
        return (
            [lake.version(t) for t in (TABLE, missing, plain)],
            [lake.exists(t) for t in (TABLE, missing, plain)],
            lake.history(TABLE, 10),
            lake.history(TABLE, 1),
        )

    fast = answers()
    monkeypatch.setattr(lake, "_delta_log", lambda table: None)
    assert answers() == fast
    assert fast[0] == [2, None, None] and fast[1] == [True, False, False]
    assert [(c.version, c.operation) for c in fast[2]] == [(2, "WRITE"), (1, "MERGE"), (0, "WRITE")]
    assert fast[2][1].operationMetrics["numTargetRowsInserted"] == 1 and fast[2][2].metadata == {"run_id": "f1"}


def test_a_write_that_leaves_many_files_compacts_the_table(make_ctx):
    """(One file per append: each frame is one partition.) tables.compact_min_files: the write that brings the table to that many files is followed
    by one OPTIMIZE commit; the write's own result is unchanged, the rows are the same at every
    version, and the versions before the compaction still read (their files stay until VACUUM)."""
    ctx = make_ctx("tables.compact_min_files=3")
    lake, spark = ctx.lake, ctx.spark
    results = [lake.append(frame(spark, [(k, i, None)]).coalesce(1), TABLE) for i, k in enumerate("abcd")]
    assert [(r.version, r.operation) for r in results] == [(0, "WRITE"), (1, "WRITE"), (2, "WRITE"), (4, "WRITE")]
    history = lake.history(TABLE, 10)
    assert [c.operation for c in history] == ["WRITE", "OPTIMIZE", "WRITE", "WRITE", "WRITE"]
    optimize = history[1]
    assert optimize.operationMetrics["numRemovedFiles"] == 3 and optimize.operationMetrics["numAddedFiles"] == 1
    assert optimize.metadata == {"compaction": "tables.compact_min_files", "files_before": 3}
    assert lake.file_count(TABLE) == 2
    assert content(lake) == [("a", 0, None), ("b", 1, None), ("c", 2, None), ("d", 3, None)]
    assert content(lake, version=2) == content(lake, version=3) == [("a", 0, None), ("b", 1, None), ("c", 2, None)]

    never = make_ctx("tables.compact_min_files=0", warehouse=ctx.cfg.warehouse + "-never").lake
    for i, k in enumerate("abcd"):
        never.append(frame(spark, [(k, i, None)]).coalesce(1), TABLE)
    assert never.file_count(TABLE) == 4 and "OPTIMIZE" not in [c.operation for c in never.history(TABLE, 10)]


def test_file_count_answers_as_sql_does(make_ctx, monkeypatch):
    ctx = make_ctx("tables.compact_min_files=0")
    lake, spark = ctx.lake, ctx.spark
    lake.append(frame(spark, [("a", 1, "x")]).coalesce(1), TABLE)
    lake.append(frame(spark, [("b", 2, "y")]).coalesce(1), TABLE)
    fast = lake.file_count(TABLE)
    monkeypatch.setattr(lake, "_delta_log", lambda table: None)
    assert lake.file_count(TABLE) == fast == 2
    with pytest.raises(FileNotFoundError, match="gold/never_written"):
        lake.file_count(TableRef("gold", "never_written", ROWS))


def _tasks_per_stage(spark, group: str, action) -> list:
    """The task counts of every stage the jobs of ``action()`` ran, under the job group ``group``."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        action()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    tracker = sc.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup(group) for s in tracker.getJobInfo(j).stageIds]
    return [tracker.getStageInfo(s).numTasks for s in stages if tracker.getStageInfo(s) is not None]


def test_vacuum_lists_the_table_in_as_many_tasks_as_configured(make_ctx):
    """Spark's default listing parallelism (10000 tasks) made each VACUUM of a tiny table take
    40-55 s on 2 cores; the listing runs in tables.vacuum_listing_tasks tasks (0: the session's
    parallelism), and the session's own setting is left as it was."""
    ctx = make_ctx("tables.compact_min_files=0", "tables.vacuum_listing_tasks=3")
    lake, spark = ctx.lake, ctx.spark
    for i, k in enumerate("ab"):
        lake.append(frame(spark, [(k, i, None)]).coalesce(1), TABLE)
    tasks = _tasks_per_stage(spark, "vacuum-listing-3", lambda: lake.vacuum(TABLE))
    assert tasks and max(tasks) == 3, tasks  # the listing's stage, and no stage above it
    assert spark.conf.get(LISTING_TASKS_CONF, None) is None  # unset before: unset after

    spark.conf.set(LISTING_TASKS_CONF, "777")
    try:
        default = make_ctx("tables.compact_min_files=0", warehouse=ctx.cfg.warehouse).lake
        tasks = _tasks_per_stage(spark, "vacuum-listing-default", lambda: default.vacuum(TABLE))
        assert max(tasks) == spark.sparkContext.defaultParallelism, tasks
        assert spark.conf.get(LISTING_TASKS_CONF) == "777"
    finally:
        spark.conf.unset(LISTING_TASKS_CONF)


def test_vacuum_keeps_what_the_retention_window_reads(make_ctx):
    """VACUUM deletes only files that no version inside the window reads: with the default week
    nothing young goes and time travel to the first version still works; with no window (Delta's
    safety check turned off, as only a test may) the files the compaction replaced are gone, the
    current version reads the same rows and the old versions no longer read."""
    ctx = make_ctx("tables.compact_min_files=0")
    lake, spark = ctx.lake, ctx.spark
    for i, k in enumerate("abc"):
        lake.append(frame(spark, [(k, i, None)]).coalesce(1), TABLE)
    compacted = lake.compact(TABLE)
    assert compacted.operation == "OPTIMIZE" and lake.file_count(TABLE) == 1
    assert lake.vacuum(TABLE) == 0
    assert content(lake, version=0) == [("a", 0, None)]
    properties = spark.sql(f"DESCRIBE DETAIL delta.`{lake.location(TABLE)}`").first()["properties"]
    assert properties["delta.deletedFileRetentionDuration"] == "interval 168 hours"
    assert "delta.logRetentionDuration" not in properties  # a week is inside the log's 30 days
    assert lake.compact(TABLE).committed is False  # one file: nothing to compact, no commit

    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    spark.conf.set(check, "false")
    try:
        assert lake.vacuum(TABLE, retain_hours=0) == 3
    finally:
        spark.conf.set(check, "true")
    assert content(lake) == [("a", 0, None), ("b", 1, None), ("c", 2, None)]
    with pytest.raises(Exception):
        lake.read(TABLE, 0).collect()
