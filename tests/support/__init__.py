"""Helpers the tests share: paths, the small-test config, and (in submodules) the standalone
cluster and the fuzzed-line writer. Tests import from here, never from ``conftest``."""
from __future__ import annotations

import os
from pathlib import Path

from recsys_spark.core.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
# Every Spark JVM the tests start (the session of each pytest worker and of every child process,
# which inherit this) with the serial collector: the test heaps are small, and on two cores G1's
# concurrent and parallel GC threads compete with the other pytest worker. Measured on the
# incremental-cycle harness (init + 2 cycles): 235 CPU-seconds against 250 with G1, same wall time.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:+UseSerialGC")


def small_overrides(warehouse: Path, *overrides: str) -> list:
    """The overrides of :func:`small_config` (for a process that loads the config itself)."""
    return [
        f"warehouse={warehouse}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=2g",
        # Delta replays its log with 50 tasks by default: far too many for tiny test tables.
        "spark.conf.spark.databricks.delta.snapshotPartitions=2",
        *overrides,
    ]


def small_config(warehouse: Path, *overrides: str) -> Config:
    """The local profile with a private warehouse and small-test settings."""
    return load_config("local", small_overrides(warehouse, *overrides))
