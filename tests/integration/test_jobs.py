"""jobs/: one thin spark-submit entry script per stage plus the pipeline."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys

import pytest
from tests.support.cluster import REPO, summary_line, write_tiny_movielens

from recsys_spark.stages import STAGES
from recsys_spark.core.schemas import SILVER_EVENTS_TABLE

JOBS = sorted((REPO / "jobs").glob("*.py"))
# jobs/pipeline.py runs `recsys-spark run`; the others run the stage they are named after.
CLI_COMMAND = {path.stem: ("run" if path.stem == "pipeline" else path.stem) for path in JOBS}


def run_job(name: str, argv: list[str]) -> int:
    """Run ``jobs/<name>.py`` in this process as spark-submit would (as ``__main__``)."""
    saved = sys.argv
    sys.argv = [str(REPO / "jobs" / f"{name}.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = saved
    raise AssertionError(f"jobs/{name}.py returned without exiting with a status")


def test_one_job_per_stage_and_the_pipeline():
    assert set(CLI_COMMAND) == set(STAGES) | {"pipeline"}


@pytest.mark.parametrize("name", sorted(CLI_COMMAND))
def test_job_help(name, capsys):
    assert run_job(name, ["--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: recsys-spark {CLI_COMMAND[name]}" in out
    assert "--config PATH" in out and "--set KEY=VALUE" in out


def test_job_runs_as_a_script_from_outside_the_repo(tmp_path):
    """spark-submit runs the file with jobs/ on sys.path, not the repo: the script must find
    the package itself (installed, or the checkout next to it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "pipeline.py"), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: recsys-spark run" in done.stdout


def test_job_reports_a_bad_config_key_with_exit_code_2(capsys):
    assert run_job("features", ["--set", "features.no_such_key=1"]) == 2
    summary = summary_line(capsys.readouterr().out)
    assert summary["status"] == "failed"
    assert "features.no_such_key" in summary["error"]


def test_ingest_job_writes_silver_events(spark, tmp_path, capsys):
    movielens = tmp_path / "ml-tiny"
    counts = write_tiny_movielens(movielens)
    warehouse = tmp_path / "warehouse"
    argv = ["--config", "local", "--run-id", "job-test",
            "--set", f"warehouse={warehouse}", "--set", f"input.events={movielens}"]
    assert run_job("ingest", argv) == 0
    summary = summary_line(capsys.readouterr().out)
    assert summary["status"] == "ok"
    assert summary["run_id"] == "job-test"
    assert summary["rows_good"] == counts["ratings"]
    events = spark.read.format("delta").load(f"{warehouse}/{SILVER_EVENTS_TABLE}")
    assert events.count() == counts["ratings"]
