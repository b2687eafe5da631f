"""``horovodrun -np N`` outside Spark (Gloo), on this machine or the hosts in
``train.horovodrun_hosts``; each rank writes its result file into the job's work folder."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

from pyspark.sql import SparkSession

from recsys_spark.trainers import TrainingFailed, TrainJob, read_rank_results, worker_env, write_job

log = logging.getLogger(__name__)


def horovodrun_command(job: TrainJob, job_path: str) -> "list[str]":
    launcher = shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or shutil.which("horovodrun")
    if launcher is None:
        raise TrainingFailed("train.backend=horovodrun: the horovodrun launcher is not installed (pip install horovod)")
    hosts = job.horovodrun_hosts or f"localhost:{job.world_size}"
    return [
        launcher, "-np", str(job.world_size), "-H", hosts, "--gloo",
        "--start-timeout", str(job.start_timeout_s),
        sys.executable, "-m", "recsys_spark.trainers.entry", "horovod", job_path,
    ]


class HorovodRunTrainer:
    name = "horovodrun"

    def fit(self, job: TrainJob, spark: SparkSession) -> "list[dict]":
        command = horovodrun_command(job, write_job(job))
        log.info("launching: %s", " ".join(command))
        proc = subprocess.run(command, env=worker_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise TrainingFailed(f"horovodrun -np {job.world_size} exited with code {proc.returncode}:\n{tail}")
        return read_rank_results(job.work_dir, job.world_size, self.name)


TRAINER = HorovodRunTrainer()
