"""Overlapping jobs on one warehouse: a write that loses to a concurrent writer (Delta's optimistic
concurrency) is tried again, boundedly, or fails with one error naming the table and the other
writer's operation; two ingests started at once store every row exactly once."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from recsys_spark.core import schemas as S
from recsys_spark.core.lakehouse import ConcurrentWriteConflict, Lakehouse, conflict_of
from recsys_spark.stages import ingest
from tests.support import FIXTURES, REPO, small_config, small_overrides

# What Delta raises when a MERGE loses (its first lines, as a Py4JJavaError carries them).
LOST = (
    "An error occurred while calling o52.sql.\n"
    ": io.delta.exceptions.ConcurrentAppendException: [DELTA_CONCURRENT_APPEND.WITHOUT_HINT] Transaction "
    "conflict detected. a concurrent MERGE added data to table delta.`file:/w/silver/events` committed at "
    "version 7. The concurrent operation modified data that should have been read by this operation.\n"
    "\tat org.apache.spark.sql.delta.ConflictChecker..."
)


def test_a_lost_write_is_tried_again_then_fails_naming_the_table(tmp_path):
    lake = Lakehouse(None, small_config(tmp_path / "wh", "tables.conflict_retries=3", "tables.conflict_backoff_seconds=0"))
    tries = []

    def loses_twice():
        tries.append(1)
        if len(tries) <= 2:
            raise RuntimeError(LOST)
        return "committed"

    assert lake._retrying(S.SILVER_EVENTS_TABLE, "MERGE", loses_twice) == "committed" and len(tries) == 3

    tries.clear()

    def always_loses():
        tries.append(1)
        raise RuntimeError(LOST)

    with pytest.raises(ConcurrentWriteConflict) as error:
        lake._retrying(S.SILVER_EVENTS_TABLE, "MERGE", always_loses)
    assert len(tries) == 4 and error.value.tries == 4 and error.value.table == S.SILVER_EVENTS_TABLE
    message = str(error.value)
    assert message.startswith(f"table silver/events ({tmp_path / 'wh'}/silver/events): MERGE lost to a concurrent write 4 time(s)")
    assert "a concurrent MERGE added data" in message and "committed at version 7" in message
    assert "tables.conflict_retries" in message

    tries.clear()

    def fails_otherwise():
        tries.append(1)
        raise ValueError("[DELTA_MERGE_UNRESOLVED_EXPRESSION] not a conflict")

    with pytest.raises(ValueError, match="not a conflict"):
        lake._retrying(S.SILVER_EVENTS_TABLE, "MERGE", fails_otherwise)
    assert len(tries) == 1, "only conflicts are tried again"
    assert conflict_of(ValueError("DELTA_MISSING_DELTA_TABLE")) is None


def _ingest_process(warehouse, log_path):
    sets = small_overrides(
        warehouse, "spark.driver_memory=1g", "tracking.enabled=false", f"input.events={FIXTURES / 'ml-latest-tiny'}",
        # Started at the same moment, the two collide on nearly every table: let them take turns.
        "tables.conflict_retries=20", "tables.conflict_backoff_seconds=0.5",
    )
    args = [sys.executable, "-m", "recsys_spark", "ingest"] + [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=open(log_path, "wb"), text=True)


@pytest.mark.slow
def test_two_ingests_at_once_store_every_row_once(make_ctx, tmp_path):
    # The reference: the same files ingested once, alone.
    alone = make_ctx(f"input.events={FIXTURES / 'ml-latest-tiny'}", warehouse=tmp_path / "alone")
    reference = ingest.run(alone)
    tables = (S.BRONZE_EVENTS_TABLE, S.SILVER_EVENTS_TABLE, S.QUARANTINE_TABLE, S.SILVER_ITEMS_TABLE, S.INGESTED_FILES_TABLE)
    expected = {t: alone.lake.read(t).count() for t in tables}

    shared = tmp_path / "shared"
    procs = [_ingest_process(shared, tmp_path / f"ingest-{i}.log") for i in range(2)]
    deadline = time.monotonic() + 600
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        outputs.append(out)
    logs = [(tmp_path / f"ingest-{i}.log").read_text(errors="replace") for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs
    summaries = [__import__("json").loads(out.strip().splitlines()[-1]) for out in outputs]
    retried = sum(log.count("lost to a concurrent write") for log in logs)
    print(f"two concurrent ingests: {retried} writes tried again; summaries {[s['rows_good'] for s in summaries]}")

    ctx = make_ctx(warehouse=shared)
    for t in tables:
        assert ctx.lake.read(t).count() == expected[t], f"{t}: rows lost or doubled"
    events = ctx.lake.read(S.SILVER_EVENTS_TABLE)
    assert events.select(S.EVENT_ID).distinct().count() == expected[S.SILVER_EVENTS_TABLE]
    for summary in summaries:  # each run accounts for every line it read
        assert summary["rows_in"] == summary["rows_good"] + summary["rows_quarantined"] + summary["rows_duplicate"]
    # Every stored event was inserted by exactly one of the two (the other counted it a duplicate,
    # or skipped the file the first had recorded).
    assert sum(s["rows_good"] for s in summaries) == reference["rows_good"]



# What the second of two ingests started at once got once (CI, 2026-12-03): the first one's
# CREATE TABLE of bronze/events had put files in the folder but not yet committed.
IN_FLIGHT = (
    "[DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION] Cannot create table ('`delta`.`/w/bronze/events`'). "
    "The associated location ('/w/bronze/events') is not empty and also not a Delta table."
)


def test_create_waits_for_another_jobs_first_commit_then_gives_deltas_error(tmp_path):
    lake = Lakehouse(None, small_config(tmp_path / "wh", "tables.conflict_retries=3", "tables.conflict_backoff_seconds=0"))
    lake.exists = lambda table: False
    statements = []

    class Session:
        def __init__(self, failures):
            self.failures = failures

        def sql(self, statement):
            statements.append(statement)
            if len(statements) <= self.failures:
                raise RuntimeError(IN_FLIGHT)

    lake.spark = Session(failures=2)  # the other job commits while this one waits
    lake._create_if_missing(S.BRONZE_EVENTS_TABLE)
    assert len(statements) == 3 and all(s.startswith("CREATE TABLE IF NOT EXISTS") for s in statements)

    statements.clear()
    lake.spark = Session(failures=99)  # a folder that never becomes a table
    with pytest.raises(RuntimeError, match="DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"):
        lake._create_if_missing(S.BRONZE_EVENTS_TABLE)
    assert len(statements) == 4

    statements.clear()
    class Broken:
        def sql(self, statement):
            statements.append(statement)
            raise ValueError("other")

    lake.spark = Broken()
    with pytest.raises(ValueError, match="other"):
        lake._create_if_missing(S.BRONZE_EVENTS_TABLE)
    assert len(statements) == 1, "only a folder being created is waited for"
