"""One local SparkSession (with Delta) for the whole test run, and a fresh warehouse per test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from recsys_spark.config import Config, load_config
from recsys_spark.pipeline import StageContext, make_context

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "ml-latest-small"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def test_config(warehouse: Path, *overrides: str) -> Config:
    """The local profile with a private warehouse and small-test settings."""
    base = [
        f"warehouse={warehouse}",
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=2g",
        # Delta replays its log with 50 tasks by default: far too many for tiny test tables.
        "spark.conf.spark.databricks.delta.snapshotPartitions=2",
    ]
    return load_config("local", base + list(overrides))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_spark.session import get_spark

    cfg = test_config(tmp_path_factory.mktemp("session-warehouse"))
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def make_ctx(spark, tmp_path):
    """``make_ctx(*overrides)`` -> a StageContext on a fresh warehouse under tmp_path."""

    def _make(*overrides: str, warehouse: Path | None = None) -> StageContext:
        cfg = test_config(warehouse or tmp_path / "warehouse", *overrides)
        return make_context(spark, cfg, run_id="test-run")

    return _make
