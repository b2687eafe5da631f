"""One local SparkSession (with Delta) for the whole test run, and a fresh warehouse per test."""
from __future__ import annotations

from pathlib import Path

import pytest

from recsys_spark.core.context import StageContext, make_context
from tests.support import small_config


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from recsys_spark.core.session import get_spark

    cfg = small_config(tmp_path_factory.mktemp("session-warehouse"))
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture
def make_ctx(spark, tmp_path):
    """``make_ctx(*overrides)`` -> a StageContext on a fresh warehouse under tmp_path."""

    def _make(*overrides: str, warehouse: Path | None = None) -> StageContext:
        cfg = small_config(warehouse or tmp_path / "warehouse", *overrides)
        return make_context(spark, cfg, run_id="test-run")

    return _make
