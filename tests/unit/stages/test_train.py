"""The train stage: examples built by Spark, artifacts, bad input, and the distributed backends."""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import replace

import numpy as np

import pandas as pd
import pytest

from recsys_spark.core import schemas as S
from recsys_spark.stages import train
from recsys_spark.models.sequence import FIRST_ITEM, LATEST_FILE, SequenceRanker, latest_model_dir
from recsys_spark.trainers import TrainingFailed, TrainJob
from recsys_spark.trainers.worker import refit_plan

N_ITEMS = 24
# Small and fast, but enough epochs for the validation loss to fall on the cyclic data below.
TRAIN_SETTINGS = (
    "train.epochs=6",
    "train.batch_size=32",
    "train.max_len=6",
    "train.embedding_dim=16",
    "train.lstm_units=16",
    "train.learning_rate=0.01",
    "train.dropout=0.0",
    "train.tf_threads=1",
    "train.early_stopping_patience=3",
)


def sequence_row(user: str, items: list, val: list, test: list) -> tuple:
    train_items = items[: len(items) - len(val) - len(test)]
    history = items[: len(items) - len(test)]
    ts = list(range(len(items)))
    w = [1.0] * len(items)
    return (
        user, items, ts, w,
        history, ts[: len(history)], w[: len(history)],
        train_items, ts[: len(train_items)], w[: len(train_items)],
        val, test, True, len(items),
        sorted(set(history)), sorted(set(train_items)),
    )


def cyclic_sequences(spark, users: int = 60, seed: int = 0, jump: float = 0.0):
    """Users walk the items in a cycle: the next item is the successor, or with probability
    ``jump`` a random item. Learnable; with ``jump`` > 0 the best loss is well above 0."""
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        position, n = rng.randrange(N_ITEMS), rng.randint(7, 14)
        items = []
        for _ in range(n):
            items.append(f"i{position}")
            position = rng.randrange(N_ITEMS) if rng.random() < jump else (position + 1) % N_ITEMS
        rows.append(sequence_row(f"u{u}", items, [items[-2]], [items[-1]]))
    return rows


def write_sequences(ctx, rows) -> None:
    ctx.lake.replace(ctx.spark.createDataFrame(rows, S.USER_SEQUENCES), S.USER_SEQUENCES_TABLE)


# ---- the pure DataFrame functions ---------------------------------------------------------
def test_examples_are_right_aligned_windows_where_every_position_predicts_the_next(spark):
    rows = [
        sequence_row("a", ["x", "y", "z", "x", "y", "z", "w"], ["z"], ["w"]),
        sequence_row("b", ["y", "z"], [], []),
        sequence_row("c", ["y", "q", "v"], ["v"], []),  # 'v' never in training: unknown validation item
        sequence_row("d", ["u"], [], []),  # one event: no window
    ]
    sequences = spark.createDataFrame(rows, S.USER_SEQUENCES)
    vocabulary = train.item_vocabulary(sequences)
    vocab = {r[S.ITEM_ID]: r for r in vocabulary.collect()}
    # By falling count, ties by id: y(4) x(2) z(2) q(1) u(1).
    assert {k: v["index"] for k, v in vocab.items()} == {"y": 2, "x": 3, "z": 4, "q": 5, "u": 6}
    assert sum(2.718281828 ** v["log_q"] for v in vocab.values()) == pytest.approx(1.0)

    tokens = train.token_sequences(sequences, vocabulary)
    assert {r[S.USER_ID]: r["tokens"] for r in tokens.collect()} == {"a": [3, 2, 4, 3, 2], "b": [2, 4], "c": [2, 5], "d": [6]}

    def windows(tokens, max_len):
        return sorted(
            (r[S.USER_ID], r["inputs"], r["targets"], r["mask"]) for r in train.training_windows(tokens, max_len).collect()
        )

    # a: 4 targets -> two full windows, the last one ending at the last token; b, c: one short
    # window, right-padded and masked; d (one event): none.
    assert windows(tokens, 2) == [
        ("a", [3, 2], [2, 4], [True, True]),
        ("a", [4, 3], [3, 2], [True, True]),
        ("b", [2, 0], [4, 0], [True, False]),
        ("c", [2, 0], [5, 0], [True, False]),
    ]
    # A window longer than any history: one right-padded window per user, every target once.
    assert windows(tokens, 6)[0] == ("a", [3, 2, 4, 3, 0, 0], [2, 4, 3, 2, 0, 0], [True, True, True, True, False, False])
    assert len(windows(tokens, 6)) == 3
    # Out-of-vocabulary targets are masked; a window with no target left is dropped (c's 'q').
    rare = train.token_sequences(sequences, train.item_vocabulary(sequences, min_count=2))
    assert [w[0] for w in windows(rare, 2)] == ["a", "a", "b"]

    validation = {
        r[S.USER_ID]: (r["inputs"], r["target"], r["seen"])
        for r in train.validation_examples(sequences, tokens, vocabulary, 2).collect()
    }
    # The last max_len training tokens -> the validation item; seen: every training item.
    assert validation == {"a": ([3, 2], 4, [2, 3, 4]), "c": ([2, 5], None, [2, 5])}
    assert train.count_oov_items(sequences, vocabulary) == 2  # 'v' (validation) and 'w' (test)


def test_item_vocabulary_min_count_and_uniform_negatives(spark):
    sequences = spark.createDataFrame([sequence_row("a", ["x", "y", "x", "z", "x"], [], [])], S.USER_SEQUENCES)
    vocabulary = train.item_vocabulary(sequences, min_count=2, uniform=True).collect()
    assert [(r[S.ITEM_ID], r["index"]) for r in vocabulary] == [("x", FIRST_ITEM)]
    assert vocabulary[0]["log_q"] == pytest.approx(0.0)


# ---- the stage ----------------------------------------------------------------------------
def test_local_training_publishes_a_model_and_counts_bad_input(make_ctx):
    ctx = make_ctx(*TRAIN_SETTINGS)
    rows = cyclic_sequences(ctx.spark)
    rows.append(sequence_row("lonely", ["i3"], [], []))  # one event: no training example
    rows.append(sequence_row("newcomer", ["i1", "i2", "i3", "brand-new"], ["brand-new"], []))
    write_sequences(ctx, rows)

    summary = train.run(ctx)

    assert summary["backend"] == "local" and summary["world_size"] == 1
    assert summary["users_without_examples"] == 1
    assert summary["oov_items"] == 1
    assert summary["items"] == N_ITEMS
    assert summary["loss"] == "full softmax"  # 24 items, under train.full_softmax_max_items
    # Every training event but each user's first is a target, once.
    assert summary["targets"] == sum(len(r[7]) - 1 for r in rows if len(r[7]) >= 2)
    assert summary["targets_per_s"] > 0
    model_dir = latest_model_dir(ctx.cfg.models_dir)
    assert model_dir == os.path.join(ctx.cfg.models_dir, summary["model_version"])
    for name in ("model.keras", "config.json", "history.json", "metrics.json", "vocabulary"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert not [n for n in os.listdir(ctx.cfg.models_dir) if n.startswith(".staging")]
    history = json.load(open(os.path.join(model_dir, "history.json")))
    assert len(history["val_ndcg@10"]) == len(history["loss"]) == summary["epochs"]
    best = summary["best_epoch"] - 1
    assert history["val_ndcg@10"][best] == max(history["val_ndcg@10"])
    assert summary["val_ndcg@10"] == pytest.approx(history["val_ndcg@10"][best], abs=1e-4)
    assert summary["val_ndcg@10"] > 0.5  # the cyclic rule is learned

    ranker = SequenceRanker.load(model_dir)
    assert ranker.version == summary["model_version"] and len(ranker.item_ids) == N_ITEMS
    # The cyclic rule was learned: after i5, i6 outranks a far item.
    [probs] = ranker.score([["i3", "i4", "i5"]], [["i6", "i17"]])
    assert probs[0] > probs[1]


def test_final_fit_trains_again_on_train_and_validation_for_the_chosen_epoch(make_ctx, tmp_path):
    """The served model learns from train + validation items, as the baselines' final fit does:
    the same seed and initial weights, the epoch early stopping chose, every train + validation
    event but a user's first a target once; the validation figures stay the selection's."""
    ctx = make_ctx(*TRAIN_SETTINGS)
    rows = cyclic_sequences(ctx.spark)
    write_sequences(ctx, rows)
    summary = train.run(ctx)
    assert summary["final_fit"] == "train_val" and summary["final_fit_note"].startswith("train + validation")
    assert summary["refit_targets"] == sum(len(r[7]) + len(r[10]) - 1 for r in rows)
    assert summary["refit_targets"] == summary["targets"] + len(rows)  # one validation item each
    history = json.load(open(os.path.join(latest_model_dir(ctx.cfg.models_dir), "history.json")))
    assert len(history["refit_loss"]) == summary["best_epoch"]
    assert len(history["refit_targets"]) == summary["best_epoch"] and min(history["refit_targets"]) > 0
    assert summary["targets_trained"] == sum(history["targets"]) + sum(history["refit_targets"])

    only = make_ctx(*TRAIN_SETTINGS, "train.final_fit=train", warehouse=tmp_path / "train-only")
    write_sequences(only, rows)
    plain = train.run(only)
    assert plain["final_fit"] == "train" and plain["refit_targets"] == 0
    assert plain["final_fit_note"] == "off (train.final_fit=train)"
    # The same selection (seeded), a different served model.
    assert (plain["epochs"], plain["best_epoch"]) == (summary["epochs"], summary["best_epoch"])
    assert plain["val_ndcg@10"] == pytest.approx(summary["val_ndcg@10"], abs=1e-3)
    refit_model = SequenceRanker.load(latest_model_dir(ctx.cfg.models_dir))
    train_model = SequenceRanker.load(latest_model_dir(only.cfg.models_dir))
    assert not np.allclose(refit_model.item_vectors()[1], train_model.item_vectors()[1])


def test_the_refit_is_skipped_when_it_would_pass_the_time_budget():
    job = TrainJob(version="v", work_dir="w", train_dir="t", val_dir="v", vocabulary_dir="d", export_dir="e",
                   world_size=1, model={}, epochs=10, batch_size=8, learning_rate=0.01, warmup_epochs=1,
                   patience=2, seed=1, steps_per_epoch=10, max_minutes=1.0, refit_dir="r", refit_steps_per_epoch=12)
    # 5 epochs of 10 steps took 25 s: 3 refit epochs of 12 steps, about 18 s more, fit in 60 s ...
    assert refit_plan(job, best_epoch=3, epochs_run=5, elapsed_s=25.0)[0]
    # ... after 40 s (about 29 s more) they do not.
    run, note = refit_plan(job, best_epoch=3, epochs_run=5, elapsed_s=40.0)
    assert not run and "train.max_minutes=1.0" in note
    assert refit_plan(replace(job, max_minutes=0.0), best_epoch=3, epochs_run=5, elapsed_s=1e6)[0]
    assert refit_plan(replace(job, refit_dir=None), 3, 5, 1.0) == (False, "off (train.final_fit=train)")
    assert not refit_plan(job, best_epoch=0, epochs_run=5, elapsed_s=1.0)[0]


def test_failed_training_leaves_the_previous_model_in_service(make_ctx, monkeypatch):
    ctx = make_ctx(*TRAIN_SETTINGS, "train.epochs=1")
    write_sequences(ctx, cyclic_sequences(ctx.spark, users=20))
    first = train.run(ctx)["model_version"]

    def dies(job, distribution="local"):
        raise RuntimeError("worker lost")

    monkeypatch.setattr("recsys_spark.trainers.worker.train_worker", dies)
    with pytest.raises(TrainingFailed, match="local training failed: RuntimeError: worker lost"):
        train.run(ctx)
    assert open(os.path.join(ctx.cfg.models_dir, LATEST_FILE)).read().strip() == first
    assert sorted(os.listdir(ctx.cfg.models_dir)) == sorted([first, LATEST_FILE])

    # A loss that becomes NaN: an error naming the epoch and the step; nothing is published.
    monkeypatch.undo()
    from recsys_spark.trainers import worker

    loss = worker.full_softmax_loss
    monkeypatch.setattr(worker, "full_softmax_loss", lambda model, states, targets: loss(model, states, targets) * float("nan"))
    with pytest.raises(TrainingFailed, match=r"TrainingStopped: train: the loss became nan at epoch 1, step 1 .*previous model stays"):
        train.run(ctx)
    assert open(os.path.join(ctx.cfg.models_dir, LATEST_FILE)).read().strip() == first
    assert sorted(os.listdir(ctx.cfg.models_dir)) == sorted([first, LATEST_FILE])


def test_empty_training_table_is_a_clear_error(make_ctx):
    ctx = make_ctx(*TRAIN_SETTINGS)
    write_sequences(ctx, [])
    with pytest.raises(ValueError, match="nothing to train on"):
        train.run(ctx)
    write_sequences(ctx, [sequence_row("a", ["x"], [], [])])
    with pytest.raises(ValueError, match="no training example: every user has fewer than 2 events"):
        train.run(ctx)
    assert latest_model_dir(ctx.cfg.models_dir) is None


def test_one_item_vocabulary_and_unknown_validation_items_still_train(make_ctx):
    # One item in the vocabulary: the softmax over it is certain (loss 0) and it ranks first.
    ctx = make_ctx(*TRAIN_SETTINGS, "train.epochs=2")
    write_sequences(ctx, [sequence_row(f"u{u}", ["x"] * 5, ["x"], ["x"]) for u in range(8)])
    summary = train.run(ctx)
    assert summary["items"] == 1 and summary["train_loss"] == pytest.approx(0.0, abs=1e-6)
    assert summary["val_ndcg@10"] == pytest.approx(1.0)
    # No validation item is known: trains train.epochs, keeps the last, reports no validation metric.
    ctx = make_ctx(*TRAIN_SETTINGS, "train.epochs=2", warehouse=ctx.cfg.warehouse + "-unknown")
    write_sequences(ctx, [sequence_row(f"u{u}", ["x", "y", "x", "y", f"new{u}"], [f"new{u}"], []) for u in range(8)])
    summary = train.run(ctx)
    assert (summary["epochs"], summary["best_epoch"], summary["stopped_by"]) == (2, 2, "epochs")
    assert summary["val_ndcg@10"] is None and summary["oov_items"] == 8
    assert latest_model_dir(ctx.cfg.models_dir) is not None


def test_local_backend_refuses_several_workers(make_ctx):
    ctx = make_ctx(*TRAIN_SETTINGS, "train.num_workers=2")
    write_sequences(ctx, cyclic_sequences(ctx.spark, users=10))
    with pytest.raises(ValueError, match="train.backend=local runs one process"):
        train.run(ctx)


# ---- distributed backends on local[2] ----------------------------------------------------
def assert_two_identical_workers(ctx, summary) -> None:
    assert summary["world_size"] == 2
    assert summary["identical_weights"], "ranks ended with different weights"
    model_dir = latest_model_dir(ctx.cfg.models_dir)
    ranks = json.load(open(os.path.join(model_dir, "config.json")))["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # Every rank stopped on the same epoch and kept the same best one (all-reduced val NDCG@10).
    assert summary["same_stop_epoch"]
    assert (ranks[0]["epochs_run"], ranks[0]["best_epoch"]) == (ranks[1]["epochs_run"], ranks[1]["best_epoch"])
    history = json.load(open(os.path.join(model_dir, "history.json")))
    assert max(history["val_ndcg@10"]) > history["val_ndcg@10"][0]


# horovod.spark.run on the Spark executors and tf.distribute's MultiWorkerMirroredStrategy in
# barrier tasks are checked for identical weights by the convergence test below, which trains
# them anyway; horovodrun (-np 2 --gloo, plain processes outside Spark) only here.
@pytest.mark.slow
def test_horovodrun_workers_end_with_identical_weights(make_ctx):
    pytest.importorskip("horovod.tensorflow")
    backend = "horovodrun"
    ctx = make_ctx(*TRAIN_SETTINGS, f"train.backend={backend}", "train.num_workers=2")
    write_sequences(ctx, cyclic_sequences(ctx.spark))
    summary = train.run(ctx)
    assert summary["backend"] == backend
    assert_two_identical_workers(ctx, summary)


def test_train_through_the_pipeline_logs_and_registers_the_model_in_mlflow(make_ctx, tmp_path):
    """A real MLflow store (SQLite in the test's warehouse): the stage's nested run holds its
    params, metrics (names MLflow accepts), curves; the model is a pyfunc with a signature,
    registered, and takes the champion alias; its predictions are the ranker's."""
    import mlflow
    from mlflow import MlflowClient

    from recsys_spark.pipeline import run_stage
    from recsys_spark.tracking import experiment

    ctx = make_ctx(*TRAIN_SETTINGS, "train.epochs=1")
    write_sequences(ctx, cyclic_sequences(ctx.spark, users=20))
    result = run_stage(ctx, "train")

    t = experiment.target(ctx.cfg)
    assert t.tracking_uri == f"sqlite:///{ctx.cfg.warehouse}/mlflow.db"
    client = MlflowClient(t.tracking_uri, t.registry_uri)
    run = client.get_run(result["tracking"]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["recsys.stage"] == "train"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["recsys.run_id"] == ctx.run_id == "test-run"
    assert run.data.params["train.epochs"] == "1" and run.data.params["train.backend"] == "local"
    assert run.data.metrics["val_ndcg_at_10"] == pytest.approx(result["val_ndcg@10"])
    assert run.data.metrics["val_loss"] == pytest.approx(result["val_loss"])
    assert run.data.tags["delta.read.gold/user_sequences"] == str(ctx.lake.version(S.USER_SEQUENCES_TABLE))
    curve = client.get_metric_history(run.info.run_id, "history.val_loss")
    assert [m.step for m in curve] == [1] and curve[0].value == pytest.approx(result["val_loss"], abs=1e-4)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "training")} >= {"training/curves.png", "training/history.json"}

    registered = result["tracking"]
    logged = client.get_logged_model(registered["logged_model"].split("/")[-1])  # in this experiment, this warehouse
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == run.info.run_id
    assert logged.artifact_location.startswith((tmp_path / "warehouse" / "mlruns").as_uri())
    assert (registered["registered_model"], registered["registered_version"], registered["champion"]) == ("recsys_ranker", "1", True)
    champion = client.get_model_version_by_alias("recsys_ranker", "champion")
    assert str(champion.version) == "1" and champion.tags["recsys.model_version"] == result["model_version"]
    assert float(champion.tags["val_ndcg_at_10"]) == pytest.approx(result["val_ndcg@10"])
    with experiment._mlflow_uris(t):
        info = mlflow.models.get_model_info("models:/recsys_ranker@champion")
        assert [c["name"] for c in info.signature.inputs.to_dict()] == ["history", "candidates"]
        assert [c["name"] for c in info.signature.outputs.to_dict()] == ["items", "scores"]
        served = mlflow.pyfunc.load_model("models:/recsys_ranker@champion")
        out = served.predict(
            pd.DataFrame({"history": [["i3", "i4", "i5"], ["i1"]], "candidates": [["i6", "i17", "unknown"], None]}), params={"k": 2}
        )
    ranker = SequenceRanker.load(latest_model_dir(ctx.cfg.models_dir))
    [probs] = ranker.score([["i3", "i4", "i5"]], [["i6", "i17"]])
    assert list(out["items"][0]) == [c for _, c in sorted(zip(-probs, ["i6", "i17"]))]  # 'unknown' is left out
    assert list(out["scores"][0]) == pytest.approx(sorted(probs, reverse=True), rel=1e-5)
    assert len(out["items"][1]) == 2 and "i1" not in out["items"][1]  # no candidates: the best unseen items

    # retrieve and score now serve the registered champion (downloaded once under models/.registry)
    served_dir = experiment.serving_model_dir(ctx.cfg, "score")
    assert served_dir.startswith(os.path.join(ctx.cfg.models_dir, ".registry", "recsys_ranker", "1"))
    assert SequenceRanker.load(served_dir).version == result["model_version"]

    # A folder that is not one consistent model is never logged or registered.
    broken = tmp_path / "models" / "broken"
    shutil.copytree(latest_model_dir(ctx.cfg.models_dir), broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["model"]["n_tokens"] += 1
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model folder .*broken: the vocabulary \(24 items.*retrain"):
        train.check_model_folder(str(broken))
    bad_ctx = make_ctx(*TRAIN_SETTINGS, f"train.models_dir={tmp_path / 'models'}", warehouse=ctx.cfg.warehouse)
    with pytest.raises(ValueError, match="broken: the vocabulary"):
        with experiment.tracker_for(bad_ctx).stage("train", bad_ctx) as tracked:
            tracked.record({"stage": "train", "model_version": "broken", "tables": {}}, bad_ctx.cfg)
    assert [str(v.version) for v in client.search_model_versions("name = 'recsys_ranker'")] == ["1"]


# Trained to convergence on data with a loss floor well above 0 (a quarter of the steps jump to
# a random item), so "within a few percent" compares two converged models, not two points on a
# curve falling towards 0. Measured on the 2-core VM: horovod 0.327 / 0.305 vs one process
# 0.324 / 0.316 (1-3% apart), tf_distribute 0.328 vs 0.315 (4%); runs of one backend differ by up
# to 7% between them (200 validation examples), hence the 10% tolerance. Those were binary
# cross-entropies of the one-example-per-prefix model; val_loss is now the full-vocabulary softmax
# cross-entropy of the every-timestep model, and both backends still pass (2026-12-03).
CONVERGED = ("train.epochs=20", "train.early_stopping_patience=4")


# The one-process reference, trained once for both backends (same rows, same settings).
_ONE_PROCESS_LOSS: dict = {}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["horovod", "tf_distribute"])
def test_two_workers_reach_the_one_process_val_loss_with_identical_weights(make_ctx, tmp_path, backend):
    if backend == "horovod":
        pytest.importorskip("horovod.spark")
    rows = cyclic_sequences(None, users=200, jump=0.25)
    # The 2-worker run first: horovod.spark.run once failed to start ("Empty") right after a
    # one-process training in the same driver on this data (see the issue 4 note).
    ctx = make_ctx(*TRAIN_SETTINGS, *CONVERGED, f"train.backend={backend}", "train.num_workers=2",
                   warehouse=tmp_path / backend)
    write_sequences(ctx, rows)
    summary = train.run(ctx)
    assert summary["backend"] == backend
    assert_two_identical_workers(ctx, summary)
    if "local" not in _ONE_PROCESS_LOSS:
        local = make_ctx(*TRAIN_SETTINGS, *CONVERGED, warehouse=tmp_path / "local")
        write_sequences(local, rows)
        reference = train.run(local)
        assert reference["backend"] == "local"
        _ONE_PROCESS_LOSS["local"] = reference["val_loss"]
    assert summary["val_loss"] == pytest.approx(_ONE_PROCESS_LOSS["local"], rel=0.1), (summary["val_loss"], _ONE_PROCESS_LOSS)


@pytest.mark.slow
def test_tf_distribute_worker_failure_is_reported_by_rank(make_ctx, tmp_path):
    from recsys_spark.trainers import TrainJob, get_trainer

    ctx = make_ctx()
    job = TrainJob(
        version="v", work_dir=str(tmp_path / "work"), train_dir=str(tmp_path / "missing"), val_dir=None,
        vocabulary_dir=str(tmp_path / "missing"), export_dir=str(tmp_path / "out"), world_size=2,
        model={"n_tokens": 4, "max_len": 2, "embedding_dim": 2, "lstm_units": 2}, epochs=1, batch_size=2,
        learning_rate=0.01, warmup_epochs=0, patience=0, seed=1, steps_per_epoch=1,
    )
    with pytest.raises(TrainingFailed, match=r"tf_distribute with 2 barrier tasks failed: .*worker \d exited"):
        get_trainer("tf_distribute").fit(job, ctx.spark)
    assert not os.path.exists(tmp_path / "out")
