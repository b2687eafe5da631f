"""run_stage: every stage summary has one shape (stage, run_id, counts, tables, seconds)."""
from __future__ import annotations

import pytest

from recsys_spark import pipeline
from recsys_spark.core.context import StageContext
from tests.support import small_config


def _ctx(tmp_path) -> StageContext:
    # Untracked here; tests/unit/tracking records the same summaries in a real MLflow store.
    cfg = small_config(tmp_path, "tracking.enabled=false")
    return StageContext(spark=None, cfg=cfg, lake=None, run_id="r1", progress=lambda message: None)


def test_run_stage_adds_stage_run_id_and_seconds(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "stage_function", lambda name: lambda ctx: {"rows": 3, "tables": {"gold/x": 2}})
    ctx = _ctx(tmp_path)
    result = pipeline.run_stage(ctx, "features")
    assert list(result) == ["stage", "run_id", "rows", "tables", "seconds"]
    assert (result["stage"], result["run_id"], result["rows"], result["tables"]) == ("features", "r1", 3, {"gold/x": 2})
    assert ctx.results["features"] is result


def test_run_stage_rejects_a_summary_without_tables(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "stage_function", lambda name: lambda ctx: {"rows": 3, "table_version": 2})
    with pytest.raises(TypeError, match=r"stage 'features' returned a summary without a 'tables' dict"):
        pipeline.run_stage(_ctx(tmp_path), "features")
