"""The LSTM sequence model: its Keras definition, its training losses and ``SequenceRanker``.

A user's recent items (oldest -> newest, right-padded with 0: the layout cuDNN's masked LSTM
needs on a GPU) go through the item tower (a trainable embedding, plus a learned projection of
the frozen text vectors when given), dropout, a masked LSTM, dropout and a projection into the
item space: one *user state* per position. The state at the last real position is the user's
query vector. A candidate goes through the same item tower; the logit of (user, item) is
``scale * cosine(state, item vector) + bias(item)``, and the model is trained at every position to
give the next item the highest logit among all items: softmax cross-entropy over the whole
vocabulary while it is small, sampled softmax with logQ correction above that
(``full_softmax_loss``, ``sampled_softmax_loss``). Scores are the raw logits (P(next) is their
softmax). Retrieval searches by the same score: ``retrieval_queries`` and
``retrieval_item_vectors`` are unit vectors ``[scale*s, 1, 0]/Q`` and ``[e, b, sqrt(M^2-1-b^2)]/M``
(``s``, ``e`` the unit state and item vector, ``b`` the item's bias, ``M^2 = 1 + max b^2``,
``Q^2 = scale^2 + 1``), so their cosine is the logit divided by ``retrieval_scale = M*Q``, one
constant: a cosine top-N is the ranker's top-N, and one model serves retrieval and ranking.

Token ids: 0 is padding, 1 is out-of-vocabulary, items are 2..n_tokens-1 in vocabulary order.
TensorFlow is imported only inside the functions that need it.
"""
from __future__ import annotations

import copy
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
VOCAB_LOG_Q = "log_q"  # log of the negative-sampling probability of the item (count**alpha, normalised)
VOCAB_TEXT = "text_vector"

# Logits of masked candidates (accidental hits): far below any real logit, but finite, so that
# neither the loss nor its gradient ever meets inf - inf.
MASKED_LOGIT = -1e9


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild the network."""

    n_tokens: int
    max_len: int
    embedding_dim: int
    lstm_units: int
    text_dim: int = 0
    dropout: float = 0.0

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
        """Item ids -> item vectors: trainable embedding + projection of frozen text vectors.

        Rows are gathered, so the embedding's gradient is sparse (``IndexedSlices`` over the
        items of the step): with a lazy optimizer a step costs the same for any catalog size."""

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
    class LastState(tf.keras.layers.Layer):
        """(states (batch, max_len, d), ids (batch, max_len)) -> the state at the last non-padding
        position of each right-padded row (position 0 for an empty row)."""

        def call(self, inputs, mask=None):
            states, ids = inputs
            last = tf.maximum(tf.reduce_sum(tf.cast(tf.not_equal(ids, PAD), tf.int32), axis=1) - 1, 0)
            return tf.gather(states, last, axis=1, batch_dims=1)

        def compute_mask(self, inputs, mask=None):
            return None

    @tf.keras.utils.register_keras_serializable(package="recsys_spark")
    class CandidateLogits(tf.keras.layers.Layer):
        """(user states (n, d), candidate vectors (..., d), candidate ids) -> raw logits.

        ``scale * cosine + bias(item)``. ``call`` takes per-user candidates (n, C, d);
        ``shared`` one candidate list for every user (C, d) -> (n, C), the training losses' and
        the full ranking's form."""

        def __init__(self, n_tokens: int, **kwargs):
            super().__init__(**kwargs)
            self.n_tokens = n_tokens

        def build(self, input_shape):
            self.item_bias = self.add_weight(name="item_bias", shape=(self.n_tokens,), initializer="zeros")
            # A cosine lives in [-1, 1]: a softmax over thousands of items needs logits that spread
            # further, so the temperature starts high and is learned.
            self.scale = self.add_weight(name="scale", shape=(), initializer=tf.keras.initializers.Constant(10.0))
            super().build(input_shape)

        def call(self, inputs, mask=None):
            user, candidates, ids = inputs
            user = tf.math.l2_normalize(user, axis=-1)
            candidates = tf.math.l2_normalize(candidates, axis=-1)
            return self.scale * tf.einsum("bd,bcd->bc", user, candidates) + tf.gather(self.item_bias, ids)

        def shared(self, user, candidates, ids):
            user = tf.math.l2_normalize(user, axis=-1)
            candidates = tf.math.l2_normalize(candidates, axis=-1)
            return self.scale * tf.matmul(user, candidates, transpose_b=True) + tf.gather(self.item_bias, ids)[None, :]

        def pairs(self, user, candidates, ids):
            """One candidate per user: (n, d), (n, d), (n,) -> (n,)."""
            user = tf.math.l2_normalize(user, axis=-1)
            candidates = tf.math.l2_normalize(candidates, axis=-1)
            return self.scale * tf.reduce_sum(user * candidates, axis=-1) + tf.gather(self.item_bias, ids)

        def compute_mask(self, inputs, mask=None):
            return None

        def get_config(self):
            return {**super().get_config(), "n_tokens": self.n_tokens}

    return SimpleNamespace(ItemTower=ItemTower, LastState=LastState, CandidateLogits=CandidateLogits)


def build_model(spec: ModelSpec, text_vectors: Optional[np.ndarray] = None):
    """The Keras model: inputs ``history`` (batch, max_len) int32, right-padded, and
    ``candidates`` (batch, C) int32; output raw logits (batch, C) of the candidates after the
    whole history. Layers ``user_states`` (one state per position, what training reads),
    ``user_state`` (the last one), ``item_tower`` and ``logits`` are the parts the ranker and
    the trainer use. ``text_vectors`` (n_tokens, text_dim) fills the frozen text table when
    the spec has one."""
    import tensorflow as tf

    layers = keras_layers()
    history = tf.keras.Input(shape=(spec.max_len,), dtype="int32", name="history")
    candidates = tf.keras.Input(shape=(None,), dtype="int32", name="candidates")
    tower = layers.ItemTower(spec.n_tokens, spec.embedding_dim, spec.text_dim, name="item_tower")
    sequence = tf.keras.layers.Dropout(spec.dropout, name="input_dropout")(tower(history))
    # Defaults (tanh, sigmoid, no recurrent dropout) plus a right-padded mask: the cuDNN kernel.
    outputs = tf.keras.layers.LSTM(spec.lstm_units, return_sequences=True, name="lstm")(sequence)
    outputs = tf.keras.layers.Dropout(spec.dropout, name="output_dropout")(outputs)
    states = tf.keras.layers.Dense(spec.embedding_dim, name="user_states")(outputs)
    user_state = layers.LastState(name="user_state")([states, history])
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


# ---- training losses -------------------------------------------------------------------------
def full_softmax_loss(model, states, targets):
    """Mean softmax cross-entropy of ``targets`` (P,) token ids over every item of the
    vocabulary, given user states (P, d) of ``model`` (``build_model``)."""
    import tensorflow as tf

    n_tokens = model.get_layer("logits").n_tokens
    items = tf.range(FIRST_ITEM, n_tokens)
    logits = model.get_layer("logits").shared(states, model.get_layer("item_tower")(items), items)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets - FIRST_ITEM, logits=logits)
    )


def sampled_softmax_loss(model, states, targets, negatives, log_q, log_f=None):
    """Mean sampled-softmax cross-entropy (Jean et al. 2015; Yi et al. 2019): each target
    against ``negatives`` (K,) token ids drawn from q (shared by every position of the batch)
    and, when ``log_f`` is given, the other targets of the batch (in-batch negatives, drawn from
    the target frequency f).

    A negative column c gets logQ correction: its logit minus log E[c's columns] = log(K q(c) +
    P f(c)), so that the sum of the corrected exponentials estimates the full softmax's
    normaliser. Columns that hold the position's own target (accidental hits) are masked; the
    target's own logit stays raw. With every item once as a negative, uniform q and no in-batch
    negatives this is exactly ``full_softmax_loss``. ``log_q``/``log_f``: per token (n_tokens,)."""
    import tensorflow as tf

    head, tower = model.get_layer("logits"), model.get_layer("item_tower")
    positive = head.pairs(states, tower(targets), targets)
    k = tf.cast(tf.shape(negatives)[0], tf.float32)
    if log_f is None:
        columns = negatives
        expected = k * tf.exp(tf.gather(log_q, columns))
    else:
        columns = tf.concat([negatives, targets], axis=0)
        batch = tf.cast(tf.shape(targets)[0], tf.float32)
        expected = k * tf.exp(tf.gather(log_q, columns)) + batch * tf.exp(tf.gather(log_f, columns))
    logits = head.shared(states, tower(columns), columns) - tf.math.log(expected)[None, :]
    hits = tf.equal(targets[:, None], columns[None, :])
    logits = tf.where(hits, tf.constant(MASKED_LOGIT, logits.dtype), logits)
    normaliser = tf.reduce_logsumexp(tf.concat([positive[:, None], logits], axis=1), axis=1)
    return tf.reduce_mean(normaliser - positive)


def pad_histories(token_lists: "list[list[int]]", max_len: int) -> np.ndarray:
    """Token lists (oldest -> newest) -> (n, max_len) int32, the most recent items, right-padded
    with 0 (the model's layout)."""
    out = np.zeros((len(token_lists), max_len), dtype=np.int32)
    for row, tokens in enumerate(token_lists):
        recent = tokens[-max_len:]
        if recent:
            out[row, :len(recent)] = recent
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

    ``user_states`` and ``item_vectors`` are L2-normalised vectors of one space;
    ``retrieval_queries`` and ``retrieval_item_vectors`` are the retrieval vectors whose cosine
    times ``retrieval_scale`` is the logit;
    ``score`` gives P(next item) for given candidates: the softmax of the raw logits over the
    whole vocabulary (no sampling correction: the model was trained to rank by these logits).
    Histories are item-id lists oldest -> newest; unknown ids map to the out-of-vocabulary token;
    unknown candidates score 0.
    """

    def __init__(self, version: str, spec: ModelSpec, item_ids: "list[str]", keras_model, counts=None):
        self.version = version
        # Training counts of the vocabulary's items (None: unknown), for the cold items' bias.
        self._counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        self.spec = spec
        self.item_ids = list(item_ids)  # the vocabulary, then any cold items (with_cold_items)
        self.vocabulary_size = len(item_ids)
        self.cold_items: "list[str]" = []
        self._input_token = {item: FIRST_ITEM + i for i, item in enumerate(item_ids)}
        self._token = dict(self._input_token)  # candidates: the vocabulary and the cold items
        self._model = keras_model
        import tensorflow as tf

        tower = keras_model.get_layer("item_tower")
        self._user_model = tf.keras.Model(keras_model.input["history"], keras_model.get_layer("user_state").output)
        token_vectors = tower(np.arange(spec.n_tokens, dtype=np.int32)).numpy()
        self._token_vectors = _l2_normalise(token_vectors)
        head = keras_model.get_layer("logits")
        self._scale = float(head.scale.numpy())
        self._bias = head.item_bias.numpy()
        self._text_projection = tower.text_projection.numpy() if spec.text_dim else None

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
        counts = vocab.column(VOCAB_COUNT).to_numpy() if VOCAB_COUNT in vocab.column_names else None
        return cls(meta["version"], spec, item_ids, keras_model, counts)

    def known(self, item_ids: "list[str]") -> "list[str]":
        """The ids of ``item_ids`` that are in the vocabulary, in their order."""
        return [item for item in item_ids if item in self._token]

    def tokens(self, item_ids: "list[str]") -> "list[int]":
        """The network's input tokens: vocabulary items, anything else (cold items too) OOV."""
        return [self._input_token.get(item, OOV) for item in item_ids]

    def candidate_tokens(self, item_ids: "list[str]") -> "list[int]":
        """Tokens of items to score: the vocabulary's and the cold items' (OOV for the rest)."""
        return [self._token.get(item, OOV) for item in item_ids]

    @property
    def has_text_projection(self) -> bool:
        return self._text_projection is not None

    @property
    def cold_bias(self) -> float:
        """The bias a cold item is given: the mean bias of the vocabulary's least-trained items
        (those with the smallest training count; the median of all when counts are unknown). An
        item no one has interacted with yet is like the rarest items the model knows: its text
        decides where it ranks, not a popularity it does not have."""
        bias = self._bias[FIRST_ITEM:FIRST_ITEM + self.vocabulary_size].astype(np.float64)
        if self._counts is None or len(self._counts) != len(bias) or not len(bias):
            return float(np.median(bias)) if len(bias) else 0.0
        return float(bias[self._counts == self._counts.min()].mean())

    def project_text(self, text_vectors: np.ndarray) -> np.ndarray:
        """(n, text_dim) text vectors -> (n, d) unit item vectors through the learned text
        projection: the item tower of an item whose own embedding is zero (a cold item)."""
        if self._text_projection is None:
            raise ValueError(f"model {self.version} was trained without text vectors: it has no text projection")
        text = np.asarray(text_vectors, dtype=np.float32).reshape(-1, self.spec.text_dim)
        return _l2_normalise(text @ self._text_projection).astype(np.float32)

    def with_cold_items(self, item_ids: "list[str]", vectors: np.ndarray) -> "SequenceRanker":
        """A copy that also retrieves and ranks ``item_ids`` (items outside the vocabulary) by
        their unit item vectors ``vectors`` (``project_text``) and ``cold_bias``. Items already
        known are ignored; the network and its inputs are unchanged."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(item_ids), -1)
        rows: "dict[str, int]" = {}  # each new item once, at its first row
        for row, item in enumerate(item_ids):
            if item not in self._token:
                rows.setdefault(item, row)
        new, keep = list(rows), list(rows.values())
        clone = copy.copy(self)
        first = FIRST_ITEM + len(self.item_ids)
        clone._token = {**self._token, **{item: first + n for n, item in enumerate(new)}}
        clone._token_vectors = np.concatenate([self._token_vectors, vectors[keep]]) if new else self._token_vectors
        clone._bias = np.concatenate([self._bias, np.full(len(new), self.cold_bias, self._bias.dtype)])
        clone.item_ids = self.item_ids + new
        clone.cold_items = self.cold_items + new
        return clone

    def user_states(self, histories: "list[list[str]]") -> np.ndarray:
        """(n, d) L2-normalised query vectors, one per history."""
        return self.user_states_for_tokens(pad_histories([self.tokens(h) for h in histories], self.spec.max_len))

    def user_states_for_tokens(self, padded: np.ndarray) -> np.ndarray:
        """(n, d) L2-normalised query vectors for (n, max_len) right-padded token histories."""
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

    def _m_squared(self) -> float:
        """``M^2 = 1 + max b^2`` over the items (cold ones included), the item vectors' norm."""
        bias = self._bias[FIRST_ITEM:].astype(np.float64)
        return 1.0 + (float(np.max(bias ** 2)) if len(bias) else 0.0)

    @property
    def retrieval_scale(self) -> float:
        """``M*Q``: a retrieval cosine times this is the model's logit (see the module doc)."""
        return float(np.sqrt(self._m_squared()) * np.sqrt(self._scale ** 2 + 1.0))

    def retrieval_queries(self, histories: "list[list[str]]") -> np.ndarray:
        """(n, d+2) unit query vectors ``[scale*s, 1, 0]/Q`` of the histories' user states."""
        states = self.user_states(histories).astype(np.float64)
        augmented = np.concatenate(
            [self._scale * states, np.ones((len(states), 1)), np.zeros((len(states), 1))], axis=1
        )
        return (augmented / np.sqrt(self._scale ** 2 + 1.0)).astype(np.float32)

    def retrieval_item_vectors(self) -> "tuple[list[str], np.ndarray]":
        """The vocabulary and its (n_items, d+2) unit vectors ``[e, b, sqrt(M^2-1-b^2)]/M``: their
        inner product with ``retrieval_queries`` is the logit / ``retrieval_scale``."""
        vectors = self._token_vectors[FIRST_ITEM:].astype(np.float64)
        bias = self._bias[FIRST_ITEM:].astype(np.float64)[:, None]
        m_squared = self._m_squared()
        slack = np.sqrt(np.maximum(m_squared - 1.0 - bias ** 2, 0.0))
        augmented = np.concatenate([vectors, bias, slack], axis=1) / np.sqrt(m_squared)
        return list(self.item_ids), augmented.astype(np.float32)

    def logits(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Raw model logits for candidate tokens (any shape, leading dim = users) given user states."""
        cosine = np.einsum("nd,n...d->n...", states, self._token_vectors[tokens])
        return self._scale * cosine + self._bias[tokens]

    def all_item_scores(self, states: np.ndarray) -> np.ndarray:
        """(n, n_items) raw logits of every vocabulary item (columns in ``item_ids`` order): the
        ranking scores."""
        items = slice(FIRST_ITEM, None)
        return self._scale * (states @ self._token_vectors[items].T) + self._bias[items]

    def ranking_scores(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The ranking score of candidate tokens: the raw logits."""
        return self.logits(states, tokens)

    def score(self, histories: "list[list[str]]", candidates: "list[list[str]]") -> "list[np.ndarray]":
        """P(next) for each candidate of each history (0 for candidates outside the vocabulary):
        the softmax over the whole vocabulary, taken at the candidates."""
        if len(histories) != len(candidates):
            raise ValueError(f"score: {len(histories)} histories but {len(candidates)} candidate lists")
        states = self.user_states(histories)
        out = []
        for start in range(0, len(states), 256):
            logits = self.all_item_scores(states[start:start + 256]).astype(np.float64)
            peak = logits.max(axis=1, keepdims=True)
            log_normaliser = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
            for row, items in enumerate(candidates[start:start + 256]):
                tokens = np.asarray(self.candidate_tokens(items), dtype=np.int64)
                known = tokens >= FIRST_ITEM
                probs = np.zeros(len(tokens), dtype=np.float32)
                probs[known] = np.exp(logits[row, tokens[known] - FIRST_ITEM] - log_normaliser[row]).astype(np.float32)
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
