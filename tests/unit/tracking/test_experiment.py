"""MLflow tracking on a real store (SQLite in the test's folder), without Spark: the run record
of the pipeline, the champion rule, which model retrieve/score serve, and bad stores."""
from __future__ import annotations

import logging
import os
import socket

import pytest
from mlflow import MlflowClient

from recsys_spark import pipeline
from recsys_spark.core.context import StageContext
from recsys_spark.core.lakehouse import Lakehouse
from recsys_spark.tracking import experiment
from tests.support import small_config

SUMMARY = {"rows": 3, "val_ndcg@10": 0.25, "by_model": {"lstm": {"hr@5": 0.5}}, "mode": "full", "exact": True,
           "ks": [5, 10], "tables": {"gold/user_sequences": 4}}


def _ctx(cfg, run_id="r1") -> StageContext:
    return StageContext(spark=None, cfg=cfg, lake=Lakehouse(None, cfg), run_id=run_id, progress=lambda message: None)


def _client(cfg) -> MlflowClient:
    t = experiment.target(cfg)
    return MlflowClient(t.tracking_uri, t.registry_uri)


def _runs(cfg) -> list:
    client = _client(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([exp.experiment_id])


def test_metric_names_become_names_mlflow_accepts():
    assert experiment.metric_key("val_ndcg@10") == "val_ndcg_at_10"
    assert experiment.metric_key("metrics.lstm.hr@5") == "metrics.lstm.hr_at_5"
    assert experiment.metric_key("a b/c:d-e (x)") == "a b/c:d-e _x_"


def test_stages_of_one_run_id_nest_under_one_parent_run(tmp_path, monkeypatch):
    cfg = small_config(tmp_path / "wh")
    monkeypatch.setattr(pipeline, "stage_function", lambda name: lambda ctx: dict(SUMMARY))
    first = pipeline.run_stage(_ctx(cfg), "features")
    # a later stage of the same run id, from another process (a new context), finds the same parent
    second = pipeline.run_stage(_ctx(cfg), "interests")
    assert list(first) == ["stage", "run_id", *SUMMARY, "seconds", "tracking"]

    runs = {r.info.run_name: r for r in _runs(cfg)}
    assert sorted(runs) == ["features", "interests", "r1"]
    parent = runs["r1"]
    assert parent.data.tags["recsys.kind"] == "pipeline" and parent.info.status == "FINISHED"
    assert parent.data.params["features.max_sequence_length"] == "200" and parent.data.params["warehouse"] == cfg.warehouse
    for name, result in (("features", first), ("interests", second)):
        child = runs[name]
        assert result["tracking"]["mlflow_run_id"] == child.info.run_id
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
        assert child.data.metrics["val_ndcg_at_10"] == 0.25 and child.data.metrics["by_model.lstm.hr_at_5"] == 0.5
        assert child.data.tags["delta.wrote.gold/user_sequences"] == "4"
        assert child.data.tags["summary.mode"] == "full" and child.data.tags["summary.ks"] == "[5, 10]"
        assert [a.path for a in _client(cfg).list_artifacts(child.info.run_id)] == ["summary.json"]
    features = runs["features"].data.params
    assert features["features.split"] == "leave_one_out" and features["features.event_weights.cart"] == "2.0"
    assert all(key.startswith("features.") for key in features)
    assert runs["interests"].data.params == {"interests.half_life_days": "180.0"}


def test_a_failed_stage_fails_its_run_and_the_parent(tmp_path, monkeypatch):
    cfg = small_config(tmp_path / "wh")

    def fails(ctx):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "stage_function", lambda name: fails)
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline.run_all(_ctx(cfg), ("ingest",))
    runs = {r.info.run_name: r for r in _runs(cfg)}
    assert runs["ingest"].info.status == "FAILED" and runs["ingest"].data.tags["recsys.error"] == "RuntimeError: disk full"
    assert runs["r1"].info.status == "FAILED"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("store", ["server", "sqlite_under_a_file"])
def test_an_unusable_store_is_one_warning_and_the_stage_still_runs(tmp_path, monkeypatch, caplog, store):
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"http://127.0.0.1:{_closed_port()}" if store == "server" else f"sqlite:///{tmp_path}/a-file/mlflow.db"
    cfg = small_config(tmp_path / "wh", f"tracking.uri={uri}")
    calls = []
    monkeypatch.setattr(pipeline, "stage_function", lambda name: lambda ctx: calls.append(name) or dict(SUMMARY))
    with caplog.at_level(logging.WARNING, logger="recsys_spark.tracking.experiment"):
        summary = pipeline.run_all(_ctx(cfg), ("features", "interests"))
    assert calls == ["features", "interests"] and "tracking" not in summary["stages"]["features"]
    [warning] = [r.getMessage() for r in caplog.records]
    assert uri in warning and "goes on untracked" in warning and "tracking.uri" in warning


def test_tracking_off_records_nothing_and_serves_the_folder(tmp_path, monkeypatch):
    cfg = small_config(tmp_path / "wh", "tracking.enabled=false")
    monkeypatch.setattr(pipeline, "stage_function", lambda name: lambda ctx: dict(SUMMARY))
    assert "tracking" not in pipeline.run_stage(_ctx(cfg), "features")
    assert not (tmp_path / "wh" / "mlflow.db").exists()
    assert experiment.serving_model_dir(cfg, "score") is None


def _register(client, name, ndcg, tmp_path):
    """A model version with a validation NDCG tag (what train registers), without a model."""
    source = tmp_path / f"source-{ndcg}"
    source.mkdir(exist_ok=True)
    try:
        client.create_registered_model(name)
    except Exception:  # noqa: BLE001 - exists already
        pass
    tags = {} if ndcg is None else {experiment.NDCG_KEY: str(ndcg)}
    return client.create_model_version(name, str(source), tags=tags).version


def test_champion_moves_only_to_a_version_that_is_not_worse(tmp_path):
    cfg = small_config(tmp_path / "wh")
    client = experiment.connect(experiment.target(cfg))
    name = cfg.registered_model_name

    def offer(ndcg, force=False):
        version = _register(client, name, ndcg, tmp_path)
        moved, reason, champion = experiment.choose_champion(client, name, version, ndcg, force)
        assert client.get_model_version(name, version).tags["recsys.champion_decision"] == reason
        assert str(experiment.champion_version(client, name).version) == champion
        return moved, champion

    assert offer(0.20) == (True, "1")  # no champion yet
    assert offer(0.10) == (False, "1")  # worse: the alias stays
    assert offer(0.20) == (True, "3")  # equal is not worse
    assert offer(None) == (False, "3")  # nothing to compare
    assert offer(0.05, force=True) == (True, "5")  # tracking.force_champion


def test_serving_reads_the_champion_and_names_the_fix_for_a_broken_registry(tmp_path, caplog):
    cfg = small_config(tmp_path / "wh")
    name = cfg.registered_model_name
    with caplog.at_level(logging.WARNING, logger="recsys_spark.tracking.experiment"):
        assert experiment.serving_model_dir(cfg, "score") is None  # no store yet, no folder: no model
    assert f"has no model '{name}'" in caplog.text and "serving no model" in caplog.text

    client = experiment.connect(experiment.target(cfg))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recsys_spark.tracking.experiment"):
        assert experiment.serving_model_dir(cfg, "retrieve") is None  # a store without the model
    assert f"retrieve: registry sqlite:///{cfg.warehouse}/mlflow.db has no model '{name}'" in caplog.text

    version = _register(client, name, 0.3, tmp_path)
    client.set_registered_model_alias(name, experiment.CHAMPION, version)
    with pytest.raises(ValueError, match=r"version 1 \(alias 'champion'\) is not a recsys ranker .*point the alias"):
        experiment.serving_model_dir(cfg, "score")  # a version whose artifacts are no ranker pyfunc

    client.delete_model_version(name, version)  # the alias now names a deleted version
    with pytest.raises(ValueError, match=r"score: registered model 'recsys_ranker' .* no live version under the alias "
                       r"'champion' .*live versions: none\. Point the alias at one: .*set_registered_model_alias"):
        experiment.serving_model_dir(cfg, "score")
    _register(client, name, 0.1, tmp_path)
    with pytest.raises(ValueError, match=r"live versions: \[2\]"):
        experiment.serving_model_dir(cfg, "score")

    # with the registry off, the folder is served whatever the registry holds (here: a broken one)
    models = tmp_path / "wh" / "models"
    (models / "v9").mkdir(parents=True)
    (models / "v9" / "model.keras").write_text("x")
    (models / "latest").write_text("v9\n")
    off = small_config(tmp_path / "wh", "tracking.registry=false")
    with pytest.raises(ValueError, match=r"score: the model it would serve \(.*/models/v9\) cannot be used: .*config\.json is missing"):
        experiment.serving_model_dir(off, "score")  # the folder is chosen, and found to be no whole model


def test_config_checks_the_tracking_keys():
    from recsys_spark.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="tracking.model_name"):
        load_config("local", ["tracking.model_name=bad name!"])
    with pytest.raises(ConfigError, match=r"tracking.model_name': the databricks-uc registry names models"):
        load_config("local", ["tracking.registry_uri=databricks-uc", "tables.catalog=null"])
    assert load_config("databricks").registered_model_name == "main.recsys.recsys_ranker"
    with pytest.raises(experiment.TrackingUnavailable, match="warehouse=s3://bucket/wh is not a local path: set tracking.uri"):
        experiment.target(load_config("local", ["warehouse=s3://bucket/wh"]))
