"""The Databricks notebooks: their source format, the local shim, and each notebook run locally
on a tiny MovieLens cut. A stage's notebook runs once its stage module exists."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml
from tests.support.cluster import write_tiny_movielens
from tests.support import REPO, small_config
from tests.support.tracking import assert_pipeline_tracked, assert_pyfunc_ranks_like_score
from tests.support.connect import assert_same_tables, assert_train_refused, run_data_stages_on_connect

from recsys_spark.integrations import databricks
from recsys_spark.core.config import load_config
from recsys_spark.core.lakehouse import Lakehouse
from recsys_spark.pipeline import run_stage
from recsys_spark.stages import PIPELINE_ORDER, STAGES, stage_module_name
from recsys_spark.core.schemas import (
    CANDIDATES_TABLE,
    ITEM_EMBEDDINGS_TABLE,
    METRICS_TABLE,
    RECOMMENDATIONS_TABLE,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
    SIMILAR_ITEMS_TABLE,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
)

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
# The shared setup every notebook starts with (`%run ./_setup`): widgets, ctx, helpers.
SETUP = REPO / "notebooks" / "_setup.py"
QUICKSTART = "quickstart"
# Tables each stage must leave non-empty (train writes a model folder, generate raw files).
OUTPUT_TABLES = {
    "ingest": (SILVER_EVENTS_TABLE, SILVER_ITEMS_TABLE),
    "features": (USER_SEQUENCES_TABLE,),
    "encode": (ITEM_EMBEDDINGS_TABLE,),
    "interests": (USER_VECTORS_TABLE,),
    "train": (),
    "retrieve": (CANDIDATES_TABLE,),
    "score": (RECOMMENDATIONS_TABLE, SIMILAR_ITEMS_TABLE),
    "evaluate": (METRICS_TABLE,),
    "generate": (),
    # Upkeep rewrites files, not rows: the tables every stage left still hold them.
    "maintain": (SILVER_EVENTS_TABLE, USER_SEQUENCES_TABLE, RECOMMENDATIONS_TABLE, METRICS_TABLE),
}
# Small enough for two shared cores; every key is a real config key, so a rename fails here.
TINY_OVERRIDES = (
    "train.epochs=1",
    "train.embedding_dim=8",
    "train.lstm_units=8",
    "train.max_len=10",
    "train.batch_size=32",
    "encode.batch_size=16",
    "retrieve.k=5",
    "retrieve.candidates=20",
    "retrieve.recall_sample=10",
    "evaluate.ks=[5]",
    "evaluate.baselines=[popularity]",
    "generate.users=20",
    "generate.items=15",
    "generate.events=200",
    "generate.topics=5",
)
FAST_STAGES = ("ingest", "features", "generate")


def notebook_stages(path: Path) -> tuple[str, ...]:
    """``07_score.py`` -> ``("score",)``; the quickstart runs the whole pipeline."""
    name = path.stem.split("_", 1)[1]
    return PIPELINE_ORDER if name == QUICKSTART else (name,)


def require_stages(stages: "tuple[str, ...] | list[str]") -> None:
    missing = [s for s in stages if importlib.util.find_spec(stage_module_name(s)) is None]
    if missing:
        pytest.skip(f"stage(s) {', '.join(missing)} not built yet")


def write_config(path: Path, warehouse: Path) -> Path:
    """The tests' local config as a YAML file, which is what the ``config`` widget takes."""
    path.write_text(yaml.safe_dump(small_config(warehouse).to_dict()), encoding="utf-8")
    return path


def notebook_params(config: Path, movielens: Path, run_id: str) -> dict:
    overrides = [f"input.events={movielens}", *TINY_OVERRIDES]
    return {"config": str(config), "overrides": " ; ".join(overrides), "run_id": run_id}


# ---- the source format ------------------------------------------------------------------------
def test_every_stage_has_a_notebook_and_a_quickstart():
    covered = {stage for path in NOTEBOOKS for stage in notebook_stages(path) if len(notebook_stages(path)) == 1}
    assert covered == set(STAGES)
    assert any(path.stem.endswith(QUICKSTART) for path in NOTEBOOKS)


def python_source(path: Path) -> str:
    """The Python a notebook runs: its own cells' and, in place, those of the notebooks it ``%run``s."""
    parts = []
    for cell in databricks.split_cells(path.read_text(encoding="utf-8"), path.name):
        if cell.magic == databricks.RUN_MAGIC:
            parts.append(python_source(databricks.run_target(cell, path)))
        elif cell.magic is None:
            parts.append(cell.source)
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_databricks_source(path):
    cells = databricks.split_cells(path.read_text(encoding="utf-8"), path.name)
    assert cells[0].magic == "md", "a notebook opens with a Markdown cell saying what it does"
    # The shared setup runs before any of the notebook's own Python.
    first_code = next(c for c in cells if c.magic != "md")
    assert first_code.magic == databricks.RUN_MAGIC and databricks.run_target(first_code, path) == SETUP
    python = python_source(path)
    assert "databricks.define_widgets(dbutils)" in python
    assert "databricks.notebook_context(spark, dbutils)" in python
    assert cells[-1].magic is None and cells[-1].source.startswith("dbutils.notebook.exit(")
    for stage in notebook_stages(path):
        assert stage in STAGES
    stages = notebook_stages(path)
    if len(stages) == 1 and databricks.task_value_keys(stages[0], load_config(databricks.DEFAULT_NOTEBOOK_CONFIG)):
        assert "databricks.set_task_values(dbutils, summary)" in python, f"{path.name} publishes no task values"


def test_setup_notebook_declares_the_widgets_and_the_context():
    cells = databricks.split_cells(SETUP.read_text(encoding="utf-8"), SETUP.name)
    assert cells[0].magic == "md"
    assert all(c.magic in (None, "md") for c in cells), "the setup runs no other notebook or magic"
    python = python_source(SETUP)
    assert python.index("databricks.define_widgets(dbutils)") < python.index(
        "ctx = databricks.notebook_context(spark, dbutils)"
    )


# ---- the shim ---------------------------------------------------------------------------------
def test_split_cells_reads_python_markdown_and_magic_cells():
    source = "\n".join(
        [
            databricks.NOTEBOOK_HEADER,
            "# MAGIC %md",
            "# MAGIC # Title",
            "# MAGIC text",
            "",
            databricks.CELL_SEPARATOR,
            "",
            "x = 1",
            "",
            databricks.CELL_SEPARATOR,
            databricks.CELL_SEPARATOR,
            "# MAGIC %pip install something",
        ]
    )
    cells = databricks.split_cells(source)
    assert [(c.index, c.magic) for c in cells] == [(1, "md"), (2, None), (3, "pip")]
    assert cells[0].source == "%md\n# Title\ntext"
    assert cells[1].source == "x = 1"


def test_split_cells_rejects_non_notebooks_and_mixed_cells():
    with pytest.raises(ValueError, match="not a Databricks source notebook"):
        databricks.split_cells("x = 1\n", "plain.py")
    mixed = f"{databricks.NOTEBOOK_HEADER}\n# MAGIC %md\nx = 1\n"
    with pytest.raises(ValueError, match="mixed.py cell 1: mixes"):
        databricks.split_cells(mixed, "mixed.py")


def test_widgets_take_parameters_over_defaults():
    dbutils = databricks.LocalDbutils({"config": "cluster", "extra": "7"})
    databricks.define_widgets(dbutils)
    assert dbutils.widgets.get("config") == "cluster"
    assert dbutils.widgets.get("overrides") == ""
    assert dbutils.widgets.get("extra") == "7"  # a job parameter without a widget
    dbutils.widgets.dropdown("mode", "full", ["full", "incremental"])
    assert dbutils.widgets.get("mode") == "full"
    with pytest.raises(ValueError, match="'nope' is not defined"):
        dbutils.widgets.get("nope")
    assert dbutils.widgets.getArgument("nope", "fallback") == "fallback"
    bad = databricks.LocalDbutils({"mode": "weekly"})
    with pytest.raises(ValueError, match="'weekly' is not one of"):
        bad.widgets.dropdown("mode", "full", ["full", "incremental"])


def test_task_values_are_recorded_checked_and_read_back():
    dbutils = databricks.LocalDbutils(upstream_values={"ingest": {"rows_ingested": 96}})
    dbutils.jobs.taskValues.set("ndcg_at_10", 0.25)
    dbutils.jobs.taskValues.set("model_version", "20261202-1")
    assert dbutils.jobs.taskValues.values == {"ndcg_at_10": 0.25, "model_version": "20261202-1"}
    assert dbutils.jobs.taskValues.get("ingest", "rows_ingested") == 96
    assert dbutils.jobs.taskValues.get("ingest", "missing", default=0) == 0
    assert dbutils.jobs.taskValues.get("train", "model_version", debugValue="dev") == "dev"
    with pytest.raises(ValueError, match="task value 'missing' of task 'ingest' was not set \\(set there: rows_ingested\\)"):
        dbutils.jobs.taskValues.get("ingest", "missing")
    with pytest.raises(ValueError, match="'when': .* is not JSON-serialisable"):
        dbutils.jobs.taskValues.set("when", object())
    with pytest.raises(ValueError, match="over the 49152-byte limit"):
        dbutils.jobs.taskValues.set("big", "x" * databricks.TASK_VALUE_MAX_BYTES)
    with pytest.raises(ValueError, match="non-empty string"):
        dbutils.jobs.taskValues.set("", 1)


def test_task_values_of_a_pipeline_run_are_those_of_its_stages():
    """What the quickstart (``run``) publishes: each stage's key numbers, the keys declared."""
    stages = {
        "ingest": {"stage": "ingest", "rows_good": 90, "rows_quarantined": 6},
        "features": {"stage": "features", "users": 8},
        "train": {"stage": "train", "model_version": "m1", "val_ndcg@10": 0.31},
        "score": {"stage": "score", "model_version": "m1"},
        "evaluate": {"stage": "evaluate", "ks": [5, 10], "metrics": {"lstm": {"ndcg@5": 0.2, "ndcg@10": 0.3}, "popularity": {"ndcg@5": 0.1}}},
    }
    values = databricks.task_values({"stage": "run", "stages": stages})
    assert values == {"rows_ingested": 90, "model_version": "m1", "val_ndcg_at_10": 0.31, "ndcg_at_5": 0.2, "ndcg_at_10": 0.3}
    cfg = load_config("local", ["evaluate.ks=[5, 10]"])
    assert set(values) == set(databricks.task_value_keys("run", cfg))
    # A run whose recommendations were not evaluated publishes no NDCG of the pipeline.
    assert databricks.task_values({"stage": "evaluate", "ks": [5], "metrics": {"popularity": {"ndcg@5": 0.1}}}) == {}


def test_notebook_config_is_a_profile_name_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A file of the profile's name in the working directory does not shadow the profile.
    (tmp_path / databricks.DEFAULT_NOTEBOOK_CONFIG).write_text("tables: {mode: path}\n", encoding="utf-8")
    dbutils = databricks.LocalDbutils()
    databricks.define_widgets(dbutils)
    cfg = load_config(dbutils.widgets.get(databricks.CONFIG_WIDGET))
    assert cfg.tables.mode == "catalog" and cfg.spark.add_delta_jars is False
    assert cfg == load_config(str(REPO / "conf" / "databricks.yaml"))


def test_a_missing_catalog_is_an_error_naming_it(spark, tmp_path):
    cfg = load_config("databricks", ["tables.catalog=no_such_catalog", f"warehouse={tmp_path}"])
    with pytest.raises(ValueError, match="catalog 'no_such_catalog' does not exist .*catalogs here: .*spark_catalog.*CREATE CATALOG no_such_catalog"):
        databricks.prepare_catalog(spark, cfg)
    assert databricks.warehouse_volume("/Volumes/main/recsys/files/models") == ("main", "recsys", "files")
    assert databricks.warehouse_volume("/Volumes/main/recsys") is None
    assert databricks.warehouse_volume(str(tmp_path)) is None


def test_parse_overrides_splits_on_semicolons():
    assert databricks.parse_overrides(" a.b=1 ;; c=[5, 10];") == ["a.b=1", "c=[5, 10]"]


def test_run_notebook_stops_at_exit_and_rejects_unknown_magics(tmp_path, spark):
    notebook = tmp_path / "nb.py"
    notebook.write_text(
        "\n".join(
            [
                databricks.NOTEBOOK_HEADER,
                "# MAGIC %md Hello",
                databricks.CELL_SEPARATOR,
                'dbutils.widgets.text("n", "2")',
                "total = int(dbutils.widgets.get('n')) + spark.range(3).count()",
                databricks.CELL_SEPARATOR,
                "dbutils.notebook.exit(total)",
                databricks.CELL_SEPARATOR,
                "raise AssertionError('cells after exit must not run')",
            ]
        )
    )
    result = databricks.run_notebook(notebook, spark, {"n": "4"})
    assert result.exit_value == "7"
    assert result.cells_run == 2
    assert result.skipped == ["cell 1: %md"]
    notebook.write_text(f"{databricks.NOTEBOOK_HEADER}\n# MAGIC %sh ls\n")
    with pytest.raises(ValueError, match="nb.py cell 1: magic %sh cannot run locally"):
        databricks.run_notebook(notebook, spark)


def _notebook(path: Path, *cells: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(databricks.NOTEBOOK_HEADER + "\n" + f"\n{databricks.CELL_SEPARATOR}\n".join(cells) + "\n")
    return path


def test_run_magic_runs_the_other_notebook_in_the_same_namespace(tmp_path, spark):
    _notebook(
        tmp_path / "shared" / "_common.py",
        "# MAGIC %md Shared",
        'dbutils.widgets.text("n", "2")\nbase = int(dbutils.widgets.get("n"))',
    )
    _notebook(tmp_path / "shared" / "_setup.py", "# MAGIC %run ./_common", "double = base * 2")
    notebook = _notebook(
        tmp_path / "nbs" / "nb.py",
        "# MAGIC %md Uses the setup",
        "# MAGIC %run ../shared/_setup",
        "dbutils.notebook.exit(double + base + spark.range(1).count())",
        "raise AssertionError('cells after exit must not run')",
    )
    result = databricks.run_notebook(notebook, spark, {"n": "5"})
    assert result.exit_value == "16"  # 10 + 5 + 1: the widget, and both notebooks' variables
    assert result.namespace["double"] == 10
    assert result.runs == [tmp_path / "shared" / "_setup.py", tmp_path / "shared" / "_common.py"]
    # nb: %run, exit; _setup: %run, one cell; _common: one cell.
    assert result.cells_run == 5
    assert result.skipped == ["cell 1: %md", "_common.py cell 1: %md"]

    # dbutils.notebook.exit inside a %run notebook ends the whole run.
    _notebook(tmp_path / "exits.py", "dbutils.notebook.exit('early')")
    caller = _notebook(tmp_path / "caller.py", "# MAGIC %run ./exits", "raise AssertionError('ran on after exit')")
    assert databricks.run_notebook(caller, spark).exit_value == "early"


def test_run_magic_names_a_missing_or_unusable_target(tmp_path, spark):
    notebook = _notebook(tmp_path / "nb.py", "x = 1", "# MAGIC %run ./no_such_setup")
    with pytest.raises(FileNotFoundError, match=r"nb.py cell 2: %run ./no_such_setup: no such notebook \(looked for .*no_such_setup.py"):
        databricks.run_notebook(notebook, spark)
    _notebook(notebook, "# MAGIC %run /Workspace/Shared/setup")
    with pytest.raises(ValueError, match="nb.py cell 1: %run /Workspace/Shared/setup: only a path relative"):
        databricks.run_notebook(notebook, spark)
    _notebook(notebook, '# MAGIC %run ./other $n="3"')
    with pytest.raises(ValueError, match="nb.py cell 1: %run takes one notebook path"):
        databricks.run_notebook(notebook, spark)
    _notebook(notebook, "# MAGIC %run ./nb")
    with pytest.raises(ValueError, match="nb.py cell 1: %run cycle nb.py -> nb.py"):
        databricks.run_notebook(notebook, spark)


def test_run_stage_notebook_needs_display_to_show_tables():
    with pytest.raises(ValueError, match="ingest: showing silver/events needs the notebook's display"):
        databricks.run_stage_notebook(None, "ingest", show=[SILVER_EVENTS_TABLE])


# ---- every notebook, run locally ----------------------------------------------------------------
@pytest.fixture(scope="module")
def notebook_lake(spark, tmp_path_factory):
    """One warehouse for the stage notebooks of this module, filled in pipeline order: a
    notebook's earlier stages run through the library once, then the notebook runs its own."""
    root = tmp_path_factory.mktemp("notebooks")
    movielens = root / "ml-tiny"
    counts = write_tiny_movielens(movielens)
    config = write_config(root / "config.yaml", root / "warehouse")
    params = notebook_params(config, movielens, "notebook-test")
    ctx = databricks.notebook_context(spark, databricks.LocalDbutils(params))
    return {"ctx": ctx, "params": params, "counts": counts, "movielens": movielens, "done": set(), "summaries": {}}


def _fill(notebook_lake, stages) -> None:
    """Run through the library each of ``stages`` the module's notebooks have not run yet."""
    for name in stages:
        if name not in notebook_lake["done"]:
            notebook_lake["summaries"][name] = run_stage(notebook_lake["ctx"], name)
            notebook_lake["done"].add(name)


def _check_outputs(ctx, stage: str, summary: dict) -> None:
    assert summary["stage"] == stage
    assert summary["run_id"] == ctx.run_id
    for table in OUTPUT_TABLES[stage]:
        assert ctx.lake.read(table).limit(1).count() == 1, f"{stage} left {table} empty"


def _notebook_params(path: Path):
    stages = notebook_stages(path)
    slow = len(stages) > 1 or stages[0] not in FAST_STAGES
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else [])


STAGE_NOTEBOOKS = [p for p in NOTEBOOKS if len(notebook_stages(p)) == 1]
QUICKSTART_NOTEBOOKS = [p for p in NOTEBOOKS if len(notebook_stages(p)) > 1]


@pytest.mark.parametrize("path", [_notebook_params(p) for p in STAGE_NOTEBOOKS])
def test_stage_notebook_runs_locally(path, spark, notebook_lake, tmp_path):
    (stage,) = notebook_stages(path)
    ctx = notebook_lake["ctx"]
    params = notebook_lake["params"]
    if stage == "generate":
        earlier = []
    elif stage == "maintain":  # upkeep of a warehouse every stage has written
        earlier = list(PIPELINE_ORDER)
    else:
        earlier = list(PIPELINE_ORDER[: PIPELINE_ORDER.index(stage)])
    require_stages(earlier + [stage])
    _fill(notebook_lake, earlier)
    if stage == "maintain":
        # On a copy of the warehouse: the Connect comparison after these tests wants the stage
        # notebooks' table versions, which upkeep's commits would move.
        copy = tmp_path / "maintained"
        shutil.copytree(ctx.cfg.warehouse, copy)
        params = {**params, "overrides": params["overrides"] + f" ; warehouse={copy}"}

    result = databricks.run_notebook(path, spark, params)
    notebook_lake["done"].add(stage)
    if stage == "maintain":
        ctx = result.namespace["ctx"]
        assert ctx.cfg.warehouse == str(copy)

    summary = json.loads(result.exit_value)
    notebook_lake["summaries"][stage] = summary
    _check_outputs(ctx, stage, summary)
    assert result.runs == [SETUP]
    assert result.skipped and all("%md" in s for s in result.skipped)
    # The task values are the stage's key numbers, under the keys a job may reference.
    assert result.task_values == databricks.task_values(summary)
    assert set(result.task_values) == set(databricks.task_value_keys(stage, ctx.cfg))
    if stage == "ingest":
        assert result.task_values == {"rows_ingested": summary["rows_good"]}
        assert summary["rows_good"] == notebook_lake["counts"]["ratings"]
        assert ctx.lake.read(SILVER_ITEMS_TABLE).count() == notebook_lake["counts"]["movies"]
    if stage == "features":
        assert ctx.lake.read(USER_SEQUENCES_TABLE).count() == notebook_lake["counts"]["users"]
    if stage == "train":
        assert result.task_values["model_version"] == summary["model_version"]
    if stage == "evaluate":
        # The report evaluate wrote under <warehouse>/reports/<run_id>/ is what the notebook shows.
        report = Path(summary["report"]["html"])
        assert report == Path(ctx.cfg.reports_dir) / ctx.run_id / "report.html"
        assert result.html == [report.read_text(encoding="utf-8")]
        ndcg = summary["metrics"]["lstm"]
        assert result.task_values == {f"ndcg_at_{k}": ndcg[f"ndcg@{k}"] for k in ctx.cfg.evaluate.ks}
    else:
        assert result.html == []
    if stage == "maintain":
        assert summary["tables_maintained"] == len(summary["tables"]) >= len(PIPELINE_ORDER)
        assert summary["files_after"] <= summary["files_before"] and summary["files_vacuumed"] == 0
    if stage == "generate":
        assert summary["event_lines"] == 200
        assert list(Path(summary["events_path"]).glob("events-*.jsonl")), "no event files written"


# ---- the same tables from a Spark Connect session ----------------------------------------------
@pytest.fixture(scope="module")
def connect_run(notebook_lake, tmp_path_factory):
    """The data stages on Spark Connect (a child process, tests/support/connect.py) on a fresh
    warehouse with the stage notebooks' inputs, settings, run id and model: their tables are the
    classic run to compare with (a classic run of its own cost as much as the Connect one).
    Runs after the stage notebooks and before the quickstart, which writes those tables again."""
    _fill(notebook_lake, PIPELINE_ORDER)
    ctx = notebook_lake["ctx"]
    warehouse = tmp_path_factory.mktemp("connect") / "warehouse"
    overrides = (f"input.events={notebook_lake['movielens']}", *TINY_OVERRIDES)
    connected = run_data_stages_on_connect(warehouse, ctx.run_id, ctx.cfg.models_dir, overrides)
    return Lakehouse(ctx.spark, small_config(warehouse, *overrides)), connected


@pytest.mark.slow
def test_the_data_stages_on_connect_write_the_stage_notebooks_tables(notebook_lake, connect_run):
    connect_lake, connected = connect_run
    compared = assert_same_tables(notebook_lake["ctx"].lake, notebook_lake["summaries"], connect_lake, connected)
    assert {str(RECOMMENDATIONS_TABLE), str(METRICS_TABLE), str(ITEM_EMBEDDINGS_TABLE)} <= set(compared)


@pytest.mark.slow
def test_train_on_connect_fails_at_once_naming_the_compute_it_needs(connect_run):
    assert_train_refused(connect_run[1])


@pytest.mark.slow
@pytest.mark.parametrize("path", QUICKSTART_NOTEBOOKS, ids=lambda p: p.stem)
def test_quickstart_runs_the_whole_pipeline(path, spark, notebook_lake):
    """In the stage notebooks' warehouse, after them (a second pipeline on a fresh warehouse
    was a quarter of this module's time): every stage runs again in order under the quickstart's
    own run id and leaves its tables. Run alone, it fills a fresh warehouse."""
    require_stages(PIPELINE_ORDER)
    # Its model is the module's second one in this registry: the 05_train notebook's is champion
    # already, and the alias rule (never to a worse model) is tested in tests/unit/tracking, so
    # here the alias is forced to follow the quickstart's model, which score then serves.
    params = {**notebook_lake["params"], "run_id": "quickstart"}
    params["overrides"] += " ; tracking.force_champion=true"
    result = databricks.run_notebook(path, spark, params)
    summary = json.loads(result.exit_value)
    assert list(summary["stages"]) == list(PIPELINE_ORDER)
    ctx = result.namespace["ctx"]
    for stage in PIPELINE_ORDER:
        _check_outputs(ctx, stage, summary["stages"][stage])
    # the run's MLflow record (<warehouse>/mlflow.db), and the registered model serving like score
    assert_pipeline_tracked(ctx, summary, PIPELINE_ORDER)
    assert assert_pyfunc_ranks_like_score(spark, ctx) > 0


def test_ingest_notebook_writes_catalog_tables_with_the_databricks_profile(spark, tmp_path):
    """conf/databricks.yaml names tables <catalog>.<schema>.<layer>_<table>; locally the catalog
    is spark_catalog and the schema lives in tmp_path."""
    require_stages(["ingest"])
    schema = "recsys_nb_test"
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{schema} LOCATION '{tmp_path / 'schema'}'")
    movielens = tmp_path / "ml-tiny"
    counts = write_tiny_movielens(movielens)
    params = {
        "config": str(REPO / "conf" / "databricks.yaml"),
        "overrides": ";".join(
            [
                "tables.catalog=spark_catalog",
                f"tables.schema={schema}",
                f"warehouse={tmp_path / 'warehouse'}",
                f"input.events={movielens}",
                # No Databricks workspace to track to here (tracking.uri=databricks); an unreachable
                # store is tests/unit/tracking's.
                "tracking.enabled=false",
            ]
        ),
    }
    try:
        result = databricks.run_notebook(REPO / "notebooks" / "01_ingest.py", spark, params)
        assert json.loads(result.exit_value)["rows_good"] == counts["ratings"]
        assert spark.table(f"spark_catalog.{schema}.silver_events").count() == counts["ratings"]
        assert spark.table(f"spark_catalog.{schema}.silver_items").count() == counts["movies"]
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{schema} CASCADE")
