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


# The files that take minutes, heaviest first (worker-seconds in the fresh-clone suite of 5a719d9,
# 2026-12-07, from its junit times). With `--dist loadfile` workers take files in collection
# order, so these start first and the short files fill the gaps instead of one long file running
# alone at the end.
HEAVIEST_FIRST = (
    "reliability/test_incremental_cycles.py",  # 851 s: 20 cycles of four stages, one test
    "integration/test_notebooks.py",  # 555
    "reliability/test_concurrent_stages.py",  # 401: train / score in a second process
    "integration/test_cluster.py",  # 301
    "unit/stages/test_train.py",  # 294
    "reliability/test_crash_mid_write.py",  # 236
    "reliability/test_idempotency.py",  # 231
    "unit/stages/test_evaluate.py",  # 143, and ~140 more since the sample and content-index tests
    "unit/stages/test_retrieve.py",  # 217
    "reliability/test_resource_limits.py",  # 133
    "reliability/test_corrupt_artifacts.py",  # 117
    "reliability/test_concurrent_jobs.py",  # 116
    "unit/stages/test_ingest.py",  # 104
    "integration/test_cli.py",  # 83
    "unit/core/test_lakehouse.py",  # 73
    "unit/models/test_cold_start.py",  # 72
    "unit/evaluation/test_baselines.py",  # 68
    "unit/stages/test_score.py",  # 57
    "unit/stages/test_encode.py",  # 47
    "unit/evaluation/test_report.py",  # 46
    "reliability/test_fuzzed_input.py",  # 44
    "unit/search/test_index.py",  # 43
    "unit/search/test_spark.py",  # 30
    "reliability/test_schema_drift.py",  # 28
    "unit/stages/test_generate.py",  # 27
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
