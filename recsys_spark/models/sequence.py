"""The LSTM sequence model: its Keras definition and ``SequenceRanker``, the loader for inference.

A user's recent items (oldest -> newest, left-padded with 0) go through the item tower (a trainable
embedding, plus a learned projection of the frozen text vectors when given), a masked LSTM and a
projection into the item space: the L2-normalised *user state*. A candidate goes through the same
item tower and is L2-normalised. The two are combined as (cosine, item bias) -> Dense(1) -> logit,
and sigmoid(logit) is the probability that the user interacts with the candidate next. Because the
cosine is the main term, the user state is also the query vector for cosine retrieval over
``item_vectors()``: one model serves retrieval and ranking.

Token ids: 0 is padding, 1 is out-of-vocabulary, items are 2..n_tokens-1 in vocabulary order.
TensorFlow is imported only inside the functions that need it.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np

from recsys_spark.core.schemas import ITEM_ID

log = logging.getLogger(__name__)

PAD = 0
OOV = 1
FIRST_ITEM = 2

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
VOCABULARY_DIR = "vocabulary"
LATEST_FILE = "latest"
VOCAB_INDEX = "index"
VOCAB_COUNT = "count"
VOCAB_LOG_Q = "log_q"  # log of the negative-sampling probability of the item
VOCAB_TEXT = "text_vector"


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild the network: sizes and the scoring correction."""

    n_tokens: int
    max_len: int
    embedding_dim: int
    lstm_units: int
    text_dim: int = 0
    negatives: int = 4
    logq_correction: bool = True

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@functools.lru_cache(maxsize=1)
def keras_layers() -> SimpleNamespace:
    """The custom layers, defined (and registered for loading) on first use so that importing
    this module does not import TensorFlow."""
    import tensorflow as tf

    @tf.keras.utils.register_keras_serializable(package="recsys_spark")
    class ItemTower(tf.keras.layers.Layer):
        """Item ids -> item vectors: trainable embedding + projection of frozen text vectors."""

        def __init__(self, n_tokens: int, dim: int, text_dim: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.n_tokens, self.dim, self.text_dim = n_tokens, dim, text_dim

        def build(self, input_shape):
            self.embedding = self.add_weight(
                name="embedding",
                shape=(self.n_tokens, self.dim),
                initializer=tf.keras.initializers.RandomNormal(stddev=0.05),
            )
            if self.text_dim:
                self.text_vectors = self.add_weight(
                    name="text_vectors", shape=(self.n_tokens, self.text_dim), initializer="zeros", trainable=False
                )
                self.text_projection = self.add_weight(
                    name="text_projection", shape=(self.text_dim, self.dim), initializer="glorot_uniform"
                )
            super().build(input_shape)

        def call(self, ids):
            vectors = tf.gather(self.embedding, ids)
            if self.text_dim:
                vectors = vectors + tf.matmul(tf.gather(self.text_vectors, ids), self.text_projection)
            return vectors

        def compute_mask(self, ids, mask=None):
            return tf.not_equal(ids, PAD)

        def get_config(self):
            return {**super().get_config(), "n_tokens": self.n_tokens, "dim": self.dim, "text_dim": self.text_dim}

    @tf.keras.utils.register_keras_serializable(package="recsys_spark")
    class CandidateLogits(tf.keras.layers.Layer):
        """(user state, candidate vectors, candidate ids) -> logits (batch, candidates).

        The combination is Dense(1) over [cosine(user, candidate), bias(candidate)]; the
        sigmoid is applied by the loss (from_logits, numerically stable) and by the ranker."""

        def __init__(self, n_tokens: int, **kwargs):
            super().__init__(**kwargs)
            self.n_tokens = n_tokens

        def build(self, input_shape):
            self.item_bias = self.add_weight(name="item_bias", shape=(self.n_tokens,), initializer="zeros")
            # A cosine lives in [-1, 1]: start with a temperature that lets logits spread.
            self.kernel = self.add_weight(
                name="kernel", shape=(2,), initializer=tf.keras.initializers.Constant([5.0, 1.0])
            )
            self.offset = self.add_weight(name="offset", shape=(), initializer="zeros")
            super().build(input_shape)

        def call(self, inputs, mask=None):
            user, candidates, ids = inputs
            user = tf.math.l2_normalize(user, axis=-1)
            candidates = tf.math.l2_normalize(candidates, axis=-1)
            cosine = tf.einsum("bd,bcd->bc", user, candidates)
            bias = tf.gather(self.item_bias, ids)
            return self.kernel[0] * cosine + self.kernel[1] * bias + self.offset

        def compute_mask(self, inputs, mask=None):
            return None

        def get_config(self):
            return {**super().get_config(), "n_tokens": self.n_tokens}

    return SimpleNamespace(ItemTower=ItemTower, CandidateLogits=CandidateLogits)


def build_model(spec: ModelSpec, text_vectors: Optional[np.ndarray] = None):
    """The Keras model: inputs ``history`` (batch, max_len) int32 and ``candidates`` (batch, C)
    int32; output logits (batch, C). ``text_vectors`` (n_tokens, text_dim) fills the frozen
    text table when the spec has one."""
    import tensorflow as tf

    layers = keras_layers()
    history = tf.keras.Input(shape=(spec.max_len,), dtype="int32", name="history")
    candidates = tf.keras.Input(shape=(None,), dtype="int32", name="candidates")
    tower = layers.ItemTower(spec.n_tokens, spec.embedding_dim, spec.text_dim, name="item_tower")
    sequence = tower(history)
    state = tf.keras.layers.LSTM(spec.lstm_units, name="lstm")(sequence)
    user_state = tf.keras.layers.Dense(spec.embedding_dim, name="user_state")(state)
    logits = layers.CandidateLogits(spec.n_tokens, name="logits")([user_state, tower(candidates), candidates])
    model = tf.keras.Model(inputs={"history": history, "candidates": candidates}, outputs=logits, name="sequence_ranker")
    if spec.text_dim:
        if text_vectors is None or text_vectors.shape != (spec.n_tokens, spec.text_dim):
            raise ValueError(
                f"build_model: text_vectors must have shape ({spec.n_tokens}, {spec.text_dim}); "
                f"got {None if text_vectors is None else text_vectors.shape}"
            )
        tower.text_vectors.assign(text_vectors.astype(np.float32))
    return model


def pad_histories(token_lists: "list[list[int]]", max_len: int) -> np.ndarray:
    """Token lists (oldest -> newest) -> (n, max_len) int32, the most recent items, left-padded."""
    out = np.zeros((len(token_lists), max_len), dtype=np.int32)
    for row, tokens in enumerate(token_lists):
        recent = tokens[-max_len:]
        if recent:
            out[row, max_len - len(recent):] = recent
    return out


def _l2_normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def latest_model_dir(models_dir: str) -> Optional[str]:
    """The folder ``<models_dir>/latest`` points at, or None when no model was fully written."""
    pointer = os.path.join(models_dir, LATEST_FILE)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as handle:
        version = handle.read().strip()
    model_dir = os.path.join(models_dir, version)
    if not version or not os.path.isfile(os.path.join(model_dir, MODEL_FILE)):
        log.warning("models dir %s: 'latest' names %r, which holds no model", models_dir, version)
        return None
    return model_dir


def check_model_folder(model_dir: str) -> dict:
    """The folder's ``config.json`` after checking that the folder is one model: the model file and
    the vocabulary are there, and the vocabulary is the one the network was built for (its items
    are tokens 2..n_tokens-1, each once). A mismatch is a ``ValueError`` naming the folder: such a
    folder is never published, logged or served."""
    config_path = os.path.join(model_dir, CONFIG_FILE)
    for path in (config_path, os.path.join(model_dir, MODEL_FILE), os.path.join(model_dir, VOCABULARY_DIR)):
        if not os.path.exists(path):
            raise ValueError(f"model folder {model_dir}: {os.path.basename(path)} is missing; retrain (train)")
    model_path = os.path.join(model_dir, MODEL_FILE)
    if not _complete_archive(model_path):
        raise ValueError(
            f"model folder {model_dir}: {MODEL_FILE} is not a complete Keras archive (truncated or damaged, "
            f"{os.path.getsize(model_path)} bytes); retrain (train)"
        )
    try:
        with open(config_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except ValueError as exc:
        raise ValueError(f"model folder {model_dir}: {CONFIG_FILE} is not valid JSON ({exc}); retrain (train)") from None
    spec = ModelSpec.from_json(meta.get("model", {})) if "n_tokens" in meta.get("model", {}) else None
    if spec is None or not meta.get("version"):
        raise ValueError(f"model folder {model_dir}: {CONFIG_FILE} has no model spec or version; retrain (train)")
    try:
        vocab = read_vocabulary(model_dir)
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a damaged file vary
        raise ValueError(
            f"model folder {model_dir}: {VOCABULARY_DIR}/ cannot be read ({type(exc).__name__}: {str(exc)[:200]}); "
            "retrain (train)"
        ) from None
    indices = vocab.column(VOCAB_INDEX).to_pylist()
    items = vocab.column(ITEM_ID).to_pylist()
    expected = list(range(FIRST_ITEM, spec.n_tokens))
    if indices != expected or len(set(items)) != len(items):
        raise ValueError(
            f"model folder {model_dir}: the vocabulary ({len(items)} items, tokens "
            f"{min(indices, default=None)}..{max(indices, default=None)}) does not match the model, built for "
            f"{spec.n_tokens - FIRST_ITEM} items (tokens {FIRST_ITEM}..{spec.n_tokens - 1}), each once; "
            "the folder was changed after training: retrain (train)"
        )
    return meta


def _complete_archive(path: str) -> bool:
    """Whether ``path`` is a whole zip archive (a ``.keras`` file is one): its directory is there and
    every member's checksum matches. Reads the file once (a model is megabytes)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def rank_candidates(items: "list[str]", probs, k: int) -> "tuple[list[str], list[float]]":
    """The ``k`` best of ``items`` by ``probs``, best first; ties keep the given order."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")[:k]
    return [items[i] for i in order], [float(probs[i]) for i in order]


@functools.lru_cache(maxsize=2)
def cached_ranker(model_dir: str) -> "SequenceRanker":
    """The model of ``model_dir``, loaded once per Python worker (TensorFlow on one thread,
    as several Spark tasks share the worker's cores)."""
    return SequenceRanker.load(model_dir, threads=1)


def read_vocabulary(model_dir: str):
    """The vocabulary table of a model folder (pyarrow), ordered by token index."""
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(model_dir, VOCABULARY_DIR))
    return table.sort_by(VOCAB_INDEX)


class SequenceRanker:
    """A trained model loaded for inference (in a Python worker: load once, score many).

    ``user_states`` and ``item_vectors`` are L2-normalised vectors of one space (cosine retrieval);
    ``score`` gives P(next item) for given candidates. Histories are item-id lists oldest -> newest;
    unknown ids map to the out-of-vocabulary token; unknown candidates score 0.
    """

    def __init__(self, version: str, spec: ModelSpec, item_ids: "list[str]", log_q: np.ndarray, keras_model):
        self.version = version
        self.spec = spec
        self.item_ids = item_ids
        self._token = {item: FIRST_ITEM + i for i, item in enumerate(item_ids)}
        self._log_q = log_q  # per token, -inf for padding / OOV
        self._model = keras_model
        import tensorflow as tf

        tower = keras_model.get_layer("item_tower")
        self._user_model = tf.keras.Model(keras_model.input["history"], keras_model.get_layer("user_state").output)
        token_vectors = tower(np.arange(spec.n_tokens, dtype=np.int32)).numpy()
        self._token_vectors = _l2_normalise(token_vectors)
        head = keras_model.get_layer("logits")
        self._kernel = head.kernel.numpy()
        self._offset = float(head.offset.numpy())
        self._bias = head.item_bias.numpy()

    @classmethod
    def load(cls, model_dir: str, threads: int = 1) -> "SequenceRanker":
        """Load ``model_dir`` (a ``models/<version>`` folder). ``threads`` caps TensorFlow's thread
        pools, which matters when several Spark tasks share an executor's cores."""
        import tensorflow as tf

        set_tf_threads(threads)
        with open(os.path.join(model_dir, CONFIG_FILE), encoding="utf-8") as handle:
            meta = json.load(handle)
        spec = ModelSpec.from_json(meta["model"])
        keras_layers()
        keras_model = tf.keras.models.load_model(os.path.join(model_dir, MODEL_FILE), compile=False)
        vocab = read_vocabulary(model_dir)
        item_ids = [str(item) for item in vocab.column(ITEM_ID).to_pylist()]
        log_q = np.full(spec.n_tokens, -np.inf, dtype=np.float64)
        log_q[FIRST_ITEM:] = np.asarray(vocab.column(VOCAB_LOG_Q).to_pylist(), dtype=np.float64)
        return cls(meta["version"], spec, item_ids, log_q, keras_model)

    def known(self, item_ids: "list[str]") -> "list[str]":
        """The ids of ``item_ids`` that are in the vocabulary, in their order."""
        return [item for item in item_ids if item in self._token]

    def tokens(self, item_ids: "list[str]") -> "list[int]":
        return [self._token.get(item, OOV) for item in item_ids]

    def user_states(self, histories: "list[list[str]]") -> np.ndarray:
        """(n, d) L2-normalised query vectors, one per history."""
        return self.user_states_for_tokens(pad_histories([self.tokens(h) for h in histories], self.spec.max_len))

    def user_states_for_tokens(self, padded: np.ndarray) -> np.ndarray:
        """(n, d) L2-normalised query vectors for (n, max_len) left-padded token histories."""
        if len(padded) == 0:
            return np.zeros((0, self.spec.embedding_dim), dtype=np.float32)
        # Direct calls rather than predict(): no distribution machinery, so this also works on a
        # model trained under a multi-worker strategy, on any one worker.
        states = np.concatenate(
            [self._user_model(padded[start:start + 1024], training=False).numpy() for start in range(0, len(padded), 1024)]
        )
        return _l2_normalise(states).astype(np.float32)

    def item_vectors(self) -> "tuple[list[str], np.ndarray]":
        """The vocabulary and its (n_items, d) L2-normalised vectors, in the user-state space."""
        return list(self.item_ids), self._token_vectors[FIRST_ITEM:].astype(np.float32)

    def logits(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Model logits for candidate tokens (any shape, leading dim = users) given user states."""
        cosine = np.einsum("nd,n...d->n...", states, self._token_vectors[tokens])
        return self._kernel[0] * cosine + self._kernel[1] * self._bias[tokens] + self._offset

    def all_item_scores(self, states: np.ndarray) -> np.ndarray:
        """(n, n_items) ranking scores of every vocabulary item (columns in ``item_ids`` order)."""
        items = slice(FIRST_ITEM, None)
        logits = self._kernel[0] * (states @ self._token_vectors[items].T) + self._kernel[1] * self._bias[items] + self._offset
        if self.spec.logq_correction:
            logits = logits + np.log(self.spec.negatives) + self._log_q[items]
        return logits

    def ranking_scores(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Logits with log(negatives * q) added back when the model was trained with popularity
        negatives: BCE against negatives drawn from q learns log P(next) - log(k q)."""
        logits = self.logits(states, tokens)
        if self.spec.logq_correction:
            logits = logits + np.log(self.spec.negatives) + self._log_q[tokens]
        return logits

    def score(self, histories: "list[list[str]]", candidates: "list[list[str]]") -> "list[np.ndarray]":
        """P(next) for each candidate of each history (0 for candidates outside the vocabulary)."""
        if len(histories) != len(candidates):
            raise ValueError(f"score: {len(histories)} histories but {len(candidates)} candidate lists")
        states = self.user_states(histories)
        out = []
        for state, items in zip(states, candidates):
            tokens = np.asarray(self.tokens(items), dtype=np.int64)
            known = tokens >= FIRST_ITEM
            probs = np.zeros(len(tokens), dtype=np.float32)
            if known.any():
                z = self.ranking_scores(state[None, :], tokens[known][None, :])[0]
                probs[known] = (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
            out.append(probs)
        return out


def set_tf_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools (0 keeps its defaults). Only possible before TF starts."""
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.debug("TensorFlow already initialised; thread pools left as they are")
