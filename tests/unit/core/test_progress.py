"""Progress on the driver: the lines and the bar from a fake status tracker (formatting, rates,
when a line is due), one real local Spark job seen through the real tracker, -q, and Spark Connect."""
from __future__ import annotations

import io
import logging
import re
from collections import namedtuple

import pytest

from recsys_spark.core import progress
from recsys_spark.core.config import ProgressConfig
from recsys_spark.core.progress import Counter, Progress

StageInfo = namedtuple("StageInfo", "stageId currentAttemptId name numTasks numActiveTasks numCompletedTasks numFailedTasks")
ESCAPE = re.compile(r"[\x1b\r]")


class FakeTracker:
    """What ``sparkContext.statusTracker()`` answers, set by the test."""

    def __init__(self):
        self.stages = {}  # id -> StageInfo
        self.active = []

    def run(self, stage_id, done, total):
        self.stages[stage_id] = StageInfo(stage_id, 0, f"count at x.py:{stage_id}", total, 1, done, 0)
        if stage_id not in self.active:
            self.active.append(stage_id)

    def end(self, stage_id):
        self.active.remove(stage_id)

    def getActiveStageIds(self):
        return list(self.active)

    def getStageInfo(self, stage_id):
        return self.stages.get(stage_id)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class TtyStream(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def lines(caplog):
    """The progress lines logged so far."""
    caplog.set_level(logging.INFO, logger="recsys_spark")

    def _lines():
        return [r.getMessage() for r in caplog.records if r.name == progress.__name__]

    return _lines


def test_counter_text_has_done_total_rate_and_eta():
    counter = Counter("Spark stage 3", "tasks", total=8, done=2, started=0.0, first_done=0)
    assert counter.text(now=4.0) == "Spark stage 3 2/8 tasks (25%) 1 per 2s ETA 12s"
    counter.done = 8
    assert counter.text(now=16.0) == "Spark stage 3 8/8 tasks (100%) 1 per 2s"  # no ETA once done
    assert Counter("models", "models", 5, 0, 0.0, 0).text(now=3.0) == "models 0/5 models (0%)"  # no rate yet
    assert progress._duration(125) == "2m05s" and progress._duration(7300) == "2h01m"


def test_lines_carry_stage_step_and_done_total_at_a_bounded_rate(lines):
    tracker, clock = FakeTracker(), Clock()
    reporter = Progress(mode="lines", interval_s=10, tracker=tracker, clock=clock)
    with reporter.stage("ingest"):
        reporter.describe("reading events")
        tracker.run(7, done=0, total=8)
        reporter.poll()
        clock.now += 2
        tracker.run(7, done=1, total=8)
        reporter.poll()
        assert lines() == []  # work shorter than interval_s says nothing
        clock.now += 9
        tracker.run(7, done=3, total=8)
        reporter.poll()
        assert lines() == ["progress: ingest 11s · reading events · Spark stage 7 3/8 tasks (37%) 1 per 4s ETA 18s"]
        clock.now += 1
        tracker.run(7, done=4, total=8)  # crosses 50%: a line, though interval_s has not passed
        reporter.poll()
        clock.now += 1
        tracker.run(7, done=5, total=8)  # same quarter, within interval_s: none
        reporter.poll()
        assert len(lines()) == 2 and "4/8 tasks (50%)" in lines()[1]
        clock.now += 3
        tracker.run(7, done=8, total=8)
        tracker.end(7)
        reporter.poll()
    assert lines()[2] == "progress: ingest · Spark stage 7 done 8/8 tasks in 16s"
    assert len(lines()) == 3 and not any(ESCAPE.search(line) for line in lines())


def test_a_short_spark_stage_a_line_caught_ends_without_a_second_line(lines):
    tracker, clock = FakeTracker(), Clock()
    reporter = Progress(mode="lines", interval_s=10, tracker=tracker, clock=clock)
    with reporter.stage("ingest"):
        clock.now += 10
        tracker.run(3, done=0, total=1)
        reporter.poll()
        clock.now += 2
        tracker.end(3)
        reporter.poll()
    assert lines() == ["progress: ingest 10s · Spark stage 3 0/1 tasks (0%)"]


def test_python_steps_report_beside_spark_through_the_module_api(lines):
    tracker, clock = FakeTracker(), Clock()
    reporter = Progress(mode="lines", interval_s=0, poll_s=3600, tracker=tracker, clock=clock)  # polled by the test
    with progress.active(reporter):
        with progress.stage(None, "evaluate"):
            progress.describe(None, "baselines")
            progress.step("models", 1, 4, unit="models")
            tracker.run(2, done=1, total=2)
            clock.now += 5
            reporter.poll()
            assert lines()[-1] == ("progress: evaluate 5s · baselines · models 1/4 models (25%) | "
                                   "Spark stage 2 1/2 tasks (50%)")
            progress.step("models", 4, 4, unit="models")
            tracker.end(2)
            reporter.poll()
    assert lines()[-2:] == ["progress: evaluate · Spark stage 2 ended at 1/2 tasks in 0s",
                            "progress: evaluate · models done 4/4 models in 5s"]
    progress.step("models", 1, 4)  # no active reporter: nothing, no error
    assert progress._active is None


def test_a_bar_on_a_terminal_redraws_one_line_and_clears_it(lines):
    tracker, clock, stream = FakeTracker(), Clock(), TtyStream()
    reporter = Progress.from_config(ProgressConfig(mode="auto"), stream=stream)
    assert reporter.mode == "bar"
    reporter.tracker, reporter.clock = tracker, clock
    with reporter.stage("score"):
        tracker.run(4, done=5, total=10)
        reporter.poll()
        clock.now += 1
        reporter.poll()
    drawn = stream.getvalue()
    assert drawn.count("\r\x1b[K[##########..........] score ") >= 2 and "5/10 tasks (50%)" in drawn
    assert drawn.endswith("\r\x1b[K") and "\n" not in drawn  # cleared at the stage's end
    assert lines() == []  # the bar instead of lines, not both


def test_a_narrow_terminal_shortens_the_step_not_the_counts():
    tracker, clock = FakeTracker(), Clock()
    reporter = Progress(mode="bar", stream=TtyStream(), tracker=tracker, clock=clock)
    with reporter.stage("ingest"):
        reporter.describe("events: 1 new file(s) -> bronze/silver events, quarantine")
        tracker.run(12, done=0, total=1)
        reporter.poll()
        line = reporter.status(width=70)
    assert line == "ingest 0s · events: 1 new file(s) -> … · Spark stage 12 0/1 tasks (0%)"
    assert len(line) <= 70


def test_not_a_terminal_means_lines_and_never_an_escape_code(lines):
    stream = io.StringIO()
    reporter = Progress.from_config(ProgressConfig(mode="auto", interval_s=0), stream=stream)
    assert reporter.mode == "lines"
    reporter.tracker, reporter.clock = FakeTracker(), Clock()
    with reporter.stage("features"):
        reporter.tracker.run(1, done=1, total=4)
        reporter.poll()
    assert stream.getvalue() == "" and "1/4 tasks" in lines()[0]


def test_quiet_logging_turns_progress_off(caplog):
    caplog.set_level(logging.WARNING, logger="recsys_spark")
    assert Progress.from_config(ProgressConfig(mode="bar"), stream=TtyStream()).mode == "none"
    caplog.set_level(logging.INFO, logger="recsys_spark")
    assert Progress.from_config(ProgressConfig(mode="none"), stream=TtyStream()).mode == "none"
    reporter = Progress(mode="none", tracker=FakeTracker())
    reporter.start()
    assert reporter._thread is None  # no poller at all


class ConnectLikeSession:
    """What a Spark Connect session offers here: no sparkContext."""

    @property
    def sparkContext(self):
        raise NotImplementedError("[NOT_IMPLEMENTED] sparkContext() is not implemented.")


def test_on_spark_connect_only_the_stage_and_python_steps_are_shown(monkeypatch, lines):
    monkeypatch.setattr(progress, "is_connect", lambda spark: isinstance(spark, ConnectLikeSession))
    session, clock = ConnectLikeSession(), Clock()
    reporter = Progress(mode="lines", interval_s=0, poll_s=3600, clock=clock)
    with progress.active(reporter, session):
        assert reporter.tracker is None
        with progress.stage(session, "encode"):
            progress.describe(session, "items to encode")
            progress.step("batches", 1, 3, unit="batches")
            clock.now += 2
            reporter.poll()
    assert lines() == ["progress: encode 2s · items to encode · batches 1/3 batches (33%)"]


def test_a_real_spark_job_is_seen_with_its_tasks_and_description(spark, lines):
    """The poller thread against the session's own status tracker, on a job of 4 slow tasks."""
    import time

    assert spark.conf.get("spark.ui.showConsoleProgress") == "false"  # Spark's own bar stays off
    reporter = Progress(mode="lines", interval_s=0, poll_s=0.05)
    with progress.active(reporter, spark):
        with progress.stage(spark, "ingest"):
            progress.describe(spark, "counting slowly")
            assert spark.sparkContext.getLocalProperty("spark.job.description") == "ingest: counting slowly"
            assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") == "recsys-spark:ingest"
            assert spark.sparkContext.parallelize(range(4), 4).map(lambda x: time.sleep(0.5) or x).count() == 4
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None
    shown = [line for line in lines() if "Spark stage" in line]
    assert shown, lines()
    assert all(line.startswith("progress: ingest ") for line in shown)
    assert any(re.search(r"counting slowly · Spark stage \d+ [0-4]/4 tasks", line) for line in shown), shown
    assert re.search(r"Spark stage \d+ done 4/4 tasks in", shown[-1]), shown
    assert progress._active is None and reporter._thread is None
