"""Training backends behind one small interface.

``train`` builds the examples with Spark, writes them as Parquet shards (one per worker) and hands
a ``TrainJob`` to a ``Trainer``. Every backend runs the same per-rank loop
(``recsys_spark.trainers.worker.train_worker``) and differs only in how it starts the ranks and
which distribution hooks they use:

- ``local``: one process (the driver), no Horovod needed;
- ``horovod``: ``horovod.spark.run`` on the Spark executors;
- ``horovodrun``: ``horovodrun -np N`` outside Spark;
- ``tf_distribute``: ``tf.distribute.MultiWorkerMirroredStrategy`` in Spark barrier-mode tasks.

A backend returns one result dict per rank; a rank that fails makes ``fit`` raise
``TrainingFailed`` naming the backend, and nothing is exported.
"""
from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Protocol

from pyspark.sql import SparkSession

from recsys_spark.core.config import TRAIN_BACKENDS

# The module of each backend the config allows: its own name, but for horovod (horovod.spark.run).
_MODULES = {"horovod": "horovod_spark"}
BACKENDS = {name: f"recsys_spark.trainers.{_MODULES.get(name, name)}" for name in TRAIN_BACKENDS}


class TrainingFailed(RuntimeError):
    """A training backend could not start or a worker died; the message names the backend."""


@dataclass(frozen=True)
class TrainJob:
    """Everything a rank needs, JSON-able so it crosses process and machine boundaries.

    Paths are on a file system every worker sees (local in local mode, a shared mount on a
    cluster): ``train_dir``/``val_dir`` hold ``shard=<rank>`` folders of Parquet files with
    training windows (``inputs``, ``targets``, ``mask``: array<int>/array<boolean> of max_len,
    right-padded) and validation rows (``inputs``, ``target``, ``seen``); ``vocabulary_dir``
    holds the item vocabulary; the chief writes the model into ``export_dir``.
    ``epochs`` is a maximum: early stopping on validation NDCG@10 (``patience``) and the
    ``max_minutes`` budget (0: none) end training sooner. ``refit_dir`` (same layout as
    ``train_dir``) holds the train + validation windows the model is trained on again, for the
    chosen number of epochs, before it is exported.
    """

    version: str
    work_dir: str  # launch files and per-rank results
    train_dir: str
    val_dir: Optional[str]
    vocabulary_dir: str
    export_dir: str
    world_size: int
    model: dict  # recsys_spark.models.sequence.ModelSpec.to_json()
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_epochs: int
    patience: int
    seed: int
    steps_per_epoch: int
    full_softmax_max_items: int = 20000
    sampled_negatives: int = 2048
    in_batch_negatives: bool = True
    clip_norm: float = 1.0
    max_minutes: float = 0.0
    tf_threads: int = 0
    start_timeout_s: int = 120
    horovodrun_hosts: Optional[str] = None
    # train.final_fit=train_val: windows of train + validation items (None: no refit) and its steps.
    refit_dir: Optional[str] = None
    refit_steps_per_epoch: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainJob":
        return cls(**json.loads(text))


class Trainer(Protocol):
    """Starts ``job.world_size`` ranks of ``train_worker`` and returns their results, rank order."""

    name: str

    def fit(self, job: TrainJob, spark: SparkSession) -> "list[dict]":
        ...


def get_trainer(backend: str) -> Trainer:
    """The trainer registered for ``backend`` (``train.backend`` in the config)."""
    if backend not in BACKENDS:
        raise ValueError(f"train.backend {backend!r}: unknown; known: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[backend]).TRAINER


def worker_env(extra: Optional[dict] = None) -> dict:
    """The environment for worker processes: this one, with the package importable and the
    same interpreter for PySpark, plus ``extra``."""
    import sys

    import recsys_spark

    root = os.path.dirname(os.path.dirname(os.path.abspath(recsys_spark.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.update(extra or {})
    return env


def write_job(job: TrainJob) -> str:
    """Write ``job`` as ``<work_dir>/job.json`` for ranks started as processes; returns the path."""
    os.makedirs(job.work_dir, exist_ok=True)
    path = os.path.join(job.work_dir, "job.json")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(job.to_json())
    return path


def collect_ranks(launch: Callable[[], "list[dict]"], failure: str) -> "list[dict]":
    """The rank results ``launch`` (a Spark job) returns, in rank order; when it fails,
    ``TrainingFailed`` with ``failure`` and the Python error inside the Spark error."""
    try:
        results = launch()
    except Exception as exc:
        raise TrainingFailed(f"{failure} failed: {python_error(exc)}") from None
    return sorted(results, key=lambda result: result["rank"])


def rank_result_path(work_dir: str, rank: int) -> str:
    return os.path.join(work_dir, f"result-rank{rank}.json")


def read_rank_results(work_dir: str, world_size: int, backend: str) -> "list[dict]":
    """The result files every rank wrote; a missing one means a rank died before finishing."""
    results = []
    for rank in range(world_size):
        path = rank_result_path(work_dir, rank)
        if not os.path.isfile(path):
            raise TrainingFailed(f"{backend}: worker {rank} of {world_size} finished without a result ({path})")
        with open(path, encoding="utf-8") as handle:
            results.append(json.loads(handle.read()))
    return results


_PY_ERROR = re.compile(r"^\s*[A-Za-z_.]*(Error|Exception|Failed):\s*\S", re.MULTILINE)


def python_error(exc: BaseException, limit: int = 800) -> str:
    """The last Python error inside a (Java) exception text, not the whole JVM stack trace."""
    text = str(exc)
    starts = [match.start() for match in _PY_ERROR.finditer(text)]
    if starts:
        lines = text[starts[-1]:].strip().splitlines()
        return "\n".join(line for line in lines[:6] if not line.lstrip().startswith("at "))[:limit]
    return text.strip().splitlines()[0][:limit] if text.strip() else type(exc).__name__

