"""Experiment tracking and the model registry: the one module that talks to MLflow.

Where (``tracking.*`` keys, resolved by :func:`target`): by default tracking and registry share
one SQLite file, ``<warehouse>/mlflow.db``, with artifacts under ``<warehouse>/mlruns`` (no server);
on Databricks the workspace's tracking and the ``databricks-uc`` registry
(``conf/databricks.yaml``), the model named ``<catalog>.<schema>.<tracking.model_name>``.

What (:class:`Tracker`, driven by ``recsys_spark.pipeline``):

- one parent run per pipeline ``run_id`` (tag ``recsys.run_id``; the whole config as params), found
  again when a later stage of the same run id runs in another process;
- one nested run per stage: the stage's config section as params, the numbers of its summary as
  metrics (names made acceptable to MLflow: ``val_ndcg@10`` -> ``val_ndcg_at_10``), the Delta
  versions it read and wrote as tags ``delta.read.<layer>/<table>`` / ``delta.wrote.<layer>/<table>``,
  its summary as ``summary.json``; ``evaluate`` adds the report folder (``report.md``, ``report.html``,
  the plots), ``train`` the training curves (metric history per epoch and ``curves.png``);
- after ``train`` the model folder is logged as a pyfunc with a signature
  (``recsys_spark/tracking/ranker_model.py``, a model from code: nothing pickled) and registered;
  the alias ``champion`` moves to the new version only when its validation NDCG@10 is not worse
  than the champion's (``tracking.force_champion`` moves it anyway).

``retrieve`` and ``score`` ask :func:`serving_model_dir` for their model: the registry's
``models:/<name>@champion`` when the registry is configured, ``<models_dir>/latest`` otherwise.

A tracking failure (MLflow missing, a store that cannot be reached or written) is one logged
warning naming what to fix; the run goes on untracked and no table or model folder depends on
MLflow. Bad registry state that would serve the wrong model (an alias without a live version, a
version that is not a ranker) is a ``ValueError`` naming the fix.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from recsys_spark.core.config import Config
from recsys_spark.core.schemas import SERVED_CANDIDATES, SERVED_HISTORY, SERVED_ITEMS, SERVED_K, SERVED_SCORES
from recsys_spark.models.sequence import cached_ranker, check_model_folder, latest_model_dir

log = logging.getLogger(__name__)

DB_FILE = "mlflow.db"  # <warehouse>/mlflow.db: the embedded tracking + registry store
ARTIFACTS_DIR = "mlruns"  # <warehouse>/mlruns: its artifacts
CHAMPION = "champion"
MODEL_ARTIFACT = "model"  # the pyfunc's artifact key: the ranker's folder
LOGGED_MODEL_NAME = "ranker"
REGISTRY_CACHE = ".registry"  # <models_dir>/.registry/<name>/<version>: registered versions, downloaded
RANKER_CODE = Path(__file__).with_name("ranker_model.py")
NDCG_KEY = "val_ndcg_at_10"  # the validation metric the champion rule compares
TRAIN_NDCG = "val_ndcg@10"  # its name in the train stage's metrics.json
PIPELINE, STAGE = "pipeline", "stage"
TAG_RUN_ID, TAG_KIND, TAG_STAGE = "recsys.run_id", "recsys.kind", "recsys.stage"
TAG_MODEL_VERSION, TAG_MODEL_DIR, TAG_DECISION = "recsys.model_version", "recsys.model_dir", "recsys.champion_decision"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_CHARS, MAX_TAG_CHARS = 6000, 5000
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")


class TrackingUnavailable(RuntimeError):
    """The configured store cannot be used (MLflow missing, no local warehouse for SQLite, ...)."""


def metric_key(name: str) -> str:
    """A name MLflow accepts (``^[/\\w.\\- :]*$``): ``@`` becomes ``_at_``, anything else ``_``."""
    return _BAD_NAME_CHARS.sub("_", name.replace("@", "_at_"))


def redact(uri: str) -> str:
    """``uri`` without a password (``http://user:secret@host`` -> ``http://user:***@host``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ---- where ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """The resolved ``tracking.*`` config: URIs, experiment, registered model name."""

    tracking_uri: str
    registry_uri: str
    artifact_location: Optional[str]
    experiment: str
    model_name: str
    registry: bool
    force_champion: bool
    timeout_s: int


def target(cfg: Config) -> Optional[Target]:
    """Where this config tracks, or None when ``tracking.enabled`` is false. The default store
    needs a warehouse on a local (or mounted) file system: otherwise ``TrackingUnavailable``."""
    t = cfg.tracking
    if not t.enabled:
        return None
    uri, artifacts = t.uri, t.artifact_location
    if uri is None:
        warehouse = cfg.warehouse
        if warehouse.startswith("file:"):
            warehouse = urlsplit(warehouse).path
        elif "://" in warehouse or re.match(r"^[a-z][a-z0-9+.-]*:/", warehouse):
            raise TrackingUnavailable(
                f"the default tracking store is a SQLite file under the warehouse, and warehouse={warehouse} "
                "is not a local path: set tracking.uri (e.g. a tracking server) or tracking.enabled=false"
            )
        root = Path(warehouse).expanduser().resolve()
        uri = f"sqlite:///{root / DB_FILE}"
        artifacts = artifacts or (root / ARTIFACTS_DIR).as_uri()
    return Target(
        tracking_uri=uri,
        registry_uri=t.registry_uri or uri,
        artifact_location=artifacts,
        experiment=t.experiment,
        model_name=cfg.registered_model_name,
        registry=t.registry,
        force_champion=t.force_champion,
        timeout_s=t.timeout_s,
    )


def _sqlite_path(uri: str) -> Optional[str]:
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def _import_mlflow():
    # No progress bars on stderr: the CLI's stderr is its log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import mlflow
    except ImportError:
        raise TrackingUnavailable(
            "MLflow is not installed: pip install 'recsys-spark[tracking]' (or set tracking.enabled=false)"
        ) from None
    return mlflow


def _schema_template(mlflow) -> Optional[str]:
    """An empty, fully migrated MLflow database of this MLflow version, kept in the user's cache:
    copying it makes a new store in milliseconds instead of running ~70 schema migrations."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recsys-spark"
    template = cache / f"mlflow-{mlflow.__version__}-schema.db"
    if template.is_file():
        return str(template)
    try:
        import sqlalchemy
        from mlflow.store.db import utils as db_utils

        cache.mkdir(parents=True, exist_ok=True)
        staged = cache / f"{template.name}.{uuid.uuid4().hex[:8]}.tmp"
        engine = sqlalchemy.create_engine(f"sqlite:///{staged}")
        try:
            db_utils._initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(staged, template)
        return str(template)
    except Exception as exc:  # noqa: BLE001 - only a speed-up: MLflow then migrates the new file itself
        log.debug("tracking: no schema template (%s); MLflow creates the database", exc)
        return None


def _prepare_sqlite(uri: str, mlflow) -> None:
    """Create the directory of a SQLite store and, for a new file, start it from the template."""
    path = _sqlite_path(uri)
    if path is None or os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    template = _schema_template(mlflow)
    if template:
        staged = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        shutil.copyfile(template, staged)
        if os.path.exists(path):  # another process made it meanwhile: keep theirs
            os.remove(staged)
        else:
            os.replace(staged, path)


@contextlib.contextmanager
def _failing_fast(timeout_s: int) -> Iterator[None]:
    """HTTP calls inside give up after one ``timeout_s`` attempt (MLflow retries for minutes)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _mlflow_uris(t: Target) -> Iterator[Any]:
    """MLflow's process-wide URIs pointed at ``t`` inside (its model logging and ``models:/``
    downloads read them), restored afterwards."""
    mlflow = _import_mlflow()
    before = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(t.tracking_uri)
    mlflow.set_registry_uri(t.registry_uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
        if before["MLFLOW_REGISTRY_URI"] is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


def connect(t: Target):
    """An ``MlflowClient`` for ``t`` once the store answered (quickly: ``tracking.timeout_s``)."""
    mlflow = _import_mlflow()
    _prepare_sqlite(t.tracking_uri, mlflow)
    if t.registry_uri != t.tracking_uri:
        _prepare_sqlite(t.registry_uri, mlflow)
    client = mlflow.MlflowClient(tracking_uri=t.tracking_uri, registry_uri=t.registry_uri)
    with _failing_fast(t.timeout_s):
        client.search_experiments(max_results=1)
    return client


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


# ---- the model's interface -----------------------------------------------------------------
def signature(default_k: int):
    """Input: ``history`` (item ids, oldest first) and optional ``candidates``; output: ``items``
    (top-K ids) and ``scores``; parameter ``k``."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(Array(DataType.string), SERVED_HISTORY),
                ColSpec(Array(DataType.string), SERVED_CANDIDATES, required=False),
            ]
        ),
        outputs=Schema([ColSpec(Array(DataType.string), SERVED_ITEMS), ColSpec(Array(DataType.double), SERVED_SCORES)]),
        params=ParamSchema([ParamSpec(SERVED_K, DataType.long, default_k)]),
    )


def _same_interface(found, expected) -> bool:
    """Same input and output columns and types (the default ``k`` may differ)."""
    if found is None:
        return False
    return found.inputs.to_dict() == expected.inputs.to_dict() and found.outputs.to_dict() == expected.outputs.to_dict()


def _requirements() -> "list[str]":
    """What the pyfunc needs where it is loaded: this package and the stack it was logged with."""
    from importlib import metadata

    out = []
    for name in ("recsys-spark", "mlflow", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "pyarrow"):
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


# ---- what: flattening summaries -------------------------------------------------------------
def _flatten(value: Any, prefix: str, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def summary_metrics_and_tags(summary: dict) -> "tuple[dict[str, float], dict[str, str]]":
    """The numbers of a stage summary as metrics, its other scalars and lists as ``summary.*``
    tags (``tables`` is recorded apart, as ``delta.wrote.*``)."""
    metrics, tags = {}, {}
    skip = ("tables", "tracking", "stage", "run_id")  # the run's own tags say the stage and run id
    for key, value in _flatten({k: v for k, v in summary.items() if k not in skip}, "", {}).items():
        if isinstance(value, bool) or isinstance(value, str) or isinstance(value, (list, tuple)):
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            tags[f"summary.{metric_key(key)}"] = text[:MAX_TAG_CHARS]
        elif isinstance(value, (int, float)) and math.isfinite(value):
            metrics[metric_key(key)] = float(value)
    return metrics, tags


def config_params(section: Any, prefix: str) -> "dict[str, str]":
    flat = _flatten(section, prefix, {}) if isinstance(section, dict) else {prefix: section}
    return {
        metric_key(k): (v if isinstance(v, str) else json.dumps(v, default=str))[:MAX_PARAM_CHARS]
        for k, v in flat.items()
    }


# ---- the run record --------------------------------------------------------------------------
class Tracker:
    """The MLflow record of one pipeline run id. After a tracking failure every call is a no-op
    (one warning says what failed and what to fix); nothing here ever fails a stage, except a
    model folder that is not one consistent model (``ValueError`` from ``check_model_folder``)."""

    def __init__(self, cfg: Config, run_id: str):
        self.cfg, self.run_id = cfg, run_id
        self.problem: Optional[str] = None
        self.target: Optional[Target] = None
        self._client = None
        self._experiment_id: Optional[str] = None
        self._parent: Optional[str] = None
        self._pipeline_depth = 0
        try:
            self.target = target(cfg)
        except TrackingUnavailable as exc:
            self._fail("tracking", exc)

    @property
    def active(self) -> bool:
        return self.target is not None and self.problem is None

    def _fail(self, what: str, exc: BaseException) -> None:
        where = redact(self.target.tracking_uri) if self.target else "(none)"
        self.problem = f"{what}: {type(exc).__name__}: {exc}"
        log.warning(
            "MLflow %s failed (store %s): %s: %s. This run goes on untracked; its tables and model folders are "
            "not affected. Fix tracking.uri / tracking.registry_uri, or set tracking.enabled=false.",
            what, where, type(exc).__name__, str(exc).splitlines()[0][:500] if str(exc) else "",
        )

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - tracking never fails the run (see the class docstring)
            self._fail(what, exc)

    @property
    def client(self):
        if self._client is None:
            self._client = connect(self.target)
            self._experiment_id = self._experiment(self._client)
        return self._client

    def _experiment(self, client) -> str:
        t = self.target
        experiment = client.get_experiment_by_name(t.experiment)
        if experiment is None:
            return client.create_experiment(t.experiment, artifact_location=t.artifact_location)
        if experiment.lifecycle_stage != "active":
            raise TrackingUnavailable(
                f"experiment {t.experiment!r} is deleted: restore it (mlflow experiments restore --experiment-id "
                f"{experiment.experiment_id}) or set tracking.experiment to another name"
            )
        return experiment.experiment_id

    def _parent_run(self) -> str:
        if self._parent is not None:
            return self._parent
        client = self.client
        found = [] if re.search(r"['`\\]", self.run_id) else client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`{TAG_RUN_ID}` = '{self.run_id}' AND tags.`{TAG_KIND}` = '{PIPELINE}'",
            max_results=1,
        )
        if found:
            self._parent = found[0].info.run_id
            client.update_run(self._parent, status="RUNNING")
            return self._parent
        run = client.create_run(
            self._experiment_id, run_name=self.run_id, tags={TAG_RUN_ID: self.run_id, TAG_KIND: PIPELINE}
        )
        self._parent = run.info.run_id
        params = config_params(self.cfg.to_dict(), "")
        client.log_batch(self._parent, params=[_param(k, v) for k, v in params.items()])
        client.log_dict(self._parent, self.cfg.to_dict(), "config.json")
        return self._parent

    def _close_parent(self, status: str) -> None:
        if self._parent is not None and self.active:
            with self._guard("closing the pipeline run"):
                self.client.set_terminated(self._parent, status=status)

    # ---- the pipeline ----------------------------------------------------------------------
    @contextlib.contextmanager
    def pipeline(self) -> Iterator["Tracker"]:
        """Around ``run_all``: the parent run is RUNNING inside, FINISHED or FAILED after."""
        if self.active:
            with self._guard("opening the pipeline run"):
                self._parent_run()
        self._pipeline_depth += 1
        try:
            yield self
        except BaseException:
            self._pipeline_depth -= 1
            self._close_parent("FAILED")
            raise
        self._pipeline_depth -= 1
        self._close_parent("FINISHED")

    def record_pipeline(self, summary: dict) -> None:
        """The run's timings and evaluate's metrics on the parent run (to compare runs at a glance)."""
        if not self.active or self._parent is None:
            return
        with self._guard("logging the pipeline summary"):
            metrics = {f"seconds.{name}": s for name, s in summary.get("timings", {}).items()}
            metrics["seconds"] = summary.get("seconds")
            flat, _ = summary_metrics_and_tags({"metrics": summary.get("metrics") or {}})
            metrics.update(flat)
            self.client.log_batch(self._parent, metrics=[_metric(k, v) for k, v in metrics.items() if v is not None])

    # ---- one stage -------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str, ctx) -> Iterator["StageRun"]:
        """Around one stage: a nested run under the run id's parent, FINISHED or FAILED after."""
        alone = self._pipeline_depth == 0
        stage_run = StageRun(self, name, None)
        if self.active:
            with self._guard(f"opening the run of stage {name}"):
                parent = self._parent_run()
                run = self.client.create_run(
                    self._experiment_id,
                    run_name=name,
                    tags={PARENT_TAG: parent, TAG_RUN_ID: self.run_id, TAG_KIND: STAGE, TAG_STAGE: name},
                )
                stage_run = StageRun(self, name, run.info.run_id)
                section = self.cfg.to_dict().get(name)
                if section is not None:
                    params = config_params(section, name)
                    self.client.log_batch(stage_run.run_id, params=[_param(k, v) for k, v in params.items()])
        lake = getattr(ctx, "lake", None)
        if stage_run.run_id and lake is not None:
            lake.read_versions = stage_run.reads
        try:
            yield stage_run
        except BaseException as exc:
            stage_run.close("FAILED", exc)
            if alone:
                self._close_parent("FAILED")
            raise
        finally:
            if lake is not None:
                lake.read_versions = None
        stage_run.close("FINISHED")
        if alone:
            self._close_parent("FINISHED")


@dataclass
class StageRun:
    """The nested run of one stage (``run_id`` None when untracked)."""

    tracker: Tracker
    name: str
    run_id: Optional[str]

    def __post_init__(self):
        self.reads: dict = {}

    def close(self, status: str, error: Optional[BaseException] = None) -> None:
        tracker = self.tracker
        if self.run_id is None or not tracker.active:
            return
        with tracker._guard(f"closing the run of stage {self.name}"):
            if error is not None:
                tracker.client.set_tag(self.run_id, "recsys.error", f"{type(error).__name__}: {error}"[:MAX_TAG_CHARS])
            tracker.client.set_terminated(self.run_id, status=status)

    def record(self, result: dict, cfg: Config) -> Optional[dict]:
        """Log the stage's summary (and, for ``train``, its model); returns what to add to the
        summary as ``tracking`` (None when untracked)."""
        tracker = self.tracker
        if self.run_id is None or not tracker.active:
            return None
        out: dict = {"mlflow_run_id": self.run_id, "experiment": tracker.target.experiment}
        with tracker._guard(f"logging stage {self.name}"):
            client = tracker.client
            metrics, tags = summary_metrics_and_tags(result)
            tags.update({f"delta.wrote.{t}": str(v) for t, v in (result.get("tables") or {}).items()})
            tags.update({f"delta.read.{t}": str(v) for t, v in self.reads.items()})
            client.log_batch(
                self.run_id,
                metrics=[_metric(k, v) for k, v in metrics.items()],
                tags=[_tag(k, v) for k, v in tags.items()],
            )
            client.log_dict(self.run_id, result, "summary.json")
            report = result.get("report") or {}
            if isinstance(report, dict) and report.get("markdown"):
                client.log_artifacts(self.run_id, os.path.dirname(report["markdown"]), "report")
        if self.name == "train" and result.get("model_version") and tracker.active:
            out.update(self._record_model(result, cfg))
        return out if tracker.active else None

    def _record_model(self, result: dict, cfg: Config) -> dict:
        tracker = self.tracker
        model_dir = os.path.join(cfg.models_dir, result["model_version"])
        check_model_folder(model_dir)  # a bad folder is an error, not a tracking failure
        with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as handle:
            ndcg = json.load(handle).get(TRAIN_NDCG)
        out: dict = {}
        with tracker._guard("logging the training curves"):
            self._log_curves(model_dir)
        if not tracker.active:
            return out
        with tracker._guard("logging the model"):
            info = log_ranker(tracker.client, tracker._experiment_id, tracker.target, self.run_id, model_dir, cfg.score.k)
            out["logged_model"] = info.model_uri
        if not tracker.active or not tracker.target.registry:
            return out
        with tracker._guard("registering the model"):
            out.update(register(tracker.client, tracker.target, info.model_uri, self.run_id, result["model_version"], model_dir, ndcg))
        return out

    def _log_curves(self, model_dir: str) -> None:
        client = self.tracker.client
        path = os.path.join(model_dir, "history.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                history = json.load(handle)
            curves = [
                _metric(f"history.{metric_key(name)}", value, step)
                for name, values in history.items() if isinstance(values, list)
                for step, value in enumerate(values, start=1)
                if isinstance(value, (int, float)) and math.isfinite(value)
            ]
            client.log_batch(self.run_id, metrics=curves)
        for name in ("curves.png", "history.json", "metrics.json", "config.json"):
            if os.path.isfile(os.path.join(model_dir, name)):
                client.log_artifact(self.run_id, os.path.join(model_dir, name), "training")


def _metric(key: str, value: float, step: int = 0):
    from mlflow.entities import Metric
    import time

    return Metric(key, float(value), int(time.time() * 1000), step)


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)


def tracker_for(ctx) -> Tracker:
    """The context's tracker (made once per context)."""
    if ctx.tracker is None or ctx.tracker.run_id != ctx.run_id:
        ctx.tracker = Tracker(ctx.cfg, ctx.run_id)
    return ctx.tracker


# ---- the model: log, register, choose the champion -------------------------------------------
def _ranker_code(scratch: str) -> str:
    """The path of ``ranker_model.py``; copied out when the package is imported from a zip
    (spark-submit ``--py-files``), where the module is no file MLflow could read."""
    if RANKER_CODE.is_file():
        return str(RANKER_CODE)
    import pkgutil

    path = os.path.join(scratch, RANKER_CODE.name)
    with open(path, "wb") as handle:
        handle.write(pkgutil.get_data(__package__, RANKER_CODE.name))
    return path


def log_ranker(client, experiment_id: str, t: Target, run_id: str, model_dir: str, k: int):
    """Log ``model_dir`` as the ranker pyfunc (model from code, with signature) under ``run_id``,
    in the run's experiment (a logged model made here first: MLflow's own default would be the
    process's active experiment). A logging that fails marks the logged model FAILED."""
    logged = client.create_logged_model(experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id)
    try:
        with _mlflow_uris(t) as mlflow, warnings.catch_warnings(), tempfile.TemporaryDirectory() as scratch:
            from mlflow.models import Model

            # MLflow suggests type hints and an input example; the explicit signature is the contract.
            warnings.simplefilter("ignore", UserWarning)
            return Model.log(
                artifact_path=None,
                name=LOGGED_MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                python_model=_ranker_code(scratch),
                artifacts={MODEL_ARTIFACT: model_dir},
                signature=signature(k),
                pip_requirements=_requirements(),
                model_config={SERVED_K: k},
            )
    except Exception:
        from mlflow.entities import LoggedModelStatus

        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise


def register(client, t: Target, model_uri: str, run_id: str, version_name: str, model_dir: str,
             ndcg: Optional[float]) -> dict:
    """A new version of ``t.model_name`` from ``model_uri``, then the champion rule."""
    tags = {TAG_MODEL_VERSION: version_name, TAG_MODEL_DIR: model_dir}
    if ndcg is not None:
        tags[NDCG_KEY] = str(ndcg)
    with _mlflow_uris(t) as mlflow:
        version = mlflow.register_model(model_uri, t.model_name, tags=tags).version
    moved, reason, champion = choose_champion(client, t.model_name, version, ndcg, t.force_champion)
    return {
        "registered_model": t.model_name,
        "registered_version": str(version),
        "champion": moved,
        "champion_version": champion,
        "champion_reason": reason,
    }


def choose_champion(client, name: str, version, ndcg: Optional[float], force: bool = False) -> "tuple[bool, str, Optional[str]]":
    """Move ``champion`` to ``version`` when its val NDCG@10 is not worse than the current
    champion's (or ``force``, or there is no champion). Returns (moved, reason, champion version);
    the reason is also tagged on the version (``recsys.champion_decision``)."""
    version = str(version)
    current = champion_version(client, name)
    best = current.tags.get(NDCG_KEY) if current is not None else None
    if force:
        moved, reason = True, "forced by tracking.force_champion"
    elif current is None:
        moved, reason = True, "no champion yet"
    elif ndcg is None:
        moved, reason = False, f"no validation NDCG@10 to compare with champion version {current.version}"
    elif best is None:
        moved, reason = True, f"champion version {current.version} has no recorded validation NDCG@10"
    elif float(ndcg) >= float(best):
        moved, reason = True, f"val NDCG@10 {ndcg} is not worse than champion version {current.version}'s {best}"
    else:
        moved, reason = False, f"val NDCG@10 {ndcg} is worse than champion version {current.version}'s {best}"
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, TAG_DECISION, reason)
    log.info("registry: %s version %s %s the %r alias: %s", name, version, "takes" if moved else "does not take", CHAMPION, reason)
    return moved, reason, version if moved else (str(current.version) if current is not None else None)


def champion_version(client, name: str):
    """The live model version the ``champion`` alias names, or None (no alias, or its version
    is gone). A missing registered model is MLflow's RESOURCE_DOES_NOT_EXIST error."""
    number = (client.get_registered_model(name).aliases or {}).get(CHAMPION)
    if number is None:
        return None
    try:
        return client.get_model_version(name, str(number))
    except Exception as exc:  # noqa: BLE001 - only "no such version" is expected
        if _not_found(exc):
            return None
        raise


# ---- serving: which folder retrieve and score load -------------------------------------------
def serving_model_dir(cfg: Config, stage: str) -> Optional[str]:
    """The model folder ``stage`` serves (see ``_serving_folder``), loaded once here to prove it is
    whole: a folder whose files are damaged (a truncated ``model.keras``, a vocabulary that does not
    match the network, a config that is not JSON) is a ``ValueError`` naming the folder and the file,
    raised before the stage writes anything, so its tables keep what the last good model wrote."""
    folder = _serving_folder(cfg, stage)
    if folder is None:
        return None
    try:
        check_model_folder(folder)
        cached_ranker(folder)  # once per process; the stage's own load is then the cached one
    except Exception as exc:  # noqa: BLE001 - whatever the damage, one error naming the artifact
        detail = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{stage}: the model it would serve ({folder}) cannot be used: {detail}. Nothing was written: "
            f"the tables keep what the last good model wrote. Retrain (train), or point "
            f"{os.path.join(cfg.models_dir, 'latest')} (or the registry's {CHAMPION!r} alias) at an earlier version"
        ) from exc
    return folder


def _serving_folder(cfg: Config, stage: str) -> Optional[str]:
    """The model folder ``stage`` serves: ``models:/<name>@champion`` (downloaded once per version
    under ``<models_dir>/.registry``) when the registry is configured, ``<models_dir>/latest``
    otherwise (None: no model). A registry that cannot be reached, or holds no such model, is a
    warning and the folder is served; an alias without a live version, or a version that is not
    a ranker, is a ``ValueError`` naming the fix."""
    folder = latest_model_dir(cfg.models_dir)
    fallback = f"serving the model folder {folder}" if folder else "serving no model"
    try:
        t = target(cfg)
    except TrackingUnavailable as exc:
        log.warning("%s: %s; %s", stage, exc, fallback)
        return folder
    if t is None or not t.registry:
        return folder
    name, where = t.model_name, f"registry {redact(t.registry_uri)}"
    missing = (
        f"{stage}: {where} has no model {name!r} (train registers one when tracking is on); {fallback}. "
        "To serve the folder without this warning set tracking.registry=false"
    )
    path = _sqlite_path(t.registry_uri)
    if path is not None and not os.path.exists(path):
        log.warning("%s", missing)
        return folder
    try:
        client = connect(t)
        with _failing_fast(t.timeout_s):
            client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001 - an unusable registry never stops serving
        if _not_found(exc):
            log.warning("%s", missing)
        else:
            log.warning("%s: %s cannot be reached (%s: %s); %s. Fix tracking.registry_uri or set tracking.registry=false",
                        stage, where, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "", fallback)
        return folder
    version = champion_version(client, name)
    if version is None:
        live = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise ValueError(
            f"{stage}: registered model {name!r} in {where} has no live version under the alias {CHAMPION!r} "
            f"(its version was deleted, or the alias removed); live versions: {live or 'none'}. Point the alias "
            f"at one: MlflowClient(registry_uri=...).set_registered_model_alias({name!r}, {CHAMPION!r}, <version>), "
            "or retrain with --set tracking.force_champion=true, or serve the model folder with --set tracking.registry=false"
        )
    return _download(t, version, cfg.models_dir, stage)


def _download(t: Target, version, models_dir: str, stage: str) -> str:
    """The ranker folder of a registered version, downloaded once into ``<models_dir>/.registry``."""
    name = t.model_name
    where = os.path.join(models_dir, REGISTRY_CACHE, metric_key(name).replace("/", "_"), str(version.version))
    if not os.path.isdir(where):
        staged = f"{where}.{uuid.uuid4().hex[:8]}.tmp"
        os.makedirs(staged)
        try:
            with _mlflow_uris(t) as mlflow:
                mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=staged)
            if os.path.isdir(where):  # another process downloaded it meanwhile
                shutil.rmtree(staged, ignore_errors=True)
            else:
                os.replace(staged, where)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    from mlflow.models import Model

    info = Model.load(where) if os.path.isfile(os.path.join(where, "MLmodel")) else None
    artifacts = (info.flavors.get("python_function", {}).get("artifacts") or {}) if info is not None else {}
    folder = os.path.join(where, artifacts.get(MODEL_ARTIFACT, {}).get("path", MODEL_ARTIFACT))
    if info is None or not _same_interface(info.signature, signature(10)) or not os.path.isdir(folder):
        raise ValueError(
            f"{stage}: {name!r} version {version.version} (alias {CHAMPION!r}) is not a recsys ranker (its signature "
            f"must be {SERVED_HISTORY}, {SERVED_CANDIDATES} -> {SERVED_ITEMS}, {SERVED_SCORES}, with the ranker folder "
            f"as artifact {MODEL_ARTIFACT!r}): point the alias at a version that train registered"
        )
    check_model_folder(folder)
    log.info("%s: serving %s version %s (alias %r) from %s", stage, name, version.version, CHAMPION, folder)
    return folder
