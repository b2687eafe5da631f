"""Issue 8.3 — crash mid-write: a stage's driver (Python and its JVM) is SIGKILLed while it
writes a table; every table must stay readable at a committed version (never a half-written
one), and the next run must complete the work exactly once."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys_spark.core.context import make_context
from recsys_spark.stages import features, generate, ingest
from recsys_spark.core.schemas import (
    BRONZE_EVENTS_TABLE,
    QUARANTINE_TABLE,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
    USER_SEQUENCES_TABLE,
)
from tests.support import REPO, small_config

KILL_TIMEOUT_SECONDS = 900


def batch(spark, root: Path, seed: int, events: int) -> dict:
    ctx = make_context(
        spark,
        small_config(
            root / "generate-warehouse",
            "generate.users=400",
            "generate.items=200",
            f"generate.events={events}",
            "generate.topics=8",
            "generate.bad_fraction=0.02",
            f"generate.seed={seed}",
            f"generate.output={root / 'out'}",
        ),
        run_id="crash-test",
    )
    return generate.run(ctx)


@pytest.fixture(scope="module")
def batches(spark, tmp_path_factory):
    """Two generated batches, made once for the module: a small first one and a big second one
    (big enough that a write of it is still in flight when the watcher sees its first file).
    Tests copy the event files they need and never change these."""
    root = tmp_path_factory.mktemp("crash-batches")
    return {"a": batch(spark, root / "a", seed=1, events=20_000), "b": batch(spark, root / "b", seed=2, events=60_000)}


def copy_events(generated: dict, into: Path, prefix: str) -> None:
    into.mkdir(exist_ok=True)
    for path in Path(generated["events_path"]).glob("*.jsonl"):
        shutil.copyfile(path, into / f"{prefix}-{path.name}")


def data_files(table_dir: Path) -> set:
    return {p for p in table_dir.rglob("*.parquet") if "_delta_log" not in p.parts}


def commits(table_dir: Path) -> set:
    return set((table_dir / "_delta_log").glob("*.json"))


def run_and_kill(args: list[str], watched: Path, log_path: Path) -> dict:
    """Start ``python -m recsys_spark <args>`` in its own process group; SIGKILL the group as
    soon as ``watched`` holds a data file that no commit lists yet (a write in flight)."""
    files_before, commits_before = data_files(watched), commits(watched)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys_spark", *args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + KILL_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return {"killed": False, "returncode": proc.returncode}
                new_files = data_files(watched) - files_before
                if new_files and not commits(watched) - commits_before:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return {"killed": True, "files_in_flight": len(new_files)}
                time.sleep(0.02)
            return {"killed": False, "returncode": None}
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def cli_args(stage: str, warehouse: Path, inputs: tuple = ()) -> list[str]:
    # Untracked: what is killed is a table write; MLflow's store would only add its start-up.
    sets = [f"warehouse={warehouse}", "spark.master=local[2]", "spark.shuffle_partitions=2", "spark.driver_memory=1g",
            "tracking.enabled=false", *inputs]
    return [stage] + [a for s in sets for a in ("--set", s)]


@pytest.mark.slow
@pytest.mark.parametrize("watched_table", [BRONZE_EVENTS_TABLE, SILVER_EVENTS_TABLE])
def test_ingest_killed_mid_write(make_ctx, tmp_path, watched_table, batches):
    first, second = batches["a"], batches["b"]
    inputs_dir = tmp_path / "input"
    copy_events(first, inputs_dir, "a")
    inputs = ("input.format=events", f"input.events={inputs_dir}", f"input.items={first['items_path']}")
    ctx = make_ctx(*inputs)
    ingest.run(ctx)
    tables = (BRONZE_EVENTS_TABLE, SILVER_EVENTS_TABLE, QUARANTINE_TABLE, SILVER_ITEMS_TABLE)
    before = {t: (ctx.lake.version(t), ctx.lake.read(t).count()) for t in tables}

    copy_events(second, inputs_dir, "b")
    outcome = run_and_kill(
        cli_args("ingest", ctx.cfg.warehouse, inputs), Path(ctx.lake.location(watched_table)), tmp_path / "killed.log"
    )
    assert outcome["killed"], f"the write finished before it could be killed: {outcome}"
    print(f"killed ingest while writing {watched_table}: {outcome}")  # the README's Guarantees figure

    # Every table readable; each at its old version or at a later, complete one.
    good = first["events_good"]
    for t in tables:
        version, count = ctx.lake.version(t), ctx.lake.read(t).count()
        assert version >= before[t][0]
        if version == before[t][0]:
            assert count == before[t][1], f"{t}: same version, other rows"
    silver_rows = ctx.lake.read(SILVER_EVENTS_TABLE).count()
    assert silver_rows in (good, good + second["events_good"]), "silver/events half-written"

    summary = ingest.run(ctx)
    assert summary["rows_in"] == summary["rows_good"] + summary["rows_quarantined"] + summary["rows_duplicate"]
    assert ctx.lake.read(SILVER_EVENTS_TABLE).count() == good + second["events_good"]


@pytest.mark.slow
def test_features_killed_mid_write(make_ctx, tmp_path, batches):
    generated = batches["b"]
    ctx = make_ctx("input.format=events", f"input.events={generated['events_path']}", f"input.items={generated['items_path']}")
    ingest.run(ctx)
    first = features.run(ctx)
    previous = ctx.lake.version(USER_SEQUENCES_TABLE)
    # A different config makes the rewrite observable: fewer events kept per user.
    outcome = run_and_kill(
        cli_args("features", ctx.cfg.warehouse, ("features.max_sequence_length=5",)),
        Path(ctx.lake.location(USER_SEQUENCES_TABLE)),
        tmp_path / "killed.log",
    )
    assert outcome["killed"], f"the write finished before it could be killed: {outcome}"
    print(f"killed features while writing {USER_SEQUENCES_TABLE}: {outcome}")
    assert ctx.lake.version(USER_SEQUENCES_TABLE) == previous
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    assert sequences.count() == first["users"]
    assert sequences.selectExpr("sum(size(items))").first()[0] == first["events_kept"]
    rerun = features.run(make_ctx("features.max_sequence_length=5"))
    assert rerun["users"] == first["users"]
    assert ctx.lake.read(USER_SEQUENCES_TABLE).selectExpr("max(size(items))").first()[0] <= 5
