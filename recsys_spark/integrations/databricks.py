"""Databricks notebooks: their parameters (widgets), and a local runner so they run in tests too.

The notebooks in ``notebooks/`` are Databricks source files: cells split by ``# COMMAND ----------``,
Markdown and magics as ``# MAGIC`` lines. On Databricks they call :func:`define_widgets` and
:func:`notebook_context` with the ``dbutils`` and ``spark`` the runtime provides. Locally,
:func:`run_notebook` executes the Python cells in order with a stand-in ``dbutils`` whose widgets
take their values from a mapping (what job parameters do on Databricks), ``display`` logging the
shown frame's schema, and ``spark`` the caller's session.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pyspark.sql import SparkSession

from recsys_spark.core.config import load_config
from recsys_spark.core.context import StageContext, make_context

log = logging.getLogger(__name__)

NOTEBOOK_HEADER = "# Databricks notebook source"
CELL_SEPARATOR = "# COMMAND ----------"
MAGIC_PREFIX = "# MAGIC"

CONFIG_WIDGET = "config"
OVERRIDES_WIDGET = "overrides"
RUN_ID_WIDGET = "run_id"
# Text widgets hold one line, so overrides are written key=value;key=value.
OVERRIDE_SEPARATOR = ";"
# A Git-folder notebook runs with its own folder as the working directory, so the profile is
# found next to it whichever copy of the package (the wheel or the Git folder) was imported.
DEFAULT_NOTEBOOK_CONFIG = "../conf/databricks.yaml"
# Magics with no local meaning: Markdown is documentation, and the local environment is
# installed by .ci/install, so %pip lines are skipped rather than run.
SKIPPED_MAGICS = ("md", "pip")


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
    """The StageContext for the config the widgets name; in catalog mode the schema is created
    first, because Unity Catalog does not create a schema on a table's first write."""
    cfg = load_config(
        dbutils.widgets.get(CONFIG_WIDGET) or None,
        parse_overrides(dbutils.widgets.get(OVERRIDES_WIDGET)),
    )
    if cfg.tables.mode == "catalog":
        prefix = f"{cfg.tables.catalog}." if cfg.tables.catalog else ""
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {prefix}{cfg.tables.schema}")
    return make_context(spark, cfg, dbutils.widgets.get(RUN_ID_WIDGET) or None)


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


class LocalDbutils:
    """The part of ``dbutils`` the notebooks use: ``widgets`` and ``notebook.exit``."""

    def __init__(self, parameters: Optional[Mapping[str, str]] = None):
        self.widgets = LocalWidgets(parameters)
        self.notebook = LocalNotebookUtils()


@dataclass
class NotebookResult:
    """What a local notebook run gives back: the ``dbutils.notebook.exit`` value, the cells run
    and skipped, and the notebook's globals (to inspect its variables)."""

    exit_value: Optional[str]
    cells_run: int
    skipped: list[str] = field(default_factory=list)
    namespace: dict = field(default_factory=dict)


def _display(obj: Any, *args: Any, **kwargs: Any) -> None:
    # Databricks renders a table; locally the schema is enough to show the cell ran on a frame.
    schema = getattr(obj, "schema", None)
    log.info("display: %s", schema.simpleString() if schema is not None else type(obj).__name__)


def _display_html(html: str) -> None:
    log.info("displayHTML: %d characters", len(html))


def run_notebook(
    path: "str | Path", spark: SparkSession, parameters: Optional[Mapping[str, str]] = None
) -> NotebookResult:
    """Run a Databricks source notebook locally: its Python cells in order in one namespace,
    Markdown and ``%pip`` cells skipped; any other magic is an error naming the cell."""
    path = Path(path)
    cells = split_cells(path.read_text(encoding="utf-8"), path.name)
    namespace: dict = {
        "__name__": "__main__",
        "spark": spark,
        "dbutils": LocalDbutils(parameters),
        "display": _display,
        "displayHTML": _display_html,
    }
    result = NotebookResult(exit_value=None, cells_run=0, namespace=namespace)
    for cell in cells:
        if cell.magic is not None:
            if cell.magic not in SKIPPED_MAGICS:
                raise ValueError(f"{path.name} cell {cell.index}: magic %{cell.magic} cannot run locally")
            result.skipped.append(f"cell {cell.index}: %{cell.magic}")
            continue
        log.info("%s: running cell %d", path.name, cell.index)
        try:
            exec(compile(cell.source, f"{path.name}[cell {cell.index}]", "exec"), namespace)  # noqa: S102
        except NotebookExit as done:
            result.exit_value = done.value
            result.cells_run += 1
            break
        result.cells_run += 1
    return result
