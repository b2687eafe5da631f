"""Reading the Databricks Asset Bundle (``databricks.yml`` + ``resources/*.yml``) without the
``databricks`` CLI or a workspace: the files, the variables resolved for one target, each job's
tasks, and the check that a job cluster's runtime runs the Spark the tests run.

``DATABRICKS_RUNTIME_SPARK`` is the one place that maps a Databricks Runtime to its Apache Spark
version (the release notes' "supported Databricks Runtime versions" table); a runtime missing
here is an error, not a guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

# Databricks Runtime (the version in a cluster's spark_version key) -> its Apache Spark.
DATABRICKS_RUNTIME_SPARK = {
    "14.3": "3.5.0",
    "15.4": "3.5.0",
    "16.4": "3.5.2",
    "17.3": "4.0.0",
    "18": "4.1.0",
    "19": "4.2.0",
}
# "19.x-cpu-ml-scala2.13" -> "19"; "17.3.x-cpu-ml-scala2.13" -> "17.3".
SPARK_VERSION_KEY = re.compile(r"^(\d+(?:\.\d+)?)\.x-")
VARIABLE = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
BUNDLE_FIELD = re.compile(r"\$\{bundle\.(name|target)\}")
# Fields of a task that run something (a condition task runs nothing and needs no cluster).
COMPUTE_TASK_TYPES = ("python_wheel_task", "notebook_task")


class BundleError(ValueError):
    """The bundle is not what a deploy needs; the message names the file, job, task or variable."""


def runtime_spark_version(spark_version_key: str) -> str:
    """The Apache Spark version of a cluster's ``spark_version`` key (``19.x-cpu-ml-scala2.13``)."""
    match = SPARK_VERSION_KEY.match(spark_version_key)
    if not match:
        raise BundleError(f"spark_version {spark_version_key!r}: not a Databricks Runtime key like '19.x-cpu-ml-scala2.13'")
    runtime = match.group(1)
    if runtime not in DATABRICKS_RUNTIME_SPARK:
        raise BundleError(
            f"spark_version {spark_version_key!r}: Databricks Runtime {runtime} is not in DATABRICKS_RUNTIME_SPARK "
            f"(known: {', '.join(DATABRICKS_RUNTIME_SPARK)}); add its Spark version from the runtime release notes"
        )
    return DATABRICKS_RUNTIME_SPARK[runtime]


def check_runtime_spark(spark_version_key: str, tested: str, where: str = "job cluster") -> None:
    """The runtime ``spark_version_key`` must run Spark ``tested`` (the pyspark the tests ran)."""
    runtime_spark = runtime_spark_version(spark_version_key)
    if runtime_spark != tested:
        raise BundleError(
            f"{where}: spark_version {spark_version_key!r} runs Spark {runtime_spark}, but the tests run "
            f"pyspark {tested}: use the runtime whose Spark is {tested}, or test with pyspark {runtime_spark}"
        )


@dataclass
class Job:
    key: str
    spec: dict
    source: Path  # the resource file: notebook and library paths are relative to its folder

    @property
    def tasks(self) -> dict[str, dict]:
        return {task["task_key"]: task for task in self.spec["tasks"]}

    def upstream(self, task_key: str) -> set[str]:
        """Every task ``task_key`` depends on, directly or not."""
        found: set[str] = set()
        todo = [d["task_key"] for d in self.tasks[task_key].get("depends_on", [])]
        while todo:
            key = todo.pop()
            if key not in found:
                found.add(key)
                todo += [d["task_key"] for d in self.tasks[key].get("depends_on", [])]
        return found


@dataclass
class Bundle:
    root: Path
    config: dict  # databricks.yml as written
    target: str
    variables: dict[str, str]
    jobs: dict[str, Job] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BundleError(f"{path.name}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path.name}: the top level must be a mapping")
    return data


def variable_values(config: Mapping[str, Any], target: str, given: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Each declared variable's value for ``target``: ``given`` (``--var``), else the target's,
    else the default; a variable with none is an error naming it, as ``bundle deploy`` fails."""
    declared = config.get("variables") or {}
    targets = config.get("targets") or {}
    if target not in targets:
        raise BundleError(f"databricks.yml: no target {target!r} (targets: {', '.join(targets)})")
    per_target = (targets[target] or {}).get("variables") or {}
    unknown = sorted((set(per_target) | set(given or {})) - set(declared))
    if unknown:
        raise BundleError(f"variable {unknown[0]!r} is set but not declared in databricks.yml variables")
    values = {}
    for name, spec in declared.items():
        if given and name in given:
            values[name] = str(given[name])
        elif name in per_target:
            values[name] = str(per_target[name])
        elif "default" in (spec or {}):
            values[name] = str(spec["default"])
        else:
            raise BundleError(f"variable {name!r} has no value for target {target!r}: pass --var=\"{name}=...\"")
    return values


def resolve(value: Any, variables: Mapping[str, str], bundle_fields: Mapping[str, str]) -> Any:
    """``${var.x}`` and ``${bundle.name|target}`` replaced in every string; ``{{job.run_id}}``
    and the other run-time references are left for the Jobs service."""
    if isinstance(value, dict):
        return {k: resolve(v, variables, bundle_fields) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, variables, bundle_fields) for v in value]
    if not isinstance(value, str):
        return value

    def var(match: re.Match) -> str:
        if match.group(1) not in variables:
            raise BundleError(f"${{var.{match.group(1)}}} is used but not declared in databricks.yml variables")
        return variables[match.group(1)]

    return BUNDLE_FIELD.sub(lambda m: bundle_fields[m.group(1)], VARIABLE.sub(var, value))


def load_bundle(root: Path, target: str, given: Optional[Mapping[str, str]] = None) -> Bundle:
    """``databricks.yml`` under ``root`` and the resource files it includes, resolved for ``target``."""
    config = _read(root / "databricks.yml")
    variables = variable_values(config, target, given)
    bundle_fields = {"name": config["bundle"]["name"], "target": target}
    bundle = Bundle(root=root, config=config, target=target, variables=variables)
    for pattern in config.get("include") or []:
        matched = sorted(root.glob(pattern))
        if not matched:
            raise BundleError(f"databricks.yml include {pattern!r} matches no file")
        bundle.files += matched
    for path in bundle.files:
        data = resolve(_read(path), variables, bundle_fields)
        for key, spec in ((data.get("resources") or {}).get("jobs") or {}).items():
            if key in bundle.jobs:
                raise BundleError(f"{path.name}: job {key!r} is also defined in {bundle.jobs[key].source.name}")
            bundle.jobs[key] = Job(key, spec, path)
    return bundle


def used_variables(root: Path) -> set[str]:
    """Every ``${var.x}`` named in the bundle's files, as written."""
    text = (root / "databricks.yml").read_text(encoding="utf-8")
    for pattern in _read(root / "databricks.yml").get("include") or []:
        for path in root.glob(pattern):
            text += path.read_text(encoding="utf-8")
    return set(VARIABLE.findall(text))
