"""The per-rank loop's decisions: early stopping on validation NDCG@10, the same epoch on every
rank, the time budget, a NaN loss (no Spark; the callback is driven as Keras drives it)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from recsys_spark.trainers import TrainJob
from recsys_spark.trainers import worker
from recsys_spark.trainers.worker import Distribution, TrainingStopped


def make_job(**overrides) -> TrainJob:
    settings = dict(
        version="v", work_dir="w", train_dir="t", val_dir="val", vocabulary_dir="voc", export_dir="out",
        world_size=1, model={}, epochs=10, batch_size=4, learning_rate=0.01, warmup_epochs=0, patience=2,
        seed=1, steps_per_epoch=3,
    )
    return TrainJob(**{**settings, **overrides})


class FakeNetwork:
    """Stands for the Keras network: its 'weights' are the epoch they were taken after."""

    def __init__(self) -> None:
        self.epoch = 0

    def get_weights(self):
        return [np.array(self.epoch)]


def run_epochs(callback, network, max_epochs: int) -> int:
    """Drive ``callback`` as model.fit does; returns the number of epochs run."""
    callback.set_model(SimpleNamespace(network=network, stop_training=False))
    for epoch in range(max_epochs):
        network.epoch = epoch + 1
        callback.on_epoch_begin(epoch)
        for step in range(3):
            callback.on_train_batch_end(step, {"loss": 1.0 / (epoch + 1), "targets": 5.0})
        callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
        if callback.model.stop_training:
            return epoch + 1
    return max_epochs


def sums_for(ndcgs: "list[float]", users: int = 10):
    """A fake ranking_sums: the next epoch's [hits, ndcg, count, xent] sums for ``ndcgs``."""
    remaining = list(ndcgs)

    def ranking_sums(ranker, val_dir, shards, k=10):
        ndcg = remaining.pop(0)
        return np.array([ndcg * users, ndcg * users, users, users * 2.0])

    return ranking_sums


def test_early_stopping_stops_patience_epochs_after_the_best_ndcg_and_keeps_its_weights(monkeypatch):
    monkeypatch.setattr(worker, "ranking_sums", sums_for([0.10, 0.30, 0.20, 0.25, 0.40, 0.50]))
    callback = worker.epoch_callback_class()(make_job(patience=2), Distribution(), lambda: None)
    network = FakeNetwork()
    assert run_epochs(callback, network, 10) == 4  # best at 2; epochs 3 and 4 are not better
    assert (callback.best_epoch, callback.stopped_by) == (2, "early_stopping")
    assert callback.best_weights[0] == 2
    assert callback.history["val_ndcg@10"] == pytest.approx([0.10, 0.30, 0.20, 0.25])
    assert callback.history["targets"] == [15.0] * 4


def test_epochs_is_a_maximum(monkeypatch):
    monkeypatch.setattr(worker, "ranking_sums", sums_for([0.1, 0.2, 0.3]))
    callback = worker.epoch_callback_class()(make_job(epochs=3), Distribution(), lambda: None)
    assert run_epochs(callback, FakeNetwork(), 3) == 3
    assert (callback.best_epoch, callback.stopped_by) == (3, "epochs")


class TwoRanks(Distribution):
    """Rank ``rank`` of two whose sum over ranks adds the other rank's sums of the same epoch."""

    def __init__(self, rank: int, other: "list[np.ndarray]") -> None:
        super().__init__()
        self.rank, self.size, self.other, self.calls = rank, 2, other, 0

    def sum_over_ranks(self, values):
        total = values + self.other[self.calls]
        self.calls += 1
        return total


def test_every_rank_stops_on_the_same_epoch_from_the_all_reduced_sums(monkeypatch):
    # Alone, rank 0 would stop after epoch 3 (best 1) and rank 1 after epoch 5 (best 3).
    local = {0: [0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1], 1: [0.1, 0.2, 0.6, 0.5, 0.4, 0.3, 0.2]}
    per_rank_sums = {r: [np.array([x * 10, x * 10, 10, 20.0]) for x in v] for r, v in local.items()}
    stopped = {}
    for rank in (0, 1):
        monkeypatch.setattr(worker, "ranking_sums", sums_for(local[rank]))
        callback = worker.epoch_callback_class()(
            make_job(patience=2, world_size=2), TwoRanks(rank, per_rank_sums[1 - rank]), lambda: None
        )
        stopped[rank] = (run_epochs(callback, FakeNetwork(), 7), callback.best_epoch, callback.history["val_ndcg@10"])
    assert stopped[0] == stopped[1]
    # The mean NDCG of both ranks: 0.3, 0.3, 0.45, 0.35, 0.25 -> best epoch 3, stop after 5.
    assert stopped[0][:2] == (5, 3)
    assert stopped[0][2] == pytest.approx([0.3, 0.3, 0.45, 0.35, 0.25])


def test_a_nan_loss_stops_training_with_the_epoch_and_the_step(monkeypatch):
    monkeypatch.setattr(worker, "ranking_sums", sums_for([0.1, 0.2]))
    callback = worker.epoch_callback_class()(make_job(), Distribution(), lambda: None)
    callback.set_model(SimpleNamespace(network=FakeNetwork(), stop_training=False))
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(0, {"loss": 2.0, "targets": 5.0})
    callback.on_epoch_end(0, {"loss": 2.0})
    callback.on_epoch_begin(1)
    callback.on_train_batch_end(0, {"loss": 2.0, "targets": 5.0})
    with pytest.raises(TrainingStopped, match=r"loss became nan at epoch 2, step 2 .*previous model stays in service"):
        callback.on_train_batch_end(1, {"loss": float("nan"), "targets": 5.0})


def test_a_time_budget_that_ends_before_the_first_epoch_is_a_clear_error(monkeypatch):
    callback = worker.epoch_callback_class()(make_job(max_minutes=0.001), Distribution(), lambda: None)
    callback.set_model(SimpleNamespace(network=FakeNetwork(), stop_training=False))
    callback.started -= 1.0  # a second has passed: more than the 0.06 s budget
    callback.on_epoch_begin(0)
    with pytest.raises(TrainingStopped, match=r"train.max_minutes=0.001: the time budget ended before the first epoch .*step 1 of 3"):
        callback.on_train_batch_end(0, {"loss": 2.0, "targets": 5.0})


def test_the_time_budget_stops_before_an_epoch_that_would_not_fit(monkeypatch):
    monkeypatch.setattr(worker, "ranking_sums", sums_for([0.1, 0.2, 0.3, 0.4]))
    callback = worker.epoch_callback_class()(make_job(max_minutes=1.0), Distribution(), lambda: None)
    network = FakeNetwork()
    callback.set_model(SimpleNamespace(network=network, stop_training=False))
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(0, {"loss": 2.0, "targets": 5.0})
    callback.started -= 35.0  # the first epoch took 35 s of the 60: a second one would not fit
    callback.on_epoch_end(0, {"loss": 2.0})
    assert callback.model.stop_training and callback.stopped_by == "max_minutes"
    assert callback.best_epoch == 1
