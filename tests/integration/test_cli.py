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

    missing = subprocess.run(
        [sys.executable, "-m", "recsys_spark", "ingest", "--set", f"warehouse={tmp_path}",
         "--set", f"input.events={tmp_path / 'nope'}", "--set", "spark.master=local[1]"],
        capture_output=True, text=True, timeout=600,
    )
    assert missing.returncode == 1
    failed = json.loads(missing.stdout.strip().splitlines()[-1])
    assert failed["status"] == "failed" and "nope" in failed["error"]
