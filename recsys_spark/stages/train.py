"""Stage ``train``: gold/user_sequences (+ gold/item_embeddings) -> ``<models_dir>/<version>/``.

Spark builds everything the trainer reads: the item vocabulary (token ids, counts, negative
sampling log-probabilities, text vectors) and the examples (each user's ``train_items`` cut
into right-aligned windows of ``train.max_len`` where every position predicts the next item;
validation: the last ``max_len`` training items -> ``val_items[0]``, with the user's whole
training set to exclude from the ranking), written as Parquet shards, one per worker. A backend (``recsys_spark.trainers``) trains on them;
the chief exports the model. The folder is assembled under a staging name and renamed into
place (after ``check_model_folder``), and only then does ``<models_dir>/latest`` move, so a failed
run leaves the previous model in service. Logging the model to MLflow and registering it is the
pipeline's (``recsys_spark.tracking``), after the folder is published.

Model folder: ``model.keras``, ``vocabulary/`` (Parquet: item_id, index, count, log_q,
text_vector), ``config.json`` (model spec, train config, inputs), ``history.json`` (training
curves per epoch: loss, val_loss, val_hr@10, val_ndcg@10), ``metrics.json`` (best epoch:
validation cross-entropy, HR@10, NDCG@10), ``curves.png`` when
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
    EXAMPLE_INPUTS,
    EXAMPLE_MASK,
    EXAMPLE_SEEN,
    EXAMPLE_TARGET,
    EXAMPLE_TARGETS,
    ACTIVE,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    TEST_ITEMS,
    TRAIN_ITEMS,
    TRAIN_SEEN_ITEMS,
    USER_ID,
    USER_SEQUENCES_TABLE,
    VAL_ITEMS,
    VECTOR,
    require_columns,
)
from recsys_spark.trainers import TrainJob, get_trainer

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


def token_sequences(sequences: DataFrame, vocabulary: DataFrame, items=None) -> DataFrame:
    """``user_id``, ``tokens``: each user's ``train_items`` (or the ``items`` column expression)
    as token ids, in order (OOV = 1)."""
    events = sequences.select(USER_ID, F.posexplode(F.col(TRAIN_ITEMS) if items is None else items).alias(POSITION, ITEM_ID))
    tokens = events.join(vocabulary.select(ITEM_ID, VOCAB_INDEX), ITEM_ID, "left").select(
        USER_ID, POSITION, F.coalesce(F.col(VOCAB_INDEX), F.lit(OOV)).cast("int").alias("token")
    )
    return tokens.groupBy(USER_ID).agg(
        F.expr(f"transform(array_sort(collect_list(struct({POSITION}, token))), p -> p.token)").alias(TOKENS)
    )


def _targets(spark, windows_dir: str) -> int:
    """The targets (unmasked positions) in a folder of training windows."""
    return int(
        spark.read.parquet(windows_dir).select(F.sum(F.aggregate(EXAMPLE_MASK, F.lit(0), lambda n, m: n + m.cast("int")))).first()[0]
    )


def _right_padded(tokens: str, max_len: int) -> str:
    return f"concat({tokens}, array_repeat(0, {max_len} - size({tokens})))"


def training_windows(tokens: DataFrame, max_len: int) -> DataFrame:
    """Every-timestep examples: each user's token sequence cut into right-aligned windows of
    ``max_len`` positions, where the input at each position is trained to predict the token
    after it.

    Reads ``user_id``, ``tokens``; writes ``user_id``, ``inputs``, ``targets`` (array<int> of
    ``max_len``, right-padded with 0) and ``mask`` (array<boolean>: true where the target is an
    item of the vocabulary). For n tokens there are n - 1 targets, each in exactly one window;
    the last window ends at the last token, and only the first (oldest) one can be short. A
    window whose targets are all out-of-vocabulary is dropped; users with one token have none."""
    windows = tokens.where(F.size(TOKENS) >= 2).select(
        USER_ID, TOKENS,
        F.explode(F.sequence(F.lit(0), F.expr(f"cast(ceil((size({TOKENS}) - 1) / {max_len}) as int) - 1"))).alias("k"),
    )
    # 1-based positions of the window's targets: [first, last]; its inputs are one earlier.
    bounds = windows.select(
        USER_ID, TOKENS,
        F.expr(f"size({TOKENS}) - k * {max_len}").alias("last_target"),
    ).withColumn("first_target", F.greatest(F.lit(2), F.col("last_target") - max_len + 1))
    length = "(last_target - first_target + 1)"
    examples = bounds.select(
        USER_ID,
        F.expr(_right_padded(f"slice({TOKENS}, first_target - 1, {length})", max_len)).alias(EXAMPLE_INPUTS),
        F.expr(_right_padded(f"slice({TOKENS}, first_target, {length})", max_len)).alias(EXAMPLE_TARGETS),
    ).withColumn(EXAMPLE_MASK, F.expr(f"transform({EXAMPLE_TARGETS}, t -> t >= {FIRST_ITEM})"))
    return examples.where(F.expr(f"exists({EXAMPLE_MASK}, m -> m)"))


def validation_examples(sequences: DataFrame, tokens: DataFrame, vocabulary: DataFrame, max_len: int) -> DataFrame:
    """The last ``max_len`` training tokens -> the validation item. Reads ``user_id``,
    ``val_items``, ``train_seen_items`` and the token sequences; writes ``user_id``, ``inputs``
    (right-padded), ``target`` (null when the validation item is not in the vocabulary, or the
    user has no training event: counted by the stage, never scored) and ``seen`` (the tokens of
    every training item of the user: excluded when the target is ranked)."""
    val = sequences.where(F.size(F.coalesce(F.col(VAL_ITEMS), F.array())) > 0).select(
        USER_ID, F.element_at(VAL_ITEMS, 1).alias(ITEM_ID), TRAIN_SEEN_ITEMS
    )
    index = vocabulary.select(ITEM_ID, VOCAB_INDEX)
    seen = (
        val.select(USER_ID, F.explode(TRAIN_SEEN_ITEMS).alias(ITEM_ID))
        .join(index, ITEM_ID)
        .groupBy(USER_ID)
        .agg(F.array_sort(F.collect_set(F.col(VOCAB_INDEX).cast("int"))).alias(EXAMPLE_SEEN))
    )
    val = val.join(index, ITEM_ID, "left").join(tokens, USER_ID, "left").join(seen, USER_ID, "left")
    recent = f"slice({TOKENS}, greatest(1, size({TOKENS}) - {max_len} + 1), {max_len})"
    return val.select(
        USER_ID,
        F.expr(_right_padded(f"coalesce(cast({recent} as array<int>), array())", max_len)).alias(EXAMPLE_INPUTS),
        F.when(F.size(F.coalesce(F.col(TOKENS), F.array())) > 0, F.col(VOCAB_INDEX).cast("int")).alias(EXAMPLE_TARGET),
        F.coalesce(F.col(EXAMPLE_SEEN), F.expr("cast(array() as array<int>)")).alias(EXAMPLE_SEEN),
    )


def count_oov_items(sequences: DataFrame, vocabulary: DataFrame) -> int:
    """Validation and test events whose item is not in the training vocabulary."""
    held_out = sequences.select(
        F.explode(F.concat(F.coalesce(F.col(VAL_ITEMS), F.array()), F.coalesce(F.col(TEST_ITEMS), F.array()))).alias(
            ITEM_ID
        )
    )
    return held_out.join(vocabulary.select(ITEM_ID), ITEM_ID, "left_anti").count()


def write_shards(examples: DataFrame, path: str, shards: int, seed: int, columns: "list[str]") -> "list[int]":
    """Write ``columns`` of ``examples`` as Parquet under ``path/shard=<k>`` (k < shards), users
    spread by a seeded hash; returns the row count of each shard."""
    keyed = examples.withColumn(SHARD, F.pmod(F.xxhash64(F.col(USER_ID), F.lit(seed)), F.lit(shards)).cast("int"))
    keyed.select(*columns, SHARD).repartition(shards, SHARD).write.mode("overwrite").partitionBy(SHARD).parquet(path)
    spark: SparkSession = examples.sparkSession
    # An explicit schema: a write without rows leaves no file to infer one from.
    written = spark.read.schema(f"{SHARD} int").parquet(path)
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
    figure, (losses, ranking) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name in ("loss", "val_loss"):
        if history.get(name):
            losses.plot(range(1, len(history[name]) + 1), history[name], marker="o", label=name)
    losses.set_xlabel("epoch")
    losses.set_ylabel("softmax cross-entropy")
    losses.legend()
    if history.get("val_ndcg@10"):
        ranking.plot(range(1, len(history["val_ndcg@10"]) + 1), history["val_ndcg@10"], marker="o", label="val NDCG@10")
        ranking.legend()
    ranking.set_xlabel("epoch")
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
    require_columns(
        sequences, [USER_ID, TRAIN_ITEMS, VAL_ITEMS, TEST_ITEMS, TRAIN_SEEN_ITEMS], "train: gold/user_sequences"
    )
    sequences = sequences.select(USER_ID, TRAIN_ITEMS, VAL_ITEMS, TEST_ITEMS, TRAIN_SEEN_ITEMS).cache()
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
    windows = training_windows(tokens, cfg.max_len)
    oov_targets = (
        tokens.select(F.explode(F.slice(TOKENS, 2, 1 << 30)).alias("token")).where(F.col("token") == OOV).count()
    )
    workers = cfg.num_workers
    train_dir = os.path.join(staging, "examples", "train")
    train_rows = write_shards(windows, train_dir, workers, cfg.seed, [EXAMPLE_INPUTS, EXAMPLE_TARGETS, EXAMPLE_MASK])
    if sum(train_rows) == 0:
        raise ValueError(
            "train: no training example: every user has fewer than 2 events in train_items "
            f"({users_without_examples} users)"
        )
    if min(train_rows) == 0:
        raise ValueError(
            f"train: {sum(train_rows)} training windows are too few for {workers} workers "
            f"(windows per shard: {train_rows}); lower train.num_workers"
        )
    train_targets = _targets(ctx.spark, train_dir)

    validation = validation_examples(sequences, tokens, vocabulary, cfg.max_len)
    val_dir: Optional[str] = os.path.join(staging, "examples", "val")
    val_rows = write_shards(
        validation.where(F.col(EXAMPLE_TARGET).isNotNull()), val_dir, workers, cfg.seed,
        [EXAMPLE_INPUTS, EXAMPLE_TARGET, EXAMPLE_SEEN],
    )
    # A shard without validation rows is fine: the ranks' sums are added up.
    if sum(val_rows) == 0:
        log.warning(
            "train: validation rows per shard %s (no validation item in the vocabulary): training for "
            "train.epochs without early stopping, keeping the last epoch", val_rows
        )
        val_dir, val_rows = None, []
    oov_items = count_oov_items(sequences, vocabulary)
    tokens.unpersist()
    # The final fit learns from what the baselines' final fit learns from: train + validation.
    refit_dir, refit_rows, refit_targets = None, [], 0
    if cfg.final_fit == "train_val" and val_dir is not None:
        refit_dir = os.path.join(staging, "examples", "refit")
        with_val = F.concat(F.coalesce(F.col(TRAIN_ITEMS), F.array()), F.coalesce(F.col(VAL_ITEMS), F.array()))
        refit_rows = write_shards(
            training_windows(token_sequences(sequences, vocabulary, with_val), cfg.max_len), refit_dir, workers,
            cfg.seed, [EXAMPLE_INPUTS, EXAMPLE_TARGETS, EXAMPLE_MASK],
        )
        refit_targets = _targets(ctx.spark, refit_dir)
        if min(refit_rows) == 0:
            log.warning("train: a shard of the refit has no window (%s): serving the model trained on train_items", refit_rows)
            refit_dir = None

    spec = ModelSpec(
        n_tokens=n_items + FIRST_ITEM,
        max_len=cfg.max_len,
        embedding_dim=cfg.embedding_dim,
        lstm_units=cfg.lstm_units,
        text_dim=text_dim,
        dropout=cfg.dropout,
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
        patience=cfg.early_stopping_patience,
        seed=cfg.seed,
        # At least one step even when a shard holds fewer windows than a batch (they repeat).
        steps_per_epoch=max(1, min(train_rows) // cfg.batch_size),
        full_softmax_max_items=cfg.full_softmax_max_items,
        sampled_negatives=cfg.sampled_negatives,
        in_batch_negatives=cfg.in_batch_negatives,
        clip_norm=cfg.clip_norm,
        max_minutes=cfg.max_minutes,
        tf_threads=cfg.tf_threads,
        start_timeout_s=cfg.start_timeout_s,
        horovodrun_hosts=cfg.horovodrun_hosts,
        refit_dir=refit_dir,
        refit_steps_per_epoch=max(1, min(refit_rows) // cfg.batch_size) if refit_dir else 0,
    )
    loss_name = "full softmax" if n_items <= cfg.full_softmax_max_items else f"sampled softmax ({cfg.sampled_negatives} negatives)"
    ctx.progress(
        f"train: {train_targets} targets in {sum(train_rows)} windows, {n_items} items ({loss_name}), "
        f"backend {cfg.backend} x{workers}, {job.steps_per_epoch} steps/epoch, at most {cfg.epochs} epochs"
    )
    results = get_trainer(cfg.backend).fit(job, ctx.spark)
    vocabulary.unpersist()

    chief = results[0]
    history = chief["history"]
    best = chief["best_epoch"] - 1
    seconds = max(r["seconds"] for r in results)
    train_seconds = max(r["train_seconds"] for r in results)
    trained = sum(r["targets_trained"] for r in results)
    # The driver's own log, whatever the backend (executor and worker-process logs stay there).
    for epoch, loss in enumerate(history.get("loss", [])):
        ndcg = history.get("val_ndcg@10", [])
        log.info(
            "train epoch %d/%d (%s x%d): loss %.4f, val NDCG@10 %s, %.1fs", epoch + 1, cfg.epochs, cfg.backend, workers,
            loss, f"{ndcg[epoch]:.4f}" if epoch < len(ndcg) else "n/a", chief["epoch_seconds"][epoch],
        )
    log.info("train: best epoch %d of %d (stopped by %s)", chief["best_epoch"], chief["epochs_run"], chief["stopped_by"])
    val_count = sum(r.get("val_count", 0) for r in results)
    metrics = {
        "val_loss": round(sum(r.get("val_xent", 0.0) for r in results) / val_count, 5) if val_count else None,
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
        "loss": loss_name,
        "final_fit": {"events": "train_val" if chief["refit"] else "train", "note": chief["refit_note"]},
        "train": ctx.cfg.to_dict()["train"],
        "inputs": {
            "user_sequences_version": ctx.lake.version(USER_SEQUENCES_TABLE),
            "item_embeddings_version": ctx.lake.version(ITEM_EMBEDDINGS_TABLE) if text_dim else None,
        },
        "ranks": [
            {
                "rank": r["rank"], "weights_sha256": r["weights_sha256"], "seconds": round(r["seconds"], 2),
                "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"], "stopped_by": r["stopped_by"],
            }
            for r in results
        ],
    }
    with open(os.path.join(model_dir, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
    with open(os.path.join(model_dir, HISTORY_FILE), "w", encoding="utf-8") as handle:
        json.dump({**history, "epoch_seconds": chief["epoch_seconds"],
                   **{f"refit_{name}": values for name, values in chief["refit_history"].items()}}, handle, indent=2)
    with open(os.path.join(model_dir, METRICS_FILE), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    _plot_curves(history, os.path.join(model_dir, CURVES_FILE))
    return {
        "backend": cfg.backend,
        "world_size": chief["world_size"],
        "loss": loss_name,
        "epochs": chief["epochs_run"],
        "best_epoch": chief["best_epoch"],
        "stopped_by": chief["stopped_by"],
        # What the served model learned from: train_items, or train + validation (a refit for
        # the chosen number of epochs, as the baselines' final fit sees the validation item).
        "final_fit": "train_val" if chief["refit"] else "train",
        "final_fit_note": chief["refit_note"],
        "refit_targets": refit_targets if chief["refit"] else 0,
        "windows": sum(train_rows),
        "targets": train_targets,
        "targets_trained": int(trained),
        # As examples_per_s was before: over the whole fit, validation included ...
        "targets_per_s": round(trained / seconds, 1) if seconds else None,
        # ... and over the training steps only (the epochs' time without their validation).
        "train_targets_per_s": round(trained / train_seconds, 1) if train_seconds else None,
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
        "same_stop_epoch": len({(r["epochs_run"], r["best_epoch"]) for r in results}) == 1,
        "tables": {},  # the model goes to <models_dir>/<version>, not to a table
    }
