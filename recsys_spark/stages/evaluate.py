"""The evaluate stage: ranking metrics for the baselines and the pipeline on one split -> gold/metrics.

Reads gold/user_sequences (the leave-one-out split: ``test_items`` is the target, ``history_items``
what every model may use, ``seen_items`` everything the user interacted with before the target
(complete, not cut at features.max_sequence_length), which no model may recommend, ``test_untied``
the users whose test event is strictly later than all their others), silver/items (the catalog), and, when present,
gold/recommendations (model ``lstm``), gold/user_vectors + gold/item_embeddings (model ``content``).
Ties in event time are broken by a seeded random order in the features stage
(``features.tie_break_seed``), so "the last event" never encodes item ids; the ``*_untied``
protocols repeat every metric on the users whose test event is unambiguous.

Writes this run's rows to gold/metrics (run_id, model, protocol, metric, k, value, n_users) in
one commit and a Markdown + HTML report (``recsys_spark.evaluation.report``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from functools import reduce
from typing import Callable, Optional

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.search import store
from recsys_spark.evaluation import baselines, metrics
from recsys_spark.models.sequence import CONFIG_FILE
from recsys_spark.core import progress
from recsys_spark.core.context import StageContext
from recsys_spark.core.lakehouse import table_versions
from recsys_spark.core.schemas import (
    ACTIVE,
    ALS_MODEL,
    CONTENT_MODEL,
    HISTORY_ITEMS,
    HISTORY_WEIGHTS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    ITEM_KNN_MODEL,
    ITEMS,
    K,
    METRIC,
    METRICS_TABLE,
    MODEL,
    N_HISTORY,
    RUN_ID,
    N_USERS,
    SEEN_ITEMS,
    NEXT_ITEM_MODEL,
    PIPELINE_MODEL,
    POPULARITY_MODEL,
    PROTOCOL,
    RANK,
    MODEL_VERSION,
    NO_MODEL,
    RECOMMENDATIONS_TABLE,
    SILVER_ITEMS_TABLE,
    TEST_ITEMS,
    TEST_UNTIED,
    TRAIN_ITEMS,
    TRAIN_SEEN_ITEMS,
    TRAIN_WEIGHTS,
    USER_ID,
    USER_SEQUENCES,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
    VAL_ITEMS,
    VALUE,
    VECTOR,
    WEIGHTS,
    require_columns,
)

log = logging.getLogger(__name__)

FULL = "full"
UNTIED = "_untied"
HISTOGRAM_BINS = 10


def test_targets(sequences: DataFrame) -> DataFrame:
    """gold/user_sequences -> (user_id, test_items, history_items, seen_items, test_untied) of the
    test users: ``seen_items`` is what every model's list is cleared of."""
    require_columns(sequences, (USER_ID, HISTORY_ITEMS, SEEN_ITEMS, TEST_ITEMS, TEST_UNTIED), str(USER_SEQUENCES_TABLE))
    return sequences.where(F.size(F.coalesce(TEST_ITEMS, F.array())) > 0).select(
        USER_ID,
        TEST_ITEMS,
        F.coalesce(HISTORY_ITEMS, baselines.empty_items()).alias(HISTORY_ITEMS),
        F.coalesce(SEEN_ITEMS, baselines.empty_items()).alias(SEEN_ITEMS),
        TEST_UNTIED,
    )


def validation_targets(sequences: DataFrame) -> DataFrame:
    """The validation item as target, the training items as history and what was seen before the
    validation event as ``seen_items`` (for tuning on val only)."""
    return sequences.where(F.size(F.coalesce(VAL_ITEMS, F.array())) > 0).select(
        USER_ID,
        F.col(VAL_ITEMS).alias(TEST_ITEMS),
        F.coalesce(TRAIN_ITEMS, baselines.empty_items()).alias(HISTORY_ITEMS),
        F.coalesce(TRAIN_SEEN_ITEMS, baselines.empty_items()).alias(SEEN_ITEMS),
        F.lit(False).alias(TEST_UNTIED),
    )


def baseline_queries(targets: DataFrame) -> DataFrame:
    """What the baselines recommend for: (user_id, items, seen_items). Models read the bounded
    ``history_items`` as ``items``; what they must not recommend is the complete ``seen_items``."""
    return targets.select(USER_ID, F.col(HISTORY_ITEMS).alias(ITEMS), SEEN_ITEMS)


def fit_histories(sequences: DataFrame, items: str, weights: str) -> DataFrame:
    """(user_id, items, weights) from one pair of sequence columns (history_* or train_*)."""
    return sequences.select(
        USER_ID,
        F.coalesce(items, baselines.empty_items()).alias(ITEMS),
        F.coalesce(weights, F.array().cast("array<double>")).alias(WEIGHTS),
    )


def catalog(lake, sequences: DataFrame) -> DataFrame:
    """(item_id) of every known item: silver/items plus anything that appears in a sequence."""
    from_sequences = sequences.select(F.explode(ITEMS).alias(ITEM_ID))
    if lake.exists(SILVER_ITEMS_TABLE):
        from_sequences = from_sequences.unionByName(lake.read(SILVER_ITEMS_TABLE).select(ITEM_ID))
    return from_sequences.where(F.col(ITEM_ID).isNotNull()).distinct()


def pipeline_predictions(lake, version: Optional[int] = None) -> DataFrame:
    """gold/recommendations (at ``version`` when given) as predictions (user_id, item_id, rank)."""
    recommendations = lake.read(RECOMMENDATIONS_TABLE, version)
    require_columns(recommendations, (USER_ID, ITEM_ID, RANK), str(RECOMMENDATIONS_TABLE))
    return recommendations.select(USER_ID, ITEM_ID, F.col(RANK).cast("int").alias(RANK))


def fit_events(ctx: StageContext, version: Optional[int]) -> dict:
    """What each model learned from, for the report: the baselines' final fit uses every event
    before the test item (train + validation); the LSTM's served model says in its config.json
    (``final_fit``: a refit on train + validation, or train_items only)."""
    out = {"baselines": "train_val"}
    if version is None:
        return out
    row = ctx.lake.read(RECOMMENDATIONS_TABLE, version).select(MODEL_VERSION).where(F.col(MODEL_VERSION).isNotNull()).first()
    served = None if row is None else row[MODEL_VERSION]
    path = os.path.join(ctx.cfg.models_dir, str(served), CONFIG_FILE)
    events = None
    if served not in (None, NO_MODEL) and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                events = (json.load(handle).get("final_fit") or {}).get("events", "train")
        except (OSError, ValueError) as exc:
            log.warning("evaluate: cannot read %s: %s", path, exc)
    out[PIPELINE_MODEL] = events if events else ("none (no model: retrieval order)" if served == NO_MODEL else "unknown")
    return out


def _content_predictions(ctx: StageContext, queries: DataFrame, depth: int) -> tuple[DataFrame, dict]:
    """The content baseline through the warehouse's text index (``search.store.text_index``):
    exact or IVF by ``retrieve.method``, the IVF index retrieve saved reused while
    gold/item_embeddings is unchanged. Returns the predictions and how the index was had."""
    method, index, info = store.text_index(ctx)
    users = ctx.lake.read(USER_VECTORS_TABLE).select(USER_ID, VECTOR)
    found = baselines.content(users, index, queries, depth)
    return found, {"method": method, **{key: value for key, value in info.items() if key != "index_path"}}


def _content_unavailable(ctx: StageContext) -> Optional[str]:
    missing = [str(t) for t in (USER_VECTORS_TABLE, ITEM_EMBEDDINGS_TABLE) if not ctx.lake.exists(t)]
    if missing:
        return f"table(s) {', '.join(missing)} missing: run the encode and interests stages"
    items = ctx.lake.read(ITEM_EMBEDDINGS_TABLE)
    if ACTIVE in items.columns:
        items = items.where(F.coalesce(ACTIVE, F.lit(True)))
    if items.where(F.size(VECTOR) > 0).limit(1).count() == 0:
        return f"{ITEM_EMBEDDINGS_TABLE} holds no active item vector: run the encode stage on a catalog with text"
    return None


def _als_predictions(ctx: StageContext, sequences: DataFrame, queries: DataFrame, depth: int, tune_k: int) -> tuple[DataFrame, dict]:
    """Choose the ALS grid point on the validation item (fit on train_*), refit on history_*."""
    cfg = ctx.cfg.evaluate
    points = baselines.grid(cfg.als_ranks, cfg.als_reg_params, cfg.als_alphas, cfg.als_max_iter, cfg.seed)
    val = validation_targets(sequences)
    details: dict = {"grid": []}
    if len(points) > 1 and val.limit(1).count() > 0:
        best, scores = baselines.tune_als(
            fit_histories(sequences, TRAIN_ITEMS, TRAIN_WEIGHTS),
            baseline_queries(val),
            val,
            tune_k,
            points,
        )
        details["grid"] = scores
    else:
        # One grid point, or no validation item in the split: nothing to choose.
        best = points[0]
    details["chosen"] = {"rank": best.rank, "reg_param": best.reg_param, "alpha": best.alpha, "max_iter": best.max_iter}
    predictions = baselines.als(
        fit_histories(sequences, HISTORY_ITEMS, HISTORY_WEIGHTS), queries, depth, best, ctx.cfg.retrieve.block_size
    )
    return predictions, details


def _rows(result: DataFrame, model: str) -> list[dict]:
    return [
        {"model": model, "protocol": r[PROTOCOL], "metric": r[METRIC], "k": int(r[K]), "value": float(r[VALUE]), "n_users": int(r[N_USERS])}
        for r in result.collect()
    ]


def evaluate_model(
    model: str,
    predictions: DataFrame,
    targets: DataFrame,
    popularity: DataFrame,
    catalog_size: int,
    ks: tuple[int, ...],
    depth: int,
    negatives: Optional[DataFrame] = None,
    sampled_label: str = "",
    stderr: bool = False,
) -> tuple[list[dict], dict, DataFrame]:
    """All metrics of one model's predictions, for every K and protocol; lists are cut at
    ``depth`` unseen items (max K, or deeper for the sampled protocol).

    Returns the metric rows (dicts with model, protocol, metric, k, value, n_users), the counts
    of bad input (users_missing_predictions, duplicate_predictions, seen_predictions_removed,
    short_lists, untied_users) and the cached evaluation frame (the caller unpersists it).
    """
    frame = metrics.evaluation_frame(metrics.rank_lists(predictions), targets, depth).cache()
    counts_row = frame.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum(F.when(~F.col(metrics.HAS_PREDICTIONS), 1).otherwise(0)).alias("users_missing_predictions"),
        F.sum(metrics.N_DUPLICATES).alias("duplicate_predictions"),
        F.sum(metrics.N_SEEN).alias("seen_predictions_removed"),
        F.sum(F.when(F.col(metrics.HAS_PREDICTIONS) & (F.size(metrics.RECS) < max(ks)), 1).otherwise(0)).alias("short_lists"),
        F.sum(F.when(F.col(TEST_UNTIED), 1).otherwise(0)).alias("untied_users"),
    ).first()
    counts = {name: int(counts_row[name] or 0) for name in counts_row.asDict()}
    # Every user is in "full"; untied users also in "full_untied": one pass computes both.
    protocols = F.when(F.col(TEST_UNTIED), F.array(F.lit(FULL), F.lit(FULL + UNTIED))).otherwise(F.array(F.lit(FULL)))
    by_protocol = frame.withColumn(PROTOCOL, F.explode(protocols))
    results = metrics.ranking_metrics(by_protocol, ks, stderr).unionByName(
        metrics.catalog_metrics(by_protocol, popularity, catalog_size, ks)
    )
    if negatives is not None:
        ranks = metrics.sampled_ranks(by_protocol, negatives).withColumn(
            PROTOCOL, F.concat(F.lit(sampled_label), F.when(F.col(PROTOCOL) == FULL + UNTIED, UNTIED).otherwise(""))
        )
        results = results.unionByName(metrics.sampled_metrics(ranks, ks))
    return _rows(results, model), counts, frame


def _compact(rows: list[dict], protocol: str, stderr: bool = False) -> dict:
    """{model: {"ndcg@10": value, ...}} for one protocol: the metrics, or (``stderr``) the
    standard errors of the models evaluated on a sample, under the metric's own name."""
    out: dict = {}
    for row in rows:
        metric = row["metric"]
        if row["protocol"] != protocol or metric.endswith(metrics.STDERR_SUFFIX) != stderr:
            continue
        name = metric[: -len(metrics.STDERR_SUFFIX)] if stderr else metric
        value = row["value"]
        out.setdefault(row["model"], {})[f"{name}@{row['k']}"] = None if value is None else round(value, 6 if stderr else 5)
    return out


def sample_targets(targets: DataFrame, n: int, seed: int) -> DataFrame:
    """The ``n`` test users with the smallest ``xxhash64(user_id, seed)``: a seeded sample that
    every run, cluster size and partitioning draws the same (a larger ``n`` keeps every user of
    a smaller one). Only the ids meet on one task (n strings); the rows are a semi-join."""
    ids = targets.select(USER_ID, F.xxhash64(F.col(USER_ID), F.lit(seed)).alias("_draw"))
    chosen = ids.orderBy("_draw", USER_ID).limit(n).select(USER_ID)
    return targets.join(chosen, USER_ID, "left_semi")


def untied_users(targets: DataFrame) -> int:
    return targets.where(F.col(TEST_UNTIED)).count()


def _histogram(df: DataFrame) -> list[int]:
    counts = {int(r["bin"]): int(r["n"]) for r in df.collect()}
    return [counts.get(b, 0) for b in range(HISTOGRAM_BINS)]


LEAD_METRICS = ("ndcg_lead", "ndcg_lead_low", "ndcg_lead_high")


def ndcg_lead(scores: DataFrame, rows: list[dict], k: int, samples: int, seed: int) -> Optional[dict]:
    """The lstm's NDCG@k lead over the best baseline (highest NDCG@k, protocol full) on the same
    users, with a paired bootstrap 95% interval, on all test users (``full``) and the untied
    ones (``untied``); None when the lstm or every baseline is missing.

    Reads ``scores`` (user_id, test_untied, ndcg, model) of ``metrics.user_scores``; only the
    users whose two NDCGs differ reach the driver."""
    full = {r["model"]: r["value"] for r in rows if (r["protocol"], r["metric"], r["k"]) == (FULL, "ndcg", k)}
    baselines_ndcg = {m: v for m, v in full.items() if m != PIPELINE_MODEL}
    if PIPELINE_MODEL not in full or not baselines_ndcg:
        return None
    best = max(sorted(baselines_ndcg), key=lambda m: baselines_ndcg[m])
    lstm = scores.where(F.col(MODEL) == PIPELINE_MODEL).select(USER_ID, TEST_UNTIED, F.col("ndcg").alias("_lstm"))
    base = scores.where(F.col(MODEL) == best).select(USER_ID, F.col("ndcg").alias("_base"))
    paired = lstm.join(base, USER_ID).select(TEST_UNTIED, (F.col("_lstm") - F.col("_base")).alias("_diff"))
    tally = paired.agg(
        F.count(F.lit(1)).alias("users"), F.sum(F.col(TEST_UNTIED).cast("int")).alias("untied")
    ).first()
    differing = paired.where(F.col("_diff") != 0).collect()
    lead: dict = {"baseline": best, "k": k}
    lead["full"] = metrics.paired_bootstrap([r["_diff"] for r in differing], int(tally["users"]), samples, seed)
    if tally["untied"]:
        untied = [r["_diff"] for r in differing if r[TEST_UNTIED]]
        lead["untied"] = metrics.paired_bootstrap(untied, int(tally["untied"]), samples, seed)
    return lead


def lead_rows(lead: Optional[dict], k: int) -> list[dict]:
    """gold/metrics rows of the lead: model ``lstm-vs-<baseline>``, protocol full / full_untied,
    metrics ndcg_lead (the mean difference), ndcg_lead_low and ndcg_lead_high (the interval)."""
    if not lead:
        return []
    out = []
    for key, protocol in (("full", FULL), ("untied", FULL + UNTIED)):
        interval = lead.get(key)
        if interval is None:
            continue
        for metric, value in zip(LEAD_METRICS, (interval["mean"], interval["low"], interval["high"])):
            out.append({"model": f"{PIPELINE_MODEL}-vs-{lead['baseline']}", "protocol": protocol, "metric": metric,
                        "k": k, "value": value, "n_users": interval["n_users"]})
    return out


HISTORY_BUCKETS = ("cold", "short", "long")


def by_history_length(scores: DataFrame, targets: DataFrame, cold_max: int, short_max: int, models: list[str]) -> list[dict]:
    """Mean NDCG and hit rate per model and history length (distinct items seen before the test
    event: cold <= ``cold_max`` < short <= ``short_max`` < long), one job; buckets without users
    are absent. Returns [{"model", "bucket", "users", "ndcg", "hit_rate"}] in model, bucket order."""
    seen = F.size(SEEN_ITEMS)
    lengths = targets.select(
        USER_ID,
        F.when(seen <= cold_max, "cold").when(seen <= short_max, "short").otherwise("long").alias(N_HISTORY),
    )
    grouped = scores.join(lengths, USER_ID).groupBy(MODEL, N_HISTORY).agg(
        F.count(F.lit(1)).alias("users"), F.avg("ndcg").alias("ndcg"), F.avg("hit_rate").alias("hit_rate")
    )
    rows = [
        {"model": r[MODEL], "bucket": r[N_HISTORY], "users": int(r["users"]),
         "ndcg": round(float(r["ndcg"]), 5), "hit_rate": round(float(r["hit_rate"]), 5)}
        for r in grouped.collect()
    ]
    return sorted(rows, key=lambda r: (models.index(r["model"]), HISTORY_BUCKETS.index(r["bucket"])))


def run(ctx: StageContext) -> dict:
    """Evaluate ``evaluate.baselines`` and, when gold/recommendations exists, the pipeline (lstm)."""
    started = time.perf_counter()
    cfg = ctx.cfg.evaluate
    ks = metrics.check_ks(cfg.ks)
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    require_columns(sequences, USER_SEQUENCES.fieldNames(), str(USER_SEQUENCES_TABLE))
    progress.describe(ctx.spark, "test targets, catalog and popularity")
    targets = test_targets(sequences).cache()
    n_test = targets.count()
    if n_test == 0:
        raise ValueError(
            f"evaluate: empty test set: no user in {USER_SEQUENCES_TABLE} has a test item "
            f"(features.split={ctx.cfg.features.split!r}; evaluation needs leave_one_out or time_cut)"
        )
    all_items = catalog(ctx.lake, sequences).cache()
    catalog_size = all_items.count()
    popularity = metrics.item_popularity(sequences.select(USER_ID, HISTORY_ITEMS), all_items).cache()
    interacted = metrics.interacted_pop_percentile(targets, popularity).first()[0]
    report_k = 10 if 10 in ks else max(ks)
    sampled = "sampled" in cfg.protocols
    depth = max(max(ks), cfg.sampled_depth) if sampled else max(ks)
    sampled_label = f"sampled_{cfg.sampled_distribution}_{cfg.sampled_negatives}"
    negatives = None
    negatives_short = 0
    if sampled:
        negatives = metrics.sampled_negatives(
            targets, popularity, cfg.sampled_negatives, cfg.sampled_distribution, cfg.seed
        ).cache()
        negatives_short = n_test - negatives.where(F.size(metrics.NEGATIVES) >= cfg.sampled_negatives).count()

    histories = fit_histories(sequences, HISTORY_ITEMS, HISTORY_WEIGHTS)
    producers: dict[str, Callable[[DataFrame], DataFrame]] = {
        POPULARITY_MODEL: lambda queries: baselines.popularity(histories, queries, depth),
        ITEM_KNN_MODEL: lambda queries: baselines.item_knn(histories, queries, depth, cfg.knn_neighbours),
        NEXT_ITEM_MODEL: lambda queries: baselines.next_item(histories, queries, depth, cfg.next_item_successors),
    }
    # The costly models on a seeded sample of the test users, with standard errors (0: all).
    sample_size = cfg.sample_users if 0 < cfg.sample_users < n_test else 0
    sample = sample_targets(targets, sample_size, cfg.seed).cache() if sample_size else None
    models = [m for m in cfg.baselines if m != PIPELINE_MODEL]
    skipped: dict[str, str] = {}
    # One version of gold/recommendations for every job that reads it, even while an
    # incremental or full scoring publishes a new one (recorded in the summary).
    recommendations_version = ctx.lake.version(RECOMMENDATIONS_TABLE)
    if recommendations_version is not None:
        models.append(PIPELINE_MODEL)
    elif PIPELINE_MODEL in cfg.baselines:
        skipped[PIPELINE_MODEL] = f"table {RECOMMENDATIONS_TABLE} missing: run the score stage"

    rows: list[dict] = []
    counts: dict[str, dict] = {}
    histograms: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    als_details: dict = {}
    content_search: dict = {}
    user_scores: list[DataFrame] = []
    for position, model in enumerate(models, 1):
        if model == CONTENT_MODEL:
            reason = _content_unavailable(ctx)
            if reason:
                skipped[model] = reason
                log.warning("evaluate: model content skipped: %s", reason)
                continue
        ctx.progress(f"evaluate: model {model} ({position}/{len(models)})")
        progress.describe(ctx.spark, f"model {model}")
        progress.step("evaluated", position - 1, len(models), unit="models")
        model_started = time.perf_counter()
        on_sample = sample is not None and model in cfg.sample_models
        model_targets = sample if on_sample else targets
        queries = baseline_queries(model_targets)
        if model == ALS_MODEL:
            predictions, als_details = _als_predictions(ctx, sequences, queries, depth, report_k)
        elif model == PIPELINE_MODEL:
            predictions = pipeline_predictions(ctx.lake, recommendations_version)
        elif model == CONTENT_MODEL:
            predictions, content_search = _content_predictions(ctx, queries, depth)
        else:
            predictions = producers[model](queries)
        model_rows, counts[model], frame = evaluate_model(
            model, predictions, model_targets, popularity, catalog_size, ks, depth, negatives, sampled_label,
            stderr=on_sample,
        )
        recommended = frame.select(F.explode(F.slice(metrics.RECS, 1, report_k)).alias(ITEM_ID))
        histograms[model] = _histogram(metrics.popularity_histogram(recommended, popularity, HISTOGRAM_BINS))
        # Per-user NDCG/hit for the lead and the history-length table: four narrow columns,
        # materialised before the model's evaluation frame (its lists) is dropped.
        scores = metrics.user_scores(frame, report_k).withColumn(MODEL, F.lit(model)).cache()
        scores.count()
        user_scores.append(scores)
        frame.unpersist()
        if model == ALS_MODEL:
            predictions.unpersist()
        rows += model_rows
        seconds[model] = round(time.perf_counter() - model_started, 2)
        log.info("evaluate: %s done in %.1fs: %s", model, seconds[model], _compact(model_rows, FULL).get(model))
    progress.step("evaluated", len(models), len(models), unit="models")
    progress.describe(ctx.spark, "gold/metrics and the report")
    interacted_histogram = _histogram(
        metrics.popularity_histogram(targets.select(F.explode(HISTORY_ITEMS).alias(ITEM_ID)), popularity, HISTOGRAM_BINS)
    )
    if not rows:
        raise ValueError(f"evaluate: no model could be evaluated ({skipped})")

    all_scores = reduce(DataFrame.unionByName, user_scores)
    lead = ndcg_lead(all_scores, rows, report_k, ctx.cfg.report.bootstrap_samples, cfg.seed)
    report_cfg = ctx.cfg.report
    by_length = by_history_length(all_scores, targets, report_cfg.cold_max_history, report_cfg.short_max_history, list(counts))
    # matplotlib is the optional "report" extra: imported only when a report is written.
    from recsys_spark.evaluation import report

    details = {
        "examples": report.example_users(ctx.lake, targets, report_cfg, report_k),
        "health": report.pipeline_health(ctx, targets),
        "lead": lead,
        "by_history_length": by_length,
    }
    for scores in user_scores:
        scores.unpersist()

    # The lead's rows go to gold/metrics beside the models' (the summary keeps it apart, as "lead").
    table_rows = rows + lead_rows(lead, report_k)
    table = ctx.spark.createDataFrame(
        [(ctx.run_id, r["model"], r["protocol"], r["metric"], r["k"], r["value"], r["n_users"]) for r in table_rows],
        METRICS_TABLE.schema,
    )
    # This run's rows replace any earlier rows of the same run_id: a rerun adds nothing twice.
    run_id = ctx.run_id.replace("'", "''")
    written = ctx.lake.replace_where(table, METRICS_TABLE, f"{RUN_ID} = '{run_id}'")
    for cached in (targets, all_items, popularity) + tuple(c for c in (negatives, sample) if c is not None):
        cached.unpersist()
    sampled_models = [m for m in counts if sample is not None and m in cfg.sample_models]
    everyone = [c for m, c in counts.items() if m not in sampled_models]

    protocols = sorted({r["protocol"] for r in rows})
    summary = {
        "models": [m for m in models if m in counts],
        "skipped": skipped,
        "ks": list(ks),
        "protocols": protocols,
        "test_users": n_test,
        "untied_users": everyone[0]["untied_users"] if everyone else untied_users(targets),
        "catalog_size": catalog_size,
        "metrics": _compact(rows, FULL),
        "metrics_untied": _compact(rows, FULL + UNTIED),
        "interacted_pop_percentile": round(float(interacted or 0.0), 5),
        "users_missing_predictions": {m: c["users_missing_predictions"] for m, c in counts.items()},
        "duplicate_predictions": {m: c["duplicate_predictions"] for m, c in counts.items()},
        "seen_predictions_removed": {m: c["seen_predictions_removed"] for m, c in counts.items()},
        "short_lists": {m: c["short_lists"] for m, c in counts.items()},
        "model_seconds": seconds,
        "metrics_rows": len(table_rows),
        "recommendations_version": recommendations_version,
        "fit_events": fit_events(ctx, recommendations_version),
        "tables": table_versions(written),
        "tie_break": f"ties in event time broken by a seeded random order (features.tie_break_seed="
        f"{ctx.cfg.features.tie_break_seed}); *_untied protocols use only users whose test event is strictly last",
    }
    if sample is not None:
        summary["sample"] = {
            "users": sample_size,
            "of_test_users": n_test,
            "seed": cfg.seed,
            "models": sampled_models,
            "stderr": _compact(rows, FULL, stderr=True),
            "stderr_untied": _compact(rows, FULL + UNTIED, stderr=True),
        }
    if sampled:
        summary["metrics_sampled"] = _compact(rows, sampled_label)
        summary["sampled_users_short_of_negatives"] = negatives_short
    if als_details:
        summary["als"] = als_details
    if content_search:
        summary["content_search"] = content_search
    if lead:
        summary["lead"] = lead
    summary["by_history_length"] = by_length
    details["trend"] = report.metric_trends(ctx.lake, report_k, ctx.cfg.report.trend_runs)
    summary["report"] = report.write_report(
        ctx,
        summary,
        rows,
        histograms={"interacted": interacted_histogram, **histograms},
        report_k=report_k,
        evaluate_seconds=round(time.perf_counter() - started, 2),
        details=details,
    )
    return summary
