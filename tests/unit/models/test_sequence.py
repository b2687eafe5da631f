"""The Keras model and SequenceRanker: shapes, the retrieval/ranking contract, the latest pointer."""
from __future__ import annotations

import numpy as np
import pytest

from recsys_spark.models.sequence import (
    FIRST_ITEM,
    LATEST_FILE,
    OOV,
    ModelSpec,
    SequenceRanker,
    build_model,
    full_softmax_loss,
    latest_model_dir,
    pad_histories,
    sampled_softmax_loss,
)
from tests.support.models import write_model_dir

ITEMS = [f"item-{i}" for i in range(12)]


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec(n_tokens=len(ITEMS) + FIRST_ITEM, max_len=5, embedding_dim=8, lstm_units=6, dropout=0.2)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory, spec) -> SequenceRanker:
    return SequenceRanker.load(write_model_dir(tmp_path_factory.mktemp("models"), spec, ITEMS))


def test_pad_histories_keeps_the_most_recent_items_right_padded():
    padded = pad_histories([[5, 6, 7, 8], [3], []], max_len=3)
    assert padded.tolist() == [[6, 7, 8], [3, 0, 0], [0, 0, 0]]
    assert padded.dtype == np.int32


def test_the_user_state_is_the_state_at_the_last_item_whatever_the_padding(spec):
    import tensorflow as tf

    model = build_model(spec)
    states = tf.keras.Model(model.input["history"], model.get_layer("user_states").output)
    last = tf.keras.Model(model.input["history"], model.get_layer("user_state").output)
    history = np.array([[2, 3, 4, 0, 0], [5, 6, 7, 8, 9]], dtype=np.int32)
    every = states(history, training=False).numpy()
    assert every.shape == (2, spec.max_len, spec.embedding_dim)
    np.testing.assert_allclose(last(history, training=False).numpy(), every[[0, 1], [2, 4]], rtol=1e-6)
    # Causal: the state at a position depends on the items up to it only (padding or later items alike).
    longer = states(np.array([[2, 3, 4, 9, 9]], dtype=np.int32), training=False).numpy()
    np.testing.assert_allclose(longer[0, :3], every[0, :3], rtol=1e-5, atol=1e-6)


def _loss_inputs(spec, positions: int = 7, seed: int = 0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    states = tf.constant(rng.normal(size=(positions, spec.embedding_dim)).astype(np.float32))
    targets = tf.constant(rng.integers(FIRST_ITEM, spec.n_tokens, size=positions).astype(np.int32))
    return states, targets


def _log_uniform(spec) -> np.ndarray:
    log_q = np.full(spec.n_tokens, -1e30, dtype=np.float32)
    log_q[FIRST_ITEM:] = -np.log(spec.n_tokens - FIRST_ITEM)
    return log_q


def test_full_softmax_is_the_cross_entropy_over_every_item(spec):
    model = build_model(spec)
    states, targets = _loss_inputs(spec)
    head, tower = model.get_layer("logits"), model.get_layer("item_tower")
    items = np.arange(FIRST_ITEM, spec.n_tokens, dtype=np.int32)
    logits = head.shared(states, tower(items), items).numpy().astype(np.float64)
    expected = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(logits)), targets.numpy() - FIRST_ITEM])
    assert float(full_softmax_loss(model, states, targets)) == pytest.approx(expected, rel=1e-5)


def test_sampled_softmax_with_every_item_as_a_negative_is_the_full_softmax(spec):
    import tensorflow as tf

    model = build_model(spec)
    head = model.get_layer("logits")
    head.item_bias.assign(np.linspace(-1, 1, spec.n_tokens).astype(np.float32))  # not all zero
    states, targets = _loss_inputs(spec)
    every_item = tf.range(FIRST_ITEM, spec.n_tokens)
    # Uniform q, K = n: log(K q) = 0; the target among the negatives is an accidental hit, masked.
    sampled = sampled_softmax_loss(model, states, targets, every_item, tf.constant(_log_uniform(spec)))
    assert float(sampled) == pytest.approx(float(full_softmax_loss(model, states, targets)), rel=1e-6)
    # The gradients agree too: the same model is trained.
    with tf.GradientTape(persistent=True) as tape:
        full = full_softmax_loss(model, states, targets)
        sampled = sampled_softmax_loss(model, states, targets, every_item, tf.constant(_log_uniform(spec)))
    for a, b in zip(tape.gradient(full, model.trainable_variables), tape.gradient(sampled, model.trainable_variables)):
        if a is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy(), rtol=1e-5, atol=1e-5)


def test_sampled_softmax_masks_accidental_hits_and_corrects_by_the_expected_count(spec):
    import tensorflow as tf

    model = build_model(spec)
    states, _ = _loss_inputs(spec, positions=4)
    targets = tf.constant([5, 5, 5, 5], dtype=tf.int32)
    negatives = tf.constant([3, 5, 5, 8, 9], dtype=tf.int32)  # 5, the target, drawn twice
    log_q = _log_uniform(spec)
    log_f = np.full(spec.n_tokens, -1e30, dtype=np.float32)
    log_f[5] = 0.0  # every target of the batch is item 5
    with_batch = sampled_softmax_loss(model, states, targets, negatives, tf.constant(log_q), tf.constant(log_f))
    # In-batch negatives here are all the target: all masked, as are the two hits among the negatives.
    head, tower = model.get_layer("logits"), model.get_layer("item_tower")
    kept = np.array([3, 8, 9], dtype=np.int32)
    positive = head.pairs(states, tower(targets), targets).numpy().astype(np.float64)
    negative = head.shared(states, tower(kept), kept).numpy().astype(np.float64) - np.log(5 * np.exp(log_q[kept]))
    expected = np.mean(np.log(np.exp(positive) + np.exp(negative).sum(axis=1)) - positive)
    assert float(with_batch) == pytest.approx(expected, rel=1e-5)
    assert float(sampled_softmax_loss(model, states, targets, negatives, tf.constant(log_q))) == pytest.approx(expected, rel=1e-5)


def test_model_scores_any_number_of_candidates(spec):
    model = build_model(spec)
    history = np.array([[2, 3, 4, 0, 0], [5, 6, 7, 8, 9]], dtype=np.int32)
    logits = model({"history": history, "candidates": np.array([[2, 3, 4, 5], [6, 7, 8, 9]], dtype=np.int32)})
    assert logits.shape == (2, 4)
    assert np.isfinite(logits.numpy()).all()
    assert model({"history": history, "candidates": np.array([[2], [3]], dtype=np.int32)}).shape == (2, 1)


def test_text_vectors_must_match_the_vocabulary(spec):
    with_text = ModelSpec(**{**spec.to_json(), "text_dim": 4})
    with pytest.raises(ValueError, match="text_vectors must have shape"):
        build_model(with_text, np.zeros((3, 4), dtype=np.float32))
    text = np.random.default_rng(0).normal(size=(with_text.n_tokens, 4)).astype(np.float32)
    model = build_model(with_text, text)
    np.testing.assert_allclose(model.get_layer("item_tower").text_vectors.numpy(), text)


def test_ranker_vectors_are_unit_length_and_share_one_space(ranker, spec):
    ids, vectors = ranker.item_vectors()
    assert ids == ITEMS and ranker.item_ids == ITEMS
    assert vectors.shape == (len(ITEMS), spec.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    states = ranker.user_states([["item-1", "item-2"], ["item-3"]])
    assert states.shape == (2, spec.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(states, axis=1), 1.0, rtol=1e-5)
    assert ranker.user_states([]).shape == (0, spec.embedding_dim)


def test_retrieval_inner_product_is_the_ranking_logit(tmp_path, spec):
    ranker = SequenceRanker.load(write_model_dir(tmp_path, spec, ITEMS, seed=3))
    assert np.ptp(ranker._bias[FIRST_ITEM:]) > 1.0  # biases that change the order
    histories = [["item-1", "item-2"], ["item-3"], ["item-4", "item-0", "item-7", "item-9"], []]
    ids, items = ranker.retrieval_item_vectors()
    queries = ranker.retrieval_queries(histories)
    assert ids == ITEMS and items.shape == (len(ITEMS), spec.embedding_dim + 2)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries[:3], axis=1), 1.0, rtol=1e-5)
    logits = ranker.all_item_scores(ranker.user_states(histories))
    np.testing.assert_allclose((queries @ items.T) * ranker.retrieval_scale, logits, rtol=1e-4, atol=1e-4)
    # The cosine order is the logit order, which the plain state/item cosine is not.
    np.testing.assert_array_equal(np.argsort(-(queries @ items.T), axis=1)[:, :5], np.argsort(-logits, axis=1)[:, :5])
    _, plain = ranker.item_vectors()
    assert not np.array_equal(np.argsort(-(ranker.user_states(histories) @ plain.T), axis=1), np.argsort(-logits, axis=1))


def test_score_is_the_softmax_of_the_raw_keras_logits(ranker, spec):
    history = ["item-4", "item-0", "item-7"]
    candidates = ["item-1", "item-5", "item-9"]
    [probs] = ranker.score([history], [candidates])
    every = np.arange(FIRST_ITEM, spec.n_tokens, dtype=np.int32)[None, :]
    logits = ranker._model(
        {"history": pad_histories([ranker.tokens(history)], spec.max_len), "candidates": every}
    ).numpy()[0].astype(np.float64)
    softmax = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(probs, softmax[[ITEMS.index(c) for c in candidates]], rtol=1e-4)
    # Ranking scores are the raw logits, no correction added.
    full = ranker.all_item_scores(ranker.user_states([history]))
    np.testing.assert_allclose(full[0], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ranker.ranking_scores(ranker.user_states([history]), every)[0], logits, rtol=1e-4, atol=1e-5)


def test_unknown_ids_map_to_oov_and_unknown_candidates_score_zero(ranker):
    assert ranker.tokens(["item-2", "never-seen"]) == [ITEMS.index("item-2") + FIRST_ITEM, OOV]
    [probs] = ranker.score([["never-seen", "item-2"]], [["item-3", "not-an-item"]])
    assert probs[1] == 0.0 and 0.0 < probs[0] < 1.0
    with pytest.raises(ValueError, match="histories but"):
        ranker.score([["item-1"]], [])


def test_latest_model_dir_follows_the_pointer(tmp_path, spec):
    assert latest_model_dir(str(tmp_path)) is None
    model_dir = write_model_dir(tmp_path, spec, ITEMS, version="v7")
    (tmp_path / LATEST_FILE).write_text("v7\n")
    assert latest_model_dir(str(tmp_path)) == model_dir
    (tmp_path / LATEST_FILE).write_text("v8\n")  # points at a folder that holds no model
    assert latest_model_dir(str(tmp_path)) is None
