"""What a stage gets (``StageContext``) and how a run is named.

A stage is ``run(ctx: StageContext) -> dict``: it reads its inputs from Delta tables through
``ctx.lake``, writes its outputs the same way and returns a JSON-able summary. Stages never call
each other; the pipeline (``recsys_spark.pipeline``) is the only composition.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from pyspark.sql import SparkSession

from recsys_spark.core.config import Config
from recsys_spark.core.lakehouse import Lakehouse

log = logging.getLogger(__name__)


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
    # The run's MLflow record (recsys_spark.tracking.experiment.Tracker), made by the pipeline.
    tracker: Optional[Any] = None


def new_run_id() -> str:
    """A sortable, unique id: UTC time to the second plus 6 random hex digits.

    Names runs and, the same way, model versions (the train stage)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def make_context(spark: SparkSession, cfg: Config, run_id: Optional[str] = None) -> StageContext:
    return StageContext(spark=spark, cfg=cfg, lake=Lakehouse(spark, cfg), run_id=run_id or cfg.run_id or new_run_id())
