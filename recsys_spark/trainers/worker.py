"""The per-rank training loop every backend runs, and the distribution hooks that vary.

A rank reads only its own shard (``shard=<rank>``) of windows (``inputs``, ``targets``, ``mask``:
``train.max_len`` positions, right-padded) with pyarrow into ``tf.data``. One LSTM pass serves
every position of a window: the state at each masked-in position is trained to give its next item
the highest logit, with softmax cross-entropy over the whole vocabulary when it has at most
``train.full_softmax_max_items`` items and sampled softmax above that (``train.sampled_negatives``
shared negatives drawn per step from count**alpha, plus the batch's other targets; logQ
correction; accidental hits masked). The embedding's gradients are sparse and the optimizer is a
lazy Adam, so a sampled step's cost does not grow with the catalog.

After each epoch every rank computes HR@10 / NDCG@10 sums of its validation users (full ranking
over the items the user has not trained on), the sums are all-reduced, and every rank takes the
same decision from the same numbers: keep the best weights, stop after ``patience`` epochs
without a better NDCG@10, stop when the next epoch would not fit in ``train.max_minutes``.
Horovod and MultiWorkerMirroredStrategy differ only in the ``Distribution`` object. Every rank
takes the same number of steps per epoch (fixed by the driver from the smallest shard), so
collective operations never wait on a rank that ran out of data.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import hashlib
import logging
import math
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
    full_softmax_loss,
    sampled_softmax_loss,
    set_tf_threads,
)
from recsys_spark.core.schemas import (
    EXAMPLE_INPUTS,
    EXAMPLE_MASK,
    EXAMPLE_SEEN,
    EXAMPLE_TARGET,
    EXAMPLE_TARGETS,
    ITEM_ID,
)
from recsys_spark.trainers import TrainJob

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 20000
READ_BATCH = 8192
RANKING_K = 10


class TrainingStopped(RuntimeError):
    """Training cannot go on: a NaN loss, or a time budget that ends before the first epoch."""


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

    def validation_shards(self) -> "list[int]":
        """The validation shards whose sums this rank computes (before ``sum_over_ranks``)."""
        return [self.shard]

    def scope(self):
        return contextlib.nullcontext()

    def wrap_optimizer(self, optimizer):
        return optimizer

    def callbacks(self) -> list:
        return []

    def sum_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``values`` over all ranks (every rank gets the same)."""
        return values

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        return values

    def dataset(self, make: Callable[[int, int], object], global_batch: int):
        """``make(shard, batch)`` -> a batched tf.data.Dataset for this rank."""
        return make(self.shard, global_batch // self.size)


class HorovodDistribution(Distribution):
    """Horovod: ring-allreduced gradients, variables broadcast from rank 0, one GPU per process
    pinned by local rank when GPUs exist; the validation sums are allreduced."""

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
        # The epoch's training loss averaged over the ranks before it is logged and recorded.
        return [
            self.hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            self.hvd.callbacks.MetricAverageCallback(),
        ]

    def sum_over_ranks(self, values: np.ndarray) -> np.ndarray:
        import horovod.tensorflow as hvd_tf

        return hvd_tf.allreduce(np.asarray(values, dtype=np.float64), op=hvd_tf.Sum, name="val_sums").numpy()

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        import horovod.tensorflow as hvd_tf

        return hvd_tf.allreduce(np.asarray(values, dtype=np.float64), op=hvd_tf.Max, name="val_max").numpy()


class MultiWorkerDistribution(Distribution):
    """tf.distribute.MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG.

    The variables are mirrored (identical on every worker), so each worker ranks every
    validation shard itself and reaches the same sums without a collective; the elapsed time
    (the budget) is max-reduced through the strategy."""

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

    def validation_shards(self) -> "list[int]":
        return list(range(self.size))

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        # A cross-worker maximum through the strategy, so the time budget ends the same epoch on
        # every worker even when their clocks drift. tf.distribute reduces by SUM or MEAN only:
        # each worker fills its own row, the rows are summed, the maximum is taken here.
        rows = np.zeros((self.size, len(values)), dtype=np.float32)
        rows[self.rank] = values

        per_worker = self.strategy.experimental_distribute_values_from_function(lambda _: tf.constant(rows))
        gathered = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_worker, axis=None).numpy()
        return gathered.max(axis=0).astype(np.float64)

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


def _fixed(column, max_len: int) -> np.ndarray:
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, max_len)


def read_windows(files: "list[str]", max_len: int) -> Iterator["tuple[np.ndarray, np.ndarray, np.ndarray]"]:
    """(inputs, targets, mask) batches of the training windows in ``files``."""
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(
            batch_size=READ_BATCH, columns=[EXAMPLE_INPUTS, EXAMPLE_TARGETS, EXAMPLE_MASK]
        ):
            yield (
                _fixed(batch.column(EXAMPLE_INPUTS), max_len).astype(np.int32),
                _fixed(batch.column(EXAMPLE_TARGETS), max_len).astype(np.int32),
                _fixed(batch.column(EXAMPLE_MASK), max_len).astype(bool),
            )


def read_validation(files: "list[str]", max_len: int) -> Iterator["tuple[np.ndarray, np.ndarray, list]"]:
    """(inputs, target, seen token lists) batches of the validation rows in ``files``."""
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(
            batch_size=READ_BATCH, columns=[EXAMPLE_INPUTS, EXAMPLE_TARGET, EXAMPLE_SEEN]
        ):
            yield (
                _fixed(batch.column(EXAMPLE_INPUTS), max_len).astype(np.int32),
                batch.column(EXAMPLE_TARGET).to_numpy().astype(np.int64),
                batch.column(EXAMPLE_SEEN).to_pylist(),
            )


def vocabulary_log_probabilities(vocabulary_dir: str, n_tokens: int) -> "tuple[np.ndarray, np.ndarray]":
    """(log q, log f) per token (n_tokens,): the negative-sampling distribution stored in the
    vocabulary and the item frequency (that of in-batch negatives); -inf for padding / OOV."""
    import pyarrow.parquet as pq

    table = pq.read_table(vocabulary_dir, columns=["index", VOCAB_LOG_Q, VOCAB_COUNT]).sort_by("index")
    log_q = np.full(n_tokens, -np.inf)
    log_q[FIRST_ITEM:] = np.asarray(table.column(VOCAB_LOG_Q).to_pylist(), dtype=np.float64)
    counts = np.asarray(table.column(VOCAB_COUNT).to_pylist(), dtype=np.float64)
    log_f = np.full(n_tokens, -np.inf)
    log_f[FIRST_ITEM:] = np.log(counts / counts.sum())
    return log_q, log_f


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


def uses_full_softmax(job: TrainJob, spec: ModelSpec) -> bool:
    return spec.n_tokens - FIRST_ITEM <= job.full_softmax_max_items


def train_dataset(job: TrainJob, spec: ModelSpec, log_q: np.ndarray) -> Callable[[int, int], object]:
    """``make(shard, batch)`` -> a tf.data pipeline of {inputs, targets, mask, negatives}
    batches; ``negatives`` (the step's shared sampled negatives, inverse-CDF draws from q:
    O(log n) each) is empty under the full softmax."""
    import tensorflow as tf

    q = np.exp(log_q[FIRST_ITEM:])
    cdf = np.cumsum(q / q.sum())
    cdf[-1] = 1.0
    cdf_tensor = tf.constant(cdf.astype(np.float32))
    draws = 0 if uses_full_softmax(job, spec) else job.sampled_negatives
    signature = tuple(tf.TensorSpec((None, spec.max_len), dtype) for dtype in (tf.int32, tf.int32, tf.bool))

    def with_negatives(inputs, targets, mask):
        uniform = tf.random.uniform((draws,), dtype=tf.float32)
        drawn = tf.cast(tf.searchsorted(cdf_tensor, uniform, side="right"), tf.int32) + FIRST_ITEM
        negatives = tf.minimum(drawn, spec.n_tokens - 1)
        return {"inputs": inputs, "targets": targets, "mask": mask, "negatives": negatives}

    def make(shard: int, batch: int):
        files = shard_files(job.train_dir, shard)
        if not files:
            raise FileNotFoundError(f"training shard {shard} has no Parquet files under {job.train_dir}")
        return (
            tf.data.Dataset.from_generator(lambda: read_windows(files, spec.max_len), output_signature=signature)
            .unbatch()
            .shuffle(SHUFFLE_BUFFER, seed=job.seed + shard, reshuffle_each_iteration=True)
            .repeat()
            .batch(batch, drop_remainder=True)
            .map(with_negatives, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )

    return make


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


@functools.lru_cache(maxsize=1)
def lazy_adam_class():
    """Adam whose sparse updates touch only the rows of the step (as tensorflow-addons'
    LazyAdam): the legacy Adam decays the moments of every row of the embedding each step, a
    cost that grows with the catalog. Dense variables are updated as by Adam."""
    import tensorflow as tf

    @tf.keras.utils.register_keras_serializable(package="recsys_spark")
    class LazyAdam(tf.keras.optimizers.legacy.Adam):
        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            dtype = var.dtype.base_dtype
            lr_t = self._decayed_lr(dtype)
            beta_1 = self._get_hyper("beta_1", dtype)
            beta_2 = self._get_hyper("beta_2", dtype)
            step = tf.cast(self.iterations + 1, dtype)
            lr = lr_t * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
            m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
            m_rows = beta_1 * tf.gather(m, indices) + (1 - beta_1) * grad
            v_rows = beta_2 * tf.gather(v, indices) + (1 - beta_2) * tf.square(grad)
            update = lr * m_rows / (tf.sqrt(v_rows) + tf.convert_to_tensor(self.epsilon, dtype))
            return tf.group(
                tf.raw_ops.ResourceScatterUpdate(resource=m.handle, indices=indices, updates=m_rows),
                tf.raw_ops.ResourceScatterUpdate(resource=v.handle, indices=indices, updates=v_rows),
                tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=indices, updates=update),
            )

    return LazyAdam


@functools.lru_cache(maxsize=1)
def next_item_trainer_class():
    """The Keras model that trains a ``build_model`` network at every position of a window."""
    import tensorflow as tf

    class NextItemTrainer(tf.keras.Model):
        def __init__(self, network, log_q: np.ndarray, log_f: Optional[np.ndarray], full_softmax: bool, clipnorm: float):
            super().__init__(name="next_item_trainer")
            self.network = network
            self.states = tf.keras.Model(network.input["history"], network.get_layer("user_states").output)
            self.full_softmax = full_softmax
            self.log_q = tf.constant(np.maximum(log_q, -1e30).astype(np.float32))
            self.log_f = None if log_f is None else tf.constant(np.maximum(log_f, -1e30).astype(np.float32))
            self.clipnorm = clipnorm
            self.loss_tracker = tf.keras.metrics.Mean(name="loss")

        @property
        def metrics(self):
            return [self.loss_tracker]

        def call(self, inputs, training=False):
            return self.states(inputs, training=training)

        def train_step(self, batch):
            with tf.GradientTape() as tape:
                states = self.states(batch["inputs"], training=True)
                positions = tf.where(batch["mask"])
                states = tf.gather_nd(states, positions)
                targets = tf.gather_nd(batch["targets"], positions)
                if self.full_softmax:
                    loss = full_softmax_loss(self.network, states, targets)
                else:
                    loss = sampled_softmax_loss(self.network, states, targets, batch["negatives"], self.log_q, self.log_f)
                # Gradients are summed over MultiWorkerMirroredStrategy's replicas (Horovod averages).
                scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
            variables = self.trainable_variables
            # _compute_gradients: where Horovod's DistributedOptimizer allreduces.
            grads, variables = zip(*self.optimizer._compute_gradients(scaled, variables, tape=tape))
            if self.clipnorm > 0:
                grads, _ = tf.clip_by_global_norm(list(grads), self.clipnorm)
            self.optimizer.apply_gradients(zip(grads, variables))
            self.loss_tracker.update_state(loss)
            # "targets": this step's count on this rank (not a metric: never averaged).
            return {"loss": self.loss_tracker.result(), "targets": tf.cast(tf.shape(targets)[0], tf.float32)}

    return NextItemTrainer


def weights_digest(weights: "list[np.ndarray]") -> str:
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def ranking_sums(ranker: SequenceRanker, val_dir: str, shards: "list[int]", k: int = RANKING_K) -> np.ndarray:
    """[hits@k, ndcg@k, count, cross-entropy] sums over the validation users of ``shards``: each
    target ranked against every item the user has not trained on (the seen set excluded, the
    target kept); the cross-entropy is the full-vocabulary softmax loss of the target."""
    sums = np.zeros(4)
    for shard in shards:
        for inputs, targets, seen in read_validation(shard_files(val_dir, shard), ranker.spec.max_len):
            for start in range(0, len(targets), 256):
                chunk = slice(start, start + 256)
                scores = ranker.all_item_scores(ranker.user_states_for_tokens(inputs[chunk])).astype(np.float64)
                rows = np.arange(len(scores))
                columns = targets[chunk] - FIRST_ITEM
                target_scores = scores[rows, columns]
                peak = scores.max(axis=1)
                sums[3] += float((peak + np.log(np.exp(scores - peak[:, None]).sum(axis=1)) - target_scores).sum())
                for row, tokens in enumerate(seen[chunk]):
                    excluded = np.asarray(tokens or [], dtype=np.int64) - FIRST_ITEM
                    scores[row, excluded[excluded != columns[row]]] = -np.inf
                ranks = (scores > target_scores[:, None]).sum(axis=1)
                sums[0] += float((ranks < k).sum())
                sums[1] += float((1.0 / np.log2(ranks[ranks < k] + 2.0)).sum())
                sums[2] += len(rows)
    return sums


def epoch_callback_class():
    """The callback that validates, stops and keeps the best weights: the same decision on
    every rank, from all-reduced sums."""
    import tensorflow as tf

    class EpochEnd(tf.keras.callbacks.Callback):
        def __init__(self, job: TrainJob, dist: Distribution, ranker_for: Callable[[], SequenceRanker]):
            super().__init__()
            self.job, self.dist, self.ranker_for = job, dist, ranker_for
            self.history: dict = {"loss": [], "val_loss": [], "val_hr@10": [], "val_ndcg@10": [], "targets": []}
            self.epoch_seconds: list = []
            self.best_epoch, self.best_ndcg, self.best_weights = 0, -np.inf, None
            self.stopped_by = "epochs"
            self.started = time.perf_counter()
            self.budget_s = job.max_minutes * 60.0 if job.max_minutes > 0 else math.inf

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.perf_counter()
            self.targets = 0.0

        def on_train_batch_end(self, batch, logs=None):
            loss = float(logs["loss"])
            self.targets += float(logs.get("targets", 0.0))
            if not math.isfinite(loss):
                raise TrainingStopped(
                    f"train: the loss became {loss} at epoch {len(self.epoch_seconds) + 1}, step {batch + 1} "
                    f"(rank {self.dist.rank}); nothing was exported, the previous model stays in service; "
                    "lower train.learning_rate or train.clip_norm"
                )
            if not self.epoch_seconds and time.perf_counter() - self.started > self.budget_s:
                raise TrainingStopped(
                    f"train.max_minutes={self.job.max_minutes}: the time budget ended before the first epoch "
                    f"finished (step {batch + 1} of {self.job.steps_per_epoch}); raise train.max_minutes or "
                    "lower train.batch_size / the data"
                )

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self.epoch_started)
            # Keras reports the mean of the per-step losses over the epoch.
            self.history["loss"].append(float(logs["loss"]))
            self.history["targets"].append(self.targets)
            if self.job.val_dir:
                sums = self.dist.sum_over_ranks(
                    ranking_sums(self.ranker_for(), self.job.val_dir, self.dist.validation_shards())
                )
                hr, ndcg, loss = (sums[0] / sums[2], sums[1] / sums[2], sums[3] / sums[2]) if sums[2] else (0.0, 0.0, 0.0)
                self.history["val_hr@10"].append(float(hr))
                self.history["val_ndcg@10"].append(float(ndcg))
                self.history["val_loss"].append(float(loss))
            else:
                # No validation: the last epoch is the best (a per-rank loss could make ranks disagree).
                ndcg = float(epoch)
            if ndcg > self.best_ndcg:
                self.best_epoch, self.best_ndcg = epoch + 1, ndcg
                self.best_weights = self.model.network.get_weights()
            elapsed = float(self.dist.max_over_ranks(np.array([time.perf_counter() - self.started]))[0])
            mean_epoch = elapsed / (epoch + 1)
            # As Keras's EarlyStopping: patience epochs in a row without a better NDCG@10 (0: one).
            if epoch + 1 - self.best_epoch >= max(1, self.job.patience):
                self.stopped_by, self.model.stop_training = "early_stopping", True
            elif epoch + 1 < self.job.epochs and elapsed + mean_epoch > self.budget_s:
                self.stopped_by, self.model.stop_training = "max_minutes", True
            if self.dist.is_chief:
                log.info(
                    "epoch %d/%d: %.1fs, loss %.4f, val NDCG@10 %s%s", epoch + 1, self.job.epochs, self.epoch_seconds[-1],
                    self.history["loss"][-1],
                    f"{self.history['val_ndcg@10'][-1]:.4f}" if self.job.val_dir else "n/a",
                    f"; stopping ({self.stopped_by})" if self.model.stop_training else "",
                )

    return EpochEnd


def _fit(job: TrainJob, dist: Distribution, spec: ModelSpec, text, item_ids: "list[str]", log_q, log_f, full_softmax: bool):
    """Build the network and train it on ``job.train_dir`` for at most ``job.epochs`` (early
    stopping on ``job.val_dir`` when given); returns ``(network, stepper)``."""
    import tensorflow as tf

    # The same seed everywhere: identical initial weights even before Horovod's broadcast.
    tf.keras.utils.set_random_seed(job.seed)
    train_data = dist.dataset(train_dataset(job, spec, log_q), job.batch_size * dist.size)
    with dist.scope():
        network = build_model(spec, text)
        model = next_item_trainer_class()(
            network, log_q, log_f if job.in_batch_negatives else None, full_softmax, job.clip_norm
        )
        # At most sqrt(workers): the batch grows with the workers, the rate more slowly
        # (the linear rule overshoots with Adam on sparse embeddings).
        schedule = warmup_schedule_class()(
            job.learning_rate, job.learning_rate * math.sqrt(dist.size), job.warmup_epochs * job.steps_per_epoch
        )
        optimizer = dist.wrap_optimizer(lazy_adam_class()(learning_rate=schedule))
        model.compile(optimizer=optimizer)
        # Step outputs as this rank computed them (the default sums them over MultiWorkerMirrored
        # workers): the loss is then averaged by Horovod's callback, the target counts by the driver.
        model.distribute_reduction_method = "first"

    stepper = epoch_callback_class()(job, dist, lambda: SequenceRanker(job.version, spec, item_ids, network))
    model.fit(
        train_data,
        epochs=job.epochs,
        steps_per_epoch=job.steps_per_epoch,
        callbacks=dist.callbacks() + [stepper],
        verbose=0,
    )
    if stepper.best_weights is not None:
        network.set_weights(stepper.best_weights)
    return network, stepper


def refit_plan(job: TrainJob, best_epoch: int, epochs_run: int, elapsed_s: float) -> "tuple[bool, str]":
    """Whether the final refit on train + validation runs, and why (or why not): it needs a
    refit set and a chosen epoch, and must fit in what is left of ``max_minutes`` (estimated from
    the selection's seconds per epoch, scaled by the refit's steps). ``elapsed_s`` is the
    slowest rank's, so every rank decides the same."""
    if not job.refit_dir:
        return False, "off (train.final_fit=train)"
    if best_epoch < 1:
        return False, "no epoch was chosen"
    if job.max_minutes > 0 and epochs_run:
        mean = elapsed_s / epochs_run
        estimate = best_epoch * mean * job.refit_steps_per_epoch / max(1, job.steps_per_epoch)
        if elapsed_s + estimate > job.max_minutes * 60.0:
            return False, (
                f"skipped: about {estimate:.0f}s of refit would pass train.max_minutes={job.max_minutes} "
                f"({elapsed_s:.0f}s used); the model trained on train_items is served"
            )
    return True, f"train + validation, {best_epoch} epochs (the chosen epoch)"


def train_worker(job: TrainJob, distribution: str = "local") -> dict:
    """Train one rank; the chief exports ``model.keras`` into ``job.export_dir``.

    Training on ``train_dir`` chooses the epoch by validation NDCG@10; with ``refit_dir`` the
    model is then trained again from the same initial weights for that many epochs on the
    train + validation windows (what the baselines' final fit sees) and that model is exported.
    Returns this rank's history (per-epoch loss, val_loss, val_hr@10, val_ndcg@10, targets),
    epoch seconds, the best epoch and why training stopped, targets trained, training seconds, a
    digest of its final weights and the validation ranking sums of the chosen (pre-refit)
    weights (all ranks): the refit has seen the validation items, so they cannot judge it."""
    import pyarrow.parquet as pq

    set_tf_threads(job.tf_threads)
    dist = {"local": Distribution, "horovod": HorovodDistribution, "tf_distribute": MultiWorkerDistribution}[
        distribution
    ]()
    spec = ModelSpec.from_json(job.model)
    log_q, log_f = vocabulary_log_probabilities(job.vocabulary_dir, spec.n_tokens)
    text = text_matrix(job.vocabulary_dir, spec)
    full_softmax = uses_full_softmax(job, spec)
    vocabulary = pq.read_table(job.vocabulary_dir, columns=["index", ITEM_ID]).sort_by("index")
    item_ids = [str(i) for i in vocabulary.column(ITEM_ID).to_pylist()]
    log.info(
        "rank %d/%d: %s, %d steps/epoch of %d windows", dist.rank, dist.size,
        "full softmax" if full_softmax else f"sampled softmax ({job.sampled_negatives} negatives"
        f"{' + in-batch' if job.in_batch_negatives else ''})", job.steps_per_epoch, job.batch_size,
    )
    started = time.perf_counter()
    network, stepper = _fit(job, dist, spec, text, item_ids, log_q, log_f, full_softmax)
    epochs_run = len(stepper.epoch_seconds)
    sums = ranking_sums(SequenceRanker(job.version, spec, item_ids, network), job.val_dir, [dist.shard]) if job.val_dir else None
    elapsed = float(dist.max_over_ranks(np.array([time.perf_counter() - started]))[0])
    refit, refit_note = refit_plan(job, stepper.best_epoch, epochs_run, elapsed)
    refit_history: dict = {}
    if refit:
        refit_job = dataclasses.replace(
            job, train_dir=job.refit_dir, val_dir=None, epochs=stepper.best_epoch,
            steps_per_epoch=job.refit_steps_per_epoch, max_minutes=0.0,
        )
        network, refitter = _fit(refit_job, dist, spec, text, item_ids, log_q, log_f, full_softmax)
        refit_history = {"loss": refitter.history["loss"], "targets": refitter.history["targets"],
                         "epoch_seconds": [round(x, 3) for x in refitter.epoch_seconds]}
    seconds = time.perf_counter() - started

    result = {
        "rank": dist.rank,
        "world_size": dist.size,
        "distribution": dist.name,
        "full_softmax": full_softmax,
        "history": {name: values for name, values in stepper.history.items() if values},
        "epoch_seconds": [round(s, 3) for s in stepper.epoch_seconds],
        "epochs_run": epochs_run,
        "best_epoch": stepper.best_epoch,
        "stopped_by": stepper.stopped_by,
        "refit": refit,
        "refit_note": refit_note,
        "refit_history": refit_history,
        "targets_trained": float(sum(stepper.history["targets"]) + sum(refit_history.get("targets", []))),
        "seconds": seconds,
        # the epochs' steps, without validation
        "train_seconds": float(sum(stepper.epoch_seconds) + sum(refit_history.get("epoch_seconds", []))),
        "weights_sha256": weights_digest(network.get_weights()),
    }
    if sums is not None:
        result.update({"val_hits": sums[0], "val_ndcg": sums[1], "val_count": sums[2], "val_xent": sums[3]})
    if dist.is_chief:
        export = build_model(spec, text)
        export.set_weights(network.get_weights())
        os.makedirs(job.export_dir, exist_ok=True)
        export.save(os.path.join(job.export_dir, MODEL_FILE))
    log.info(
        "rank %d/%d (%s): %d epochs (best %d, stopped by %s), refit: %s, %.1fs",
        dist.rank, dist.size, dist.name, epochs_run, stepper.best_epoch, stepper.stopped_by, refit_note, seconds,
    )
    return result
