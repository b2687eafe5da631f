"""The stages in order, and the one way to run any of them.

``run_stage`` and ``run_all`` are the only composition of stages: each stage reads its inputs
from Delta tables and writes its outputs to Delta tables (see ``recsys_spark.stages``). Both are
recorded in MLflow (``recsys_spark.tracking.experiment``): one parent run per run id, a nested
run per stage; a tracking failure is a warning and never fails a stage. A stage that fails
leaves the run a report saying which stage failed and why (``report.write_failure_report``).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Sequence

from recsys_spark.core import progress
from recsys_spark.core.context import StageContext, StageUnavailable, make_context, new_run_id  # noqa: F401
from recsys_spark.stages import PIPELINE_ORDER, STAGES, stage_function  # noqa: F401
from recsys_spark.tracking.experiment import tracker_for

log = logging.getLogger(__name__)


def run_stage(ctx: StageContext, name: str) -> dict:
    """Run one stage and return its summary, with ``stage``, ``run_id`` and ``seconds`` added,
    and ``tracking`` (its MLflow run, and for ``train`` the registered version) when tracked.

    Every stage's summary holds its counts and ``tables``: ``{"<layer>/<name>": version}`` of
    the tables it writes, at the version it left them. A stage that fails reading a damaged Delta
    log entry raises ``TableDamaged`` naming the table, the entry and the way back."""
    with tracker_for(ctx).stage(name, ctx) as tracked:
        started = time.perf_counter()
        ctx.progress(f"stage {name}: started")
        try:
            with progress.stage(ctx.spark, name):
                summary = stage_function(name)(ctx)
        except Exception as error:
            damaged = ctx.lake.damage(error)  # a damaged Delta log entry: name the table and the way back
            if damaged is not None:
                _report_failure(ctx, name, damaged)
                raise damaged from error
            _report_failure(ctx, name, error)
            raise
        if not isinstance(summary.get("tables"), dict):
            raise TypeError(f"stage {name!r} returned a summary without a 'tables' dict: {sorted(summary)}")
        seconds = round(time.perf_counter() - started, 2)
        ctx.progress(f"stage {name}: done in {seconds}s")
        result = {"stage": name, "run_id": ctx.run_id, **summary, "seconds": seconds}
        record = tracked.record(result, ctx.cfg)
        if record is not None:
            result["tracking"] = record
    ctx.results[name] = result
    return result


def _report_failure(ctx: StageContext, name: str, error: BaseException) -> None:
    """A failed stage still leaves the run a report saying which stage failed and why; a report
    that cannot be written is a warning, never the error the caller sees."""
    from recsys_spark.evaluation import report

    try:
        report.write_failure_report(ctx, name, error)
    except Exception as exc:  # noqa: BLE001 - the stage's own error is the one to raise
        log.warning("could not write the failure report of stage %s: %s: %s", name, type(exc).__name__, exc)


class StageSelectionError(ValueError):
    """A ``--from``/``--only`` that names no stage of the pipeline, or both at once."""


def select_stages(start: Optional[str] = None, only: Optional[Sequence[str]] = None) -> tuple:
    """The stages of ``PIPELINE_ORDER`` a run takes: all of them; from ``start`` on; or only
    those named in ``only`` (in pipeline order, whatever order they are given in, since each
    stage reads what the ones before it wrote). An unknown name is an error listing the stages."""
    if start is not None and only is not None:
        raise StageSelectionError("give either a first stage (--from) or a list of stages (--only), not both")
    names = [start] if start is not None else list(only or ())
    names = [n.strip() for n in names]
    unknown = [n for n in names if n not in PIPELINE_ORDER]
    listed = f"the pipeline's stages: {', '.join(PIPELINE_ORDER)}"
    if unknown:
        raise StageSelectionError(f"unknown stage {', '.join(repr(n) for n in unknown)}; {listed}")
    if only is not None and not names:
        raise StageSelectionError(f"no stage given; {listed}")
    if start is not None:
        return PIPELINE_ORDER[PIPELINE_ORDER.index(start.strip()):]
    if only is not None:
        return tuple(n for n in PIPELINE_ORDER if n in names)
    return PIPELINE_ORDER


def run_all(
    ctx: StageContext,
    stages: tuple = PIPELINE_ORDER,
    on_stage: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Every stage in order; the summary holds each stage's summary and the timings.

    ``on_stage``, when given, gets each stage's summary as soon as that stage ends (the CLI
    prints it as a JSON line); without it nothing is printed, as a notebook wants."""
    started = time.perf_counter()
    tracker = tracker_for(ctx)
    with tracker.pipeline():
        for name in stages:
            result = run_stage(ctx, name)
            if on_stage is not None:
                on_stage(result)
        timings = {name: ctx.results[name]["seconds"] for name in stages}
        summary = {
            "stage": "run",
            "run_id": ctx.run_id,
            "stages": {name: ctx.results[name] for name in stages},
            "timings": timings,
            "seconds": round(time.perf_counter() - started, 2),
        }
        if "evaluate" in ctx.results:
            summary["metrics"] = ctx.results["evaluate"].get("metrics")
        tracker.record_pipeline(summary)
    return summary
