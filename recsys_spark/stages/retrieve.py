"""Stage ``retrieve``: cosine top-N candidates per user and nearest neighbours per item.

Reads gold/user_vectors (interest vectors) or, with ``retrieve.query`` lstm/auto and a trained
model, the LSTM user states over the model's item vectors; gold/item_embeddings (active rows);
gold/user_sequences (``history_items``: never retrieved again for that user).
Writes gold/candidates (``retrieve.candidates`` rows per user, CANDIDATES schema) and
gold/similar_items (``retrieve.similar_items_k`` text-vector neighbours per item), one Delta
commit each. The search is exact up to ``retrieve.exact_max_items`` items and IVF above (or as
``retrieve.method`` says); every run measures the IVF recall against exact search on a random
sample of ``retrieve.recall_sample`` users.
"""
from __future__ import annotations

import functools
import logging
import math
import time
import zlib
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.search.ann import (
    VectorCounts,
    clean_vectors,
    exact_search,
    ivf_search,
    recall_vs_exact,
    train_centroids,
)
from recsys_spark.core.context import StageContext
from recsys_spark.core.lakehouse import table_versions
from recsys_spark.models.sequence import cached_ranker, latest_model_dir
from recsys_spark.core.schemas import (
    ACTIVE,
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
    SIMILAR_ITEMS_TABLE,
    SOURCE_KIND,
    USER_ID,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
    VECTOR,
)

log = logging.getLogger(__name__)

Search = Callable[..., DataFrame]


def lstm_user_states(sequences: DataFrame, model_dir: str) -> DataFrame:
    """``(query_id, vector)``: the model's L2-normalised user state of each ``history_items``."""

    def states(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ranker = cached_ranker(model_dir)
        for batch in batches:
            histories = [list(h) if h is not None else [] for h in batch[HISTORY_ITEMS]]
            vectors = ranker.user_states(histories)
            yield pd.DataFrame({QUERY_ID: batch[USER_ID].to_numpy(), VECTOR: list(vectors.astype(np.float32))})

    return sequences.select(USER_ID, HISTORY_ITEMS).mapInPandas(states, f"{QUERY_ID} string, {VECTOR} array<float>")


def lstm_item_vectors(spark, model_dir: str) -> DataFrame:
    """``(item_id, vector)``: the model's item vectors (the vocabulary is already in memory)."""
    ids, vectors = cached_ranker(model_dir).item_vectors()
    frame = pd.DataFrame({ITEM_ID: ids, VECTOR: list(vectors.astype(np.float32))})
    return spark.createDataFrame(frame, f"{ITEM_ID} string, {VECTOR} array<float>")


def make_search(
    ctx: StageContext, items: DataFrame, counts: VectorCounts, what: str
) -> tuple[str, Search, dict]:
    """Choose exact or IVF for ``items`` and return ``(method, search(queries, k, exclude), index info)``.

    An IVF index's centroids are trained once here and shared by every search over ``items``.
    """
    rc = ctx.cfg.retrieve
    n_items = counts.usable
    method = rc.method
    if method == "auto":
        method = "exact" if n_items <= rc.exact_max_items else "ivf"
    if method == "exact":
        return method, functools.partial(exact_search, items=items, block_size=rc.block_size), {}
    nlist = min(rc.nlist or max(1, round(math.sqrt(n_items))), n_items)
    ctx.progress(f"retrieve: training IVF index on {what} ({nlist} lists)")
    centroids = train_centroids(items, nlist, rc.kmeans_iterations, rc.seed, n_items=n_items, dim=counts.dim)
    search = functools.partial(
        ivf_search, items=items, nlist=nlist, nprobe=rc.nprobe, seed=rc.seed,
        iterations=rc.kmeans_iterations, block_size=rc.block_size, centroids=centroids,
    )
    return method, search, {"nlist": nlist, "nprobe": min(rc.nprobe, nlist)}


def candidates_frame(results: DataFrame, method: str, run_id: str) -> DataFrame:
    """Search results ``(query_id, item_id, rank, score)`` as CANDIDATES rows (typed by the write)."""
    return results.select(
        F.col(QUERY_ID).alias(USER_ID),
        F.col(ITEM_ID),
        F.col(RANK),
        F.col(SCORE).alias(RETRIEVAL_SCORE),
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
    """``(query_id, item_id)`` for every item in a user's ``history_items``."""
    return sequences.select(F.col(USER_ID).alias(QUERY_ID), F.explode(HISTORY_ITEMS).alias(ITEM_ID))


def measure_recall(
    ctx: StageContext, queries: DataFrame, items: DataFrame, exclude: DataFrame, candidates: DataFrame
) -> Optional[float]:
    """Recall@``retrieve.k`` of ``candidates`` against exact search on a random sample of users.

    The sample changes every run (seeded by the run id), so the figure monitors the index over time.
    """
    rc = ctx.cfg.retrieve
    if rc.recall_sample == 0:
        return None
    seed = rc.seed + zlib.crc32(ctx.run_id.encode("utf-8"))
    sample = queries.orderBy(F.rand(seed)).limit(rc.recall_sample).cache()
    try:
        ids = sample.select(QUERY_ID)
        truth = exact_search(sample, items, rc.k, exclude=exclude.join(ids, QUERY_ID), block_size=rc.block_size)
        found = candidates.select(F.col(USER_ID).alias(QUERY_ID), ITEM_ID, RANK).join(ids, QUERY_ID)
        return recall_vs_exact(found, truth, rc.k)
    finally:
        sample.unpersist()


def run(ctx: StageContext) -> dict:
    """Write gold/candidates and gold/similar_items; return counts, timings and recall."""
    rc = ctx.cfg.retrieve
    lake = ctx.lake
    sequences = lake.read(USER_SEQUENCES_TABLE).select(USER_ID, HISTORY_ITEMS)
    embeddings = lake.read(ITEM_EMBEDDINGS_TABLE).where(F.coalesce(F.col(ACTIVE), F.lit(True)))
    text_items, text_counts = clean_vectors(embeddings.select(ITEM_ID, VECTOR), ITEM_ID)
    if text_counts.usable == 0:
        raise ValueError(
            f"retrieve: {ITEM_EMBEDDINGS_TABLE} has no usable item vectors ({text_counts.to_dict()}); run encode first"
        )

    model_dir = latest_model_dir(ctx.cfg.models_dir) if rc.query in ("lstm", "auto") else None
    if rc.query == "lstm" and model_dir is None:
        raise ValueError(f"retrieve.query=lstm but no trained model in {ctx.cfg.models_dir}: run train first")
    if model_dir is not None:
        query_source = f"lstm:{cached_ranker(model_dir).version}"
        raw_queries = lstm_user_states(sequences, model_dir)
        items, item_counts = clean_vectors(lstm_item_vectors(ctx.spark, model_dir), ITEM_ID)
    else:
        query_source = "interests"
        raw_queries = lake.read(USER_VECTORS_TABLE).select(F.col(USER_ID).alias(QUERY_ID), VECTOR)
        items, item_counts = text_items, text_counts
    queries, query_counts = clean_vectors(raw_queries, QUERY_ID, item_counts.dim)
    queries = queries.cache()
    try:
        exclude = seen_pairs(sequences)
        method, search, index_info = make_search(ctx, items, item_counts, "user->item")
        ctx.progress(f"retrieve: {method} search, {query_counts.usable} users x {item_counts.usable} items")
        started = time.perf_counter()
        candidates_written = lake.replace(
            candidates_frame(search(queries, k=rc.candidates, exclude=exclude), method, ctx.run_id), CANDIDATES_TABLE
        )
        seconds = time.perf_counter() - started
        candidates = lake.read(CANDIDATES_TABLE, version=candidates_written.version)
        n_candidates = candidates.count()
        recall = 1.0 if method == "exact" else measure_recall(ctx, queries, items, exclude, candidates)
    finally:
        queries.unpersist()

    ctx.progress("retrieve: item -> item neighbours")
    item_method, item_search, _ = (
        (method, search, index_info) if items is text_items else make_search(ctx, text_items, text_counts, "item->item")
    )
    item_queries = text_items.select(F.col(ITEM_ID).alias(QUERY_ID), VECTOR)
    self_pairs = text_items.select(F.col(ITEM_ID).alias(QUERY_ID), ITEM_ID)
    similar_written = lake.replace(
        similar_items_frame(item_search(item_queries, k=rc.similar_items_k, exclude=self_pairs)), SIMILAR_ITEMS_TABLE
    )

    if recall is not None and recall < rc.recall_target:
        log.warning("retrieve: recall@%d vs exact %.3f is below retrieve.recall_target %.3f: raise retrieve.nprobe",
                    rc.k, recall, rc.recall_target)
    return {
        "method": method,
        "query_source": query_source,
        **index_info,
        "queries": query_counts.usable,
        "items": item_counts.usable,
        "k": rc.k,
        "candidates": n_candidates,
        "candidates_per_user": rc.candidates,
        "search_seconds": round(seconds, 2),
        "queries_per_s": round(query_counts.usable / seconds, 1) if seconds > 0 else None,
        "recall_at_k_vs_exact": None if recall is None else round(recall, 4),
        "recall_target": rc.recall_target,
        "recall_sample": min(rc.recall_sample, query_counts.usable),
        "skipped_bad_vectors": query_counts.skipped + item_counts.skipped
        + (text_counts.skipped if items is not text_items else 0),
        "bad_vectors": {"queries": query_counts.to_dict(), "items": item_counts.to_dict(), "text_items": text_counts.to_dict()},
        "similar_items_method": item_method,
        "similar_items_k": rc.similar_items_k,
        "tables": table_versions(candidates_written, similar_written),
    }
