"""Checks of the MLflow record a whole pipeline run leaves (real MLflow, the run's own store)."""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from recsys_spark.core.schemas import (
    CANDIDATES_TABLE,
    HISTORY_ITEMS,
    ITEM_ID,
    RANK,
    REASON,
    RECOMMENDATIONS_TABLE,
    SCORE,
    USER_ID,
    USER_SEQUENCES_TABLE,
)
from recsys_spark.tracking import experiment


def _client(ctx):
    from mlflow import MlflowClient

    t = experiment.target(ctx.cfg)
    return MlflowClient(t.tracking_uri, t.registry_uri)


def assert_pipeline_tracked(ctx, summary: dict, stages) -> None:
    """One parent run for the run id with one FINISHED child per stage; evaluate's metrics, the
    report as an artifact, Delta versions as tags; the model registered with a signature and the
    champion alias."""
    client = _client(ctx)
    exp = client.get_experiment_by_name(ctx.cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`recsys.run_id` = '{ctx.run_id}'")
    [parent] = [r for r in runs if r.data.tags["recsys.kind"] == "pipeline"]
    children = {r.data.tags["recsys.stage"]: r for r in runs if r.data.tags["recsys.kind"] == "stage"}
    assert sorted(children) == sorted(stages) and len(runs) == len(stages) + 1
    assert parent.info.status == "FINISHED" and parent.info.run_name == ctx.run_id
    for name, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED", name
        assert summary["stages"][name]["tracking"]["mlflow_run_id"] == child.info.run_id
        for table, version in summary["stages"][name]["tables"].items():
            assert child.data.tags[f"delta.wrote.{table}"] == str(version), (name, table)

    evaluate = children["evaluate"]
    for model, values in summary["metrics"].items():
        for metric, value in values.items():
            assert evaluate.data.metrics[f"metrics.{model}.{experiment.metric_key(metric)}"] == pytest.approx(value)
            assert parent.data.metrics[f"metrics.{model}.{experiment.metric_key(metric)}"] == pytest.approx(value)
    report = {a.path for a in client.list_artifacts(evaluate.info.run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= report and any(p.endswith(".png") for p in report)
    # score read the candidates retrieve wrote, at that version
    assert children["score"].data.tags[f"delta.read.{CANDIDATES_TABLE}"] == str(summary["stages"]["retrieve"]["tables"][str(CANDIDATES_TABLE)])

    train = summary["stages"]["train"]["tracking"]
    name = ctx.cfg.registered_model_name
    assert train["registered_model"] == name and train["champion"] is True
    version = client.get_model_version(name, train["registered_version"])
    assert version.run_id == children["train"].info.run_id
    assert str(client.get_registered_model(name).aliases[experiment.CHAMPION]) == train["registered_version"]
    from mlflow.models import get_model_info

    with experiment._mlflow_uris(experiment.target(ctx.cfg)):
        signature = get_model_info(f"models:/{name}@{experiment.CHAMPION}").signature
    assert [c["name"] for c in signature.inputs.to_dict()] == ["history", "candidates"]


def assert_pyfunc_ranks_like_score(spark, ctx) -> int:
    """``mlflow.pyfunc.spark_udf`` on the champion returns, for every user the score stage ranked
    with the model, the same top-K items and scores as gold/recommendations. Returns the users."""
    import mlflow

    k = ctx.cfg.score.k
    recs = ctx.lake.read(RECOMMENDATIONS_TABLE).where(~F.col(REASON).startswith("popular:"))
    scored = {}
    for row in recs.orderBy(USER_ID, RANK).collect():
        scored.setdefault(row[USER_ID], []).append((row[ITEM_ID], row[SCORE]))
    candidates = (
        ctx.lake.read(CANDIDATES_TABLE)
        .groupBy(USER_ID)
        .agg(F.sort_array(F.collect_list(F.struct(RANK, ITEM_ID))).alias("_ranked"))
        .select(USER_ID, F.transform("_ranked", lambda x: x[ITEM_ID]).alias("candidates"))
    )
    frame = (
        ctx.lake.read(USER_SEQUENCES_TABLE)
        .select(USER_ID, F.col(HISTORY_ITEMS).alias("history"))
        .join(candidates, USER_ID)
        .where(F.col(USER_ID).isin(list(scored)))
    )
    t = experiment.target(ctx.cfg)
    with experiment._mlflow_uris(t):
        udf = mlflow.pyfunc.spark_udf(
            spark, f"models:/{t.model_name}@{experiment.CHAMPION}",
            result_type="items array<string>, scores array<double>", env_manager="local", params={"k": k},
        )
        served = {r[USER_ID]: r["top"] for r in frame.select(USER_ID, udf("history", "candidates").alias("top")).collect()}
    assert sorted(served) == sorted(scored)
    for user, rows in scored.items():
        mine = sorted(zip(served[user]["items"], served[user]["scores"]), key=lambda p: (-round(p[1], 5), p[0]))
        theirs = sorted(rows, key=lambda p: (-round(p[1], 5), p[0]))
        assert [i for i, _ in mine] == [i for i, _ in theirs], user
        assert [s for _, s in mine] == pytest.approx([s for _, s in theirs], rel=1e-5), user
    return len(scored)
