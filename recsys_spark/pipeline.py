"""The stages in order, and the one way to run any of them.

``run_stage`` and ``run_all`` are the only composition of stages: each stage reads its inputs
from Delta tables and writes its outputs to Delta tables (see ``recsys_spark.stages``). Both are
recorded in MLflow (``recsys_spark.tracking.experiment``): one parent run per run id, a nested
run per stage; a tracking failure is a warning and never fails a stage.
"""
from __future__ import annotations

import time

from recsys_spark.core.context import StageContext, StageUnavailable, make_context, new_run_id  # noqa: F401
from recsys_spark.stages import PIPELINE_ORDER, STAGES, stage_function  # noqa: F401
from recsys_spark.tracking.experiment import tracker_for


def run_stage(ctx: StageContext, name: str) -> dict:
    """Run one stage and return its summary, with ``stage``, ``run_id`` and ``seconds`` added,
    and ``tracking`` (its MLflow run, and for ``train`` the registered version) when tracked.

    Every stage's summary holds its counts and ``tables``: ``{"<layer>/<name>": version}`` of
    the tables it writes, at the version it left them."""
    with tracker_for(ctx).stage(name, ctx) as tracked:
        started = time.perf_counter()
        ctx.progress(f"stage {name}: started")
        summary = stage_function(name)(ctx)
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


def run_all(ctx: StageContext, stages: tuple = PIPELINE_ORDER) -> dict:
    """Every stage in order; the summary holds each stage's summary and the timings."""
    started = time.perf_counter()
    tracker = tracker_for(ctx)
    with tracker.pipeline():
        for name in stages:
            run_stage(ctx, name)
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
