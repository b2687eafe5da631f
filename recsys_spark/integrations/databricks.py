"""Databricks notebooks: their parameters (widgets), what a stage notebook does, and a local
runner so they run in tests too.

The notebooks in ``notebooks/`` are Databricks source files: cells split by ``# COMMAND ----------``,
Markdown and magics as ``# MAGIC`` lines. Each one starts with ``%run ./_setup``, the shared
notebook that calls :func:`define_widgets` and :func:`notebook_context` with the ``dbutils`` and
``spark`` the runtime provides; a stage notebook then calls :func:`run_stage_notebook` and exits
with :func:`summary_json`. Locally, :func:`run_notebook` executes the Python cells in order (and
the cells of a ``%run`` notebook in the same namespace, as Databricks does) with a stand-in
``dbutils`` whose widgets take their values from a mapping (what job parameters do on
Databricks) and whose ``jobs.taskValues`` records what the notebook publishes, ``display``
logging the shown frame's schema, ``displayHTML`` recording the HTML shown, and ``spark`` the
caller's session.

Task values (:func:`set_task_values`) are the key numbers a later task of a job can gate on,
e.g. a condition task on ``{{tasks.ingest.values.rows_ingested}}``: ``rows_ingested`` (ingest),
``model_version`` (train, score), ``val_ndcg_at_10`` (train), ``ndcg_at_<K>`` (evaluate: the
pipeline model, one per K in ``evaluate.ks``). The CLI publishes the same values when it runs
as a Databricks wheel task.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from pyspark.sql import SparkSession

from recsys_spark import pipeline
from recsys_spark.core.config import Config, load_config
from recsys_spark.core.context import StageContext, make_context
from recsys_spark.core.schemas import PIPELINE_MODEL, TableRef

log = logging.getLogger(__name__)

NOTEBOOK_HEADER = "# Databricks notebook source"
CELL_SEPARATOR = "# COMMAND ----------"
MAGIC_PREFIX = "# MAGIC"

CONFIG_WIDGET = "config"
OVERRIDES_WIDGET = "overrides"
RUN_ID_WIDGET = "run_id"
# Text widgets hold one line, so overrides are written key=value;key=value.
OVERRIDE_SEPARATOR = ";"
# A profile name, resolved through the package (conf/ of a checkout, or the profiles the wheel
# ships), never a path relative to the working directory, which Databricks does not guarantee.
DEFAULT_NOTEBOOK_CONFIG = "databricks"
# Magics with no local meaning: Markdown is documentation, and the local environment is
# installed by .ci/install, so %pip lines are skipped rather than run.
SKIPPED_MAGICS = ("md", "pip")
# ``%run ./other_notebook`` runs that notebook's cells in the caller's namespace.
RUN_MAGIC = "run"
NOTEBOOK_SUFFIX = ".py"
# The command that runs every stage in order (as ``recsys-spark run``).
PIPELINE_COMMAND = "run"


# ---- what the notebooks call (on Databricks and locally) -------------------------------------
def define_widgets(dbutils: Any, default_config: str = DEFAULT_NOTEBOOK_CONFIG) -> None:
    """Declare the parameters every notebook takes: ``config``, ``overrides``, ``run_id``."""
    dbutils.widgets.text(CONFIG_WIDGET, default_config, "Config profile or YAML path")
    dbutils.widgets.text(OVERRIDES_WIDGET, "", "Overrides key=value;key=value")
    dbutils.widgets.text(RUN_ID_WIDGET, "", "Run id (empty: a new one)")


def parse_overrides(text: str) -> list[str]:
    """``"a.b=1; c=x"`` -> ``["a.b=1", "c=x"]``; blank parts are ignored."""
    return [part.strip() for part in text.split(OVERRIDE_SEPARATOR) if part.strip()]


def notebook_context(spark: SparkSession, dbutils: Any) -> StageContext:
    """The StageContext for the config the widgets name, its catalog objects prepared first
    (:func:`prepare_catalog`)."""
    cfg = load_config(
        dbutils.widgets.get(CONFIG_WIDGET) or None,
        parse_overrides(dbutils.widgets.get(OVERRIDES_WIDGET)),
    )
    prepare_catalog(spark, cfg)
    return make_context(spark, cfg, dbutils.widgets.get(RUN_ID_WIDGET) or None)


# /Volumes/<catalog>/<schema>/<volume>/...: where a Unity Catalog volume's files are.
VOLUMES_ROOT = "/Volumes/"


def warehouse_volume(path: str) -> Optional[tuple[str, str, str]]:
    """``(catalog, schema, volume)`` of a path inside a Unity Catalog volume, else ``None``."""
    if not path.startswith(VOLUMES_ROOT):
        return None
    parts = [p for p in path[len(VOLUMES_ROOT):].split("/") if p]
    return (parts[0], parts[1], parts[2]) if len(parts) >= 3 else None


def prepare_catalog(spark: SparkSession, cfg: Config) -> None:
    """In catalog mode, create the schema when it is missing (Unity Catalog does not create one
    on a table's first write), and the volume the warehouse lies in; the catalog itself must
    exist: a missing one is an error naming it. Path mode needs nothing."""
    if cfg.tables.mode != "catalog":
        return
    catalog = cfg.tables.catalog
    schema = f"{catalog}.{cfg.tables.schema}" if catalog else cfg.tables.schema
    try:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    except Exception as exc:  # noqa: BLE001 - re-raised, named, when the catalog is the cause
        known = {c.name for c in spark.catalog.listCatalogs()}
        if catalog and catalog not in known:
            raise ValueError(
                f"catalog {catalog!r} does not exist or this user cannot use it (catalogs here: "
                f"{', '.join(sorted(known)) or 'none'}): create it (CREATE CATALOG {catalog}) or set "
                f"tables.catalog (the bundle variable 'catalog') to one that exists"
            ) from exc
        raise
    volume = warehouse_volume(cfg.warehouse)
    if volume is not None:
        if volume[:2] != (catalog, cfg.tables.schema):
            log.info("warehouse %s is in volume %s, outside schema %s", cfg.warehouse, ".".join(volume), schema)
        spark.sql(f"CREATE VOLUME IF NOT EXISTS {'.'.join(volume)}")


def run_stage_notebook(
    ctx: StageContext,
    command: str,
    display: Optional[Callable[[Any], None]] = None,
    show: Iterable[TableRef] = (),
    limit: Optional[int] = 20,
) -> dict:
    """What a stage notebook does: run ``command`` (a stage, or ``"run"``: every stage in
    order), print its summary, ``display`` the first ``limit`` rows (``None``: all) of each table
    in ``show``, and return the summary (for ``dbutils.notebook.exit``)."""
    show = list(show)
    if show and display is None:
        raise ValueError(f"{command}: showing {', '.join(map(str, show))} needs the notebook's display")
    if command == PIPELINE_COMMAND:
        summary = pipeline.run_all(ctx)
    else:
        summary = pipeline.run_stage(ctx, command)
    print(json.dumps(summary, indent=2, default=str))
    for table in show:
        frame = ctx.lake.read(table)
        display(frame if limit is None else frame.limit(limit))
    return summary


def summary_json(summary: Mapping[str, Any]) -> str:
    """A summary as the one-line JSON a notebook exits with (what a Workflow task passes on)."""
    return json.dumps(summary, default=str)


# ---- task values: the key numbers a later task gates on ---------------------------------------
ROWS_INGESTED = "rows_ingested"
MODEL_VERSION = "model_version"
VAL_NDCG_AT_10 = "val_ndcg_at_10"
NDCG_AT = "ndcg_at_{k}"
# A task value's JSON may be at most 48 KiB on Databricks.
TASK_VALUE_MAX_BYTES = 48 * 1024


def task_value_keys(stage: str, cfg: Config) -> tuple[str, ...]:
    """The task values a successful ``stage`` publishes under ``cfg`` (what a job may reference
    as ``{{tasks.<task>.values.<key>}}``); ``run`` publishes those of every stage."""
    if stage == PIPELINE_COMMAND:
        keys: list[str] = []
        for name in pipeline.PIPELINE_ORDER:
            keys += [k for k in task_value_keys(name, cfg) if k not in keys]
        return tuple(keys)
    return {
        "ingest": (ROWS_INGESTED,),
        "train": (MODEL_VERSION, VAL_NDCG_AT_10),
        "score": (MODEL_VERSION,),
        "evaluate": tuple(NDCG_AT.format(k=k) for k in cfg.evaluate.ks),
    }.get(stage, ())


def task_values(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The key numbers of a stage's (or ``run``'s) summary, by task value key: rows ingested,
    the model version, NDCG@K of the pipeline model (when it was evaluated)."""
    if summary.get("stage") == PIPELINE_COMMAND:
        values: dict[str, Any] = {}
        for stage_summary in summary["stages"].values():
            values.update(task_values(stage_summary))
        return values
    stage = summary.get("stage")
    if stage == "ingest":
        return {ROWS_INGESTED: summary["rows_good"]}
    if stage == "train":
        return {MODEL_VERSION: summary["model_version"], VAL_NDCG_AT_10: summary["val_ndcg@10"]}
    if stage == "score":
        return {MODEL_VERSION: summary["model_version"]}
    if stage == "evaluate":
        pipeline_metrics = summary["metrics"].get(PIPELINE_MODEL, {})
        return {NDCG_AT.format(k=k): pipeline_metrics[f"ndcg@{k}"] for k in summary["ks"] if f"ndcg@{k}" in pipeline_metrics}
    return {}


def set_task_values(dbutils: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
    """``dbutils.jobs.taskValues.set`` each key number of ``summary``; returns what was set."""
    values = task_values(summary)
    for key, value in values.items():
        dbutils.jobs.taskValues.set(key, value)
    return values


def runtime_dbutils(spark: SparkSession) -> Any:
    """The runtime's ``dbutils`` outside a notebook (a wheel or script task): the Databricks SDK's
    runtime module, else the classic ``pyspark.dbutils``; only on Databricks."""
    try:
        from databricks.sdk.runtime import dbutils
    except ImportError:
        from pyspark.dbutils import DBUtils  # only in Databricks Runtime

        return DBUtils(spark)
    return dbutils


def report_html(summary: Mapping[str, Any]) -> str:
    """The HTML report evaluate wrote (``<reports_dir>/<run_id>/report.html``), for ``displayHTML``."""
    report = summary.get("report") or {}
    if "html" not in report:
        raise ValueError(f"{summary.get('stage')}: the summary names no HTML report (keys: {', '.join(sorted(summary))})")
    return Path(report["html"]).read_text(encoding="utf-8")


# ---- reading the source format ---------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One notebook cell: ``magic`` is ``None`` for Python, else the magic's name (``md``, ``pip``...)."""

    index: int
    source: str
    magic: Optional[str] = None


def split_cells(text: str, name: str = "notebook") -> list[Cell]:
    """Split a Databricks source file into its non-empty cells, in order."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != NOTEBOOK_HEADER:
        raise ValueError(f"{name}: not a Databricks source notebook (first line must be {NOTEBOOK_HEADER!r})")
    chunks: list[list[str]] = [[]]
    for line in lines[1:]:
        if line.strip() == CELL_SEPARATOR:
            chunks.append([])
        else:
            chunks[-1].append(line)
    cells = []
    for chunk in chunks:
        body = "\n".join(chunk).strip("\n")
        if body.strip():
            cells.append(_cell(len(cells) + 1, body, name))
    return cells


def _cell(index: int, body: str, name: str) -> Cell:
    content = [line for line in body.splitlines() if line.strip()]
    magic_lines = [line for line in content if line.startswith(MAGIC_PREFIX)]
    if not magic_lines:
        return Cell(index, body)
    if len(magic_lines) != len(content):
        raise ValueError(f"{name} cell {index}: mixes '# MAGIC' lines with Python lines")
    first = magic_lines[0][len(MAGIC_PREFIX):].strip()
    if not first.startswith("%"):
        raise ValueError(f"{name} cell {index}: a '# MAGIC' cell must start with a %magic, got {first!r}")
    magic = first[1:].split(maxsplit=1)[0] if len(first) > 1 else ""
    text = "\n".join(line[len(MAGIC_PREFIX):].removeprefix(" ") for line in magic_lines)
    return Cell(index, text, magic)


# ---- the local stand-ins ---------------------------------------------------------------------
class NotebookExit(Exception):
    """Raised by ``dbutils.notebook.exit(value)``: the notebook stops and returns ``value``."""

    def __init__(self, value: str):
        super().__init__(value)
        self.value = value


class LocalWidgets:
    """``dbutils.widgets`` whose values come from ``parameters`` (job parameters) or the defaults."""

    def __init__(self, parameters: Optional[Mapping[str, str]] = None):
        self._parameters = {k: str(v) for k, v in (parameters or {}).items()}
        self._values: dict[str, str] = {}

    def text(self, name: str, defaultValue: str, label: Optional[str] = None) -> None:  # noqa: N803
        self._values[name] = self._parameters.get(name, defaultValue)

    def combobox(self, name: str, defaultValue: str, choices: Sequence[str], label: Optional[str] = None) -> None:  # noqa: N803
        self._values[name] = self._parameters.get(name, defaultValue)

    def dropdown(self, name: str, defaultValue: str, choices: Sequence[str], label: Optional[str] = None) -> None:  # noqa: N803
        value = self._parameters.get(name, defaultValue)
        if value not in choices:
            raise ValueError(f"widget {name!r}: value {value!r} is not one of {list(choices)}")
        self._values[name] = value

    def get(self, name: str) -> str:
        # As on Databricks: a job parameter is readable even without a widget declaring it.
        if name in self._values:
            return self._values[name]
        if name in self._parameters:
            return self._parameters[name]
        raise ValueError(f"widget {name!r} is not defined (defined: {', '.join(sorted(self._values)) or 'none'})")

    def getArgument(self, name: str, defaultValue: Optional[str] = None) -> Optional[str]:  # noqa: N802,N803
        try:
            return self.get(name)
        except ValueError:
            return defaultValue

    def remove(self, name: str) -> None:
        self._values.pop(name, None)

    def removeAll(self) -> None:  # noqa: N802
        self._values.clear()


class LocalNotebookUtils:
    """``dbutils.notebook``: only ``exit``, which ends the notebook with a result string."""

    def exit(self, value: Any) -> None:
        raise NotebookExit(str(value))


class LocalTaskValues:
    """``dbutils.jobs.taskValues``: ``set`` records this task's values (JSON-serialisable, at
    most 48 KiB each, as on Databricks); ``get`` reads the values of earlier tasks given as
    ``upstream`` (``{task_key: {key: value}}``), else ``default``, else ``debugValue`` (what
    Databricks returns outside a job); with neither it is an error naming the key."""

    def __init__(self, upstream: Optional[Mapping[str, Mapping[str, Any]]] = None):
        self.values: dict[str, Any] = {}
        self._upstream = {task: dict(values) for task, values in (upstream or {}).items()}

    def set(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"task value key must be a non-empty string, got {key!r}")
        try:
            encoded = json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task value {key!r}: {value!r} is not JSON-serialisable ({exc})") from None
        if len(encoded.encode("utf-8")) > TASK_VALUE_MAX_BYTES:
            raise ValueError(f"task value {key!r}: {len(encoded)} bytes of JSON, over the {TASK_VALUE_MAX_BYTES}-byte limit")
        self.values[key] = value

    def get(self, taskKey: str, key: str, default: Any = None, debugValue: Any = None) -> Any:  # noqa: N803
        found = self._upstream.get(taskKey, {})
        if key in found:
            return found[key]
        if default is not None:
            return default
        if debugValue is not None:
            return debugValue
        raise ValueError(
            f"task value {key!r} of task {taskKey!r} was not set (set there: {', '.join(sorted(found)) or 'none'}) "
            f"and neither default nor debugValue was given"
        )


class LocalJobs:
    """``dbutils.jobs``: ``taskValues``."""

    def __init__(self, upstream: Optional[Mapping[str, Mapping[str, Any]]] = None):
        self.taskValues = LocalTaskValues(upstream)  # noqa: N815 - the Databricks name


class LocalDbutils:
    """The part of ``dbutils`` the notebooks use: ``widgets``, ``notebook.exit`` and
    ``jobs.taskValues``."""

    def __init__(
        self,
        parameters: Optional[Mapping[str, str]] = None,
        upstream_values: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ):
        self.widgets = LocalWidgets(parameters)
        self.notebook = LocalNotebookUtils()
        self.jobs = LocalJobs(upstream_values)


@dataclass
class NotebookResult:
    """What a local notebook run gives back: the ``dbutils.notebook.exit`` value, the cells run
    (Python and ``%run`` cells, those of the notebooks it ``%run``s included) and skipped, the
    notebooks ``%run`` (in order), the notebook's globals (to inspect its variables), the task
    values it set and the HTML it showed with ``displayHTML``."""

    exit_value: Optional[str]
    cells_run: int
    skipped: list[str] = field(default_factory=list)
    namespace: dict = field(default_factory=dict)
    runs: list[Path] = field(default_factory=list)
    task_values: dict = field(default_factory=dict)
    html: list[str] = field(default_factory=list)


def _display(obj: Any, *args: Any, **kwargs: Any) -> None:
    # Databricks renders a table; locally the schema is enough to show the cell ran on a frame.
    schema = getattr(obj, "schema", None)
    log.info("display: %s", schema.simpleString() if schema is not None else type(obj).__name__)


def run_notebook(
    path: "str | Path",
    spark: SparkSession,
    parameters: Optional[Mapping[str, str]] = None,
    upstream_values: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> NotebookResult:
    """Run a Databricks source notebook locally: its Python cells in order in one namespace,
    ``%run ./other`` cells by running that notebook's cells in the same namespace, Markdown and
    ``%pip`` cells skipped; any other magic is an error naming the cell. ``parameters`` are the
    widgets' values (job parameters), ``upstream_values`` the task values of earlier tasks."""
    dbutils = LocalDbutils(parameters, upstream_values)
    shown: list[str] = []

    def display_html(html: str) -> None:
        if not isinstance(html, str):
            raise TypeError(f"displayHTML takes a string of HTML, got {type(html).__name__}")
        log.info("displayHTML: %d characters", len(html))
        shown.append(html)

    namespace: dict = {
        "__name__": "__main__",
        "spark": spark,
        "dbutils": dbutils,
        "display": _display,
        "displayHTML": display_html,
    }
    result = NotebookResult(
        exit_value=None, cells_run=0, namespace=namespace, task_values=dbutils.jobs.taskValues.values, html=shown
    )
    try:
        _run_cells(Path(path), result, within=())
    except NotebookExit as done:
        # dbutils.notebook.exit ends the whole run, also from inside a %run notebook.
        result.exit_value = done.value
    return result


def run_target(cell: Cell, notebook: Path) -> Path:
    """The notebook file a ``%run ./relative/path`` cell of ``notebook`` names: relative to the
    notebook's folder, the ``.py`` of a source file optional (Databricks names have none)."""
    where = f"{notebook.name} cell {cell.index}"
    lines = cell.source.splitlines()
    if len(lines) != 1:
        raise ValueError(f"{where}: a %run cell holds the %run line only, got {len(lines)} lines")
    try:
        words = shlex.split(lines[0])[1:]
    except ValueError as exc:  # an unclosed quote
        raise ValueError(f"{where}: cannot read {lines[0]!r}: {exc}") from None
    if len(words) != 1:
        raise ValueError(f"{where}: %run takes one notebook path and, locally, no arguments; got {words}")
    target = words[0]
    if not target.startswith(("./", "../")):
        raise ValueError(f"{where}: %run {target}: only a path relative to the notebook (./name) runs locally")
    # Lexically, as the workspace does: ../ steps out of the folder named, whatever the links.
    base = Path(os.path.normpath(notebook.parent / target))
    candidates = [base] if base.suffix == NOTEBOOK_SUFFIX else [base.with_name(base.name + NOTEBOOK_SUFFIX), base]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{where}: %run {target}: no such notebook (looked for {', '.join(str(c) for c in candidates)})"
    )


def _run_cells(path: Path, result: NotebookResult, within: tuple) -> None:
    """Run ``path``'s cells into ``result.namespace``; ``within`` holds the notebooks whose
    ``%run`` led here, so a notebook that runs itself again is an error, not a recursion."""
    cells = split_cells(path.read_text(encoding="utf-8"), path.name)
    within = (*within, path.resolve())
    # A skipped cell of the notebook run is "cell N", one of a %run notebook "<file> cell N".
    label = f"{path.name} " if len(within) > 1 else ""
    for cell in cells:
        if cell.magic == RUN_MAGIC:
            target = run_target(cell, path)
            if target.resolve() in within:
                chain = " -> ".join(p.name for p in (*within, target))
                raise ValueError(f"{path.name} cell {cell.index}: %run cycle {chain}")
            log.info("%s: cell %d runs %s", path.name, cell.index, target)
            result.runs.append(target)
            result.cells_run += 1
            _run_cells(target, result, within)
            continue
        if cell.magic is not None:
            if cell.magic not in SKIPPED_MAGICS:
                raise ValueError(f"{path.name} cell {cell.index}: magic %{cell.magic} cannot run locally")
            result.skipped.append(f"{label}cell {cell.index}: %{cell.magic}")
            continue
        log.info("%s: running cell %d", path.name, cell.index)
        result.cells_run += 1
        exec(compile(cell.source, f"{path.name}[cell {cell.index}]", "exec"), result.namespace)  # noqa: S102
