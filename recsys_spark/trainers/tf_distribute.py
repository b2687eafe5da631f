"""``tf.distribute.MultiWorkerMirroredStrategy`` launched through Spark barrier-mode tasks.

The maintained path where Horovod is gone (Databricks ML runtimes after 15.4). ``num_workers``
barrier tasks start together; each picks a free port, the tasks exchange ``host:port`` with
``allGather`` (ordered by partition id) and build TF_CONFIG from it. Each task trains in a child
process, so TensorFlow's collective runtime starts fresh every run and dies with the task.
"""
from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from recsys_spark.trainers import TrainJob, collect_ranks, rank_result_path, worker_env, write_job

log = logging.getLogger(__name__)


def barrier_task(job_path: str, result_paths: "list[str]", python: str, pythonpath: str):
    """The function each barrier task runs: rendezvous, then train one worker in a child process.

    It uses only the standard library and pyspark, so executors need not import this package to
    run it (the child does, through ``pythonpath``)."""

    def run(_partition):
        import ctypes
        import json
        import os
        import signal
        import socket
        import subprocess
        import sys

        from pyspark import BarrierTaskContext

        def die_with_parent() -> None:
            # A killed barrier task must not leave its trainer waiting on collectives forever.
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        context = BarrierTaskContext.get()
        index = context.partitionId()
        host = context.getTaskInfos()[index].address.split(":")[0]
        addresses = context.allGather(f"{host}:{port}")  # ordered by partition id
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH", "")) if p)
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
        gpus = context.resources().get("gpu")
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
        proc = subprocess.run(
            [python, "-m", "recsys_spark.trainers.entry", "tf_distribute", job_path],
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        if proc.returncode != 0:
            # One line, so the error that reaches the driver names the rank and its cause together.
            tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-4:])
            raise RuntimeError(f"tf_distribute worker {index} exited with code {proc.returncode}: {tail}")
        with open(result_paths[index], encoding="utf-8") as handle:
            yield json.load(handle)

    return run


class TfDistributeTrainer:
    name = "tf_distribute"

    def fit(self, job: TrainJob, spark: SparkSession) -> "list[dict]":
        job_path = write_job(job)
        sc = spark.sparkContext
        log.info("MultiWorkerMirroredStrategy in %d Spark barrier tasks", job.world_size)
        task = barrier_task(
            job_path,
            [rank_result_path(job.work_dir, rank) for rank in range(job.world_size)],
            os.environ.get("PYSPARK_PYTHON", sys.executable),
            worker_env()["PYTHONPATH"],
        )
        return collect_ranks(
            lambda: sc.parallelize(range(job.world_size), job.world_size).barrier().mapPartitions(task).collect(),
            f"tf_distribute with {job.world_size} barrier tasks",
        )


TRAINER = TfDistributeTrainer()
