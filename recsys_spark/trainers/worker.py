"""The per-rank training loop every backend runs, and the distribution hooks that vary.

A rank reads only its own shard (``shard=<rank>``) with pyarrow into ``tf.data``, draws negatives
for each batch from the popularity distribution stored in the vocabulary, and trains with binary
cross-entropy (the true next item labelled 1, sampled negatives 0). Horovod and
MultiWorkerMirroredStrategy differ only in the ``Distribution`` object. Every rank takes the same
number of steps per epoch (fixed by the driver from the smallest shard), so collective operations
never wait on a rank that ran out of data.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import time
from typing import Callable, Iterator, Optional

import numpy as np

from recsys_spark.models.sequence import (
    FIRST_ITEM,
    MODEL_FILE,
    VOCAB_COUNT,
    VOCAB_LOG_Q,
    VOCAB_TEXT,
    ModelSpec,
    SequenceRanker,
    build_model,
    set_tf_threads,
)
from recsys_spark.core.schemas import EXAMPLE_HISTORY, EXAMPLE_TARGET, ITEM_ID
from recsys_spark.trainers import TrainJob

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 20000
READ_BATCH = 8192
RANKING_K = 10


class Distribution:
    """Single process: no wrapping, rank 0 of 1."""

    name = "local"

    def __init__(self) -> None:
        self.rank, self.size = 0, 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> int:
        return self.rank

    def scope(self):
        return contextlib.nullcontext()

    def wrap_optimizer(self, optimizer):
        return optimizer

    def callbacks(self) -> list:
        return []

    def dataset(self, make: Callable[[int, int], object], global_batch: int):
        """``make(shard, batch)`` -> a batched tf.data.Dataset for this rank."""
        return make(self.shard, global_batch // self.size)


class HorovodDistribution(Distribution):
    """Horovod: ring-allreduced gradients, variables broadcast from rank 0, averaged metrics,
    one GPU per process pinned by local rank when GPUs exist."""

    name = "horovod"

    def __init__(self) -> None:
        import horovod.tensorflow.keras as hvd
        import tensorflow as tf

        hvd.init()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()

    def wrap_optimizer(self, optimizer):
        return self.hvd.DistributedOptimizer(optimizer)

    def callbacks(self) -> list:
        # Metric averaging comes before early stopping so every rank stops on the same epoch.
        return [
            self.hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            self.hvd.callbacks.MetricAverageCallback(),
        ]


class MultiWorkerDistribution(Distribution):
    """tf.distribute.MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG."""

    name = "tf_distribute"

    def __init__(self) -> None:
        import json

        import tensorflow as tf

        task = json.loads(os.environ["TF_CONFIG"])["task"]
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.RING
            )
        )
        self.rank = int(task["index"])
        self.size = self.strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    def dataset(self, make, global_batch):
        import tensorflow as tf

        def per_worker(input_context):
            return make(input_context.input_pipeline_id, input_context.get_per_replica_batch_size(global_batch))

        return tf.keras.utils.experimental.DatasetCreator(per_worker)


def shard_files(root: str, shard: int) -> "list[str]":
    """The Parquet files of one shard, in a fixed order."""
    return sorted(glob.glob(os.path.join(root, f"shard={shard}", "*.parquet")))


def _read_examples(files: "list[str]", max_len: int) -> Iterator["tuple[np.ndarray, np.ndarray]"]:
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH, columns=[EXAMPLE_HISTORY, EXAMPLE_TARGET]):
            histories = batch.column(EXAMPLE_HISTORY).flatten().to_numpy().astype(np.int32).reshape(-1, max_len)
            yield histories, batch.column(EXAMPLE_TARGET).to_numpy().astype(np.int32)


def negative_cdf(vocabulary_dir: str) -> np.ndarray:
    """Cumulative negative-sampling probabilities over items (vocabulary order)."""
    import pyarrow.parquet as pq

    log_q = pq.read_table(vocabulary_dir, columns=["index", VOCAB_LOG_Q]).sort_by("index").column(VOCAB_LOG_Q)
    q = np.exp(np.asarray(log_q.to_pylist(), dtype=np.float64))
    cdf = np.cumsum(q / q.sum())
    cdf[-1] = 1.0
    return cdf.astype(np.float32)


def text_matrix(vocabulary_dir: str, spec: ModelSpec) -> Optional[np.ndarray]:
    """(n_tokens, text_dim) frozen text vectors (zeros for padding, OOV and items without text)."""
    if not spec.text_dim:
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(vocabulary_dir, columns=["index", VOCAB_TEXT]).sort_by("index")
    matrix = np.zeros((spec.n_tokens, spec.text_dim), dtype=np.float32)
    for row, vector in enumerate(table.column(VOCAB_TEXT).to_pylist()):
        if vector is not None:
            matrix[FIRST_ITEM + row] = vector
    return matrix


def _datasets(job: TrainJob, spec: ModelSpec, cdf: np.ndarray):
    """(make_train, make_val): ``make(shard, batch)`` -> tf.data pipelines of
    ({history, candidates}, labels) where candidates = [target, negatives...]."""
    import tensorflow as tf

    cdf_tensor = tf.constant(cdf)
    signature = (tf.TensorSpec((None, spec.max_len), tf.int32), tf.TensorSpec((None,), tf.int32))

    def with_candidates(histories, targets, uniform):
        # Inverse-CDF sampling: O(log n) per draw, for any catalog size.
        drawn = tf.searchsorted(cdf_tensor, tf.reshape(uniform, [-1]), side="right")
        negatives = tf.reshape(tf.cast(drawn, tf.int32), tf.shape(uniform)) + FIRST_ITEM
        negatives = tf.minimum(negatives, spec.n_tokens - 1)
        candidates = tf.concat([targets[:, None], negatives], axis=1)
        # An accidental hit (a negative equal to the target) is labelled as the positive it is.
        labels = tf.cast(tf.equal(candidates, targets[:, None]), tf.float32)
        return {"history": histories, "candidates": candidates}, labels

    def source(files):
        return tf.data.Dataset.from_generator(lambda: _read_examples(files, spec.max_len), output_signature=signature)

    def make_train(shard: int, batch: int):
        files = shard_files(job.train_dir, shard)
        if not files:
            raise FileNotFoundError(f"training shard {shard} has no Parquet files under {job.train_dir}")

        def add_negatives(histories, targets):
            uniform = tf.random.uniform((tf.shape(targets)[0], job.negatives), dtype=tf.float32)
            return with_candidates(histories, targets, uniform)

        return (
            source(files)
            .unbatch()
            .shuffle(SHUFFLE_BUFFER, seed=job.seed + shard, reshuffle_each_iteration=True)
            .repeat()
            .batch(batch, drop_remainder=True)
            .map(add_negatives, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )

    def make_val(shard: int, batch: int):
        files = shard_files(job.val_dir, shard)
        if not files:
            raise FileNotFoundError(f"validation shard {shard} has no Parquet files under {job.val_dir}")

        def fixed_negatives(index, example):
            # Stateless draws keyed by the batch index: the same negatives every epoch, so
            # validation losses of successive epochs (and of backends) compare.
            histories, targets = example
            uniform = tf.random.stateless_uniform(
                (tf.shape(targets)[0], job.negatives), seed=tf.stack([tf.cast(job.seed, tf.int64), index])
            )
            return with_candidates(histories, targets, uniform)

        return (
            source(files)
            .unbatch()
            .batch(batch)
            .enumerate()
            .map(fixed_negatives)
            .cache()
            .repeat()
            .prefetch(tf.data.AUTOTUNE)
        )

    return make_train, make_val


@functools.lru_cache(maxsize=1)
def warmup_schedule_class():
    """The warm-up schedule, registered so that Horovod's optimizer wrapper can rebuild it."""
    import tensorflow as tf

    @tf.keras.utils.register_keras_serializable(package="recsys_spark")
    class Warmup(tf.keras.optimizers.schedules.LearningRateSchedule):
        """Linear ramp from the single-worker rate to the scaled one (Goyal et al., 2017)."""

        def __init__(self, base: float, peak: float, warmup_steps: int):
            self.base, self.peak, self.warmup_steps = base, peak, warmup_steps

        def __call__(self, step):
            fraction = tf.minimum(1.0, tf.cast(step, tf.float32) / float(max(1, self.warmup_steps)))
            return self.base + (self.peak - self.base) * fraction

        def get_config(self):
            return {"base": self.base, "peak": self.peak, "warmup_steps": self.warmup_steps}

    return Warmup


def weights_digest(weights: "list[np.ndarray]") -> str:
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def ranking_sums(ranker: SequenceRanker, val_dir: str, shard: int, k: int = RANKING_K) -> dict:
    """HR@k / NDCG@k sums of the validation targets of one shard, ranked against every item."""
    hits = ndcg = 0.0
    count = 0
    for histories, targets in _read_examples(shard_files(val_dir, shard), ranker.spec.max_len):
        for start in range(0, len(targets), 256):
            chunk = slice(start, start + 256)
            scores = ranker.all_item_scores(ranker.user_states_for_tokens(histories[chunk]))
            rows = np.arange(len(scores))
            target_scores = scores[rows, targets[chunk] - FIRST_ITEM]
            ranks = (scores > target_scores[:, None]).sum(axis=1)
            hits += float((ranks < k).sum())
            ndcg += float((1.0 / np.log2(ranks[ranks < k] + 2.0)).sum())
            count += len(rows)
    return {"val_hits": hits, "val_ndcg": ndcg, "val_count": count}


def train_worker(job: TrainJob, distribution: str = "local") -> dict:
    """Train one rank; the chief exports ``model.keras`` into ``job.export_dir``.

    Returns this rank's history (per-epoch loss / val_loss / seconds), examples trained,
    training seconds, a digest of its final weights and its validation ranking sums."""
    import pyarrow.parquet as pq
    import tensorflow as tf

    set_tf_threads(job.tf_threads)
    dist = {"local": Distribution, "horovod": HorovodDistribution, "tf_distribute": MultiWorkerDistribution}[
        distribution
    ]()
    # The same seed everywhere: identical initial weights even before Horovod's broadcast.
    tf.keras.utils.set_random_seed(job.seed)
    spec = ModelSpec.from_json(job.model)
    cdf = negative_cdf(job.vocabulary_dir)
    text = text_matrix(job.vocabulary_dir, spec)
    make_train, make_val = _datasets(job, spec, cdf)
    global_batch = job.batch_size * dist.size
    train_data = dist.dataset(make_train, global_batch)
    val_data = dist.dataset(make_val, global_batch) if job.val_dir else None

    with dist.scope():
        model = build_model(spec, text)
        schedule = warmup_schedule_class()(
            job.learning_rate, job.learning_rate * dist.size, job.warmup_epochs * job.steps_per_epoch
        )
        # The legacy Adam is the one Horovod 0.28's DistributedOptimizer wraps reliably.
        optimizer = dist.wrap_optimizer(tf.keras.optimizers.legacy.Adam(learning_rate=schedule))
        model.compile(optimizer=optimizer, loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))

    epoch_seconds: list = []

    def epoch_done(epoch: int, logs: dict) -> None:
        epoch_seconds[-1] = time.perf_counter() - epoch_seconds[-1]
        if dist.is_chief:
            log.info("epoch %d/%d: %.1fs %s", epoch + 1, job.epochs, epoch_seconds[-1],
                     {k: round(float(v), 5) for k, v in (logs or {}).items() if k != "lr"})

    timer = tf.keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: epoch_seconds.append(time.perf_counter()), on_epoch_end=epoch_done
    )
    monitor = "val_loss" if val_data is not None else "loss"
    stopper = tf.keras.callbacks.EarlyStopping(
        monitor=monitor, patience=job.patience, restore_best_weights=True, verbose=0
    )
    started = time.perf_counter()
    history = model.fit(
        train_data,
        epochs=job.epochs,
        steps_per_epoch=job.steps_per_epoch,
        validation_data=val_data,
        validation_steps=job.val_steps if val_data is not None else None,
        callbacks=dist.callbacks() + [stopper, timer],
        verbose=0,
    )
    seconds = time.perf_counter() - started
    epochs_run = len(history.history.get("loss", []))

    vocabulary = pq.read_table(job.vocabulary_dir, columns=["index", ITEM_ID, VOCAB_COUNT, VOCAB_LOG_Q]).sort_by(
        "index"
    )
    log_q = np.full(spec.n_tokens, -np.inf)
    log_q[FIRST_ITEM:] = vocabulary.column(VOCAB_LOG_Q).to_numpy()
    ranker = SequenceRanker(job.version, spec, [str(i) for i in vocabulary.column(ITEM_ID).to_pylist()], log_q, model)
    result = {
        "rank": dist.rank,
        "world_size": dist.size,
        "distribution": dist.name,
        "history": {name: [float(v) for v in values] for name, values in history.history.items() if name != "lr"},
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "epochs_run": epochs_run,
        "best_epoch": (stopper.best_epoch + 1) if epochs_run else 0,
        "examples": epochs_run * job.steps_per_epoch * job.batch_size,
        "seconds": seconds,
        "weights_sha256": weights_digest(model.get_weights()),
        "weights_sum": float(sum(np.asarray(w, dtype=np.float64).sum() for w in model.get_weights())),
    }
    if job.val_dir:
        result.update(ranking_sums(ranker, job.val_dir, dist.shard))
    if dist.is_chief:
        export = build_model(spec, text)
        export.set_weights(model.get_weights())
        os.makedirs(job.export_dir, exist_ok=True)
        export.save(os.path.join(job.export_dir, MODEL_FILE))
    log.info(
        "rank %d/%d (%s): %d epochs, %.1fs, final %s",
        dist.rank, dist.size, dist.name, epochs_run, seconds,
        {k: v[-1] for k, v in result["history"].items() if v},
    )
    return result

