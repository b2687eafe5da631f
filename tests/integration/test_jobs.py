"""jobs/main.py: the one spark-submit entry script, for every CLI command."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from tests.support.cluster import JOB_ENTRY as ENTRY, REPO, summary_line, write_tiny_movielens

from recsys_spark.stages import STAGES
from recsys_spark.core.schemas import SILVER_EVENTS_TABLE

# `run` is the whole pipeline; every stage is a command of its own.
COMMANDS = (*STAGES, "run")


def run_job(argv: list[str]) -> int:
    """Run ``jobs/main.py`` in this process as spark-submit would (as ``__main__``)."""
    saved = sys.argv
    sys.argv = [str(ENTRY), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = saved
    raise AssertionError("jobs/main.py returned without exiting with a status")


def test_one_entry_script():
    assert sorted(path.name for path in (REPO / "jobs").glob("*.py")) == ["main.py"]


@pytest.mark.parametrize("command", COMMANDS)
def test_job_help(command, capsys):
    assert run_job([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: recsys-spark {command}" in out
    assert "--config PATH" in out and "--set KEY=VALUE" in out


@pytest.mark.parametrize(
    "argv", [[], ["--config", "local"], ["no_such_stage"]], ids=["none", "option-first", "unknown"]
)
def test_a_missing_or_unknown_command_is_a_usage_error_listing_the_commands(argv, capsys):
    assert run_job(argv) == 2
    err = capsys.readouterr().err
    assert "usage: recsys-spark" in err
    message = err.split("error:", 1)[1]
    assert all(command in message for command in COMMANDS), err


def _run_outside(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_job_runs_as_a_script_from_outside_the_repo(tmp_path):
    """spark-submit runs the file with jobs/ on sys.path, not the repo: the script must find
    the package itself (installed, or the checkout next to it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for command in ("run", "ingest"):
        done = _run_outside([str(ENTRY), command, "--help"], tmp_path, env)
        assert done.returncode == 0, done.stderr
        assert f"usage: recsys-spark {command}" in done.stdout


def test_job_falls_back_to_the_checkout_next_to_it(tmp_path):
    """Without the package installed (site-packages on the path, its .pth files not run, so no
    editable install) the script imports the checkout's recsys_spark."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    if (purelib / "recsys_spark").exists():
        pytest.skip("recsys_spark is installed into site-packages itself, not as an editable install")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(purelib)
    done = _run_outside(["-S", "-v", str(ENTRY), "features", "--help"], tmp_path, env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "usage: recsys-spark features" in done.stdout
    assert str(REPO / "recsys_spark" / "__init__.py") in done.stderr


def test_job_reports_a_bad_config_key_with_exit_code_2(capsys):
    assert run_job(["features", "--set", "features.no_such_key=1"]) == 2
    summary = summary_line(capsys.readouterr().out)
    assert summary["status"] == "failed"
    assert "features.no_such_key" in summary["error"]


def test_ingest_job_writes_silver_events(spark, tmp_path, capsys):
    movielens = tmp_path / "ml-tiny"
    counts = write_tiny_movielens(movielens)
    warehouse = tmp_path / "warehouse"
    argv = ["ingest", "--config", "local", "--run-id", "job-test",
            "--set", f"warehouse={warehouse}", "--set", f"input.events={movielens}"]
    assert run_job(argv) == 0
    summary = summary_line(capsys.readouterr().out)
    assert summary["status"] == "ok"
    assert summary["run_id"] == "job-test"
    assert summary["rows_good"] == counts["ratings"]
    events = spark.read.format("delta").load(f"{warehouse}/{SILVER_EVENTS_TABLE}")
    assert events.count() == counts["ratings"]
