"""run_stage: every stage summary has one shape (stage, run_id, counts, tables, seconds)."""
from __future__ import annotations

import pytest

from recsys_spark import pipeline
from recsys_spark.core.context import StageContext


def _ctx() -> StageContext:
    return StageContext(spark=None, cfg=None, lake=None, run_id="r1", progress=lambda message: None)


def test_run_stage_adds_stage_run_id_and_seconds(monkeypatch):
    monkeypatch.setattr(pipeline, "stage_function", lambda name: lambda ctx: {"rows": 3, "tables": {"gold/x": 2}})
    ctx = _ctx()
    result = pipeline.run_stage(ctx, "features")
    assert list(result) == ["stage", "run_id", "rows", "tables", "seconds"]
    assert (result["stage"], result["run_id"], result["rows"], result["tables"]) == ("features", "r1", 3, {"gold/x": 2})
    assert ctx.results["features"] is result


def test_run_stage_rejects_a_summary_without_tables(monkeypatch):
    monkeypatch.setattr(pipeline, "stage_function", lambda name: lambda ctx: {"rows": 3, "table_version": 2})
    with pytest.raises(TypeError, match=r"stage 'features' returned a summary without a 'tables' dict"):
        pipeline.run_stage(_ctx(), "features")
