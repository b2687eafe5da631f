"""The Spark Connect parity check the tests share: run the data stages on a Connect session in a
child process (tests/support/connect_run.py) on a fresh warehouse, reusing a classic run's model
folder, then compare every table the classic run wrote with the Connect run's.

Why a child process: ``SparkSession.builder.remote("local[2]")`` starts the Connect server as a
classic SparkContext inside the calling process, and pyspark refuses that where a classic session
already runs (SESSION_OR_CONTEXT_EXISTS), which the tests' session fixture does. The child also
puts the Connect client's packages (protobuf 6, grpcio-status, googleapis-common-protos,
zstandard; ``.ci/install`` step 5) first on its path: TensorFlow 2.15 pins protobuf below 5, so
they cannot live in the shared site-packages.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_spark.core import schemas
from recsys_spark.core.lakehouse import Lakehouse
from recsys_spark.core.schemas import COMPUTED_AT, ENCODED_AT, GENERATED_AT, INGESTED_AT
from tests.support import REPO, small_overrides

DATA_STAGES = ("ingest", "features", "encode", "interests", "retrieve", "score", "evaluate")
# Set from the clock when a row is written: they differ between any two runs.
WALL_CLOCK = {INGESTED_AT, ENCODED_AT, COMPUTED_AT, GENERATED_AT}
TABLES = [value for name, value in vars(schemas).items() if name.endswith("_TABLE") and isinstance(value, schemas.TableRef)]
# Seconds the Connect child may take (server start, seven stages, train's refusal) on a busy 2-core box.
CHILD_TIMEOUT_S = 900


def connect_site() -> Path:
    """Where .ci/install put the Connect client's packages (RECSYS_CONNECT_SITE overrides)."""
    return Path(os.environ.get("RECSYS_CONNECT_SITE") or Path(sys.prefix) / "connect-client")


def run_data_stages_on_connect(warehouse: Path, run_id: str, models_dir: str, overrides: tuple) -> dict:
    """The child's result: ``{"connect", "stages": {name: summary}, "train_error", "seconds"}``.
    Untracked: the model is served from ``models_dir`` (the classic run's latest), not a registry."""
    site = connect_site()
    if not (site / "google" / "protobuf").is_dir():
        pytest.fail(f"the Spark Connect client's packages are missing from {site}: run bash .ci/install")
    result_file = warehouse.parent / "connect-result.json"
    sets = small_overrides(warehouse, *overrides, "spark.remote=local[2]", f"train.models_dir={models_dir}",
                           "tracking.enabled=false")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RECSYS_RUN_ID": run_id,
        "PYSPARK_PYTHON": sys.executable,
    }
    env.pop("SPARK_REMOTE", None)
    command = [sys.executable, "-m", "tests.support.connect_run", str(result_file), ",".join(DATA_STAGES)]
    for value in sets:
        command += ["--set", value]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, f"the Connect run failed:\n{done.stderr[-6000:]}"
    return json.loads(result_file.read_text(encoding="utf-8"))


def rows_of(lake: Lakehouse, table) -> list:
    frame = lake.read(table)
    columns = [c for c in frame.columns if c not in WALL_CLOCK]
    rows = [tuple(row) for row in frame.select(*columns).collect()]
    return sorted(rows, key=lambda row: repr(tuple(_key(v) for v in row)))


def _key(value):
    """A row's sort key: its values with floats left out (they are compared with a tolerance)."""
    if isinstance(value, float):
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    return value


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_tables(classic_lake: Lakehouse, classic: dict, connect_lake: Lakehouse, connected: dict) -> dict:
    """Every table the classic run wrote exists after the Connect run, at the same Delta version,
    with the same rows (wall-clock columns left out, floats within a tolerance). ``classic`` and
    ``connected["stages"]`` are the stages' summaries. Returns {table: rows compared}."""
    assert connected["connect"] is True
    assert list(connected["stages"]) == list(DATA_STAGES)
    written = [t for t in TABLES if classic_lake.exists(t)]
    # Every stage's output tables (the pipeline writes at least these), plus what ingest keeps.
    assert {str(t) for t in written} >= {
        str(t) for name in DATA_STAGES for t in TABLES if str(t) in classic[name]["tables"]
    } and len(written) >= 10
    compared = {}
    for table in written:
        assert connect_lake.exists(table), f"{table}: written by the classic run, not by the Connect run"
        assert connect_lake.version(table) == classic_lake.version(table), f"{table}: Delta versions differ"
        expected, got = rows_of(classic_lake, table), rows_of(connect_lake, table)
        assert len(got) == len(expected), f"{table}: {len(got)} rows on Connect, {len(expected)} on classic"
        for want, have in zip(expected, got):
            assert same(want, have), f"{table}: row differs\n classic: {want}\n connect: {have}"
        compared[str(table)] = len(expected)
    # The fixture is clean (an empty quarantine); every other table holds rows to compare.
    assert all(compared[t] for t in compared if t != "silver/quarantine"), compared
    for name in DATA_STAGES:
        assert connected["stages"][name]["tables"] == classic[name]["tables"], f"stage {name}: table versions differ"
    return compared


def assert_train_refused(connected: dict) -> None:
    error = connected["train_error"]
    assert error is not None, "train ran on a Spark Connect session instead of refusing it"
    assert "\n" not in error
    assert error.startswith("stage train needs classic Spark")
    assert "dedicated" in error and "serverless" in error and "standard" in error
