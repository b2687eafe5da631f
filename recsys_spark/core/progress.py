"""How far the running stage has come, said on the driver while it works.

A :class:`Progress` reporter runs one poller thread for the life of a command. Every
``poll_s`` it reads Spark's status tracker (``sparkContext.statusTracker()``: the active stages'
done/total tasks) and the Python-side steps a stage reports through :func:`step` (a loop's
done/total: evaluated models, ALS grid points, k-means iterations), and says, for the running pipeline stage:
the stage, the step (the Spark job description the stage set through :func:`describe`), each
counter's done/total, its rate and an estimate of the time left.

- On a terminal (``stderr.isatty()``, or ``progress.mode=bar``) that is one live line redrawn in
  place (``\\r``); a log record clears it first, so logs and the bar do not interleave.
- Otherwise (a log file, a job, CI; or ``progress.mode=lines``) it is a plain INFO log line of
  the ``recsys_spark.core.progress`` logger, without escape codes, at a bounded rate: at most
  one per ``progress.interval_s`` seconds, and one when a counter already shown crosses a 25%
  step or, having run that long, ends. Work that ends within ``interval_s`` says nothing beyond
  the stage's own start/done lines.
- ``progress.mode=none``, or a log level above INFO (``recsys-spark -q``), says nothing.

Spark's own console progress bar stays off (``recsys_spark.core.session``): it would draw over
this line and over the logs. A Spark Connect session has no ``sparkContext``: there the reporter
shows the stage and the Python-side steps only, and :func:`describe` names the step without
setting a Spark job description.

Stages report through the module functions (:func:`describe`, :func:`step`), which go to the
active reporter (:func:`active`) and cost nothing without one (a notebook, a test).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TextIO

from recsys_spark.core.config import ProgressConfig
from recsys_spark.core.session import is_connect

log = logging.getLogger(__name__)

QUARTERS = 4  # plain lines also come at 25% steps of a counter already shown
BAR_WIDTH = 20
_ERASE_LINE = "\r\x1b[K"


@dataclass
class Counter:
    """One thing being counted: a Spark stage's tasks or a Python-side step's items."""

    label: str
    unit: str
    total: int
    done: int = 0
    started: float = 0.0
    first_done: int = 0
    shown_quarter: int = -1  # the 25% step of the last plain line that showed it; -1: never shown

    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    def quarter(self) -> int:
        return int(self.fraction() * QUARTERS)

    def rate(self, now: float) -> Optional[float]:
        """Units per second since it was first seen; None before any progress."""
        elapsed, progressed = now - self.started, self.done - self.first_done
        return progressed / elapsed if elapsed > 0 and progressed > 0 else None

    def eta(self, now: float) -> Optional[float]:
        rate = self.rate(now)
        return max(0, self.total - self.done) / rate if rate else None

    def text(self, now: float) -> str:
        """``label 5/8 tasks (62%) 2.1 tasks/s ETA 2s`` (``... 1 per 40s ...`` when slower than
        one a second): no escape codes."""
        parts = [f"{self.label} {self.done}/{self.total} {self.unit} ({int(self.fraction() * 100)}%)"]
        rate = self.rate(now)
        if rate is not None:
            # Under one a second, "1 per 29s" reads better than 0.034 models/s.
            parts.append(f"{_rate(rate)} {self.unit}/s" if rate >= 1 else f"1 per {_duration(1 / rate)}")
        eta = self.eta(now)
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {_duration(eta)}")
        return " ".join(parts)


def _rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class _Stage:
    name: str
    started: float
    step: Optional[str] = None
    spark: dict = field(default_factory=dict)  # (stage id, attempt) -> Counter
    steps: dict = field(default_factory=dict)  # step name -> Counter


class Progress:
    """The reporter: :meth:`stage` around each pipeline stage, :meth:`describe` and
    :meth:`step` from inside it, :meth:`poll` from the poller thread (or a test).

    ``mode``: ``bar``, ``lines`` or ``none`` (``auto`` resolved by :meth:`from_config`).
    ``tracker``: Spark's status tracker, or None (Spark Connect, no session): steps only.
    ``clock`` and ``stream`` are seams for tests."""

    def __init__(
        self,
        mode: str = "lines",
        interval_s: float = 15.0,
        poll_s: float = 0.5,
        stream: Optional[TextIO] = None,
        tracker: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.mode = mode
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.stream = stream if stream is not None else sys.stderr
        self.tracker = tracker
        self.clock = clock
        self._lock = threading.RLock()
        self._stage: Optional[_Stage] = None
        self._last_line = 0.0
        self._last_shown: Optional[tuple] = None  # what the last plain line showed
        self._drawn = False  # the bar is on screen (the cursor at the start of its line)
        self._shown_bar = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._poll_failed = False

    @classmethod
    def from_config(cls, cfg: ProgressConfig, stream: Optional[TextIO] = None) -> "Progress":
        """``progress.mode`` resolved: ``auto`` is a bar on a terminal, lines otherwise; and
        ``none`` whatever the mode when INFO is not logged (``-q``)."""
        stream = stream if stream is not None else sys.stderr
        mode = cfg.mode
        if mode == "auto":
            mode = "bar" if _isatty(stream) else "lines"
        if not log.isEnabledFor(logging.INFO):
            mode = "none"
        return cls(mode=mode, interval_s=cfg.interval_s, poll_s=cfg.poll_s, stream=stream)

    # ---- the life of a command ------------------------------------------------------------
    def attach(self, spark) -> None:
        """Read this session's status tracker (classic Spark); on Spark Connect there is none."""
        self.tracker = status_tracker(spark)

    def start(self) -> None:
        if self.mode == "none" or self._thread is not None:
            return
        self._stop.clear()
        if self.mode == "bar":
            _bar_filter.reporters.append(self)
            _install_filter(self.stream)
        self._thread = threading.Thread(target=self._run, name="recsys-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        with self._lock:
            self.clear()
        if self in _bar_filter.reporters:
            _bar_filter.reporters.remove(self)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    # ---- what stages report ---------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self._lock:
            self._stage = _Stage(name=name, started=self.clock())
            self._last_line = self._stage.started
        try:
            yield
        finally:
            with self._lock:
                self.poll()
                self._stage = None
                self.clear()

    def describe(self, text: Optional[str]) -> None:
        with self._lock:
            if self._stage is not None:
                self._stage.step = text

    def step(self, name: str, done: int, total: int, unit: str = "items") -> None:
        with self._lock:
            stage = self._stage
            if stage is None or self.mode == "none":
                return
            counter = stage.steps.get(name)
            if counter is None:
                counter = stage.steps[name] = Counter(name, unit, total, done, self.clock(), done)
            counter.done, counter.total = done, total

    # ---- the poller -----------------------------------------------------------------------
    def poll(self) -> None:
        """Read the tracker, then draw the bar or log the lines that are due."""
        with self._lock:
            stage = self._stage
            if stage is None or self.mode == "none":
                return
            now = self.clock()
            ended = self._read_tracker(stage, now)
            for name in [n for n, c in stage.steps.items() if 0 < c.total <= c.done]:
                ended.append(stage.steps.pop(name))
            if self.mode == "bar":
                self._draw(stage, now)
            else:
                self._lines(stage, now, ended)

    def _read_tracker(self, stage: _Stage, now: float) -> list:
        """Update the Spark stage counters; the ones that left the active set are returned
        (with their final counts)."""
        if self.tracker is None:
            return []
        try:
            active = {}
            for stage_id in self.tracker.getActiveStageIds():
                info = self.tracker.getStageInfo(stage_id)
                if info is not None:
                    active[(info.stageId, info.currentAttemptId)] = info
            ended = []
            for key in [k for k in stage.spark if k not in active]:
                counter = stage.spark.pop(key)
                info = self.tracker.getStageInfo(key[0])
                if info is not None:
                    counter.done = info.numCompletedTasks
                ended.append(counter)
            for key, info in sorted(active.items()):
                counter = stage.spark.get(key)
                if counter is None:
                    label = f"Spark stage {info.stageId}" + (f" (attempt {info.currentAttemptId})" if info.currentAttemptId else "")
                    counter = stage.spark[key] = Counter(label, "tasks", info.numTasks, info.numCompletedTasks, now,
                                                         info.numCompletedTasks)
                counter.done, counter.total = info.numCompletedTasks, info.numTasks
            return ended
        except Exception as exc:  # noqa: BLE001 - progress must never fail a stage (a stopping context, a py4j hiccup)
            if not self._poll_failed:
                self._poll_failed = True
                log.debug("progress: reading Spark's status tracker failed: %s: %s", type(exc).__name__, exc)
            return []

    def counters(self) -> list:
        stage = self._stage
        return [] if stage is None else [*stage.steps.values(), *stage.spark.values()]

    def status(self, now: Optional[float] = None, width: Optional[int] = None) -> str:
        """The current line, without escape codes: ``stage · step · counter | counter``; with
        ``width``, the step is shortened first (the counts are what the line is for)."""
        with self._lock:
            stage = self._stage
            if stage is None:
                return ""
            now = self.clock() if now is None else now
            head = f"{stage.name} {_duration(now - stage.started)}"
            counters = " | ".join(c.text(now) for c in self.counters())
            step = stage.step or ""
            if width is not None and step:
                room = width - len(head) - (len(counters) + 3 if counters else 0) - 3
                step = step if len(step) <= room else step[: room - 1] + "…" if room > 8 else ""
            return " · ".join(part for part in (head, step, counters) if part)

    def _lines(self, stage: _Stage, now: float, ended: list) -> None:
        for counter in ended:
            # Shown before and long-running: say that it ended (a one-task stage of a few
            # seconds that a line happened to catch is not worth a second line).
            if counter.shown_quarter >= 0 and now - counter.started >= self.interval_s:
                how = "done" if counter.done >= counter.total else "ended at"  # a failed or cancelled stage
                log.info("progress: %s · %s %s %d/%d %s in %s", stage.name, counter.label, how, counter.done,
                         counter.total, counter.unit, _duration(now - counter.started))
                self._last_line = now
        counters = self.counters()
        if not counters:
            return
        shown = (stage.step, tuple((c.label, c.done, c.total) for c in counters))
        if shown == self._last_shown:  # nothing moved: a line would only repeat the last one
            return
        due = now - self._last_line >= self.interval_s
        stepped = any(0 <= c.shown_quarter < c.quarter() for c in counters)
        if due or stepped:
            log.info("progress: %s", self.status(now))
            self._last_line, self._last_shown = now, shown
            for counter in counters:
                counter.shown_quarter = counter.quarter()

    # ---- the bar ----------------------------------------------------------------------------
    def _draw(self, stage: _Stage, now: float) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        counters = self.counters()
        bar = ""
        if counters and counters[0].total > 0:
            filled = int(counters[0].fraction() * BAR_WIDTH)
            bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
        text = (bar + self.status(now, width - len(bar)))[:width]
        if self._drawn and text == self._shown_bar:
            return  # the same line again: nothing to redraw
        # The cursor goes back to the line's start: what the JVM or a library writes to the same
        # terminal (log4j warnings, model-loading bars) then overwrites the bar instead of
        # being glued to its end.
        self._write(_ERASE_LINE + text + "\r")
        self._drawn, self._shown_bar = True, text

    def clear(self) -> None:
        """Take the bar off the screen (before a log record, at a stage's end)."""
        with self._lock:
            if self._drawn:
                self._write(_ERASE_LINE)
                self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream: nothing to draw on
            pass


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _BarFilter(logging.Filter):
    """On the handlers writing to the bar's stream: clears the bar before a record is written
    (the next poll draws it again under the record)."""

    def __init__(self):
        super().__init__()
        self.reporters: list = []

    def filter(self, record: logging.LogRecord) -> bool:
        for reporter in list(self.reporters):
            reporter.clear()
        return True


_bar_filter = _BarFilter()


def _install_filter(stream: TextIO) -> None:
    for handler in logging.getLogger().handlers:
        if getattr(handler, "stream", None) is stream and _bar_filter not in handler.filters:
            handler.addFilter(_bar_filter)


# ---- the module API stages use -----------------------------------------------------------
_active: Optional[Progress] = None


def status_tracker(spark):
    """``spark.sparkContext.statusTracker()`` on classic Spark; None on Spark Connect or without a session."""
    if spark is None or is_connect(spark):
        return None
    return spark.sparkContext.statusTracker()


@contextlib.contextmanager
def active(reporter: Progress, spark=None) -> Iterator[Progress]:
    """Make ``reporter`` the one :func:`stage`, :func:`describe` and :func:`step` report to,
    reading ``spark``'s status tracker, with its poller running, for the ``with`` block."""
    global _active
    previous = _active
    if spark is not None:
        reporter.attach(spark)
    _active = reporter
    reporter.start()
    try:
        yield reporter
    finally:
        reporter.stop()
        _active = previous


JOB_GROUP_PREFIX = "recsys-spark:"


@contextlib.contextmanager
def stage(spark, name: str) -> Iterator[None]:
    """Around one pipeline stage: its Spark jobs in the job group ``recsys-spark:<stage>``
    (what the Spark UI groups them by), and the active reporter showing it."""
    _set_job_group(spark, f"{JOB_GROUP_PREFIX}{name}", f"{name}")
    reporter = _active
    try:
        if reporter is None:
            yield
        else:
            with reporter.stage(name):
                yield
    finally:
        _set_job_group(spark, None, None)


def describe(spark, text: Optional[str]) -> None:
    """Name the step a stage is at: the Spark job description of the jobs it starts from here
    on (``<stage>: <text>`` in the Spark UI; not on Spark Connect) and the progress line's step."""
    reporter = _active
    stage_name = reporter._stage.name if reporter is not None and reporter._stage is not None else None
    if spark is not None and not is_connect(spark):
        spark.sparkContext.setJobDescription(None if text is None else f"{stage_name}: {text}" if stage_name else text)
    if reporter is not None:
        reporter.describe(text)


def step(name: str, done: int, total: int, unit: str = "items") -> None:
    """A Python-side loop's progress (``done`` of ``total`` ``unit``), shown beside Spark's."""
    reporter = _active
    if reporter is not None:
        reporter.step(name, done, total, unit)


def _set_job_group(spark, group: Optional[str], description: Optional[str]) -> None:
    if spark is None or is_connect(spark):
        return
    sc = spark.sparkContext
    if group is None:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setJobDescription(None)
    else:
        sc.setJobGroup(group, description)
