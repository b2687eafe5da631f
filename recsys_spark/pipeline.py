"""The stages in order, and the one way to run any of them.

Each stage module exposes ``run(ctx: StageContext) -> dict``: it reads its inputs from Delta
tables, writes its outputs to Delta tables and returns a JSON-able summary. Stages never call
each other; ``run_stage`` and ``run_all`` are the only composition.
"""
from __future__ import annotations

import importlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

from pyspark.sql import SparkSession

from recsys_spark.config import Config
from recsys_spark.tables import Lakehouse

log = logging.getLogger(__name__)

# stage name -> (module, one-line help). `run` runs all but `generate` in this order.
STAGES: dict[str, tuple[str, str]] = {
    "generate": ("recsys_spark.generate", "write a synthetic event log and item catalog (any scale)"),
    "ingest": ("recsys_spark.ingest", "raw logs and catalog -> bronze/silver Delta tables, quarantine"),
    "features": ("recsys_spark.features", "silver events -> gold/user_sequences with the train/val/test split"),
    "encode": ("recsys_spark.encode", "item text -> gold/item_embeddings (sentence-transformers in a pandas UDF)"),
    "interests": ("recsys_spark.interests", "user histories -> gold/user_vectors (weighted, time-decayed)"),
    "train": ("recsys_spark.train", "train the LSTM sequence model (local, Horovod or tf.distribute)"),
    "retrieve": ("recsys_spark.retrieve", "approximate cosine top-N candidates (IVF or exact) -> gold/candidates"),
    "score": ("recsys_spark.score", "LSTM re-ranks candidates -> gold/recommendations, gold/similar_items"),
    "evaluate": ("recsys_spark.evaluate", "ranking metrics for the pipeline and baselines -> gold/metrics"),
}
PIPELINE_ORDER = ("ingest", "features", "encode", "interests", "train", "retrieve", "score", "evaluate")


class StageUnavailable(RuntimeError):
    """A stage cannot run in this installation (e.g. an optional dependency is missing)."""


@dataclass
class StageContext:
    """What a stage gets: the session, the validated config, the tables, and the run's id."""

    spark: SparkSession
    cfg: Config
    lake: Lakehouse
    run_id: str
    progress: Callable[[str], None] = field(default=lambda message: log.info("%s", message))
    results: dict = field(default_factory=dict)  # summaries of stages already run in this run


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def make_context(spark: SparkSession, cfg: Config, run_id: Optional[str] = None) -> StageContext:
    return StageContext(spark=spark, cfg=cfg, lake=Lakehouse(spark, cfg), run_id=run_id or cfg.run_id or new_run_id())


def stage_function(name: str) -> Callable[[StageContext], dict]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module_name = STAGES[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("recsys_spark"):
            raise StageUnavailable(f"stage {name!r} is not built yet in this version") from None
        raise StageUnavailable(
            f"stage {name!r} needs the Python package {exc.name!r}: install recsys-spark with its extras "
            f"(pip install 'recsys-spark[all]')"
        ) from None
    return module.run


def run_stage(ctx: StageContext, name: str) -> dict:
    """Run one stage and return its summary, with ``stage``, ``run_id`` and ``seconds`` added."""
    started = time.perf_counter()
    ctx.progress(f"stage {name}: started")
    summary = stage_function(name)(ctx)
    seconds = round(time.perf_counter() - started, 2)
    ctx.progress(f"stage {name}: done in {seconds}s")
    result = {"stage": name, "run_id": ctx.run_id, **summary, "seconds": seconds}
    ctx.results[name] = result
    return result


def run_all(ctx: StageContext, stages: tuple = PIPELINE_ORDER) -> dict:
    """Every stage in order; the summary holds each stage's summary and the timings."""
    started = time.perf_counter()
    for name in stages:
        run_stage(ctx, name)
    timings = {name: ctx.results[name]["seconds"] for name in stages}
    summary = {
        "stage": "run",
        "run_id": ctx.run_id,
        "stages": {name: ctx.results[name] for name in stages},
        "timings": timings,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if "evaluate" in ctx.results:
        summary["metrics"] = ctx.results["evaluate"].get("metrics")
    return summary
