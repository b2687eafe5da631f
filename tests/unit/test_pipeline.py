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


# ---- which stages a run takes (run --from / --only) ------------------------------------------
def test_select_stages_all_from_and_only_in_pipeline_order():
    assert pipeline.select_stages() == pipeline.PIPELINE_ORDER
    assert pipeline.select_stages(start="retrieve") == ("retrieve", "score", "evaluate")
    assert pipeline.select_stages(start="ingest") == pipeline.PIPELINE_ORDER
    # --only runs in the pipeline's order (each stage reads what the earlier ones wrote), once each
    assert pipeline.select_stages(only=["score", "features", " score"]) == ("features", "score")


@pytest.mark.parametrize("kwargs, message", [
    ({"start": "retreive"}, r"unknown stage 'retreive'; the pipeline's stages: ingest, features, .*, evaluate"),
    ({"only": ["score", "nope", "generate"]}, r"unknown stage 'nope', 'generate'; the pipeline's stages: ingest"),
    ({"only": []}, r"no stage given; the pipeline's stages: ingest"),
    ({"start": "score", "only": ["score"]}, r"either a first stage \(--from\) or a list of stages \(--only\), not both"),
])
def test_select_stages_rejects_what_names_no_stage(kwargs, message):
    with pytest.raises(pipeline.StageSelectionError, match=message):
        pipeline.select_stages(**kwargs)


def test_run_all_hands_each_summary_to_on_stage_as_the_stage_ends(monkeypatch, tmp_path):
    seen = []

    def stage(name):
        def run(ctx):
            # the earlier stages were already handed over when this one runs
            assert [s["stage"] for s in seen] == list(ctx.results)
            return {"n": len(seen), "tables": {f"gold/{name}": 1}}
        return run

    monkeypatch.setattr(pipeline, "stage_function", stage)
    summary = pipeline.run_all(_ctx(tmp_path), ("features", "score"), on_stage=seen.append)
    assert [(s["stage"], s["n"], s["tables"]) for s in seen] == [("features", 0, {"gold/features": 1}), ("score", 1, {"gold/score": 1})]
    assert summary["stages"] == {"features": seen[0], "score": seen[1]}
    # without on_stage nothing is called back (a notebook gets only the returned summary)
    seen.clear()
    assert pipeline.run_all(_ctx(tmp_path), ("features",))["stages"]["features"]["n"] == 0
