"""``tf.distribute.MultiWorkerMirroredStrategy`` launched through Spark barrier-mode tasks.

The maintained path where Horovod is gone (Databricks ML runtimes after 15.4). ``num_workers``
barrier tasks start together; each picks a free port, the tasks exchange ``host:port`` with
``allGather`` (ordered by partition id) and build TF_CONFIG from it. Each task trains in a child
process, so TensorFlow's collective runtime starts fresh every run and dies with the task.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

from pyspark.sql import SparkSession

from recsys_spark.trainers import TrainingFailed, TrainJob, python_error, rank_result_path, worker_env

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def tf_config(addresses: "list[str]", index: int) -> dict:
    """TF_CONFIG for worker ``index`` of the cluster ``addresses`` (host:port, rank order)."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def _die_with_parent() -> None:
    # A killed barrier task must not leave its trainer waiting on collectives forever.
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def barrier_task(job_json: str, python: str):
    """The function each barrier task runs: rendezvous, then train one worker in a child."""

    def run(_partition):
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        index = context.partitionId()
        host = context.getTaskInfos()[index].address.split(":")[0]
        addresses = context.allGather(f"{host}:{free_port()}")
        job = TrainJob.from_json(job_json)
        extra = {"TF_CONFIG": json.dumps(tf_config(addresses, index))}
        gpus = context.resources().get("gpu")
        if gpus is not None:
            extra["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
        job_path = os.path.join(job.work_dir, "job.json")
        proc = subprocess.run(
            [python, "-m", "recsys_spark.trainers.entry", "tf_distribute", job_path],
            env=worker_env(extra),
            capture_output=True,
            text=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"tf_distribute worker {index} exited with code {proc.returncode}: {tail}")
        with open(rank_result_path(job.work_dir, index), encoding="utf-8") as handle:
            yield json.load(handle)

    return run


class TfDistributeTrainer:
    name = "tf_distribute"

    def fit(self, job: TrainJob, spark: SparkSession) -> "list[dict]":
        os.makedirs(job.work_dir, exist_ok=True)
        with open(os.path.join(job.work_dir, "job.json"), "w", encoding="utf-8") as handle:
            handle.write(job.to_json())
        sc = spark.sparkContext
        log.info("MultiWorkerMirroredStrategy in %d Spark barrier tasks", job.world_size)
        try:
            results = (
                sc.parallelize(range(job.world_size), job.world_size)
                .barrier()
                .mapPartitions(barrier_task(job.to_json(), os.environ.get("PYSPARK_PYTHON", sys.executable)))
                .collect()
            )
        except Exception as exc:
            raise TrainingFailed(
                f"tf_distribute with {job.world_size} barrier tasks failed: {python_error(exc)}"
            ) from None
        return sorted(results, key=lambda result: result["rank"])


TRAINER = TfDistributeTrainer()
