"""Stage retrieve on tiny tables: candidates exclude seen items, recall is measured, bad input."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

import os

from recsys_spark.models.sequence import FIRST_ITEM, LATEST_FILE, ModelSpec, SequenceRanker
from recsys_spark.stages import retrieve
from recsys_spark.search import store
from recsys_spark.search.index import IVFIndex, read_manifest
from recsys_spark.search.kernels import normalize_rows
from recsys_spark.core.schemas import (
    CANDIDATES_TABLE,
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    NEIGHBOUR_ID,
    RANK,
    SIMILAR_ITEMS_TABLE,
    USER_ID,
    USER_SEQUENCES,
    USER_SEQUENCES_TABLE,
    USER_VECTORS,
    USER_VECTORS_TABLE,
)
from tests.support.models import write_model_dir

NOW = datetime(2026, 1, 1)


def write_inputs(ctx, n_items=60, n_users=24, dim=8, bad_item=False, bad_user=False, seed=0, held_out=False):
    """Clustered item vectors, users whose vector is the mean of a few history items (with
    ``held_out``, one unseen test item each)."""
    rng = np.random.default_rng(seed)
    centers = normalize_rows(rng.normal(size=(6, dim)))
    items = normalize_rows(centers[rng.integers(0, 6, n_items)] + 0.3 * rng.normal(size=(n_items, dim)))
    item_ids = [f"m{j:03d}" for j in range(n_items)]
    emb_rows = [
        (item_ids[j], "h", "test", "v1", dim, [float(x) for x in items[j]], NOW, True) for j in range(n_items)
    ]
    if bad_item:
        emb_rows.append(("bad_dim", "h", "test", "v1", dim - 1, [0.5] * (dim - 1), NOW, True))
    emb_rows.append(("gone", "h", "test", "v1", dim, [float(x) for x in items[0]], NOW, False))
    seq_rows, vec_rows = [], []
    for u in range(n_users):
        picked = [item_ids[j] for j in rng.choice(n_items, 5, replace=False)]
        history, test = picked[:4], (picked[4:] if held_out else [])
        seq_rows.append((f"u{u:02d}", history, [1, 2, 3, 4], [1.0] * 4, history, [1, 2, 3, 4], [1.0] * 4,
                         history[:-1], [1, 2, 3], [1.0] * 3, history[-1:], test, False, 4,
                         sorted(history), sorted(history[:-1])))
        vector = normalize_rows(items[[item_ids.index(h) for h in history]].mean(axis=0, keepdims=True))[0]
        vec_rows.append((f"u{u:02d}", [float(x) for x in vector], 4, "interests", NOW))
    if bad_user:
        vec_rows.append(("nan_user", [float("nan")] * dim, 4, "interests", NOW))
    spark, lake = ctx.spark, ctx.lake
    lake.replace(spark.createDataFrame(emb_rows, ITEM_EMBEDDINGS), ITEM_EMBEDDINGS_TABLE)
    lake.replace(spark.createDataFrame(seq_rows, USER_SEQUENCES), USER_SEQUENCES_TABLE)
    lake.replace(spark.createDataFrame(vec_rows, USER_VECTORS), USER_VECTORS_TABLE)
    return {r[0]: set(r[4]) for r in seq_rows}


def test_exact_candidates_exclude_history_and_similar_items_exclude_self(make_ctx):
    ctx = make_ctx("retrieve.k=5", "retrieve.candidates=20", "retrieve.similar_items_k=3", "retrieve.query=interests")
    histories = write_inputs(ctx)
    summary = retrieve.run(ctx)
    assert summary["method"] == "exact"
    assert summary["index"] == "built" and summary["index_path"] is None  # exact: not persisted
    assert summary["recall_at_k_vs_exact"] == 1.0
    assert (summary["queries"], summary["items"], summary["candidates"]) == (24, 60, 24 * 20)
    rows = ctx.lake.read(CANDIDATES_TABLE).collect()
    per_user = {}
    for r in rows:
        per_user.setdefault(r[USER_ID], []).append((r[RANK], r[ITEM_ID], r["retrieval_score"]))
    for user, found in per_user.items():
        found.sort()
        assert [rank for rank, _, _ in found] == list(range(1, 21))
        assert not {item for _, item, _ in found} & histories[user], user
        assert "gone" not in {item for _, item, _ in found}
        scores = [score for _, _, score in found]
        assert scores == sorted(scores, reverse=True)
    similar = ctx.lake.read(SIMILAR_ITEMS_TABLE).collect()
    assert len(similar) == 60 * 3
    assert all(r[ITEM_ID] != r[NEIGHBOUR_ID] for r in similar)


def test_lstm_candidates_are_the_rankers_top_logits_and_count_the_held_out_items_they_reach(make_ctx):
    """With LSTM queries the search ranks by the model's logit (item bias included): exact search
    returns each user's top unseen items by the ranker's own score, and IVF probing every list the
    same; the summary reports the share of held-out items among the candidates."""
    ctx = make_ctx("retrieve.query=lstm", "retrieve.method=exact", "retrieve.k=3", "retrieve.candidates=6",
                   "retrieve.similar_items_k=2")
    histories = write_inputs(ctx, held_out=True, seed=2)
    items = [f"m{j:03d}" for j in range(60)]
    spec = ModelSpec(n_tokens=len(items) + FIRST_ITEM, max_len=5, embedding_dim=8, lstm_units=6)
    os.makedirs(ctx.cfg.models_dir, exist_ok=True)
    model_dir = write_model_dir(ctx.cfg.models_dir, spec, items, version="v1", seed=5)
    with open(os.path.join(ctx.cfg.models_dir, LATEST_FILE), "w", encoding="utf-8") as handle:
        handle.write("v1\n")
    summary = retrieve.run(ctx)
    assert summary["query_source"] == "lstm:v1" and summary["retrieval_score"] == "lstm_logit"

    ranker = SequenceRanker.load(model_dir)
    sequences = {r[USER_ID]: r for r in ctx.lake.read(USER_SEQUENCES_TABLE).collect()}
    users = sorted(sequences)
    logits = ranker.all_item_scores(ranker.user_states([list(sequences[u]["history_items"]) for u in users]))
    found = _per_user(ctx)
    reached = 0
    for row, user in enumerate(users):
        order = [j for j in np.argsort(-logits[row], kind="stable") if items[j] not in histories[user]][:6]
        assert [item for item, _ in found[user]] == [items[j] for j in order], user
        assert [score for _, score in found[user]] == pytest.approx([logits[row, j] for j in order], abs=2e-3)
        reached += sequences[user]["test_items"][0] in {item for item, _ in found[user]}
    recall = summary["candidate_recall"]
    assert (recall["targets"], recall["users"], recall["found"]) == (24, 24, reached)
    assert summary["candidate_recall@6"] == pytest.approx(reached / 24, abs=1e-4) and recall["depth"] == 6
    assert 0 < reached < 24  # the figure is not trivially 0 or 1 here

    ivf = make_ctx("retrieve.query=lstm", "retrieve.method=ivf", "retrieve.nlist=4", "retrieve.nprobe=4",
                   "retrieve.k=3", "retrieve.candidates=6", "retrieve.similar_items_k=2", warehouse=ctx.cfg.warehouse)
    assert retrieve.run(ivf)["method"] == "ivf"
    assert [[i for i, _ in _per_user(ivf)[u]] for u in users] == [[i for i, _ in found[u]] for u in users]


def _per_user(ctx) -> dict:
    """user -> [(item, retrieval score)] in rank order, from gold/candidates."""
    out: dict = {}
    for r in sorted(ctx.lake.read(CANDIDATES_TABLE).collect(), key=lambda r: (r[USER_ID], r[RANK])):
        out.setdefault(r[USER_ID], []).append((r[ITEM_ID], r["retrieval_score"]))
    return out


def test_ivf_reports_recall_against_exact(make_ctx):
    # Probing every cell makes IVF exact, so the measured recall must be exactly 1.
    ctx = make_ctx("retrieve.method=ivf", "retrieve.nlist=6", "retrieve.nprobe=6", "retrieve.k=5",
                   "retrieve.candidates=10", "retrieve.recall_sample=10", "retrieve.query=interests")
    histories = write_inputs(ctx, seed=1)
    summary = retrieve.run(ctx)
    assert summary["method"] == "ivf" and summary["nlist"] == 6 and summary["nprobe"] == 6
    assert summary["index"] == "trained" and summary["index_path"] == store.index_path(ctx, store.TEXT_INDEX)
    assert os.path.isfile(os.path.join(summary["index_path"], "manifest.json"))
    assert summary["recall_sample"] == 10
    assert summary["recall_at_k_vs_exact"] == 1.0
    assert summary["queries_per_s"] > 0
    rows = ctx.lake.read(CANDIDATES_TABLE).collect()
    assert len(rows) == 24 * 10
    assert all(r[ITEM_ID] not in histories[r[USER_ID]] for r in rows)


def test_bad_vectors_are_counted_not_fatal(make_ctx):
    ctx = make_ctx("retrieve.k=3", "retrieve.candidates=5", "retrieve.query=interests")
    write_inputs(ctx, bad_item=True, bad_user=True)
    summary = retrieve.run(ctx)
    assert summary["skipped_bad_vectors"] == 2
    assert summary["bad_vectors"]["items"]["wrong_dimension"] == 1
    assert summary["bad_vectors"]["queries"]["non_finite"] == 1
    users = {r[USER_ID] for r in ctx.lake.read(CANDIDATES_TABLE).select(USER_ID).distinct().collect()}
    assert "nan_user" not in users and len(users) == 24


def test_empty_catalog_and_missing_model_are_clear_errors(make_ctx):
    ctx = make_ctx("retrieve.query=lstm")
    write_inputs(ctx)
    with pytest.raises(ValueError, match="no trained model"):
        retrieve.run(ctx)
    empty = make_ctx("retrieve.query=interests", warehouse=ctx.cfg.warehouse + "-empty")
    write_inputs(empty)
    empty.lake.replace(empty.spark.createDataFrame([], ITEM_EMBEDDINGS), ITEM_EMBEDDINGS_TABLE)
    with pytest.raises(ValueError, match="no usable item vectors"):
        retrieve.run(empty)


def _tables(ctx) -> tuple[list, list]:
    candidates = sorted((r[USER_ID], r[RANK], r[ITEM_ID], r["retrieval_score"]) for r in ctx.lake.read(CANDIDATES_TABLE).collect())
    similar = sorted((r[ITEM_ID], r[RANK], r[NEIGHBOUR_ID], r["cosine"]) for r in ctx.lake.read(SIMILAR_ITEMS_TABLE).collect())
    return candidates, similar


def _same(first: list, second: list) -> None:
    assert [row[:3] for row in first] == [row[:3] for row in second]
    assert [row[3] for row in first] == pytest.approx([row[3] for row in second], abs=1e-6)


def test_ivf_index_is_reused_while_the_items_are_unchanged_and_retrained_when_they_change(make_ctx, monkeypatch):
    settings = ("retrieve.method=ivf", "retrieve.nlist=6", "retrieve.nprobe=2", "retrieve.k=5",
                "retrieve.candidates=10", "retrieve.recall_sample=10", "retrieve.query=interests")
    trained = []
    fit = IVFIndex.from_vectors.__func__

    def counting_fit(cls, *args, **kwargs):
        trained.append(args[1:2])
        return fit(cls, *args, **kwargs)

    monkeypatch.setattr(IVFIndex, "from_vectors", classmethod(counting_fit))
    ctx = make_ctx(*settings)
    write_inputs(ctx, seed=2)
    first = retrieve.run(ctx)
    assert first["index"] == "trained" and first["similar_items_index"] == "trained" and len(trained) == 1
    path = first["index_path"]
    version = read_manifest(path)["source"]["table_version"]
    assert version == ctx.lake.version(ITEM_EMBEDDINGS_TABLE)
    first_tables = _tables(ctx)

    second = retrieve.run(make_ctx(*settings))  # unchanged items: loaded, not trained
    assert second["index"] == "reused" and second["index_path"] == path and len(trained) == 1
    assert (second["nlist"], second["items"], second["bad_vectors"]) == (first["nlist"], first["items"], first["bad_vectors"])
    assert second["recall_at_k_vs_exact"] == first["recall_at_k_vs_exact"]
    _same(first_tables[0], _tables(ctx)[0])
    _same(first_tables[1], _tables(ctx)[1])

    changed = make_ctx(*settings, "retrieve.kmeans_iterations=3")  # other settings: trained again
    assert retrieve.run(changed)["index"] == "trained" and len(trained) == 2

    write_inputs(ctx, seed=3)  # new item vectors (a new table version): trained again
    third = retrieve.run(make_ctx(*settings))
    assert third["index"] == "trained" and len(trained) == 3
    assert read_manifest(path)["source"]["table_version"] == ctx.lake.version(ITEM_EMBEDDINGS_TABLE) > version
    assert _tables(ctx)[0] != first_tables[0]
