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


# The files that take minutes, heaviest first (measured: `bash .ci/run --durations=40`, 2026-12-02). With
# `--dist loadfile` workers take files in collection order, so these start first and the short
# files fill the gaps instead of one long file running alone at the end.
HEAVIEST_FIRST = (
    "reliability/test_incremental_cycles.py",  # 20 cycles of four stages (~8 min alone, 2026-12-03)
    "integration/test_notebooks.py",
    "integration/test_cluster.py",
    "reliability/test_crash_mid_write.py",
    "reliability/test_idempotency.py",
    "unit/stages/test_evaluate.py",
    "unit/stages/test_train.py",
    "unit/stages/test_ingest.py",
    "unit/stages/test_score.py",
    "unit/evaluation/test_report.py",  # ingest + features + evaluate once, and Chromium (~4 min loaded, 2026-12-03)
    "reliability/test_corrupt_artifacts.py",
    "reliability/test_concurrent_jobs.py",
    "reliability/test_concurrent_stages.py",  # train / score in a second process (~5 min alone)
    "reliability/test_schema_drift.py",
    "reliability/test_resource_limits.py",
    "integration/test_cli.py",
    "unit/stages/test_encode.py",
    "unit/stages/test_retrieve.py",
    "reliability/test_config_safety.py",
    "integration/test_jobs.py",
    "unit/search/test_index.py",
    "reliability/test_concurrent_readers.py",
    "reliability/test_fuzzed_input.py",
    "unit/stages/test_generate.py",
)


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).resolve().parent

    def weight(item) -> int:
        try:
            relative = Path(str(item.fspath)).resolve().relative_to(tests_dir).as_posix()
        except ValueError:
            return len(HEAVIEST_FIRST)
        return HEAVIEST_FIRST.index(relative) if relative in HEAVIEST_FIRST else len(HEAVIEST_FIRST)

    items.sort(key=weight)  # stable: the order inside a file and among the rest is kept
