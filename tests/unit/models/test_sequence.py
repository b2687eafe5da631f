"""The Keras model and SequenceRanker: shapes, the retrieval/ranking contract, the latest pointer."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from recsys_spark.models.sequence import (
    CONFIG_FILE,
    FIRST_ITEM,
    LATEST_FILE,
    MODEL_FILE,
    OOV,
    VOCABULARY_DIR,
    ModelSpec,
    SequenceRanker,
    build_model,
    latest_model_dir,
    pad_histories,
)

ITEMS = [f"item-{i}" for i in range(12)]
COUNTS = np.arange(len(ITEMS), 0, -1)


def write_model_dir(root, spec: ModelSpec, version: str = "v1", text_vectors=None) -> str:
    """A model folder as the train stage lays it out, from an untrained model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model_dir = os.path.join(root, version)
    os.makedirs(os.path.join(model_dir, VOCABULARY_DIR))
    build_model(spec, text_vectors).save(os.path.join(model_dir, MODEL_FILE))
    q = COUNTS / COUNTS.sum()
    vocabulary = pa.table(
        {
            "item_id": ITEMS,
            "count": COUNTS.astype(np.int64),
            "index": np.arange(FIRST_ITEM, FIRST_ITEM + len(ITEMS), dtype=np.int64),
            "log_q": np.log(q),
        }
    )
    pq.write_table(vocabulary, os.path.join(model_dir, VOCABULARY_DIR, "part-0.parquet"))
    with open(os.path.join(model_dir, CONFIG_FILE), "w", encoding="utf-8") as handle:
        json.dump({"version": version, "model": spec.to_json()}, handle)
    return model_dir


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec(n_tokens=len(ITEMS) + FIRST_ITEM, max_len=5, embedding_dim=8, lstm_units=6, negatives=3)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory, spec) -> SequenceRanker:
    return SequenceRanker.load(write_model_dir(tmp_path_factory.mktemp("models"), spec))


def test_pad_histories_keeps_the_most_recent_items_left_padded():
    padded = pad_histories([[5, 6, 7, 8], [3], []], max_len=3)
    assert padded.tolist() == [[6, 7, 8], [0, 0, 3], [0, 0, 0]]
    assert padded.dtype == np.int32


def test_model_scores_any_number_of_candidates(spec):
    model = build_model(spec)
    history = np.array([[0, 0, 2, 3, 4], [5, 6, 7, 8, 9]], dtype=np.int32)
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


def test_score_is_the_keras_model_with_the_logq_correction(ranker, spec):
    history = ["item-4", "item-0", "item-7"]
    candidates = ["item-1", "item-5", "item-9"]
    [probs] = ranker.score([history], [candidates])
    tokens = np.array([[ITEMS.index(c) + FIRST_ITEM for c in candidates]], dtype=np.int32)
    logits = ranker._model({"history": pad_histories([ranker.tokens(history)], spec.max_len), "candidates": tokens})
    log_q = np.log(COUNTS / COUNTS.sum())[tokens[0] - FIRST_ITEM]
    expected = 1.0 / (1.0 + np.exp(-(logits.numpy()[0] + np.log(spec.negatives) + log_q)))
    np.testing.assert_allclose(probs, expected, rtol=1e-4)
    full = ranker.all_item_scores(ranker.user_states([history]))
    assert np.argsort(-full[0]).tolist()[:3] == np.argsort(-ranker.ranking_scores(
        ranker.user_states([history]), np.arange(FIRST_ITEM, spec.n_tokens)[None, :]
    )[0]).tolist()[:3]


def test_unknown_ids_map_to_oov_and_unknown_candidates_score_zero(ranker):
    assert ranker.tokens(["item-2", "never-seen"]) == [ITEMS.index("item-2") + FIRST_ITEM, OOV]
    [probs] = ranker.score([["never-seen", "item-2"]], [["item-3", "not-an-item"]])
    assert probs[1] == 0.0 and 0.0 < probs[0] < 1.0
    with pytest.raises(ValueError, match="histories but"):
        ranker.score([["item-1"]], [])


def test_latest_model_dir_follows_the_pointer(tmp_path, spec):
    assert latest_model_dir(str(tmp_path)) is None
    model_dir = write_model_dir(tmp_path, spec, version="v7")
    (tmp_path / LATEST_FILE).write_text("v7\n")
    assert latest_model_dir(str(tmp_path)) == model_dir
    (tmp_path / LATEST_FILE).write_text("v8\n")  # points at a folder that holds no model
    assert latest_model_dir(str(tmp_path)) is None
