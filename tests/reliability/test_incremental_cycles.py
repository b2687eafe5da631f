"""Issue 20.2 — incremental equals full: a scheduled service adds a small event file, then runs
ingest -> features -> interests -> score (incremental), cycle after cycle. After 20 cycles every
user's recommendations equal a full scoring of the same tables with the same model (same items,
same order), every user with new events in a cycle was rescored in that cycle, one cycle
SIGKILLed part-way (a real process, killed while it writes a table) is made good by the next,
and (issue 15.6) no table piles up small files: the writes compact them as they go."""
from __future__ import annotations

import json
import random
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from recsys_spark import pipeline
from recsys_spark.core.context import make_context
from recsys_spark.core.schemas import (
    ITEM_ID,
    RANK,
    RECOMMENDATIONS_TABLE,
    RUN_ID,
    SCORE,
    SILVER_EVENTS_TABLE,
    USER_ID,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
)
from recsys_spark.stages import generate
from tests.reliability.test_crash_mid_write import cli_args, run_and_kill
from tests.support import small_config

pytestmark = pytest.mark.slow

CYCLES = 20
KILLED_CYCLE = 9  # this cycle's process is SIGKILLed while it writes; cycle 10 makes it good
CYCLE_STAGES = ("ingest", "features", "interests", "score")
COMPACT_MIN_FILES = 8
SETTINGS = (
    "train.epochs=2",
    "train.embedding_dim=8",
    "train.lstm_units=8",
    "train.max_len=10",
    "train.batch_size=32",
    "encode.batch_size=32",
    "retrieve.candidates=20",
    "retrieve.recall_sample=0",
    "score.k=5",
    "score.min_history=3",
    "tracking.enabled=false",
    # Incremental commits add small files to every table they touch; a write that leaves a table
    # with this many compacts it (Lakehouse), so the cycles also run through compactions.
    f"tables.compact_min_files={COMPACT_MIN_FILES}",
)


def epoch_seconds(value) -> float:
    """A generated timestamp (epoch seconds, or ISO-8601 text) as epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def split_events(generated: dict, into: Path) -> list[Path]:
    """The generated event lines in time order: the first half as the initial file, the rest as
    ``CYCLES`` files of consecutive events (each touches a few users)."""
    lines = [line for path in sorted(Path(generated["events_path"]).glob("*.jsonl")) for line in path.read_text().splitlines() if line]
    lines.sort(key=lambda line: (epoch_seconds(json.loads(line)["timestamp"]), json.loads(line)["event_id"]))
    into.mkdir(parents=True)
    half = len(lines) // 2
    chunk = -(-(len(lines) - half) // CYCLES)
    parts = [lines[:half]] + [lines[half + i * chunk: half + (i + 1) * chunk] for i in range(CYCLES)]
    files = []
    for i, part in enumerate(parts):
        path = into / f"batch-{i:02d}.jsonl"
        path.write_text("\n".join(part) + "\n")
        files.append(path)
    return files


def users_of(path: Path) -> set:
    return {json.loads(line)["user_id"] for line in path.read_text().splitlines() if line}


def recommendation_lists(lake, version=None) -> dict:
    rows = lake.read(RECOMMENDATIONS_TABLE, version).select(USER_ID, RANK, ITEM_ID, SCORE, RUN_ID).collect()
    lists: dict = {}
    for r in sorted(rows, key=lambda r: (r[USER_ID], r[RANK])):
        lists.setdefault(r[USER_ID], []).append(r)
    return lists


def test_twenty_incremental_cycles_equal_one_full_scoring(spark, tmp_path):
    root = tmp_path
    generated = generate.run(make_context(spark, small_config(
        root / "generate-warehouse", "generate.users=40", "generate.items=60", "generate.events=1200",
        "generate.topics=4", "generate.bad_fraction=0", "generate.seed=20", f"generate.output={root / 'raw'}",
    ), run_id="generate"))
    batches = split_events(generated, root / "batches")
    inbox = root / "inbox"
    inbox.mkdir()
    warehouse = root / "warehouse"
    inputs = ("input.format=events", f"input.events={inbox}", f"input.items={generated['items_path']}")
    cfg = small_config(warehouse, *inputs, *SETTINGS)
    incremental = small_config(warehouse, *inputs, *SETTINGS, "score.mode=incremental")

    # The daily build on the first half: every stage once (the model and candidates stay fixed).
    shutil.copyfile(batches[0], inbox / batches[0].name)
    ctx = make_context(spark, cfg, run_id="initial")
    for stage in ("ingest", "features", "encode", "interests", "train", "retrieve", "score"):
        pipeline.run_stage(ctx, stage)
    lake = ctx.lake

    rescored = []
    for cycle in range(1, CYCLES + 1):
        shutil.copyfile(batches[cycle], inbox / batches[cycle].name)
        if cycle == KILLED_CYCLE:
            # The same cycle as a scheduled job runs it, killed while it writes one of its tables
            # (drawn with a fixed seed): that table keeps its last committed version.
            watched = random.Random(KILLED_CYCLE).choice(
                [SILVER_EVENTS_TABLE, USER_SEQUENCES_TABLE, USER_VECTORS_TABLE, RECOMMENDATIONS_TABLE]
            )
            before = {t: lake.version(t) for t in (SILVER_EVENTS_TABLE, USER_SEQUENCES_TABLE, RECOMMENDATIONS_TABLE)}
            args = cli_args("run", warehouse, (*inputs, *SETTINGS, "score.mode=incremental"))
            outcome = run_and_kill(args[:1] + ["--only", ",".join(CYCLE_STAGES)] + args[1:],
                                   Path(lake.location(watched)), tmp_path / "killed.log")
            assert outcome["killed"], f"cycle {cycle} ended before it could be killed while writing {watched}: {outcome}"
            print(f"cycle {cycle}: killed while writing {watched}: {outcome}")
            assert lake.version(RECOMMENDATIONS_TABLE) == before[RECOMMENDATIONS_TABLE]
            touched_since_score = users_of(batches[cycle])
            continue
        cycle_ctx = make_context(spark, incremental, run_id=f"cycle-{cycle:02d}")
        summaries = {stage: pipeline.run_stage(cycle_ctx, stage) for stage in CYCLE_STAGES}
        assert summaries["score"]["mode"] == "incremental"
        touched = users_of(batches[cycle]) | (touched_since_score if cycle == KILLED_CYCLE + 1 else set())
        lists = recommendation_lists(lake)
        missed = {u for u in touched if {r[RUN_ID] for r in lists.get(u, [])} != {cycle_ctx.run_id}}
        assert not missed, f"cycle {cycle}: users with new events not rescored: {sorted(missed)}"
        rescored.append(summaries["score"]["users"])

    # No small-file build-up: 20 incremental ingests (about two files each) and 20 score MERGEs
    # leave every table below the compaction threshold, because the writes compacted them.
    files = {str(t): lake.file_count(t) for t in (SILVER_EVENTS_TABLE, USER_SEQUENCES_TABLE, USER_VECTORS_TABLE, RECOMMENDATIONS_TABLE)}
    assert all(n < COMPACT_MIN_FILES for n in files.values()), files
    compactions = [c for c in lake.history(SILVER_EVENTS_TABLE, 100) if c.operation == "OPTIMIZE"]
    assert compactions, "silver/events was never compacted: the test shows nothing"
    print(f"after {CYCLES} cycles: files per table {files}, silver/events compacted {len(compactions)} times")

    events = lake.read(SILVER_EVENTS_TABLE).count()
    assert events == sum(len(p.read_text().splitlines()) for p in batches), "an event was lost or stored twice"
    after_cycles = lake.version(RECOMMENDATIONS_TABLE)
    users = lake.read(USER_SEQUENCES_TABLE).count()
    assert max(rescored) < users, "incremental runs rescored everyone: the test shows nothing"

    # One full scoring of the same tables with the same model.
    full = pipeline.run_stage(make_context(spark, cfg, run_id="full"), "score")
    assert full["mode"] == "full" and full["model_version"] != "none"
    got, want = recommendation_lists(lake, after_cycles), recommendation_lists(lake)
    assert set(got) == set(want) and len(want) == users
    differ = [u for u in want if [r[ITEM_ID] for r in got[u]] != [r[ITEM_ID] for r in want[u]]]
    assert not differ, f"{len(differ)} of {users} users' lists differ from a full scoring, e.g. {differ[:3]}"
    for u in want:
        assert [r[SCORE] for r in got[u]] == pytest.approx([r[SCORE] for r in want[u]], rel=1e-5, abs=1e-6), u
    print(f"{CYCLES} cycles (cycle {KILLED_CYCLE} killed): {users} users, {sum(rescored)} rescorings "
          f"(per cycle {min(rescored)}-{max(rescored)}), every list equal to the full scoring")
