"""The stages, one module each, and their registry.

Every stage module exposes ``run(ctx: StageContext) -> dict`` and talks to the others only
through Delta tables: no stage imports another stage or the pipeline. ``STAGES`` names them with
their one-line help; ``PIPELINE_ORDER`` is the order ``run`` uses (``generate`` makes test data
and ``maintain`` is table upkeep scheduled apart: neither is part of ``run``).
"""
from __future__ import annotations

import importlib
from typing import Callable

from recsys_spark.core.context import StageContext, StageUnavailable

# stage name -> one-line help. The module is recsys_spark.stages.<name>.
STAGES: dict[str, str] = {
    "generate": "write a synthetic event log and item catalog (any scale)",
    "ingest": "raw logs and catalog -> bronze/silver Delta tables, quarantine",
    "features": "silver events -> gold/user_sequences with the train/val/test split",
    "encode": "item text -> gold/item_embeddings (sentence-transformers in a pandas UDF)",
    "interests": "user histories -> gold/user_vectors (weighted, time-decayed)",
    "train": "train the LSTM sequence model (local, Horovod or tf.distribute)",
    "retrieve": "approximate cosine top-N candidates (IVF or exact) -> gold/candidates, gold/similar_items",
    "score": "LSTM re-ranks candidates -> gold/recommendations",
    "evaluate": "ranking metrics for the pipeline and baselines -> gold/metrics",
    "maintain": "compact (OPTIMIZE) and VACUUM every table, keeping tables.vacuum_retain_hours of time travel",
}
PIPELINE_ORDER = ("ingest", "features", "encode", "interests", "train", "retrieve", "score", "evaluate")


def stage_module_name(name: str) -> str:
    return f"{__name__}.{name}"


def stage_function(name: str) -> Callable[[StageContext], dict]:
    """The ``run`` of stage ``name``, imported on demand (so a stage's optional dependencies are
    needed only when it runs)."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    try:
        module = importlib.import_module(stage_module_name(name))
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("recsys_spark"):
            raise StageUnavailable(f"stage {name!r} is not built yet in this version") from None
        raise StageUnavailable(
            f"stage {name!r} needs the Python package {exc.name!r}: install recsys-spark with its extras "
            f"(pip install 'recsys-spark[all]')"
        ) from None
    return module.run
