"""The Databricks Asset Bundle, checked without a workspace or Spark: well-formed files, the wheel
artifact, every wheel task's parameters through the CLI's own parser, every notebook task's
notebook, the job parameters as the notebooks' widgets, each job's DAG in pipeline order, and a
runtime whose Spark is the pyspark the tests run."""
from __future__ import annotations

import fnmatch
import importlib.metadata
import re
from pathlib import Path

import pyspark
import pytest

from recsys_spark import cli
from recsys_spark.core.config import load_config
from recsys_spark.integrations import databricks
from recsys_spark.stages import PIPELINE_ORDER, STAGES
from tests.support import REPO
from tests.support.bundle import (
    COMPUTE_TASK_TYPES,
    DATABRICKS_RUNTIME_SPARK,
    BundleError,
    check_runtime_spark,
    load_bundle,
    runtime_spark_version,
    used_variables,
    variable_values,
)

EMAIL = "recsys-team@example.com"
TARGETS = ("dev", "prod")
DISTRIBUTION = "recsys-spark"
ENTRY_POINT_GROUP = "console_scripts"
# Each job and the stages it runs, in pipeline order.
JOB_STAGES = {
    "recsys_daily": ("ingest", "features", "encode", "interests", "retrieve", "score", "evaluate"),
    "recsys_weekly_training": ("train",),
    "recsys_hourly_scoring": ("ingest", "features", "encode", "interests", "retrieve", "score"),
    "recsys_weekly_maintenance": ("maintain",),
}
# The order stages may run in within a job: the pipeline's, then table upkeep.
JOB_ORDER = (*PIPELINE_ORDER, "maintain")
NOTEBOOK_JOBS = ("recsys_weekly_training", "recsys_hourly_scoring", "recsys_weekly_maintenance")
# "{{tasks.ingest.values.rows_ingested}}" -> ("ingest", "rows_ingested")
TASK_VALUE_REF = re.compile(r"\{\{tasks\.([A-Za-z0-9_]+)\.values\.([A-Za-z0-9_]+)\}\}")
NOTEBOOK_NAME = re.compile(r"^\d\d_(?P<stage>[a-z]+)$")


@pytest.fixture(scope="module", params=TARGETS)
def bundle(request):
    return load_bundle(REPO, request.param, {"notification_email": EMAIL})


def _tasks(bundle):
    for job in bundle.jobs.values():
        for key, task in job.tasks.items():
            yield job, key, task


def parse_cli(parameters: list, where: str):
    """A wheel task's parameters read by the CLI's own parser (argparse exits on a bad one)."""
    try:
        return cli.build_parser().parse_args(parameters)
    except SystemExit:
        pytest.fail(f"{where}: recsys-spark rejects the parameters {parameters} (argparse's message is above)")


def task_stage(job, task: dict) -> "str | None":
    """The stage a task runs (its CLI command or its notebook's), ``None`` for a condition task."""
    if "python_wheel_task" in task:
        return parse_cli(task["python_wheel_task"]["parameters"], f"{job.key}.{task['task_key']}").stage
    if "notebook_task" in task:
        path = Path(task["notebook_task"]["notebook_path"])
        match = NOTEBOOK_NAME.match(path.stem)
        assert match, f"{job.key}.{task['task_key']}: {path} is not a stage notebook (NN_<stage>.py)"
        return match.group("stage")
    return None


# ---- the files --------------------------------------------------------------------------------
def test_bundle_is_well_formed_with_the_wheel_artifact_and_targets():
    config = load_bundle(REPO, "dev", {"notification_email": EMAIL}).config
    assert config["bundle"]["name"] == DISTRIBUTION
    (artifact,) = config["artifacts"].values()
    assert artifact["type"] == "whl" and (REPO / artifact["path"]).resolve() == REPO
    assert (REPO / artifact["path"] / "setup.py").is_file()
    assert "pip wheel" in artifact["build"] and "--no-deps" in artifact["build"]
    # The artifact's files are the wheel setup.py names (a distribution's wheel uses underscores).
    wheel_glob = artifact["files"][0]["source"]
    meta = importlib.metadata.metadata(DISTRIBUTION)
    wheel = f"dist/{meta['Name'].replace('-', '_')}-{meta['Version']}-py3-none-any.whl"
    assert fnmatch.fnmatch(wheel, wheel_glob), f"{wheel_glob} does not match {wheel}"
    assert {name: config["targets"][name]["mode"] for name in TARGETS} == {"dev": "development", "prod": "production"}
    assert config["targets"]["dev"].get("default") is True
    for name in ("catalog", "schema", "volume", "notification_email", "spark_version"):
        assert name in config["variables"], f"variable {name} is not declared"
    assert used_variables(REPO) <= set(config["variables"])
    assert set(load_bundle(REPO, "dev", {"notification_email": EMAIL}).jobs) == set(JOB_STAGES)


def test_a_variable_without_a_value_is_an_error_naming_it():
    config = load_bundle(REPO, "dev", {"notification_email": EMAIL}).config
    with pytest.raises(BundleError, match="variable 'notification_email' has no value for target 'prod'"):
        variable_values(config, "prod")
    with pytest.raises(BundleError, match="no target 'staging'"):
        variable_values(config, "staging", {"notification_email": EMAIL})
    with pytest.raises(BundleError, match="variable 'warehouse' is set but not declared"):
        variable_values(config, "dev", {"notification_email": EMAIL, "warehouse": "/tmp"})


def test_every_job_is_scheduled_with_retries_timeouts_and_failure_email(bundle):
    crons = {}
    for job in bundle.jobs.values():
        spec = job.spec
        crons[job.key] = spec["schedule"]["quartz_cron_expression"].split()
        assert len(crons[job.key]) in (6, 7) and spec["schedule"]["timezone_id"] == "UTC"
        assert spec["max_concurrent_runs"] == 1, f"{job.key}: overlapping runs would write the same tables"
        assert spec["timeout_seconds"] > 0
        assert spec["email_notifications"]["on_failure"] == [EMAIL]
        for key, task in job.tasks.items():
            if not any(kind in task for kind in COMPUTE_TASK_TYPES):
                continue
            where = f"{job.key}.{key}"
            assert 0 < task["timeout_seconds"] <= spec["timeout_seconds"], where
            assert task["max_retries"] >= 1 and task["min_retry_interval_millis"] > 0, where
            assert task["retry_on_timeout"] is False, f"{where}: a stage that timed out would time out again"
            assert task["job_cluster_key"] in {c["job_cluster_key"] for c in spec["job_clusters"]}, where
            whl = [lib["whl"] for lib in task["libraries"] if "whl" in lib]
            assert whl and Path(whl[0]).parent == Path("../dist"), f"{where}: the bundle's wheel is a task library"
    # seconds minutes hours day-of-month month day-of-week
    assert crons["recsys_daily"][2].isdigit() and crons["recsys_daily"][3:5] == ["*", "*"], "daily"
    assert crons["recsys_weekly_training"][5] in ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), "weekly"
    assert crons["recsys_weekly_maintenance"][5] in ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), "weekly"
    assert int(crons["recsys_weekly_maintenance"][2]) != int(crons["recsys_daily"][2]), "upkeep stays out of the daily run"
    hours = crons["recsys_hourly_scoring"][2]
    assert crons["recsys_hourly_scoring"][1].isdigit() and hours != "*"
    hourly = {h for part in hours.split(",") for h in range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)}
    assert len(hourly) >= 20, f"hourly runs at most hours of the day: {sorted(hourly)}"
    assert int(crons["recsys_daily"][2]) not in hourly, "the hourly job stays out of the daily run's hour"


def test_jobs_match_the_databricks_jobs_schema(bundle):
    """Field names and types, as the Jobs models of databricks-bundles (the [dev] extra) read
    them; the databricks CLI's own `bundle validate` needs a workspace."""
    jobs_schema = pytest.importorskip("databricks.bundles.jobs", reason="databricks-bundles ([dev] extra) is not installed")
    for job in bundle.jobs.values():
        parsed = jobs_schema.Job.from_dict(job.spec)
        assert [task.task_key for task in parsed.tasks] == list(job.tasks)
    misspelt = dict(job.spec, tasks=[{**job.spec["tasks"][0], "notebok_task": {}}])
    with pytest.raises(ValueError, match="Unexpected field 'notebok_task'"):
        jobs_schema.Job.from_dict(misspelt)


# ---- the tasks against the CLI and the notebooks ------------------------------------------------
def test_wheel_tasks_are_the_cli_entry_point_with_parameters_it_parses(bundle):
    (entry,) = importlib.metadata.distribution(DISTRIBUTION).entry_points.select(group=ENTRY_POINT_GROUP)
    assert entry.load() is cli.main
    wheel_tasks = [(job, key, task) for job, key, task in _tasks(bundle) if "python_wheel_task" in task]
    assert {job.key for job, _, _ in wheel_tasks} == {"recsys_daily"}
    for job, key, task in wheel_tasks:
        wheel = task["python_wheel_task"]
        where = f"{job.key}.{key}"
        assert wheel["package_name"].replace("_", "-") == DISTRIBUTION, where
        assert wheel["entry_point"] == entry.name, where
        args = parse_cli(wheel["parameters"], where)
        assert args.stage == key and args.stage in STAGES, where
        assert args.run_id == "{{job.run_id}}", f"{where}: every task of a run records the job run's id"
        cfg = load_config(args.config, args.overrides)
        _check_catalog_config(cfg, bundle.variables, where)
        assert cfg.score.mode == "full" and cfg.features.split != "none", where


def _check_catalog_config(cfg, variables: dict, where: str) -> None:
    assert cfg.tables.mode == "catalog", where
    assert (cfg.tables.catalog, cfg.tables.schema) == (variables["catalog"], variables["schema"]), where
    assert cfg.warehouse == f"/Volumes/{variables['catalog']}/{variables['schema']}/{variables['volume']}", where
    assert databricks.warehouse_volume(cfg.warehouse) == (variables["catalog"], variables["schema"], variables["volume"])
    assert cfg.input.events.startswith(f"/Volumes/{variables['catalog']}/{variables['schema']}/"), where


def test_notebook_tasks_name_notebooks_that_exist(bundle):
    notebook_tasks = [(job, key, task) for job, key, task in _tasks(bundle) if "notebook_task" in task]
    assert {job.key for job, _, _ in notebook_tasks} == set(NOTEBOOK_JOBS)
    for job, key, task in notebook_tasks:
        path = (job.source.parent / task["notebook_task"]["notebook_path"]).resolve()
        assert path.is_file(), f"{job.key}.{key}: {path} does not exist"
        assert path.parent == REPO / "notebooks"
        stage = task_stage(job, task)
        assert stage == key and stage in STAGES
        # A notebook task runs a notebook built on the shared setup: it reads the job parameters.
        assert databricks.split_cells(path.read_text(encoding="utf-8"), path.name)[1].source == "%run ./_setup"


def test_job_parameters_are_the_notebook_widgets_and_make_a_valid_config(bundle, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the profile is found by name, wherever the task's working directory is
    for key in NOTEBOOK_JOBS:
        params = {p["name"]: p["default"] for p in bundle.jobs[key].spec["parameters"]}
        dbutils = databricks.LocalDbutils(params)
        databricks.define_widgets(dbutils)
        assert set(params) == {databricks.CONFIG_WIDGET, databricks.OVERRIDES_WIDGET, databricks.RUN_ID_WIDGET}
        assert dbutils.widgets.get(databricks.CONFIG_WIDGET) == databricks.DEFAULT_NOTEBOOK_CONFIG
        assert dbutils.widgets.get(databricks.RUN_ID_WIDGET) == "{{job.run_id}}"
        cfg = load_config(
            dbutils.widgets.get(databricks.CONFIG_WIDGET),
            databricks.parse_overrides(dbutils.widgets.get(databricks.OVERRIDES_WIDGET)),
        )
        _check_catalog_config(cfg, bundle.variables, key)
        assert cfg.score.mode == ("incremental" if key == "recsys_hourly_scoring" else "full")
    # The hourly job's sequences are the daily job's: same split, or incremental scoring would
    # mix histories cut two ways.
    (daily_features,) = [t for t in bundle.jobs["recsys_daily"].spec["tasks"] if t["task_key"] == "features"]
    daily = parse_cli(daily_features["python_wheel_task"]["parameters"], "recsys_daily.features")
    assert load_config(daily.config, daily.overrides).features == cfg.features


def test_dependencies_form_a_dag_in_pipeline_order(bundle):
    for job in bundle.jobs.values():
        tasks = job.tasks
        assert len(tasks) == len(job.spec["tasks"]), f"{job.key}: task keys are unique"
        stages = {key: task_stage(job, task) for key, task in tasks.items()}
        run = tuple(s for s in JOB_ORDER if s in stages.values())
        assert run == JOB_STAGES[job.key] and len(run) == len([s for s in stages.values() if s]), job.key
        for key, task in tasks.items():
            for dep in task.get("depends_on", []):
                assert dep["task_key"] in tasks, f"{job.key}.{key} depends on unknown task {dep['task_key']}"
            assert key not in job.upstream(key), f"{job.key}.{key}: dependency cycle"
            if stages[key] is None:
                continue
            # Every earlier stage of the job runs before this one (through a condition task or not),
            # and no later one does.
            before = {stages[k] for k in job.upstream(key)} - {None}
            position = JOB_ORDER.index(stages[key])
            assert all(JOB_ORDER.index(s) < position for s in before), f"{job.key}.{key} after a later stage"
            if stages[key] in ("interests", "retrieve", "score", "evaluate"):
                assert before == {s for s in run if JOB_ORDER.index(s) < position}, f"{job.key}.{key}: {before}"
        (last,) = [k for k in tasks if not any(k in [d["task_key"] for d in t.get("depends_on", [])] for t in tasks.values())]
        assert job.upstream(last) == set(tasks) - {last}, f"{job.key}: every task leads to {last}"


def test_condition_tasks_gate_on_values_their_upstream_task_publishes(bundle):
    conditions = [(job, key, task) for job, key, task in _tasks(bundle) if "condition_task" in task]
    assert conditions, "the hourly job gates on rows ingested"
    for job, key, task in conditions:
        cond = task["condition_task"]
        refs = TASK_VALUE_REF.findall(cond["left"] + cond["right"])
        assert refs, f"{job.key}.{key}: compares no task value"
        params = {p["name"]: p["default"] for p in job.spec.get("parameters", [])}
        cfg = load_config(params["config"], databricks.parse_overrides(params["overrides"]))
        for upstream, value in refs:
            assert upstream in job.upstream(key), f"{job.key}.{key} reads {upstream}, which does not run before it"
            stage = task_stage(job, job.tasks[upstream])
            assert value in databricks.task_value_keys(stage, cfg), f"{upstream} ({stage}) does not publish {value}"
            notebook = job.source.parent / job.tasks[upstream]["notebook_task"]["notebook_path"]
            assert "databricks.set_task_values(dbutils, summary)" in notebook.read_text(encoding="utf-8")
        # The tasks after the gate run only when it holds.
        gated = [t for t in job.tasks.values() if any(d["task_key"] == key for d in t.get("depends_on", []))]
        assert gated and all(d.get("outcome") == "true" for t in gated for d in t["depends_on"] if d["task_key"] == key)


# ---- the runtime ------------------------------------------------------------------------------
def test_job_clusters_run_the_tested_spark_on_dedicated_compute(bundle):
    for job in bundle.jobs.values():
        for cluster in job.spec["job_clusters"]:
            new = cluster["new_cluster"]
            check_runtime_spark(new["spark_version"], pyspark.__version__, f"{job.key}.{cluster['job_cluster_key']}")
            assert "-ml-" in new["spark_version"], "TensorFlow and torch come with the ML runtime"
            # Classic compute in dedicated access mode: training uses barrier tasks / Horovod, and
            # the data stages use sparkContext (see README, Databricks).
            assert new["data_security_mode"] == "SINGLE_USER"
    (train,) = bundle.jobs["recsys_weekly_training"].spec["job_clusters"]
    params = {p["name"]: p["default"] for p in bundle.jobs["recsys_weekly_training"].spec["parameters"]}
    cfg = load_config(params["config"], databricks.parse_overrides(params["overrides"]))
    assert cfg.train.backend in ("tf_distribute", "horovod")
    assert train["new_cluster"]["num_workers"] >= cfg.train.num_workers, "one executor per training worker"


def test_runtime_check_fails_naming_both_versions():
    tested = pyspark.__version__
    other = next(key for key, spark in DATABRICKS_RUNTIME_SPARK.items() if spark != tested)
    key = f"{other}.x-cpu-ml-scala2.13"
    with pytest.raises(BundleError) as failure:
        check_runtime_spark(key, tested)
    message = str(failure.value)
    assert DATABRICKS_RUNTIME_SPARK[other] in message and tested in message and key in message
    with pytest.raises(BundleError, match=r"Databricks Runtime 99 is not in DATABRICKS_RUNTIME_SPARK"):
        runtime_spark_version("99.x-cpu-ml-scala2.13")
    with pytest.raises(BundleError, match="not a Databricks Runtime key"):
        runtime_spark_version("latest")
    assert runtime_spark_version("17.3.x-cpu-ml-scala2.13") == "4.0.0"
