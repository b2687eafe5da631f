"""The embedded default: one process, the driver itself; needs neither Horovod nor a cluster."""
from __future__ import annotations

from pyspark.sql import SparkSession

from recsys_spark.trainers import TrainingFailed, TrainJob


class LocalTrainer:
    name = "local"

    def fit(self, job: TrainJob, spark: SparkSession) -> "list[dict]":
        from recsys_spark.trainers.worker import train_worker

        if job.world_size != 1:
            raise ValueError(
                f"train.backend=local runs one process but train.num_workers={job.world_size}; "
                "use horovod, horovodrun or tf_distribute for more workers"
            )
        try:
            return [train_worker(job, "local")]
        except Exception as exc:
            raise TrainingFailed(f"local training failed: {type(exc).__name__}: {exc}") from exc


TRAINER = LocalTrainer()
