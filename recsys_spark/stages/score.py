"""Stage ``score``: the LSTM re-ranks each user's candidates -> gold/recommendations.

Reads gold/candidates, gold/user_sequences (``history_items``: the model's input and the reasons;
``seen_items``: never recommended), gold/item_embeddings (text
vectors, for the reason), silver/items (titles) and, in incremental mode, silver/events
(``_ingested_at``). Writes gold/recommendations (RECOMMENDATIONS schema): ``score.k`` rows per
user in one Delta commit, so readers see the previous version or the new one, never a mix, and
the previous version stays readable (``versionAsOf``) for rollback.

- With a trained model (the registry's ``champion``, or ``models/latest`` without a registry:
  ``recsys_spark.tracking.experiment.serving_model_dir``) the candidates are scored by
  ``SequenceRanker.score`` inside ``mapInPandas``; the model is loaded once per Python worker.
  The registered pyfunc ranks the same way (``rank_candidates``). Catalog items outside the
  model's vocabulary are ranked through its text projection (``models.cold_start``; counted as
  ``cold_start_items``), so new items are served before the next retrain. Without one, candidates keep
  their retrieval order and ``model_version`` is ``"none"``.
- ``reason``: "because you watched <title>", the history item whose text vector is most similar
  to the recommended item. Users with fewer than ``score.min_history`` events or without
  candidates get popular unseen items, with reason "popular: ..."; the same items fill lists
  that have fewer than ``score.k`` scored candidates. The title in a reason is catalog text made
  inert (``core.display.inert_column``: no control or bidi character, at most 200 characters).
- No item of a user's ``seen_items`` is recommended: candidates are filtered again (retrieve
  excludes them already, but candidates may predate the user's newest events) and so is the fill.
- ``score.mode=incremental`` rescores the users with events ingested after the previous scoring
  run, and the users whose list holds popular items (those lists follow the whole warehouse's
  popularity, which any new event may change), and MERGEs their rows on (user_id, rank): a list
  that came out shorter drops its old rows past its end. Every other user's list depends only on
  their own history, the candidates and the model, so the table equals a full scoring of the same
  tables with the same model. The watermark (the newest ``_ingested_at`` seen) is stored in the
  Delta commit's ``userMetadata``, so it moves atomically with the rows.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core import progress
from recsys_spark.core.context import StageContext
from recsys_spark.core.display import inert_column
from recsys_spark.models import popularity
from recsys_spark.core.lakehouse import table_versions
from recsys_spark.models.cold_start import find_cold_items
from recsys_spark.models.sequence import rank_candidates
from recsys_spark.tracking.experiment import serving_model_dir
from recsys_spark.core.schemas import (
    CANDIDATES_TABLE,
    GENERATED_AT,
    HISTORY_ITEMS,
    INGESTED_AT,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    MODEL_VERSION,
    NO_MODEL,
    N_INTERACTIONS,
    RANK,
    REASON,
    RECOMMENDATIONS_TABLE,
    RETRIEVAL_SCORE,
    RUN_ID,
    SCORE,
    SEEN_ITEMS,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
    TITLE,
    USER_ID,
    USER_SEQUENCES_TABLE,
    VECTOR,
)

log = logging.getLogger(__name__)

POPULAR_REASON = "popular: "  # how a popular row's reason starts (incremental mode finds them by it)
WATERMARK_KEY = "score_watermark"
CANDIDATE_ITEMS = "_candidate_items"
BECAUSE = "_because"
POPULARITY = "_popularity"
_ORDER = "_order"
_SCORED = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(SCORE, T.FloatType()),
    ]
)


# ---- ranking ------------------------------------------------------------------------------
def score_candidates(
    candidate_lists: DataFrame, load_ranker: Callable[[], object], k: int
) -> DataFrame:
    """Model scores of each user's candidates, top ``k`` per user: ``(user_id, item_id, score)``.

    Reads ``user_id``, ``history_items`` and ``_candidate_items`` (array, retrieval order).
    ``load_ranker`` is called once per batch in the Python worker and should return a cached
    model (:func:`recsys_spark.models.sequence.cached_ranker`); ties keep the retrieval order.
    """

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            ranker = load_ranker()
            histories = [list(h) if h is not None else [] for h in batch[HISTORY_ITEMS]]
            candidates = [list(c) for c in batch[CANDIDATE_ITEMS]]
            users, items, scores = [], [], []
            for user, cands, probs in zip(batch[USER_ID], candidates, ranker.score(histories, candidates)):
                best, best_scores = rank_candidates(cands, probs, k)
                users.extend([user] * len(best))
                items.extend(best)
                scores.extend(best_scores)
            yield pd.DataFrame({USER_ID: users, ITEM_ID: items, SCORE: np.asarray(scores, dtype=np.float32)})

    return candidate_lists.mapInPandas(score, _SCORED)


def candidate_lists(candidates: DataFrame, sequences: DataFrame) -> DataFrame:
    """``(user_id, history_items, _candidate_items)``: each user's candidates in retrieval order."""
    ordered = candidates.groupBy(USER_ID).agg(
        F.sort_array(F.collect_list(F.struct(F.col(RANK), F.col(ITEM_ID)))).alias("_ranked")
    )
    return ordered.join(sequences, USER_ID).select(
        USER_ID, HISTORY_ITEMS, F.transform("_ranked", lambda x: x[ITEM_ID]).alias(CANDIDATE_ITEMS)
    )


def seen_pairs(sequences: DataFrame) -> DataFrame:
    """``(user_id, item_id)`` for every item of each user's ``seen_items``."""
    return sequences.select(USER_ID, F.explode(SEEN_ITEMS).alias(ITEM_ID))


def by_retrieval(candidates: DataFrame, k: int) -> DataFrame:
    """Without a model: the top ``k`` candidates by retrieval rank (``score`` = retrieval score);
    the ranks may have gaps where seen candidates were dropped."""
    order = Window.partitionBy(USER_ID).orderBy(F.col(RANK), F.col(ITEM_ID))
    return (
        candidates.withColumn("_by_rank", F.row_number().over(order))
        .where(F.col("_by_rank") <= k)
        .select(USER_ID, ITEM_ID, F.col(RETRIEVAL_SCORE).cast("float").alias(SCORE))
    )


def fill_with_popular(
    scored: DataFrame, users: DataFrame, all_sequences: DataFrame, catalog: DataFrame, k: int
) -> DataFrame:
    """Complete every user of ``users`` (``user_id``, ``seen_items``) to ``k`` rows with
    popular items (over ``all_sequences``' ``history_items``) they have not seen.

    ``scored`` ``(user_id, item_id, score)`` comes first in its own order; returns
    ``(user_id, rank, item_id, score, _popularity)`` with ``_popularity`` null on scored rows.
    Catalog items (``item_id``) nobody has seen yet rank after the seen ones with popularity 0,
    so a small or new catalog still fills every list.
    """
    n_users = max(1, all_sequences.count())
    # The k most popular unseen items: k rows fill a list whatever the scored rows hold.
    counts = popularity.item_counts(all_sequences, HISTORY_ITEMS, catalog)
    fallback = popularity.top_unseen(counts, users, k, SEEN_ITEMS).select(
        USER_ID, ITEM_ID, (F.col(N_INTERACTIONS) / F.lit(n_users)).cast("float").alias(SCORE),
        F.col(N_INTERACTIONS).alias(POPULARITY), (F.col(RANK) + F.lit(1_000_000)).alias(_ORDER),
    )
    first = scored.select(
        USER_ID, ITEM_ID, F.col(SCORE).cast("float"), F.lit(None).cast("long").alias(POPULARITY),
        F.row_number().over(Window.partitionBy(USER_ID).orderBy(F.desc(SCORE), ITEM_ID)).alias(_ORDER),
    )
    merged = first.unionByName(fallback)
    deduped = merged.withColumn(
        "_dup", F.row_number().over(Window.partitionBy(USER_ID, ITEM_ID).orderBy(_ORDER))
    ).where(F.col("_dup") == 1)
    ranked = deduped.withColumn(RANK, F.row_number().over(Window.partitionBy(USER_ID).orderBy(_ORDER)))
    return ranked.where(F.col(RANK) <= k).select(USER_ID, F.col(RANK).cast("int"), ITEM_ID, SCORE, POPULARITY)


# ---- reasons -------------------------------------------------------------------------------
def reason_buckets(users: int, rows_per_user: int, rows_per_group: int, partitions: int) -> int:
    """How many hash buckets of users the reasons are grouped in: enough that a bucket holds
    about ``rows_per_group`` rows (``users`` x ``rows_per_user``, an upper bound), and never fewer
    than the shuffle's ``partitions`` (so every task has a group to work on)."""
    return max(1, partitions, -(-max(0, users) * max(1, rows_per_user) // max(1, rows_per_group)))


def most_similar_history_item(
    recs: DataFrame, sequences: DataFrame, embeddings: DataFrame, buckets: Optional[int] = None
) -> DataFrame:
    """``(user_id, rank, _because)``: the history item whose text vector has the highest cosine
    with the recommended item. Rows whose item or history has no vector are absent. Users are
    grouped in ``buckets`` hash buckets (default: ``spark.sql.shuffle.partitions``), one pandas
    group each: see :func:`reason_buckets`."""
    users = recs.select(USER_ID).distinct()
    history = (
        sequences.join(users, USER_ID)
        .select(USER_ID, F.explode(F.array_distinct(HISTORY_ITEMS)).alias(ITEM_ID))
        .join(embeddings, ITEM_ID)
        .select(USER_ID, ITEM_ID, VECTOR, F.lit(None).cast("int").alias(RANK))
    )
    targets = recs.select(USER_ID, ITEM_ID, RANK).join(embeddings, ITEM_ID).select(USER_ID, ITEM_ID, VECTOR, RANK)
    if buckets is None:
        buckets = int(recs.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    rows = history.unionByName(targets).withColumn("_bucket", F.pmod(F.xxhash64(USER_ID), F.lit(buckets)))
    return rows.groupBy("_bucket").applyInPandas(
        _nearest_history, f"{USER_ID} string, {RANK} int, {BECAUSE} string"
    )


def _nearest_history(rows: pd.DataFrame) -> pd.DataFrame:
    from recsys_spark.search.kernels import nearest_cells  # the search's nearest-vector kernel

    out_user, out_rank, out_item = [], [], []
    for user, group in rows.groupby(USER_ID, sort=False):
        is_target = group[RANK].notna().to_numpy()
        if not is_target.any() or is_target.all():
            continue
        vectors = np.vstack(group[VECTOR].to_numpy()).astype(np.float32)
        nearest = nearest_cells(vectors[is_target], vectors[~is_target])
        history_ids = group[ITEM_ID].to_numpy()[~is_target]
        out_user.extend([user] * int(is_target.sum()))
        out_rank.extend(group[RANK].to_numpy()[is_target].astype(int).tolist())
        out_item.extend(history_ids[nearest].tolist())
    return pd.DataFrame({USER_ID: out_user, RANK: np.asarray(out_rank, dtype=np.int32), BECAUSE: out_item})


def with_reasons(
    recs: DataFrame, sequences: DataFrame, embeddings: DataFrame, titles: DataFrame, buckets: Optional[int] = None
) -> DataFrame:
    """Add ``reason`` to ``(user_id, rank, item_id, score, _popularity)`` rows."""
    because = most_similar_history_item(recs.where(F.col(POPULARITY).isNull()), sequences, embeddings, buckets)
    named = because.join(
        titles.select(F.col(ITEM_ID).alias(BECAUSE), F.col(TITLE).alias("_because_title")), BECAUSE, "left"
    )
    rec_titles = titles.select(ITEM_ID, F.col(TITLE).alias("_title"))
    return (
        recs.join(named, [USER_ID, RANK], "left")
        .join(rec_titles, ITEM_ID, "left")
        .withColumn(
            REASON,
            F.when(
                F.col(POPULARITY).isNotNull(),
                F.format_string(POPULAR_REASON + "%s is in the history of %d users", inert_column(F.coalesce("_title", ITEM_ID)), POPULARITY),
            )
            .when(F.col(BECAUSE).isNotNull(), F.concat(F.lit("because you watched "), inert_column(F.coalesce("_because_title", BECAUSE))))
            .otherwise(F.lit("close to your history")),
        )
    )


# ---- incremental state -------------------------------------------------------------------
HISTORY_DEPTH = 50  # commits searched for the newest scoring state


def last_state(ctx: StageContext) -> Optional[dict]:
    """The ``userMetadata`` of the newest scoring commit of gold/recommendations, if any."""
    if not ctx.lake.exists(RECOMMENDATIONS_TABLE):
        return None
    for commit in ctx.lake.history(RECOMMENDATIONS_TABLE, HISTORY_DEPTH):
        meta = commit.metadata
        if meta is not None and WATERMARK_KEY in meta:
            return meta
    return None


def past_the_end(final: DataFrame, sequences: DataFrame, k: int) -> DataFrame:
    """``(user_id, rank)`` for each rank up to ``k`` that a rescored user's new list does not
    fill (it has seen almost the whole catalog): the incremental MERGE deletes those old rows."""
    ranks = sequences.select(USER_ID).crossJoin(
        final.sparkSession.range(1, k + 1).select(F.col("id").cast("int").alias(RANK))
    )
    return ranks.join(final.select(USER_ID, RANK), [USER_ID, RANK], "left_anti")


# ---- the stage ------------------------------------------------------------------------------
def run(ctx: StageContext) -> dict:
    """Write gold/recommendations (full replace or incremental merge); return counts."""
    sc = ctx.cfg.score
    lake = ctx.lake
    sequences = lake.read(USER_SEQUENCES_TABLE).select(USER_ID, HISTORY_ITEMS, SEEN_ITEMS)
    events = lake.read(SILVER_EVENTS_TABLE)
    # As text in the session time zone, parsed back the same way: no driver-local time zone.
    watermark_text = events.select(F.date_format(F.max(INGESTED_AT), "yyyy-MM-dd HH:mm:ss.SSSSSS")).first()[0]

    all_sequences = sequences
    mode = sc.mode
    previous = last_state(ctx) if mode == "incremental" else None
    if mode == "incremental" and (previous is None or previous.get("k") != sc.k or previous.get(WATERMARK_KEY) is None):
        log.info("score: no comparable previous scoring run (first run or score.k changed): scoring everyone")
        mode = "full"
    if mode == "incremental":
        since = previous[WATERMARK_KEY]
        changed = events.where(F.col(INGESTED_AT) > F.to_timestamp(F.lit(since))).select(USER_ID)
        with_popular = (
            lake.read(RECOMMENDATIONS_TABLE).where(F.col(REASON).startswith(POPULAR_REASON)).select(USER_ID)
        )
        # Checkpointed: this set is read from gold/recommendations, which this run's MERGE rewrites.
        # A cached frame whose plan still read that table would be re-planned by Delta's commit
        # (every Delta scan in it listed again: 24 listings, ~6 s of a cycle on tiny tables).
        to_score = changed.unionByName(with_popular).distinct().localCheckpoint(eager=True)
        sequences = sequences.join(to_score, USER_ID)
    sequences = sequences.cache()
    try:
        summary = _score(ctx, all_sequences, sequences, mode, {WATERMARK_KEY: watermark_text, "k": sc.k, "run_id": ctx.run_id})
    finally:
        sequences.unpersist()
    summary["watermark"] = watermark_text
    return summary


def _score(ctx: StageContext, all_sequences: DataFrame, sequences: DataFrame, mode: str, state: dict) -> dict:
    """Score the users of ``sequences`` (all of them, or the changed ones) and write their rows."""
    sc = ctx.cfg.score
    lake = ctx.lake
    progress.describe(ctx.spark, f"{mode} scoring: the users to score and their candidates")
    users = sequences.count()
    candidates = lake.read(CANDIDATES_TABLE).join(sequences.select(USER_ID), USER_ID).join(
        seen_pairs(sequences), [USER_ID, ITEM_ID], "left_anti"
    )
    warm = sequences.where(F.size(HISTORY_ITEMS) >= sc.min_history).select(USER_ID)
    warm_candidates = candidates.join(warm, USER_ID)

    model_dir = serving_model_dir(ctx.cfg, "score")
    unknown, cold_counts = 0, {}
    if model_dir is not None:
        cold, cold_counts = find_cold_items(lake, model_dir, ctx.cfg.train.cold_start_max_items)
        ranker = cold.ranker()
        model_version = ranker.version
        vocabulary = ctx.spark.createDataFrame([(i,) for i in ranker.item_ids], f"{ITEM_ID} string")
        known = warm_candidates.join(vocabulary, ITEM_ID, "left_semi")
        # Both counts in one job: every warm candidate, and those the vocabulary knows.
        flagged = warm_candidates.join(vocabulary.withColumn("_known", F.lit(True)), ITEM_ID, "left")
        tally = flagged.agg(F.count(F.lit(1)).alias("total"), F.count("_known").alias("known")).first()
        total, unknown = int(tally["total"]), int(tally["total"] - tally["known"])
        if total and unknown == total:
            raise ValueError(
                f"score: model {model_version} ({model_dir}) knows none of the {total} candidate items: "
                "it does not match the item vocabulary; retrain (train) or rerun retrieve"
            )
        scored = score_candidates(candidate_lists(known, sequences), cold.ranker, sc.k)
    else:
        model_version = NO_MODEL
        scored = by_retrieval(warm_candidates, sc.k)

    titles = lake.read(SILVER_ITEMS_TABLE).select(ITEM_ID, TITLE)
    # Cached: the reasons read the ranked rows twice (their items, and the rows they annotate),
    # which would otherwise run the model's scoring twice. users x k small rows.
    recs = fill_with_popular(scored, sequences, all_sequences, titles, sc.k).cache()
    embeddings = lake.read(ITEM_EMBEDDINGS_TABLE).select(ITEM_ID, VECTOR).where(F.size(VECTOR) > 0)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    # A history holds at most features.max_sequence_length items, a list k: the bound per user.
    buckets = reason_buckets(
        users, ctx.cfg.features.max_sequence_length + sc.k, sc.reason_rows_per_group,
        int(ctx.spark.conf.get("spark.sql.shuffle.partitions")),
    )
    final = (
        with_reasons(recs, sequences, embeddings, titles, buckets)
        .select(
            USER_ID, RANK, ITEM_ID, SCORE, REASON,
            F.lit(model_version).alias(MODEL_VERSION),
            F.lit(ctx.run_id).alias(RUN_ID),
            F.lit(now).cast("timestamp").alias(GENERATED_AT),
            F.col(POPULARITY).isNotNull().alias("_popular"),
        )
        .cache()
    )
    progress.describe(ctx.spark, "ranking, reasons and popular fill -> gold/recommendations")
    try:
        counts = final.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(USER_ID).alias("users"),
            F.countDistinct(F.when(~F.col("_popular"), F.col(USER_ID))).alias("personalised_users"),
            F.sum(F.col("_popular").cast("int")).alias("popular_rows"),
        ).first()
        # One commit carrying ``state`` as its userMetadata: replace, or merge on (user_id, rank).
        if mode == "incremental":
            written = lake.merge(
                final.unionByName(past_the_end(final, sequences, sc.k), allowMissingColumns=True),
                RECOMMENDATIONS_TABLE, [USER_ID, RANK], metadata=state,
                delete_when=f"s.`{ITEM_ID}` IS NULL", insert_when=f"s.`{ITEM_ID}` IS NOT NULL",
            )
        else:
            written = lake.replace(final, RECOMMENDATIONS_TABLE, metadata=state)
    finally:
        final.unpersist()
        recs.unpersist()
    return {
        "mode": mode,
        "model_version": model_version,
        "users": users,
        "recommended_users": counts["users"],
        "personalised_users": counts["personalised_users"],
        "cold_start_users": counts["users"] - counts["personalised_users"],
        "rows": counts["rows"],
        "popular_rows": counts["popular_rows"] or 0,
        "k": sc.k,
        "candidates_unknown_to_model": unknown,
        **cold_counts,
        "tables": table_versions(written),
    }
