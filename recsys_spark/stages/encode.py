"""Stage encode: silver/items -> gold/item_embeddings with a sentence-transformers model.

Each item's text is rendered from ``encode.text_template`` (empty fields and their separators are
left out), cut to ``encode.max_text_chars`` and encoded inside ``mapInPandas`` on the executors.
The model loads once per Python worker process (see ``text_model.load_encoder``) and every worker
sets its torch threads so concurrent tasks share the cores instead of oversubscribing them.

Incremental: an item is encoded only when it is new, its ``content_hash`` changed, or the encoder
(``model``, ``model_version``) changed; everything else is left as it is. Items that left the
catalog, or whose text became empty, are flagged ``active = false``; an item that comes back with
the same content is re-activated without encoding. All changes go in one Delta MERGE; a run with
nothing to change writes no commit.

``model_version`` = the first 16 hex digits of the weights' SHA-256, a dot, and 8 of a hash of the
text template and character limit: changing either the weights or what text is fed to them
re-encodes the catalog.
"""
from __future__ import annotations

import hashlib
import logging
import re
import string
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import pandas as pd
from pyspark.errors import PythonException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.storagelevel import StorageLevel

from recsys_spark.models import text as text_model
from recsys_spark.core import progress
from recsys_spark.core.config import ConfigError, EncodeConfig
from recsys_spark.core.context import StageContext
from recsys_spark.core.lakehouse import WriteResult, table_versions
from recsys_spark.core.session import conf_value, default_parallelism
from recsys_spark.core.schemas import (
    ACTIVE,
    CONTENT_HASH,
    DIM,
    ENCODED_AT,
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    MODEL,
    MODEL_VERSION,
    SILVER_ITEMS_TABLE,
    VECTOR,
    require_columns,
)

log = logging.getLogger(__name__)

TEXT = "text"
TRUNCATED = "truncated"
ACTION = "action"
# What the plan decides per item (see plan_encoding).
ENCODE, KEEP, REACTIVATE, NO_TEXT, GONE = "encode", "keep", "reactivate", "no_text", "gone"
# Per-row facts the encoder reports about itself; summarised, never written to the table.
WORKER = "_worker"
MODEL_LOADED = "_model_loaded"
DEVICE = "_device"
PRECISION = "_precision"

ENCODED = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(CONTENT_HASH, T.StringType()),
        T.StructField(VECTOR, T.ArrayType(T.FloatType())),
        T.StructField(TRUNCATED, T.BooleanType()),
        T.StructField(WORKER, T.StringType()),
        T.StructField(MODEL_LOADED, T.BooleanType()),
        T.StructField(DEVICE, T.StringType()),
        T.StructField(PRECISION, T.StringType()),
    ]
)


@dataclass(frozen=True)
class EncoderSpec:
    """What every worker needs to encode: the model folder, device, batch size and thread plan."""

    model_path: str
    device: str
    precision: str  # encode.precision: auto, fp32 or bf16 (auto is decided in each worker)
    batch_size: int
    torch_threads: int  # 0: derive from the worker's cores and tasks_per_executor
    tasks_per_executor: Optional[int]  # None: unknown (cluster default), use task_cpus threads
    task_cpus: int

    def threads(self) -> int:
        if self.torch_threads > 0:
            return self.torch_threads
        if self.tasks_per_executor:
            return max(1, text_model.process_cores() // self.tasks_per_executor)
        return self.task_cpus


# ---- text ---------------------------------------------------------------------------
def template_fields(template: str) -> list[str]:
    """The field names of ``template`` (``{title}. {genres}``), or a ConfigError naming the key."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"config key 'encode.text_template': {exc}") from None
    fields = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ConfigError(
                f"config key 'encode.text_template': placeholder {{{name}}} must be a plain column name "
                "such as {title}"
            )
        fields.append(name)
    if not fields:
        raise ConfigError("config key 'encode.text_template': names no field, e.g. '{title}. {description}'")
    return fields


def _clean(text: Column) -> Column:
    # Invalid UTF-8 bytes become U+FFFD (Arrow and the tokenizer need valid text); runs of
    # whitespace and newlines collapse to one space.
    return F.trim(F.regexp_replace(F.make_valid_utf8(text), r"\s+", " "))


def _field_text(items: DataFrame, name: str) -> Column:
    """One template field as trimmed text, arrays joined with ', '; null when empty."""
    dtype = items.schema[name].dataType
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StringType):
        cleaned = F.filter(F.transform(F.col(name), _clean), lambda value: value != "")
        text = F.array_join(cleaned, ", ")
    elif isinstance(dtype, T.StringType):
        text = _clean(F.col(name))
    else:
        raise ConfigError(
            f"config key 'encode.text_template': column {name!r} of silver/items is {dtype.simpleString()}, "
            "not text or a list of text"
        )
    return F.nullif(text, F.lit(""))


def item_texts(items: DataFrame, template: str, max_chars: int) -> DataFrame:
    """silver/items -> item_id, content_hash, text, truncated.

    Reads item_id, content_hash and the template's fields. A separator is written only between two
    non-empty fields; ``text`` is null when every field is empty and is cut to ``max_chars``
    characters (``truncated`` says so)."""
    fields = template_fields(template)
    require_columns(items, [ITEM_ID, CONTENT_HASH, *fields], "encode: silver/items")
    parts = list(string.Formatter().parse(template))
    values = {name: _field_text(items, name) for name in fields}
    pieces: list[Column] = []
    seen: list[Column] = []
    for literal, name, _, _ in parts:
        if name is None:  # text after the last field
            pieces.append(F.lit(literal))
            continue
        value = values[name]
        if not seen:  # text before the first field belongs to it
            pieces.append(F.when(value.isNotNull(), F.concat(F.lit(literal), value)).otherwise(F.lit("")))
        else:
            any_before = F.coalesce(*seen).isNotNull()
            separated = F.when(any_before, F.concat(F.lit(literal), value)).otherwise(value)
            pieces.append(F.when(value.isNotNull(), separated).otherwise(F.lit("")))
        seen.append(value)
    full = F.when(F.coalesce(*seen).isNotNull(), F.trim(F.concat(*pieces)))
    return items.select(
        F.col(ITEM_ID),
        F.col(CONTENT_HASH),
        F.substring(full, 1, max_chars).alias(TEXT),
        F.coalesce(F.length(full) > max_chars, F.lit(False)).alias(TRUNCATED),
    )


def encoder_version(model: text_model.ResolvedModel, cfg: EncodeConfig) -> str:
    """Weights fingerprint + text fingerprint: a change in either means re-encoding."""
    text_recipe = f"{cfg.text_template}\x00{cfg.max_text_chars}".encode("utf-8")
    return f"{model.weights_sha256[:16]}.{hashlib.sha256(text_recipe).hexdigest()[:8]}"


# ---- planning -----------------------------------------------------------------------
def plan_encoding(
    texts: DataFrame, embeddings: Optional[DataFrame], model: str, model_version: str
) -> DataFrame:
    """Decide per item what this run does.

    texts: item_id, content_hash, text, truncated (``item_texts``); embeddings: gold/item_embeddings
    or None. Returns item_id, content_hash, text, truncated, action, was_active where action is
    encode (new, changed content or encoder), keep (current), reactivate (current but flagged
    inactive), no_text (in the catalog, nothing to encode) or gone (left the catalog)."""
    catalog = texts.withColumn("_in_catalog", F.lit(True))
    if embeddings is None:
        existing = catalog.sparkSession.createDataFrame(
            [], "item_id string, _e_hash string, _e_model string, _e_version string, was_active boolean"
        )
    else:
        existing = embeddings.select(
            F.col(ITEM_ID),
            F.col(CONTENT_HASH).alias("_e_hash"),
            F.col(MODEL).alias("_e_model"),
            F.col(MODEL_VERSION).alias("_e_version"),
            F.col(ACTIVE).alias("was_active"),
        )
    joined = catalog.join(existing, ITEM_ID, "full_outer")
    current = (
        F.col("_e_hash").eqNullSafe(F.col(CONTENT_HASH))
        & (F.col("_e_model") == F.lit(model))
        & (F.col("_e_version") == F.lit(model_version))
    )
    was_active = F.coalesce(F.col("was_active"), F.lit(False))
    action = (
        F.when(F.col("_in_catalog").isNull(), F.lit(GONE))
        .when(F.col(TEXT).isNull(), F.lit(NO_TEXT))
        .when(~F.coalesce(current, F.lit(False)), F.lit(ENCODE))
        .when(was_active, F.lit(KEEP))
        .otherwise(F.lit(REACTIVATE))
    )
    return joined.select(
        ITEM_ID,
        CONTENT_HASH,
        TEXT,
        F.coalesce(F.col(TRUNCATED), F.lit(False)).alias(TRUNCATED),
        action.alias(ACTION),
        was_active.alias("was_active"),
    )


# ---- encoding on the executors ------------------------------------------------------
def _encode_batches(batches: Iterator[pd.DataFrame], spec: EncoderSpec) -> Iterator[pd.DataFrame]:
    """mapInPandas body: item_id, content_hash, text, truncated -> ENCODED rows."""
    import os
    import socket

    import numpy as np

    device = text_model.resolve_device(spec.device)
    precision = text_model.resolve_precision(spec.precision, device)
    text_model.set_torch_threads(spec.threads())
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for batch in batches:
        if batch.empty:
            continue
        model, loaded_now = text_model.load_encoder(spec.model_path, device)
        texts = batch[TEXT].tolist()
        vectors = text_model.encode_texts(model, texts, spec.batch_size, precision)
        cut_by_tokenizer = text_model.token_truncated(model, texts)
        yield pd.DataFrame(
            {
                ITEM_ID: batch[ITEM_ID],
                CONTENT_HASH: batch[CONTENT_HASH],
                VECTOR: list(vectors),
                TRUNCATED: batch[TRUNCATED].to_numpy(dtype=bool) | np.asarray(cut_by_tokenizer, dtype=bool),
                WORKER: worker,
                MODEL_LOADED: [loaded_now] + [False] * (len(batch) - 1),
                DEVICE: device,
                PRECISION: precision,
            }
        )


def encode_texts(to_encode: DataFrame, spec: EncoderSpec) -> DataFrame:
    """item_id, content_hash, text, truncated -> item_id, content_hash, vector (L2-normalised
    array<float>), truncated (cut by characters or by the tokenizer), _worker, _model_loaded, _device,
    _precision."""
    require_columns(to_encode, [ITEM_ID, CONTENT_HASH, TEXT, TRUNCATED], "encode_texts")
    return to_encode.select(ITEM_ID, CONTENT_HASH, TEXT, TRUNCATED).mapInPandas(
        lambda batches: _encode_batches(batches, spec), ENCODED
    )


def tasks_per_executor(spark: SparkSession) -> Optional[int]:
    """How many tasks one executor runs at once: local[N] -> N, else spark.executor.cores /
    spark.task.cpus; None when the cluster leaves executor cores to its default."""
    task_cpus = int(conf_value(spark, "spark.task.cpus", "1"))
    master = conf_value(spark, "spark.master", "") or ""
    local = re.match(r"local(?:\[(\*|\d+)|$)", master)  # not local-cluster[...]: real executors
    if local:
        # local, local[N], local[*], local[N, maxFailures]: the driver's JVM runs N tasks at once.
        slots = local.group(1) or "1"
        cores = text_model.process_cores() if slots == "*" else int(slots)
        return max(1, cores // task_cpus)
    cores = conf_value(spark, "spark.executor.cores")
    return max(1, int(cores) // task_cpus) if cores else None


def encoder_spec(spark: SparkSession, cfg: EncodeConfig, model_path: str) -> EncoderSpec:
    return EncoderSpec(
        model_path=model_path,
        device=cfg.device,
        precision=cfg.precision,
        batch_size=cfg.batch_size,
        torch_threads=cfg.torch_threads,
        tasks_per_executor=tasks_per_executor(spark),
        task_cpus=int(conf_value(spark, "spark.task.cpus", "1")),
    )


def embedding_rows(encoded: DataFrame, model: str, model_version: str) -> DataFrame:
    """ENCODED rows -> gold/item_embeddings rows (active, stamped with the encoder and time)."""
    return encoded.select(
        F.col(ITEM_ID),
        F.col(CONTENT_HASH),
        F.lit(model).alias(MODEL),
        F.lit(model_version).alias(MODEL_VERSION),
        F.size(VECTOR).cast("int").alias(DIM),
        F.col(VECTOR),
        F.current_timestamp().alias(ENCODED_AT),
        F.lit(True).alias(ACTIVE),
    )


def _check_unique_items(items: DataFrame) -> None:
    duplicated = items.groupBy(ITEM_ID).count().filter(F.col("count") > 1).limit(3).collect()
    if duplicated:
        examples = ", ".join(repr(row[ITEM_ID]) for row in duplicated)
        raise ValueError(f"encode: silver/items holds more than one row for item_id {examples}; expected one per item")


# ---- the stage ----------------------------------------------------------------------
def run(ctx: StageContext) -> dict:
    """silver/items -> gold/item_embeddings (MERGE on item_id). Summary: items_total, items_encoded,
    items_skipped, items_no_text, items_truncated, items_deactivated, items_reactivated,
    texts_per_s, model, model_version, dim, devices, precisions, model_loads, python_workers, tables."""
    cfg = ctx.cfg.encode
    template_fields(cfg.text_template)
    model = text_model.resolve_model(cfg.model)  # fails here, before any Spark work
    version = encoder_version(model, cfg)
    lake = ctx.lake
    items = lake.read(SILVER_ITEMS_TABLE)
    texts = item_texts(items, cfg.text_template, cfg.max_text_chars)
    _check_unique_items(items)
    table_exists = lake.exists(ITEM_EMBEDDINGS_TABLE)
    existing = lake.read(ITEM_EMBEDDINGS_TABLE) if table_exists else None
    plan = plan_encoding(texts, existing, cfg.model, version)

    progress.describe(ctx.spark, "planning: which items are new or changed")
    counts = {
        (row[ACTION], row["was_active"]): row["count"]
        for row in plan.groupBy(ACTION, "was_active").count().collect()
    }
    by_action = {action: counts.get((action, True), 0) + counts.get((action, False), 0) for action in
                 (ENCODE, KEEP, REACTIVATE, NO_TEXT, GONE)}
    deactivated = counts.get((NO_TEXT, True), 0) + counts.get((GONE, True), 0)
    ctx.progress(
        f"encode: {by_action[ENCODE]} to encode, {by_action[KEEP] + by_action[REACTIVATE]} current, "
        f"{by_action[NO_TEXT]} without text, {deactivated} to deactivate with {model.name}"
    )
    if by_action[NO_TEXT]:
        examples = [row[ITEM_ID] for row in plan.filter(F.col(ACTION) == NO_TEXT).select(ITEM_ID).limit(5).collect()]
        log.warning(
            "encode: %d item(s) have no text in any template field and get no vector (e.g. %s)",
            by_action[NO_TEXT],
            examples,
        )

    partitions = cfg.partitions or default_parallelism(ctx.spark)
    spec = encoder_spec(ctx.spark, cfg, model.path)
    to_encode = plan.filter(F.col(ACTION) == ENCODE).repartition(partitions)
    encoded = encode_texts(to_encode, spec).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        started = time.perf_counter()
        progress.describe(ctx.spark, f"encoding {by_action[ENCODE]} item texts with {model.name}")
        try:
            stats = encoded.agg(
                F.count(F.lit(1)).alias("n"),
                F.count_if(F.col(TRUNCATED)).alias("truncated"),
                F.count_if(F.col(MODEL_LOADED)).alias("loads"),
                F.count_distinct(WORKER).alias("workers"),
                F.collect_set(DEVICE).alias("devices"),
                F.collect_set(PRECISION).alias("precisions"),
                F.max(F.size(VECTOR)).alias("dim"),
                F.count_if(F.exists(VECTOR, F.isnan)).alias("nan_vectors"),
            ).first()
        except PythonException as exc:
            # The worker's own error (no GPU, unreadable model...) without the JVM stack around it.
            reason = str(exc).strip().splitlines()[-1]
            raise RuntimeError(f"encode: encoding with {model.name} failed on an executor: {reason}") from None
        seconds = time.perf_counter() - started
        if stats["nan_vectors"]:
            raise ValueError(f"encode: model {model.name} produced {stats['nan_vectors']} vector(s) with NaN")

        flips = plan.filter(
            (F.col(ACTION) == REACTIVATE) | (F.col(ACTION).isin(NO_TEXT, GONE) & F.col("was_active"))
        ).select(ITEM_ID, (F.col(ACTION) == REACTIVATE).alias("_now_active"))
        changes = embedding_rows(encoded, cfg.model, version)
        if existing is not None:
            flipped = flips.join(existing.drop(ACTIVE), ITEM_ID).select(
                *[F.col(c) for c in ITEM_EMBEDDINGS.fieldNames() if c != ACTIVE], F.col("_now_active").alias(ACTIVE)
            )
            changes = changes.unionByName(flipped)
        progress.describe(ctx.spark, "writing gold/item_embeddings")
        if not table_exists:
            written = lake.replace(changes, ITEM_EMBEDDINGS_TABLE)
        elif stats["n"] or deactivated or by_action[REACTIVATE]:
            written = lake.merge(changes, ITEM_EMBEDDINGS_TABLE, keys=[ITEM_ID])
        else:  # nothing to change: no commit, the table stays at its version
            written = WriteResult(ITEM_EMBEDDINGS_TABLE, lake.version(ITEM_EMBEDDINGS_TABLE))
    finally:
        encoded.unpersist()

    dim = stats["dim"]
    if dim is None and table_exists:
        first = lake.read(ITEM_EMBEDDINGS_TABLE).filter(F.col(ACTIVE)).select(DIM).limit(1).collect()
        dim = first[0][DIM] if first else None
    items_total = sum(by_action[a] for a in (ENCODE, KEEP, REACTIVATE, NO_TEXT))
    summary = {
        "items_total": items_total,
        "items_encoded": stats["n"],
        "items_skipped": by_action[KEEP] + by_action[REACTIVATE],
        "items_no_text": by_action[NO_TEXT],
        "items_truncated": stats["truncated"],
        "items_deactivated": deactivated,
        "items_reactivated": by_action[REACTIVATE],
        "texts_per_s": round(stats["n"] / seconds, 1) if stats["n"] else 0.0,
        "encode_seconds": round(seconds, 2),
        "model": cfg.model,
        "model_version": version,
        "dim": dim,
        "devices": sorted(stats["devices"] or []),
        "precisions": sorted(stats["precisions"] or []),
        "model_loads": stats["loads"],
        "python_workers": stats["workers"],
        "partitions": partitions,
        "tables": table_versions(written),
    }
    log.info("encode: %s", summary)
    return summary
