"""The trainer registry and the launch helpers every distributed backend shares (no Spark, no TF)."""
from __future__ import annotations

import importlib

import pytest

from recsys_spark.core.config import TRAIN_BACKENDS
from recsys_spark.trainers import BACKENDS, TrainingFailed, TrainJob, collect_ranks, get_trainer, write_job


def test_every_configurable_backend_has_a_trainer_of_that_name():
    assert tuple(BACKENDS) == TRAIN_BACKENDS
    for name, module in BACKENDS.items():
        assert importlib.import_module(module).TRAINER.name == name
    with pytest.raises(ValueError, match="unknown; known: local, horovod"):
        get_trainer("spark")


def test_write_job_round_trips_the_job(tmp_path):
    job = TrainJob(
        version="v1", work_dir=str(tmp_path / "work"), train_dir="t", val_dir=None, vocabulary_dir="voc",
        export_dir="out", world_size=2, model={"n_tokens": 5}, epochs=1, batch_size=8, learning_rate=0.1,
        warmup_epochs=0, patience=1, seed=3, steps_per_epoch=4, sampled_negatives=5, max_minutes=1.5,
    )
    path = write_job(job)
    assert path == str(tmp_path / "work" / "job.json")
    with open(path, encoding="utf-8") as handle:
        assert TrainJob.from_json(handle.read()) == job


def test_collect_ranks_orders_results_and_names_the_launch_on_failure():
    assert collect_ranks(lambda: [{"rank": 1}, {"rank": 0}], "x") == [{"rank": 0}, {"rank": 1}]

    def fails():
        raise RuntimeError("org.apache.spark.SparkException: stage failed\n  at a.b.C\nValueError: rank 1 ran out of data\n  at d.e.F")

    with pytest.raises(TrainingFailed, match=r"^demo with 2 workers failed: ValueError: rank 1 ran out of data$"):
        collect_ranks(fails, "demo with 2 workers")
