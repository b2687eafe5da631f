"""Horovod on the Spark executors (``horovod.spark.run``): what a cluster user runs.

Each of ``num_workers`` Spark tasks starts one Horovod rank (Gloo); the ranks read their own
shards from the shared file system, so nothing but the small job description is pickled.
"""
from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from recsys_spark.trainers import TrainingFailed, TrainJob, collect_ranks, worker_env

log = logging.getLogger(__name__)


def run_rank(job_json: str) -> dict:
    """One rank, inside a Horovod process on an executor (pickled by reference)."""
    from recsys_spark.trainers import TrainJob as Job
    from recsys_spark.trainers.worker import train_worker

    return train_worker(Job.from_json(job_json), "horovod")


class HorovodSparkTrainer:
    name = "horovod"

    def fit(self, job: TrainJob, spark: SparkSession) -> "list[dict]":
        try:
            import horovod.spark
        except ImportError as exc:
            raise TrainingFailed(
                f"train.backend=horovod needs Horovod with TensorFlow and Gloo ({exc}); "
                "use train.backend=local or tf_distribute where Horovod is not installed"
            ) from None
        log.info("horovod.spark.run: %d workers", job.world_size)
        return collect_ranks(
            lambda: horovod.spark.run(
                run_rank,
                args=(job.to_json(),),
                num_proc=job.world_size,
                start_timeout=job.start_timeout_s,
                env=worker_env(),
                use_gloo=True,
            ),
            f"horovod.spark.run with {job.world_size} workers",
        )


TRAINER = HorovodSparkTrainer()
