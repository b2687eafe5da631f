"""The CLI contract: --help on every stage, and the last stdout line is one JSON object."""
from __future__ import annotations

import json
import logging
import os
import re
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


# ---- --version and config show: answered before Spark starts ---------------------------------
def test_version_prints_the_package_version(capsys):
    import recsys_spark

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"recsys-spark {recsys_spark.__version__}\n"


@pytest.mark.parametrize("command", [["jobs/main.py"], ["recsys-spark"]], ids=["jobs-main", "console-script"])
def test_version_from_a_shell_prints_one_line_and_exits_0(command):
    """What a person types: spark-submit's entry file and the installed console script answer
    ``--version`` with the package's version, before any Spark or config work."""
    from pathlib import Path

    import recsys_spark
    from tests.support import REPO

    if command == ["recsys-spark"]:
        script = Path(sys.executable).parent / "recsys-spark"
        assert script.exists(), f"{script}: the console script is missing (bash .ci/install installs it)"
        command = [str(script)]
    else:
        command = [sys.executable, str(REPO / command[0])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*command, "--version"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"recsys-spark {recsys_spark.__version__}\n", "")


def test_config_show_prints_the_resolved_config_as_yaml_with_secrets_masked(monkeypatch, capsys):
    import yaml

    key = "k3y-Th4t-Must-N3ver-Show"
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", key)
    code = cli.main(["config", "show", "--config", "local", "--set", "train.epochs=3", "--set", "warehouse=/tmp/wh-shown",
                     "--set", "spark.conf.fs.s3a.secret.key=AKIA-s3cr3t", "--set", f"spark.app_name={key}"])
    out = capsys.readouterr().out
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["train"]["epochs"] == 3 and shown["warehouse"] == "/tmp/wh-shown"
    assert shown["features"]["split"] == "leave_one_out"  # the profile's own values, resolved
    assert shown["spark"]["conf"]["fs.s3a.secret.key"] == "***"  # a secret-looking key
    assert shown["spark"]["app_name"] == "***"  # the key's value, wherever it appears
    assert shown["privacy"]["key_env"] == "RECSYS_PSEUDONYM_KEY"
    assert "AKIA-s3cr3t" not in out and key not in out
    assert list(shown)[:2] == ["warehouse", "run_id"]  # the config's own order, not sorted


def test_config_show_with_a_bad_key_exits_2_saying_which(capsys):
    assert cli.main(["config", "show", "--set", "train.epochs=zero"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "train.epochs" in out.err


# ---- run: one JSON line per stage as it ends, the run's last ----------------------------------
def fake_stages(monkeypatch, capsys, fail: str = ""):
    """Cheap stand-ins for every stage (no Spark job): each returns a summary with its own
    ``tables``, and records what stdout held when it started."""
    ran, printed = [], []

    def stage_function(name):
        def run(ctx):
            printed.append(capsys.readouterr().out)
            ran.append(name)
            if name == fail:
                raise RuntimeError(f"{name} broke")
            return {"rows": len(ran), "tables": {f"gold/{name}_fake": len(ran) - 1}}
        return run

    monkeypatch.setattr(pipeline, "stage_function", stage_function)
    return ran, printed


def _lines(printed, capsys) -> list:
    """Every JSON line the command printed (the fakes took some of stdout as they ran)."""
    return [json.loads(line) for line in ("".join(printed) + capsys.readouterr().out).splitlines()]


def _run(tmp_path, *args):
    return ["run", "--set", f"warehouse={tmp_path}", "--set", "tracking.enabled=false", "--run-id", "r-lines", *args]


def test_run_prints_one_json_line_per_stage_as_it_ends_and_the_runs_last(spark, tmp_path, monkeypatch, capsys):
    ran, printed = fake_stages(monkeypatch, capsys)
    assert cli.main(_run(tmp_path)) == 0
    order = list(pipeline.PIPELINE_ORDER)
    assert ran == order
    # What stdout held when each stage started: exactly the line of the stage before it.
    assert printed[0] == ""
    assert [json.loads(p)["stage"] for p in printed[1:]] == order[:-1]
    lines = "".join(printed).splitlines() + capsys.readouterr().out.splitlines()
    summaries = [json.loads(line) for line in lines]
    assert [s["stage"] for s in summaries] == order + ["run"]
    for i, (name, s) in enumerate(zip(order, summaries)):
        assert s["status"] == "ok" and s["run_id"] == "r-lines"
        assert s["rows"] == i + 1 and s["tables"] == {f"gold/{name}_fake": i}
    last = summaries[-1]
    assert last["status"] == "ok" and list(last["stages"]) == order
    assert last["stages"]["score"]["tables"] == {"gold/score_fake": 6}
    # compact: each line as json.dumps writes it without spaces
    assert all(line == json.dumps(json.loads(line), separators=(",", ":")) for line in lines)


def test_readme_says_what_run_prints():
    """The README's Commands section promises what the test above checks."""
    from tests.support import REPO

    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "`run` prints one compact JSON line per stage as that stage ends, then the run's summary last" in readme


def test_run_from_a_stage_runs_it_and_the_rest(spark, tmp_path, monkeypatch, capsys):
    ran, printed = fake_stages(monkeypatch, capsys)
    assert cli.main(_run(tmp_path, "--from", "retrieve")) == 0
    lines = _lines(printed, capsys)
    assert ran == ["retrieve", "score", "evaluate"]
    assert [s["stage"] for s in lines] == ["retrieve", "score", "evaluate", "run"]
    assert list(lines[-1]["timings"]) == ["retrieve", "score", "evaluate"]


def test_run_only_some_stages_runs_them_in_pipeline_order(spark, tmp_path, monkeypatch, capsys):
    ran, printed = fake_stages(monkeypatch, capsys)
    assert cli.main(_run(tmp_path, "--only", "score,features")) == 0
    lines = _lines(printed, capsys)
    assert ran == ["features", "score"]
    assert [s["stage"] for s in lines] == ["features", "score", "run"]
    assert lines[-1]["stages"]["score"]["tables"] == {"gold/score_fake": 1}


@pytest.mark.parametrize("args, message", [
    (["--from", "retreive"], "unknown stage 'retreive'; the pipeline's stages: " + ", ".join(pipeline.PIPELINE_ORDER)),
    (["--only", "score,generate"], "unknown stage 'generate'; the pipeline's stages: ingest, features"),
    (["--only", ","], "no stage given; the pipeline's stages: ingest"),
    (["--from", "score", "--only", "score"], "either a first stage (--from) or a list of stages (--only), not both"),
])
def test_run_with_a_bad_stage_selection_exits_2_listing_the_stages(args, message, tmp_path, monkeypatch, capsys):
    ran, _ = fake_stages(monkeypatch, capsys)
    assert cli.main(_run(tmp_path, *args)) == 2
    out = capsys.readouterr()
    failed = json.loads(out.out.strip().splitlines()[-1])
    assert failed["stage"] == "run" and failed["status"] == "failed" and message in failed["error"]
    assert message in out.err
    assert ran == []  # nothing ran, and Spark was not started for it


def test_a_run_whose_stage_fails_says_which_after_the_lines_of_those_done(spark, tmp_path, monkeypatch, capsys):
    ran, printed = fake_stages(monkeypatch, capsys, fail="encode")
    assert cli.main(_run(tmp_path)) == 1
    lines = _lines(printed, capsys)
    assert [s["stage"] for s in lines] == ["ingest", "features", "run"]
    assert lines[-1]["status"] == "failed" and lines[-1]["failed_stage"] == "encode"
    assert "encode broke" in lines[-1]["error"]


# ---- tables and recommend: on a tiny warehouse written here through the Lakehouse -------------
@pytest.fixture(scope="module")
def tiny(spark, tmp_path_factory):
    """A warehouse with silver/items (written twice) and gold/recommendations for two users,
    nothing else: written once for the tests below, which only read it."""
    from datetime import datetime

    from recsys_spark.core import schemas as S
    from recsys_spark.core.context import make_context
    from tests.support import small_config

    ctx = make_context(spark, small_config(tmp_path_factory.mktemp("tiny") / "warehouse"), run_id="tiny")
    spark, lake = ctx.spark, ctx.lake
    now = datetime(2026, 1, 2, 3, 4, 5)
    items = [("i1", "Toy Story (1995)", "", "Animation", ["Animation"], [], "h1", "f", now),
             ("i2", "Heat (1995)", "", "Action", ["Action"], [], "h2", "f", now)]
    lake.replace(spark.createDataFrame(items, S.SILVER_ITEMS), S.SILVER_ITEMS_TABLE)
    more = [("i3", "Casino (1995)", "", "Crime", ["Crime"], [], "h3", "f", now)]
    lake.append(spark.createDataFrame(more, S.SILVER_ITEMS), S.SILVER_ITEMS_TABLE)
    recs = [
        ("u1", 2, "i1", 0.25, "because you watched Heat (1995)", "v7", "run-7", now),
        ("u1", 1, "i3", 0.5, "because you watched Heat (1995)", "v7", "run-7", now),
        ("u1", 3, "i9", 0.125, "popular: 40 users", "v7", "run-7", now),  # not in the catalog
        ("u2", 1, "i2", 0.75, "popular: 90 users", "v7", "run-7", now),
    ]
    lake.replace(spark.createDataFrame(recs, S.RECOMMENDATIONS), S.RECOMMENDATIONS_TABLE)
    return ctx


def test_tables_lists_every_table_with_version_rows_and_last_write_or_missing(tiny, capsys):
    from recsys_spark.core import schemas as S

    ctx = tiny
    # One pass over the warehouse (--json); the text is the same rows formatted, checked below.
    assert cli.main(["tables", "--json", "--set", f"warehouse={ctx.cfg.warehouse}"]) == 0
    rows = json.loads(capsys.readouterr().out)["tables"]
    listed = {r["table"]: r for r in rows}
    assert list(listed) == [str(t) for t in S.TABLES]
    stamp = cli._utc(ctx.lake.history(S.SILVER_ITEMS_TABLE, 1)[0].timestamp)
    assert listed["silver/items"] == {"table": "silver/items", "location": f"{ctx.cfg.warehouse}/silver/items", "missing": False,
                                      "version": 1, "rows": 3, "last_write": stamp, "operation": "WRITE"}
    assert (listed["gold/recommendations"]["version"], listed["gold/recommendations"]["rows"]) == (0, 4)
    assert listed["silver/quarantine"] == {"table": "silver/quarantine", "location": f"{ctx.cfg.warehouse}/silver/quarantine",
                                            "missing": True, "version": None, "rows": None, "last_write": None, "operation": None}

    lines = cli.format_tables(rows).splitlines()
    assert lines[0].split() == ["table", "version", "rows", "last", "write", "operation"]
    cells = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert cells["silver/items"] == ["silver/items", "1", "3", *stamp.split(), "WRITE"]
    assert cells["gold/recommendations"][1:3] == ["0", "4"]
    assert cells["bronze/events"] == ["bronze/events", "missing"] and cells["gold/metrics"] == ["gold/metrics", "missing"]
    assert lines[-1] == f"2 of {len(S.TABLES)} tables written, under {ctx.cfg.warehouse}"


def test_tables_on_an_empty_warehouse_shows_every_table_missing(make_ctx, capsys):
    ctx = make_ctx()
    assert cli.main(["tables", "--set", f"warehouse={ctx.cfg.warehouse}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(line.split()[1:] == ["missing"] for line in lines[1:-1]) and len(lines) == len(cli.schemas.TABLES) + 2
    assert lines[-1].startswith(f"0 of {len(cli.schemas.TABLES)} tables written")


def test_every_table_ref_is_listed_once_in_tables():
    from recsys_spark.core import schemas as S

    refs = {v for v in vars(S).values() if isinstance(v, S.TableRef)}
    assert set(S.TABLES) == refs and len(S.TABLES) == len(refs)


def test_recommend_prints_the_users_list_with_titles_scores_and_reasons(tiny, capsys):
    ctx = tiny
    wh = ["--set", f"warehouse={ctx.cfg.warehouse}"]
    assert cli.main(["recommend", "u1", *wh]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("recommendations for user u1 (gold/recommendations v0, model v7, run run-7, generated 2026-")
    assert lines[1].split() == ["rank", "score", "item", "title", "reason"]
    assert [re.split(r"\s{2,}", line.strip()) for line in lines[2:5]] == [
        ["1", "0.5000", "i3", "Casino (1995)", "because you watched Heat (1995)"],
        ["2", "0.2500", "i1", "Toy Story (1995)", "because you watched Heat (1995)"],
        ["3", "0.1250", "i9", "(no title)", "popular: 40 users"],  # an item silver/items does not have
    ]
    assert lines[-1] == "3 items"

    assert cli.main(["recommend", "u1", "--k", "2", "--json", *wh]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [(r["rank"], r["item_id"], r["title"], r["score"]) for r in answer["recommendations"]] == [
        (1, "i3", "Casino (1995)", 0.5), (2, "i1", "Toy Story (1995)", 0.25)]
    assert (answer["user_id"], answer["version"], answer["model_version"]) == ("u1", 0, "v7")


def test_recommend_for_an_unknown_user_or_before_score_says_so_and_exits_1(tiny, tmp_path, capsys):
    ctx = tiny
    assert cli.main(["recommend", "u404", "--set", f"warehouse={ctx.cfg.warehouse}"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert "recsys-spark recommend: user 'u404' has no recommendations in gold/recommendations (version 0)" in out.err
    assert cli.main(["recommend", "u1", "--set", f"warehouse={tmp_path / 'empty'}"]) == 1
    assert "table gold/recommendations not found" in capsys.readouterr().err


def test_recommend_finds_a_pseudonymised_user_by_the_id_a_person_knows(spark, tmp_path, monkeypatch, capsys):
    from datetime import datetime

    from recsys_spark.core import schemas as S
    from recsys_spark.core.context import make_context
    from recsys_spark.stages.ingest import pseudonym
    from tests.support import small_config

    key = "test-hmac-key"
    ctx = make_context(spark, small_config(tmp_path / "warehouse"), run_id="p")
    hidden = pseudonym(key.encode(), "alice")
    now = datetime(2026, 1, 2, 3, 4, 5)
    ctx.lake.replace(
        spark.createDataFrame([(hidden, 1, "i1", 0.5, "popular: 3 users", "v1", "p", now)], S.RECOMMENDATIONS),
        S.RECOMMENDATIONS_TABLE,
    )
    sets = ["--set", f"warehouse={ctx.cfg.warehouse}", "--set", "privacy.pseudonymize_users=true",
            "--set", "privacy.key_env=RECSYS_TEST_KEY"]
    monkeypatch.setenv("RECSYS_TEST_KEY", key)
    assert cli.main(["recommend", "alice", "--json", *sets]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["user_id"], answer["pseudonym"]) == ("alice", hidden)
    assert [r["item_id"] for r in answer["recommendations"]] == ["i1"]
    assert cli.main(["recommend", hidden, "--json", *sets]) == 0  # the pseudonym itself, as the table shows it
    assert json.loads(capsys.readouterr().out)["recommendations"][0]["item_id"] == "i1"
    monkeypatch.delenv("RECSYS_TEST_KEY")
    assert cli.main(["recommend", "alice", *sets]) == 1
    assert "RECSYS_TEST_KEY" in capsys.readouterr().err


# ---- progress: plain lines off a terminal, nothing with -q --------------------------------------
def _reporting_stage(monkeypatch):
    """Every stage replaced by one that names a step, counts a Python-side loop and has the
    reporter poll at once (no Spark job: what is checked is the CLI's wiring)."""
    from recsys_spark.core import progress

    def stage_function(name):
        def run(ctx):
            progress.describe(ctx.spark, "counting parts")
            progress.step("parts", 1, 2, unit="parts")
            if progress._active is not None:
                progress._active.poll()
            return {"tables": {}}
        return run

    monkeypatch.setattr(pipeline, "stage_function", stage_function)


def _progress_lines(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "recsys_spark.core.progress"]


def test_progress_lines_carry_the_stage_step_and_done_total_and_quiet_silences_them(spark, tmp_path, monkeypatch, caplog):
    _reporting_stage(monkeypatch)
    caplog.set_level(logging.INFO)
    args = ["--set", f"warehouse={tmp_path}", "--set", "tracking.enabled=false", "--set", "progress.interval_s=0"]
    # Under pytest stderr is not a terminal: auto means plain lines.
    assert cli.main(["features", *args]) == 0
    lines = _progress_lines(caplog)
    assert len(lines) == 1 and re.fullmatch(r"progress: features \d+s · counting parts · parts 1/2 parts \(50%\)", lines[0]), lines
    assert not any(re.search(r"[\x1b\r]", r.getMessage()) for r in caplog.records if r.name.startswith("recsys_spark"))

    caplog.clear()
    assert cli.main(["features", "-q", *args]) == 0
    assert _progress_lines(caplog) == []
    assert [r for r in caplog.records if r.name.startswith("recsys_spark") and r.levelno < logging.WARNING] == []

    caplog.clear()
    monkeypatch.setenv(cli.LOG_LEVEL_ENV, "warning")  # the same for a job that cannot pass -q
    assert cli.main(["features", *args]) == 0
    assert _progress_lines(caplog) == []
    monkeypatch.delenv(cli.LOG_LEVEL_ENV)
    assert cli.main(["features", "--set", "progress.mode=none", *args]) == 0
    assert _progress_lines(caplog) == []


def test_quiet_and_verbose_are_one_or_the_other(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["features", "-q", "-v"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
