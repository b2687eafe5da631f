"""Stage ``retrieve``: cosine top-N candidates per user and nearest neighbours per item.

Reads gold/user_vectors (interest vectors) or, with ``retrieve.query`` lstm/auto and a trained
model (the registry's ``champion``, or ``models/latest`` without a registry:
``recsys_spark.tracking.experiment.serving_model_dir``), the LSTM's retrieval queries over its item vectors; gold/item_embeddings (active rows);
gold/user_sequences (``history_items``: the LSTM's input; ``seen_items``: every item the user has
interacted with, never retrieved again for that user; ``test_items``: the held-out items whose
share among the candidates, ``candidate_recall@<candidates>``, is the pipeline's ceiling).
With LSTM queries the search ranks by the model's own logit (query and item vectors carry the
item bias, ``SequenceRanker.retrieval_queries``), so the candidate cut keeps what the ranker
would rank highest, exactly when the search is exact; ``retrieval_score`` is that logit. Catalog
items the model has not trained on are searched too, through its text projection
(:mod:`recsys_spark.models.cold_start`; counted as ``cold_start_items``).
Writes gold/candidates (``retrieve.candidates`` rows per user, CANDIDATES schema) and
gold/similar_items (``retrieve.similar_items_k`` text-vector neighbours per item), one Delta
commit each. The search is exact up to ``retrieve.exact_max_items`` items and IVF above (or as
``retrieve.method`` says); each item set is encoded once and searched through one index
(:mod:`recsys_spark.search.index`). An IVF index is saved under ``<warehouse>/indexes/<name>``
with what it was built from (the item_embeddings table version, or the model version for the
LSTM item vectors, and nlist / iterations / seed) and reused by later runs while that is
unchanged. Every run measures the IVF recall against exact search on a random sample of
``retrieve.recall_sample`` users.
"""
from __future__ import annotations

import logging
import time
import zlib
from typing import Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.core import progress
from recsys_spark.core.context import StageContext
from recsys_spark.core.lakehouse import table_versions
from recsys_spark.core.schemas import (
    CANDIDATES_TABLE,
    COSINE,
    HISTORY_ITEMS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    NEIGHBOUR_ID,
    QUERY_ID,
    RANK,
    RETRIEVAL_SCORE,
    RUN_ID,
    SCORE,
    SEEN_ITEMS,
    SIMILAR_ITEMS_TABLE,
    SOURCE_KIND,
    TEST_ITEMS,
    USER_ID,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
    VECTOR,
)
from recsys_spark.evaluation.metrics import candidate_recall
from recsys_spark.models.cold_start import find_cold_items
from recsys_spark.models.sequence import SequenceRanker, cached_ranker
from recsys_spark.tracking.experiment import serving_model_dir
from recsys_spark.search import store
from recsys_spark.search.index import ExactIndex
from recsys_spark.search.spark import recall_vs_exact
from recsys_spark.search.vectors import EncodedVectors

log = logging.getLogger(__name__)


def lstm_user_states(sequences: DataFrame, model_dir: str) -> DataFrame:
    """``(query_id, vector)``: the model's retrieval query of each ``history_items`` (its cosine
    with ``lstm_item_vectors`` times the model's ``retrieval_scale`` is the ranking logit)."""

    def states(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ranker = cached_ranker(model_dir)
        for batch in batches:
            histories = [list(h) if h is not None else [] for h in batch[HISTORY_ITEMS]]
            vectors = ranker.retrieval_queries(histories)
            yield pd.DataFrame({QUERY_ID: batch[USER_ID].to_numpy(), VECTOR: list(vectors.astype(np.float32))})

    return sequences.select(USER_ID, HISTORY_ITEMS).mapInPandas(states, f"{QUERY_ID} string, {VECTOR} array<float>")


def lstm_item_vectors(spark, ranker: SequenceRanker) -> DataFrame:
    """``(item_id, vector)``: the ranker's retrieval item vectors, bias included, cold items too
    (all of it is already in memory)."""
    ids, vectors = ranker.retrieval_item_vectors()
    frame = pd.DataFrame({ITEM_ID: ids, VECTOR: list(vectors.astype(np.float32))})
    return spark.createDataFrame(frame, f"{ITEM_ID} string, {VECTOR} array<float>")


LSTM_INDEX = "lstm_items"  # the trained model's item vectors
# What the LSTM index holds: vectors whose cosine with the queries is the logit over one constant
# (SequenceRanker.retrieval_item_vectors); an index saved from other vectors is trained again.
LSTM_VECTORS = "logit_augmented"


def candidates_frame(results: DataFrame, method: str, run_id: str, score_scale: float = 1.0) -> DataFrame:
    """Search results ``(query_id, item_id, rank, score)`` as CANDIDATES rows (typed by the write);
    the retrieval score is the search's cosine times ``score_scale`` (the LSTM's logit)."""
    return results.select(
        F.col(QUERY_ID).alias(USER_ID),
        F.col(ITEM_ID),
        F.col(RANK),
        (F.col(SCORE) * F.lit(score_scale)).alias(RETRIEVAL_SCORE),
        F.lit(method).alias(SOURCE_KIND),
        F.lit(run_id).alias(RUN_ID),
    )


def similar_items_frame(results: DataFrame) -> DataFrame:
    """Item-to-item search results as SIMILAR_ITEMS rows (typed by the write)."""
    return results.select(
        F.col(QUERY_ID).alias(ITEM_ID),
        F.col(RANK),
        F.col(ITEM_ID).alias(NEIGHBOUR_ID),
        F.col(SCORE).alias(COSINE),
    )


def seen_pairs(sequences: DataFrame) -> DataFrame:
    """``(query_id, item_id)`` for every item in a user's ``seen_items`` (all it has interacted
    with, not only the bounded ``history_items``)."""
    return sequences.select(F.col(USER_ID).alias(QUERY_ID), F.explode(SEEN_ITEMS).alias(ITEM_ID))


def measure_recall(
    ctx: StageContext, queries: EncodedVectors, index: store.Index, exclude: DataFrame, candidates: DataFrame
) -> Optional[float]:
    """Recall@``retrieve.k`` of ``candidates`` against exact search on a random sample of users.

    The sample of the encoded ``queries`` is searched exactly over the ``index``'s own encoded
    items (nothing is encoded again). It changes every run (seeded by the run id), so the figure
    monitors the index over time.
    """
    rc = ctx.cfg.retrieve
    if rc.recall_sample == 0:
        return None
    seed = rc.seed + zlib.crc32(ctx.run_id.encode("utf-8"))
    sample = queries.random_sample(rc.recall_sample, seed)
    try:
        ids = sample.frame.select(QUERY_ID)
        exact = ExactIndex.from_vectors(index.vectors, rc.block_size)
        truth = exact.search(sample, rc.k, exclude=exclude.join(ids, QUERY_ID))
        found = candidates.select(F.col(USER_ID).alias(QUERY_ID), ITEM_ID, RANK).join(ids, QUERY_ID)
        return recall_vs_exact(found, truth, rc.k)
    finally:
        sample.frame.unpersist()


def run(ctx: StageContext) -> dict:
    """Write gold/candidates and gold/similar_items; return counts, timings, recall and indexes."""
    rc = ctx.cfg.retrieve
    lake = ctx.lake
    progress.describe(ctx.spark, "item vectors, the index and the users' queries")
    sequences = lake.read(USER_SEQUENCES_TABLE).select(USER_ID, HISTORY_ITEMS, SEEN_ITEMS, TEST_ITEMS)
    text_version = lake.version(ITEM_EMBEDDINGS_TABLE)
    text_method, text_index, text_info = store.text_index(ctx, text_version)

    model_dir = serving_model_dir(ctx.cfg, "retrieve") if rc.query in ("lstm", "auto") else None
    if rc.query == "lstm" and model_dir is None:
        raise ValueError(f"retrieve.query=lstm but no trained model in {ctx.cfg.models_dir}: run train first")
    if model_dir is not None:
        cold, cold_counts = find_cold_items(lake, model_dir, ctx.cfg.train.cold_start_max_items, text_version)
        ranker = cold.ranker()
        version, score_scale, retrieval_score = ranker.version, ranker.retrieval_scale, "lstm_logit"
        query_source = f"lstm:{version}"
        raw_queries = lstm_user_states(sequences, model_dir)
        method, index, index_info = store.item_index(
            ctx, LSTM_INDEX, {"model_version": version, "vectors": LSTM_VECTORS, "cold_items": cold.key},
            lambda: lstm_item_vectors(ctx.spark, ranker), f"the item vectors of model {version}", "retrain the model",
        )
    else:
        score_scale, retrieval_score, cold_counts = 1.0, "cosine", {}
        query_source = "interests"
        raw_queries = lake.read(USER_VECTORS_TABLE).select(F.col(USER_ID).alias(QUERY_ID), VECTOR)
        method, index, index_info = text_method, text_index, text_info
    queries = index.encode_queries(raw_queries)
    exclude = seen_pairs(sequences)
    ctx.progress(f"retrieve: {method} search, {queries.counts.usable} users x {index.size} items")
    progress.describe(ctx.spark, f"{method} search: {queries.counts.usable} users x {index.size} items -> gold/candidates")
    started = time.perf_counter()
    candidates_written = lake.replace(
        candidates_frame(index.search(queries, rc.candidates, exclude=exclude), method, ctx.run_id, score_scale),
        CANDIDATES_TABLE,
    )
    seconds = time.perf_counter() - started
    candidates = lake.read(CANDIDATES_TABLE, version=candidates_written.version)
    n_candidates = candidates.count()
    progress.describe(ctx.spark, "candidate recall of the held-out items")
    ceiling = candidate_recall(candidates, sequences)
    progress.describe(ctx.spark, "recall against exact search")
    recall = 1.0 if method == "exact" else measure_recall(ctx, queries, index, exclude, candidates)

    ctx.progress("retrieve: item -> item neighbours")
    progress.describe(ctx.spark, "item -> item neighbours -> gold/similar_items")
    item_queries = text_index.vectors.as_queries()
    self_pairs = text_index.vectors.frame.select(F.col(ITEM_ID).alias(QUERY_ID), F.col(ITEM_ID).alias(ITEM_ID))
    similar_written = lake.replace(
        similar_items_frame(text_index.search(item_queries, rc.similar_items_k, exclude=self_pairs)), SIMILAR_ITEMS_TABLE
    )

    if recall is not None and recall < rc.recall_target:
        log.warning("retrieve: recall@%d vs exact %.3f is below retrieve.recall_target %.3f: raise retrieve.nprobe",
                    rc.k, recall, rc.recall_target)
    query_counts, item_counts, text_counts = queries.counts, index.counts, text_index.counts
    separate = index is not text_index
    return {
        "method": method,
        "query_source": query_source,
        **index_info,
        "queries": query_counts.usable,
        "items": item_counts.usable,
        "k": rc.k,
        "candidates": n_candidates,
        "candidates_per_user": rc.candidates,
        "retrieval_score": retrieval_score,
        **cold_counts,
        f"candidate_recall@{rc.candidates}": ceiling["recall"],
        "candidate_recall": ceiling,
        "search_seconds": round(seconds, 2),
        "queries_per_s": round(query_counts.usable / seconds, 1) if seconds > 0 else None,
        "recall_at_k_vs_exact": None if recall is None else round(recall, 4),
        "recall_target": rc.recall_target,
        "recall_sample": min(rc.recall_sample, query_counts.usable),
        "skipped_bad_vectors": query_counts.skipped + item_counts.skipped + (text_counts.skipped if separate else 0),
        "bad_vectors": {"queries": query_counts.to_dict(), "items": item_counts.to_dict(), "text_items": text_counts.to_dict()},
        "similar_items_method": text_method,
        "similar_items_index": text_info["index"],
        "similar_items_index_path": text_info["index_path"],
        "similar_items_k": rc.similar_items_k,
        "tables": table_versions(candidates_written, similar_written),
    }
