"""The CLI contract: --help on every stage, and the last stdout line is one JSON object."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recsys_spark import cli, pipeline

STAGES = list(pipeline.STAGES) + ["run"]


@pytest.mark.parametrize("stage", STAGES)
def test_help_for_every_stage(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([stage, "--help"])
    assert exc.value.code == 0
    assert "--set" in capsys.readouterr().out


def test_bad_config_prints_json_and_fails(capsys):
    code = cli.main(["ingest", "--set", "train.epochs=zero"])
    out = capsys.readouterr()
    assert code == 2
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["status"] == "failed" and "train.epochs" in summary["error"]
    assert "train.epochs" in out.err


@pytest.mark.slow
def test_stage_run_in_a_subprocess_ends_with_json(tmp_path):
    from tests.support import FIXTURES

    proc = subprocess.run(
        [sys.executable, "-m", "recsys_spark", "ingest", "--set", f"warehouse={tmp_path}",
         "--set", f"input.events={FIXTURES / 'ml-latest-tiny'}", "--set", "spark.master=local[1]",
         "--set", "spark.shuffle_partitions=2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stage"] == "ingest" and summary["status"] == "ok"
    assert summary["rows_in"] == summary["rows_good"] + summary["rows_quarantined"] + summary["rows_duplicate"] == 1073


def test_a_failing_stage_exits_1_with_a_failed_summary(spark, tmp_path, capsys):
    """In this process (a second JVM only to see a missing folder cost a minute of CPU); the
    subprocess above shows that what ``main`` prints and returns is what the process does."""
    code = cli.main(["ingest", "--set", f"warehouse={tmp_path}", "--set", f"input.events={tmp_path / 'nope'}"])
    assert code == 1
    failed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert failed["status"] == "failed" and "nope" in failed["error"]


# ---- as a Databricks python_wheel_task ---------------------------------------------------------
def test_on_databricks_a_failure_raises_its_exit_status(monkeypatch, capsys):
    """A wheel task calls the entry point as a function: a returned status would pass unseen."""
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "19.0")
    with pytest.raises(SystemExit) as exc:
        cli.main(["ingest", "--set", "train.epochs=zero"])
    assert exc.value.code == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "failed"


def test_on_databricks_a_stage_publishes_its_task_values(spark, tmp_path, monkeypatch, capsys):
    """The runtime's dbutils (``databricks.sdk.runtime``, here the local stand-in) receives the
    key numbers of the stage's summary, so a later task of the job can gate on them. The stage
    itself is not run here (an ingest takes a minute on two cores): its summary is a fixed one,
    and the mapping from a real ingest summary is checked by the 01_ingest notebook's test."""
    import types

    from recsys_spark.integrations.databricks import LocalDbutils

    dbutils = LocalDbutils()
    runtime = types.ModuleType("databricks.sdk.runtime")
    runtime.dbutils = dbutils
    for name, module in (("databricks", types.ModuleType("databricks")), ("databricks.sdk", types.ModuleType("databricks.sdk")),
                         ("databricks.sdk.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "19.0")
    ran = []

    def run_stage(ctx, name):
        ran.append((name, ctx.run_id, ctx.cfg.warehouse))
        return {"stage": name, "run_id": ctx.run_id, "rows_in": 7, "rows_good": 5, "rows_quarantined": 2, "tables": {}}

    monkeypatch.setattr(cli.pipeline, "run_stage", run_stage)
    code = cli.main(["ingest", "--set", f"warehouse={tmp_path}", "--run-id", "wheel-task"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["status"] == "ok"
    assert ran == [("ingest", "wheel-task", str(tmp_path))]
    assert dbutils.jobs.taskValues.values == {"rows_ingested": 5}
    # Off Databricks nothing is published.
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION")
    dbutils.jobs.taskValues.values.clear()
    assert cli.main(["ingest", "--set", f"warehouse={tmp_path}"]) == 0
    assert dbutils.jobs.taskValues.values == {}
