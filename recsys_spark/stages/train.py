"""Stage ``train``: gold/user_sequences (+ gold/item_embeddings) -> ``<models_dir>/<version>/``.

Spark builds everything the trainer reads: the item vocabulary (token ids, counts, negative
sampling log-probabilities, text vectors) and the examples (sliding prefixes of each user's
``train_items`` -> the next item; validation: the whole train sequence -> ``val_items[0]``),
written as Parquet shards, one per worker. A backend (``recsys_spark.trainers``) trains on them;
the chief exports the model. The folder is assembled under a staging name and renamed into
place (after ``check_model_folder``), and only then does ``<models_dir>/latest`` move, so a failed
run leaves the previous model in service. Logging the model to MLflow and registering it is the
pipeline's (``recsys_spark.tracking``), after the folder is published.

Model folder: ``model.keras``, ``vocabulary/`` (Parquet: item_id, index, count, log_q,
text_vector), ``config.json`` (model spec, train config, inputs), ``history.json`` (training
curves per epoch), ``metrics.json`` (validation loss, HR@10, NDCG@10), ``curves.png`` when
matplotlib is installed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from typing import Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.models.sequence import (
    CONFIG_FILE,
    FIRST_ITEM,
    LATEST_FILE,
    OOV,
    VOCAB_COUNT,
    VOCAB_INDEX,
    VOCAB_LOG_Q,
    VOCAB_TEXT,
    VOCABULARY_DIR,
    ModelSpec,
    check_model_folder,
)
from recsys_spark.core.context import StageContext, new_run_id
from recsys_spark.core.session import require_classic
from recsys_spark.core.schemas import (
    EXAMPLE_HISTORY,
    EXAMPLE_TARGET,
    ACTIVE,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    TEST_ITEMS,
    TRAIN_ITEMS,
    USER_ID,
    USER_SEQUENCES_TABLE,
    VAL_ITEMS,
    VECTOR,
    require_columns,
)
from recsys_spark.trainers import TrainJob, get_trainer, val_steps_for

log = logging.getLogger(__name__)

TOKENS = "tokens"
SHARD = "shard"
POSITION = "position"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"


# ---- pure DataFrame -> DataFrame functions ---------------------------------------------
def item_vocabulary(
    sequences: DataFrame, min_count: int = 1, popularity_exponent: float = 1.0, uniform: bool = False
) -> DataFrame:
    """Items of the training sequences seen at least ``min_count`` times.

    Reads ``train_items``; writes ``item_id``, ``index`` (token id, 2.. by falling count, ties by
    id), ``count`` and ``log_q`` (log-probability of the item as a sampled negative:
    count**exponent normalised, or uniform)."""
    counts = (
        sequences.select(F.explode(TRAIN_ITEMS).alias(ITEM_ID))
        .groupBy(ITEM_ID)
        .agg(F.count(F.lit(1)).alias(VOCAB_COUNT))
        .where(F.col(VOCAB_COUNT) >= min_count)
    )
    ordered = counts.orderBy(F.col(VOCAB_COUNT).desc(), F.col(ITEM_ID))
    # zipWithIndex numbers a sorted RDD without moving it to one partition.
    indexed = ordered.rdd.zipWithIndex().map(lambda pair: (pair[0][0], pair[0][1], pair[1] + FIRST_ITEM))
    schema = T.StructType(
        [
            T.StructField(ITEM_ID, T.StringType(), False),
            T.StructField(VOCAB_COUNT, T.LongType(), False),
            T.StructField(VOCAB_INDEX, T.LongType(), False),
        ]
    )
    vocabulary = sequences.sparkSession.createDataFrame(indexed, schema)
    weight = F.lit(1.0) if uniform else F.pow(F.col(VOCAB_COUNT).cast("double"), F.lit(popularity_exponent))
    total = vocabulary.select(F.sum(weight)).first()[0] or 1.0
    return vocabulary.withColumn(VOCAB_LOG_Q, F.log(weight / F.lit(total)))


def with_text_vectors(vocabulary: DataFrame, item_embeddings: DataFrame) -> DataFrame:
    """Adds ``text_vector`` (array<float>, null for items without an active embedding).
    Reads item_embeddings ``item_id``, ``vector``, ``active``."""
    require_columns(item_embeddings, [ITEM_ID, VECTOR, ACTIVE], "train: gold/item_embeddings")
    vectors = item_embeddings.where(F.col(ACTIVE)).select(ITEM_ID, F.col(VECTOR).alias(VOCAB_TEXT))
    return vocabulary.join(vectors, ITEM_ID, "left")


def token_sequences(sequences: DataFrame, vocabulary: DataFrame) -> DataFrame:
    """``user_id``, ``tokens``: each user's ``train_items`` as token ids, in order (OOV = 1)."""
    events = sequences.select(USER_ID, F.posexplode(TRAIN_ITEMS).alias(POSITION, ITEM_ID))
    tokens = events.join(vocabulary.select(ITEM_ID, VOCAB_INDEX), ITEM_ID, "left").select(
        USER_ID, POSITION, F.coalesce(F.col(VOCAB_INDEX), F.lit(OOV)).cast("int").alias("token")
    )
    return tokens.groupBy(USER_ID).agg(
        F.expr(f"transform(array_sort(collect_list(struct({POSITION}, token))), p -> p.token)").alias(TOKENS)
    )


def _left_padded(history: str, max_len: int) -> F.Column:
    return F.expr(f"concat(array_repeat(0, {max_len} - size({history})), {history})")


def training_examples(tokens: DataFrame, max_len: int) -> DataFrame:
    """Sliding prefixes -> next item. Reads ``user_id``, ``tokens``; writes ``user_id``,
    ``history`` (the ``max_len`` tokens before position t, left-padded with 0) and ``target``
    (the token at t), for t = 1 .. n-1."""
    prefixes = tokens.where(F.size(TOKENS) >= 2).select(
        USER_ID, TOKENS, F.explode(F.sequence(F.lit(1), F.size(TOKENS) - 1)).alias(POSITION)
    )
    recent = f"slice({TOKENS}, greatest(1, {POSITION} - {max_len} + 1), least({POSITION}, {max_len}))"
    return prefixes.select(
        USER_ID,
        _left_padded(recent, max_len).alias(EXAMPLE_HISTORY),
        F.expr(f"element_at({TOKENS}, {POSITION} + 1)").alias(EXAMPLE_TARGET),
    )


def validation_examples(sequences: DataFrame, tokens: DataFrame, vocabulary: DataFrame, max_len: int) -> DataFrame:
    """Whole train sequence -> the validation item. Reads ``user_id``, ``val_items`` and the
    token sequences; writes ``user_id``, ``history``, ``target`` (null when the validation item
    is not in the vocabulary: counted by the stage, never trained or scored)."""
    val = sequences.where(F.size(F.coalesce(F.col(VAL_ITEMS), F.array())) > 0).select(
        USER_ID, F.element_at(VAL_ITEMS, 1).alias(ITEM_ID)
    )
    val = val.join(vocabulary.select(ITEM_ID, VOCAB_INDEX), ITEM_ID, "left").join(tokens, USER_ID, "left")
    recent = f"slice(coalesce({TOKENS}, array()), greatest(1, size(coalesce({TOKENS}, array())) - {max_len} + 1), {max_len})"
    return val.select(
        USER_ID,
        _left_padded(f"cast({recent} as array<int>)", max_len).alias(EXAMPLE_HISTORY),
        F.col(VOCAB_INDEX).cast("int").alias(EXAMPLE_TARGET),
    )


def count_oov_items(sequences: DataFrame, vocabulary: DataFrame) -> int:
    """Validation and test events whose item is not in the training vocabulary."""
    held_out = sequences.select(
        F.explode(F.concat(F.coalesce(F.col(VAL_ITEMS), F.array()), F.coalesce(F.col(TEST_ITEMS), F.array()))).alias(
            ITEM_ID
        )
    )
    return held_out.join(vocabulary.select(ITEM_ID), ITEM_ID, "left_anti").count()


def write_shards(examples: DataFrame, path: str, shards: int, seed: int) -> "list[int]":
    """Write ``history``, ``target`` as Parquet under ``path/shard=<k>`` (k < shards), rows
    spread by a seeded hash; returns the row count of each shard."""
    keyed = examples.withColumn(
        SHARD, F.pmod(F.xxhash64(F.col(USER_ID), F.col(EXAMPLE_HISTORY), F.col(EXAMPLE_TARGET), F.lit(seed)), F.lit(shards)).cast("int")
    )
    keyed.select(EXAMPLE_HISTORY, EXAMPLE_TARGET, SHARD).repartition(shards, SHARD).write.mode("overwrite").partitionBy(SHARD).parquet(
        path
    )
    spark: SparkSession = examples.sparkSession
    # An explicit schema: a write without rows leaves no file to infer one from.
    written = spark.read.schema(f"{EXAMPLE_HISTORY} array<int>, {EXAMPLE_TARGET} int, {SHARD} int").parquet(path)
    counts = dict(written.groupBy(SHARD).count().collect())
    return [int(counts.get(k, 0)) for k in range(shards)]


# ---- artifacts -------------------------------------------------------------------------
def move_latest(models_dir: str, version: str) -> None:
    """Point ``<models_dir>/latest`` at ``version`` atomically (write aside, then rename)."""
    pointer = os.path.join(models_dir, LATEST_FILE)
    staged = f"{pointer}.{uuid.uuid4().hex[:8]}.tmp"
    with open(staged, "w", encoding="utf-8") as handle:
        handle.write(version + "\n")
    os.replace(staged, pointer)


def _plot_curves(history: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(5, 3.2))
    for name in ("loss", "val_loss"):
        if history.get(name):
            axis.plot(range(1, len(history[name]) + 1), history[name], marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel("binary cross-entropy")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _best(values: "list[float]", index: int) -> Optional[float]:
    return round(values[index], 5) if values else None


# ---- the stage -------------------------------------------------------------------------
def run(ctx: StageContext) -> dict:
    """Train the sequence model on gold/user_sequences and publish ``<models_dir>/<version>``.

    Needs classic Spark (the vocabulary's ``zipWithIndex``, the barrier tasks and Horovod's
    launch): a Spark Connect session fails here, before any work, naming the compute to use."""
    require_classic(ctx.spark, "stage train")
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    require_columns(sequences, [USER_ID, TRAIN_ITEMS, VAL_ITEMS, TEST_ITEMS], "train: gold/user_sequences")
    sequences = sequences.select(USER_ID, TRAIN_ITEMS, VAL_ITEMS, TEST_ITEMS).cache()
    models_dir = ctx.cfg.models_dir
    version = new_run_id()  # a model version is named like a run: sortable and unique
    staging = os.path.join(models_dir, f".staging-{version}")
    model_dir = os.path.join(staging, "model")
    try:
        summary = _train(ctx, sequences, version, staging, model_dir)
        check_model_folder(model_dir)  # a folder that is not one consistent model is never published
        final_dir = os.path.join(models_dir, version)
        os.replace(model_dir, final_dir)
        move_latest(models_dir, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        sequences.unpersist()
    ctx.progress(f"train: model {version} published at {final_dir}")
    return summary


def _train(ctx: StageContext, sequences: DataFrame, version: str, staging: str, model_dir: str) -> dict:
    cfg = ctx.cfg.train
    vocabulary = item_vocabulary(
        sequences, cfg.min_item_count, cfg.popularity_exponent, uniform=cfg.negative_sampling == "uniform"
    ).cache()
    n_items = vocabulary.count()
    if n_items == 0:
        raise ValueError(
            f"train: gold/user_sequences has no item seen {cfg.min_item_count}+ times in train_items "
            f"({sequences.count()} users): nothing to train on"
        )
    text_dim, items_without_text = 0, n_items
    if cfg.use_text_vectors and ctx.lake.exists(ITEM_EMBEDDINGS_TABLE):
        vocabulary = with_text_vectors(vocabulary, ctx.lake.read(ITEM_EMBEDDINGS_TABLE)).cache()
        stats = vocabulary.select(
            F.max(F.size(VOCAB_TEXT)).alias("dim"), F.sum(F.col(VOCAB_TEXT).isNull().cast("long")).alias("missing")
        ).first()
        text_dim, items_without_text = int(stats["dim"] or 0), int(stats["missing"])
        if not text_dim:
            vocabulary = vocabulary.drop(VOCAB_TEXT)
    elif cfg.use_text_vectors:
        log.info("train: %s not found; item embeddings start without text vectors", ITEM_EMBEDDINGS_TABLE)
    vocabulary.coalesce(1).write.mode("overwrite").parquet(os.path.join(model_dir, VOCABULARY_DIR))

    tokens = token_sequences(sequences, vocabulary).cache()
    users_without_examples = sequences.where(F.size(F.coalesce(F.col(TRAIN_ITEMS), F.array())) < 2).count()
    examples = training_examples(tokens, cfg.max_len)
    oov_targets = examples.where(F.col(EXAMPLE_TARGET) == OOV).count()
    workers = cfg.num_workers
    train_dir = os.path.join(staging, "examples", "train")
    train_rows = write_shards(examples.where(F.col(EXAMPLE_TARGET) != OOV), train_dir, workers, cfg.seed)
    if sum(train_rows) == 0:
        raise ValueError(
            "train: no training example: every user has fewer than 2 events in train_items "
            f"({users_without_examples} users)"
        )
    if min(train_rows) == 0:
        raise ValueError(
            f"train: {sum(train_rows)} training examples are too few for {workers} workers "
            f"(rows per shard: {train_rows}); lower train.num_workers"
        )

    validation = validation_examples(sequences, tokens, vocabulary, cfg.max_len)
    val_dir: Optional[str] = os.path.join(staging, "examples", "val")
    val_rows = write_shards(validation.where(F.col(EXAMPLE_TARGET).isNotNull()), val_dir, workers, cfg.seed)
    if min(val_rows) == 0:
        log.warning("train: validation rows per shard %s: training without validation", val_rows)
        val_dir, val_rows = None, []
    oov_items = count_oov_items(sequences, vocabulary)
    tokens.unpersist()

    spec = ModelSpec(
        n_tokens=n_items + FIRST_ITEM,
        max_len=cfg.max_len,
        embedding_dim=cfg.embedding_dim,
        lstm_units=cfg.lstm_units,
        text_dim=text_dim,
        negatives=cfg.negatives,
        logq_correction=cfg.logq_correction,
    )
    job = TrainJob(
        version=version,
        work_dir=os.path.join(staging, "work"),
        train_dir=train_dir,
        val_dir=val_dir,
        vocabulary_dir=os.path.join(model_dir, VOCABULARY_DIR),
        export_dir=model_dir,
        world_size=workers,
        model=spec.to_json(),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_epochs=cfg.warmup_epochs,
        negatives=cfg.negatives,
        patience=cfg.early_stopping_patience,
        seed=cfg.seed,
        steps_per_epoch=max(1, min(train_rows) // cfg.batch_size),
        val_steps=val_steps_for(val_rows, cfg.batch_size),
        tf_threads=cfg.tf_threads,
        start_timeout_s=cfg.start_timeout_s,
        horovodrun_hosts=cfg.horovodrun_hosts,
    )
    ctx.progress(
        f"train: {sum(train_rows)} examples, {n_items} items, backend {cfg.backend} x{workers}, "
        f"{job.steps_per_epoch} steps/epoch"
    )
    results = get_trainer(cfg.backend).fit(job, ctx.spark)
    vocabulary.unpersist()

    chief = results[0]
    history = chief["history"]
    best = chief["best_epoch"] - 1
    seconds = max(r["seconds"] for r in results)
    trained = sum(r["examples"] for r in results)
    val_count = sum(r.get("val_count", 0) for r in results)
    metrics = {
        "val_loss": _best(history.get("val_loss", []), best),
        "train_loss": _best(history.get("loss", []), best),
        "val_hr@10": round(sum(r.get("val_hits", 0.0) for r in results) / val_count, 5) if val_count else None,
        "val_ndcg@10": round(sum(r.get("val_ndcg", 0.0) for r in results) / val_count, 5) if val_count else None,
        "val_users": val_count,
        "best_epoch": chief["best_epoch"],
    }
    meta = {
        "version": version,
        "run_id": ctx.run_id,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "backend": cfg.backend,
        "world_size": chief["world_size"],
        "model": spec.to_json(),
        "train": ctx.cfg.to_dict()["train"],
        "inputs": {
            "user_sequences_version": ctx.lake.version(USER_SEQUENCES_TABLE),
            "item_embeddings_version": ctx.lake.version(ITEM_EMBEDDINGS_TABLE) if text_dim else None,
        },
        "ranks": [
            {"rank": r["rank"], "weights_sha256": r["weights_sha256"], "seconds": round(r["seconds"], 2)}
            for r in results
        ],
    }
    with open(os.path.join(model_dir, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
    with open(os.path.join(model_dir, HISTORY_FILE), "w", encoding="utf-8") as handle:
        json.dump({**history, "epoch_seconds": chief["epoch_seconds"]}, handle, indent=2)
    with open(os.path.join(model_dir, METRICS_FILE), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    _plot_curves(history, os.path.join(model_dir, CURVES_FILE))
    return {
        "backend": cfg.backend,
        "world_size": chief["world_size"],
        "epochs": chief["epochs_run"],
        "examples": sum(train_rows),
        "examples_trained": trained,
        "examples_per_s": round(trained / seconds, 1) if seconds else None,
        "train_loss": metrics["train_loss"],
        "val_loss": metrics["val_loss"],
        "val_ndcg@10": metrics["val_ndcg@10"],
        "model_version": version,
        "items": n_items,
        "items_without_text": items_without_text if text_dim else None,
        "users_without_examples": users_without_examples,
        "oov_items": oov_items,
        "oov_targets": oov_targets,
        "identical_weights": len({r["weights_sha256"] for r in results}) == 1,
        "tables": {},  # the model goes to <models_dir>/<version>, not to a table
    }
