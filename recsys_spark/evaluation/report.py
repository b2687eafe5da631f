"""The run report: ``<reports_dir>/<run_id>/report.md`` and a self-contained ``report.html``.

Built from the evaluate stage's metric rows and summary (tiny, already on the driver): metrics per
model as bars, Recall@K curves, the popularity distribution of recommended vs interacted items,
coverage, the config used (secrets redacted), table versions and the timings of the stages run in
this run. Plots are matplotlib (Agg backend) PNGs, embedded in the HTML as base64 and written next
to the Markdown.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.core import schemas
# The masking lives with the config (recsys-spark config show masks the same keys); redact,
# REDACTED and SECRET_KEY stay importable from here.
from recsys_spark.core.config import REDACTED, SECRET_KEY, redact, scrub, secret_values  # noqa: F401
from recsys_spark.core.config import ReportConfig
from recsys_spark.core.context import StageContext
from recsys_spark.core.display import inert_text
from recsys_spark.core.lakehouse import Lakehouse
from recsys_spark.core.schemas import (
    BRONZE_EVENTS_TABLE,
    CANDIDATES_TABLE,
    HISTORY_ITEMS,
    ITEM_ID,
    K,
    KIND,
    METRIC,
    METRICS_TABLE,
    MODEL,
    N_HISTORY,
    PROTOCOL,
    QUARANTINE_TABLE,
    RANK,
    REASON,
    RECOMMENDATIONS_TABLE,
    RUN_ID,
    SCORE,
    SEEN_ITEMS,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
    TEST_ITEMS,
    TITLE,
    USER_ID,
    VALUE,
)
from recsys_spark.models.sequence import latest_model_dir
from recsys_spark.evaluation.metrics import candidate_recall

log = logging.getLogger(__name__)

# The per-epoch training curves in a model folder, as the train stage writes them (its
# HISTORY_FILE; a library may not import a stage: tests/unit/test_layout.py).
HISTORY_FILE = "history.json"
HEADLINE_METRICS = ("ndcg", "recall", "hit_rate", "mrr", "coverage", "novelty", "pop_percentile")


def table_versions(ctx: StageContext) -> dict[str, Any]:
    """{"layer/name": latest Delta version or None} for every table the project defines."""
    return {str(ref): ctx.lake.version(ref) for ref in sorted(schemas.TABLES, key=str)}


def stage_timings(ctx: StageContext, evaluate_seconds: float) -> dict[str, float]:
    """Seconds per stage already run in this run, evaluate (up to the report) last."""
    timings = {name: result.get("seconds") for name, result in ctx.results.items() if name != "evaluate"}
    timings["evaluate"] = evaluate_seconds
    return timings


# ---- plots ----------------------------------------------------------------------------
def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _value(rows: list[dict], model: str, protocol: str, metric: str, k: int):
    for row in rows:
        if (row["model"], row["protocol"], row["metric"], row["k"]) == (model, protocol, metric, k):
            return row["value"]
    return None


def plots(rows: list[dict], models: list[str], ks: list[int], report_k: int, histograms: dict) -> dict[str, bytes]:
    """PNG bytes by name: metric bars, Recall@K curves, popularity distribution, coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out: dict[str, bytes] = {}
    accuracy = ("ndcg", "recall", "hit_rate", "mrr")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        heights = [_value(rows, model, "full", m, report_k) or 0.0 for m in accuracy]
        ax.bar(np.arange(len(accuracy)) + i * width, heights, width, label=model)
    ax.set_xticks(np.arange(len(accuracy)) + width * (len(models) - 1) / 2)
    ax.set_xticklabels([f"{m}@{report_k}" for m in accuracy])
    ax.set_ylabel("mean over test users")
    ax.set_title(f"Full-ranking metrics at K={report_k}")
    ax.legend(fontsize=8)
    out["metrics_bars"] = _figure_png(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        ax.plot(ks, [_value(rows, model, "full", "recall", k) or 0.0 for k in ks], marker="o", label=model)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title("Recall@K (full ranking)")
    ax.legend(fontsize=8)
    out["recall_curves"] = _figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = len(histograms.get("interacted", [])) or 1
    centres = (np.arange(bins) + 0.5) / bins * 100
    for name, counts in histograms.items():
        total = sum(counts) or 1
        style = {"color": "black", "linewidth": 2.5} if name == "interacted" else {}
        ax.plot(centres, [c / total for c in counts], marker=".", label=name, **style)
    ax.set_xlabel("item popularity percentile (0 = least popular item in the catalog)")
    ax.set_ylabel("share of items")
    ax.set_title(f"Popularity of recommended (top {report_k}) vs interacted items")
    ax.legend(fontsize=8)
    out["popularity"] = _figure_png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    coverage = [_value(rows, model, "full", "coverage", report_k) or 0.0 for model in models]
    ax.bar(models, coverage, color="tab:green")
    ax.set_ylabel(f"catalog coverage@{report_k}")
    ax.set_ylim(0, max(coverage + [0.01]) * 1.15)
    ax.set_title("Share of the catalog recommended to anyone")
    out["coverage"] = _figure_png(fig)
    return out


def training_plot(history: dict) -> Optional[bytes]:
    """Loss curves and the other per-epoch series of a model's history.json side by side, or
    None when it holds no series."""
    series = {name: values for name, values in _epoch_series(history).items() if name != "epoch_seconds"}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    losses = {n: v for n, v in series.items() if "loss" in n}
    others = {n: v for n, v in series.items() if "loss" not in n}
    panels = [p for p in (("loss", losses), ("validation metrics", others)) if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for axis, (label, group) in zip(axes[0], panels):
        for name, values in group.items():
            axis.plot(range(1, len(values) + 1), values, marker="o", label=name)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_title(label)
        axis.legend(fontsize=8)
    return _figure_png(fig)


def trend_plot(trend: list[dict], models: list[str], report_k: int) -> Optional[bytes]:
    """NDCG@K per model over the runs of ``trend`` (oldest first); None with fewer than 2 runs."""
    runs = sorted({row["run_id"] for row in trend})
    if len(runs) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for model in models:
        values = {row["run_id"]: row["value"] for row in trend if row["model"] == model}
        ax.plot(range(len(runs)), [values.get(run) for run in runs], marker="o", label=model)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([inert_text(run, 24) for run in runs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"NDCG@{report_k}")
    ax.set_title(f"NDCG@{report_k} per run (gold/metrics)")
    ax.legend(fontsize=8)
    return _figure_png(fig)


def _epoch_series(history: dict) -> dict[str, list]:
    """The per-epoch number lists of a history.json, whatever keys the backend wrote."""
    return {
        str(name): values
        for name, values in history.items()
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    }


# ---- what the report shows beyond the metric rows (gathered by the evaluate stage) -------------
HEAVIEST = "heaviest history"
LIGHTEST = "lightest history (cold start)"
SAMPLED = "seeded sample"


def example_users(lake: Lakehouse, targets: DataFrame, cfg: ReportConfig, k: int) -> list[dict]:
    """The example users: the heaviest and the lightest history (distinct items seen) and
    ``cfg.example_users`` drawn by a seeded hash; each with its last ``cfg.last_items`` history
    items, its held-out items and its top-``k`` rows of gold/recommendations (rank, item, score,
    reason, hit), titles from silver/items. Reads (user_id, history_items, seen_items,
    test_items) from ``targets``; collects only those users' rows."""
    seen = F.size(SEEN_ITEMS).alias(N_HISTORY)
    base = targets.select(USER_ID, HISTORY_ITEMS, TEST_ITEMS, seen)
    chosen = (
        base.orderBy(F.desc(N_HISTORY), USER_ID).limit(1).withColumn("_role", F.lit(HEAVIEST))
        .unionByName(base.orderBy(N_HISTORY, USER_ID).limit(1).withColumn("_role", F.lit(LIGHTEST)))
        .unionByName(
            base.orderBy(F.xxhash64(USER_ID, F.lit(cfg.seed)), USER_ID).limit(cfg.example_users).withColumn("_role", F.lit(SAMPLED))
        )
    )
    users: dict[str, dict] = {}
    order = {HEAVIEST: 0, LIGHTEST: 1, SAMPLED: 2}
    for row in sorted(chosen.collect(), key=lambda r: (order[r["_role"]], r[USER_ID])):
        if row[USER_ID] in users:
            continue
        users[row[USER_ID]] = {
            "user_id": row[USER_ID],
            "role": row["_role"],
            "n_history": int(row[N_HISTORY]),
            "last_items": list(row[HISTORY_ITEMS] or [])[-cfg.last_items:][::-1],  # newest first
            "test_items": list(row[TEST_ITEMS] or []),
            "recommendations": [],
        }
    if not users:
        return []
    if lake.exists(RECOMMENDATIONS_TABLE):
        recs = (
            lake.read(RECOMMENDATIONS_TABLE)
            .where(F.col(USER_ID).isin(list(users)) & (F.col(RANK) <= k))
            .select(USER_ID, RANK, ITEM_ID, SCORE, REASON)
            .collect()
        )
        for row in sorted(recs, key=lambda r: (r[USER_ID], r[RANK])):
            user = users[row[USER_ID]]
            user["recommendations"].append({
                "rank": int(row[RANK]),
                "item_id": row[ITEM_ID],
                "score": None if row[SCORE] is None else float(row[SCORE]),
                "reason": row[REASON],
                "hit": row[ITEM_ID] in user["test_items"],
            })
    wanted = {i for u in users.values() for i in u["last_items"] + u["test_items"] + [r["item_id"] for r in u["recommendations"]]}
    titles: dict[str, Optional[str]] = {}
    if wanted and lake.exists(SILVER_ITEMS_TABLE):
        rows = lake.read(SILVER_ITEMS_TABLE).where(F.col(ITEM_ID).isin(sorted(wanted))).select(ITEM_ID, TITLE).collect()
        titles = {r[ITEM_ID]: r[TITLE] for r in rows}
    for user in users.values():
        user["last_items"] = [{"item_id": i, "title": titles.get(i)} for i in user["last_items"]]
        user["test_items"] = [{"item_id": i, "title": titles.get(i)} for i in user["test_items"]]
        for rec in user["recommendations"]:
            rec["title"] = titles.get(rec["item_id"])
        user["hit"] = any(rec["hit"] for rec in user["recommendations"])
    return list(users.values())


_FIT_EVENTS = {"train_val": "train + validation items", "train": "train items only (not the validation item)"}


def _fit_text(events: Optional[dict]) -> str:
    """What each model learned from (evaluate's ``fit_events``), in words."""
    if not events:
        return ""
    text = f"The baselines' final fit learns from {_FIT_EVENTS.get(events.get('baselines'), events.get('baselines'))}"
    if "lstm" in events:
        lstm = events["lstm"]
        text += f"; the served LSTM from {_FIT_EVENTS.get(lstm, lstm)}"
        if lstm == "train_val":
            text += " (trained again for the epoch early stopping chose)"
        elif lstm == "train":
            text += ": it saw fewer events than the baselines (train.final_fit=train)"
    return text + "."


def pipeline_health(ctx: StageContext, targets: DataFrame) -> dict:
    """Rows in / good / quarantined (this run's ingest, else the warehouse's tables), retrieval
    recall against exact search (this run's retrieve), the candidate recall (share of held-out
    items that are in their user's gold/candidates: ``metrics.candidate_recall``) and the served
    model's training history."""
    lake = ctx.lake
    health: dict = {}
    ingest = ctx.results.get("ingest")
    if ingest is not None:
        health["ingest"] = {
            "source": "this run's ingest",
            **{key: ingest.get(key) for key in ("rows_in", "rows_good", "rows_quarantined", "rows_duplicate")},
            "quarantine_reasons": dict(ingest.get("quarantine_reasons") or {}),
        }
    elif lake.exists(SILVER_EVENTS_TABLE):
        reasons: dict = {}
        if lake.exists(QUARANTINE_TABLE):
            quarantined = lake.read(QUARANTINE_TABLE).where(F.col(KIND) == "events").groupBy(REASON).count().collect()
            reasons = {r[REASON]: int(r["count"]) for r in quarantined}
        good = lake.read(SILVER_EVENTS_TABLE).count()
        rows_in = lake.read(BRONZE_EVENTS_TABLE).count() if lake.exists(BRONZE_EVENTS_TABLE) else None
        health["ingest"] = {
            "source": "warehouse totals (ingest did not run in this run)",
            "rows_in": rows_in,
            "rows_good": good,
            "rows_quarantined": sum(reasons.values()),
            "rows_duplicate": None,
            "quarantine_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], str(kv[0])))),
        }
    retrieve = ctx.results.get("retrieve")
    if retrieve is not None:
        health["retrieval"] = {key: retrieve.get(key) for key in ("method", "k", "recall_at_k_vs_exact", "recall_target", "recall_sample")}
    if lake.exists(CANDIDATES_TABLE):
        health["candidate_recall"] = candidate_recall(lake.read(CANDIDATES_TABLE), targets)
    model_dir = latest_model_dir(ctx.cfg.models_dir)
    if model_dir is not None:
        path = Path(model_dir) / HISTORY_FILE
        try:
            history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError) as exc:
            log.warning("report: cannot read %s: %s", path, exc)
            history = {}
        health["training"] = {"model": Path(model_dir).name, "history": history if isinstance(history, dict) else {}}
    return health


def metric_trends(lake: Lakehouse, report_k: int, runs: int) -> list[dict]:
    """(run_id, model, value) of NDCG@``report_k`` (protocol full) for the last ``runs`` run ids
    of gold/metrics (run ids sort by time: ``new_run_id``)."""
    if not lake.exists(METRICS_TABLE):
        return []
    rows = (
        lake.read(METRICS_TABLE)
        .where((F.col(METRIC) == "ndcg") & (F.col(K) == report_k) & (F.col(PROTOCOL) == "full"))
        .select(RUN_ID, MODEL, VALUE)
        .collect()
    )
    kept = set(sorted({r[RUN_ID] for r in rows})[-runs:])
    return sorted(
        ({"run_id": r[RUN_ID], "model": r[MODEL], "value": r[VALUE]} for r in rows if r[RUN_ID] in kept),
        key=lambda r: (r["run_id"], r["model"]),
    )


# ---- sections: (title, [blocks]); a block is ("text", str), ("table", rows), ("image", name,
# caption, png), ("pre", str) or ("users", example users) ------------------------------------------
def metrics_table(rows: list[dict], models: list[str], protocol: str, k: int) -> list[list[str]]:
    """Header + one row per model: the headline metrics at K for one protocol."""
    table = [["model"] + [f"{m}@{k}" for m in HEADLINE_METRICS] + ["users"]]
    for model in models:
        values = [_value(rows, model, protocol, m, k) for m in HEADLINE_METRICS]
        if all(v is None for v in values):
            continue
        users = next((r["n_users"] for r in rows if r["model"] == model and r["protocol"] == protocol), "")
        table.append([model] + ["" if v is None else f"{v:.4f}" for v in values] + [str(users)])
    return table


def _number(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _lead_text(lead: Optional[dict], report_k: int) -> str:
    if not lead:
        return "No lead to show: the lstm (gold/recommendations) or every baseline is missing from this evaluation."
    parts = []
    for label, key in (("all test users", "full"), ("users with an untied test event", "untied")):
        interval = lead.get(key)
        if not interval:
            continue
        verdict = (
            "the interval is above 0: the lead holds on these users" if interval["low"] > 0
            else "the interval is below 0: the baseline leads" if interval["high"] < 0
            else "the interval includes 0: no lead is shown"
        )
        parts.append(
            f"On {label} ({interval['n_users']}): {interval['mean']:+.4f} NDCG@{report_k}, 95% paired bootstrap "
            f"interval [{interval['low']:+.4f}, {interval['high']:+.4f}] ({interval['samples']} resamples); {verdict}."
        )
    return f"lstm against {lead['baseline']}, the best baseline by NDCG@{report_k} on the full protocol. " + " ".join(parts)


def _sample_text(sample: Optional[dict], report_k: int) -> str:
    """What the models on a sample of users saw, with the standard error of their NDCG@K."""
    if not sample or not sample.get("models"):
        return ""
    errors = ", ".join(
        f"{model} ±{_number((sample['stderr'].get(model) or {}).get(f'ndcg@{report_k}'))}" for model in sample["models"]
    )
    return (f" {', '.join(sample['models'])} scored on a seeded sample of {sample['users']} of the "
            f"{sample['of_test_users']} test users (evaluate.sample_users, seed {sample['seed']}); "
            f"standard error of NDCG@{report_k}: {errors}.")


def _by_length_table(by_length: list[dict], report_k: int) -> list[list[str]]:
    table = [["model", "history", "users", f"ndcg@{report_k}", f"hit_rate@{report_k}"]]
    for row in by_length:
        table.append([row["model"], row["bucket"], str(row["users"]), _number(row["ndcg"]), _number(row["hit_rate"])])
    return table


def _health_blocks(health: dict, report_k: int) -> list[tuple]:
    blocks: list[tuple] = []
    ingest = health.get("ingest")
    if ingest:
        blocks.append(("text", f"Events ({ingest['source']}):"))
        blocks.append(("table", [["rows in", "good", "quarantined", "duplicates"],
                                 [_number(ingest.get(k)) for k in ("rows_in", "rows_good", "rows_quarantined", "rows_duplicate")]]))
        if ingest["quarantine_reasons"]:
            blocks.append(("table", [["quarantine reason", "rows"]] + [[str(r), str(n)] for r, n in ingest["quarantine_reasons"].items()]))
    else:
        blocks.append(("text", "No event counts: silver/events does not exist."))
    retrieval = health.get("retrieval")
    if retrieval:
        recall = retrieval.get("recall_at_k_vs_exact")
        blocks.append(("text", (
            f"Retrieval ({retrieval.get('method')}): recall@{retrieval.get('k')} against exact search "
            + ("not measured (retrieve.recall_sample=0)" if recall is None else f"{recall:.4f}")
            + f" on {retrieval.get('recall_sample')} sampled users (target {retrieval.get('recall_target')})."
        )))
    else:
        blocks.append(("text", "Retrieval recall against exact search: retrieve did not run in this run."))
    candidates = health.get("candidate_recall")
    if candidates:
        recall = "n/a" if candidates["recall"] is None else f"{candidates['recall']:.4f}"
        blocks.append(("text", (
            f"Candidate recall: {candidates['found']} of {candidates['targets']} held-out items ({recall}) are among "
            f"the (up to {candidates['depth']}) candidates of their user, for {candidates['users_found']} of "
            f"{candidates['users']} test users; no ranking can recommend the others."
        )))
    training = health.get("training")
    if training:
        series = _epoch_series(training["history"])
        if series:
            names = list(series)
            epochs = max(len(v) for v in series.values())
            table = [["epoch"] + names]
            for epoch in range(epochs):
                table.append([str(epoch + 1)] + [_number(series[n][epoch]) if epoch < len(series[n]) else "" for n in names])
            blocks.append(("text", f"Training of the served model {training['model']} (history.json), per epoch:"))
            blocks.append(("table", table))
            png = training_plot(training["history"])
            if png is not None:
                blocks.append(("image", "training_curves", "Training curves", png))
        else:
            blocks.append(("text", f"The served model {training['model']} has no per-epoch history (history.json)."))
    else:
        blocks.append(("text", "Training curves: no model folder (train has not published a model)."))
    return blocks


def _trend_blocks(trend: list[dict], report_k: int) -> list[tuple]:
    if not trend:
        return [("text", "No runs in gold/metrics yet.")]
    runs = sorted({r["run_id"] for r in trend})
    models = sorted({r["model"] for r in trend})
    values = {(r["run_id"], r["model"]): r["value"] for r in trend}
    table = [["run"] + models] + [[run] + [_number(values.get((run, m))) for m in models] for run in runs]
    blocks: list[tuple] = [("text", f"NDCG@{report_k} (full) of the last {len(runs)} run(s) in gold/metrics, oldest first.")]
    png = trend_plot(trend, models, report_k)
    if png is not None:
        blocks.append(("image", "trends", "NDCG per run", png))
    blocks.append(("table", table))
    return blocks


def _sections(ctx: StageContext, summary: dict, rows: list[dict], report_k: int, evaluate_seconds: float,
              images: dict[str, bytes], details: dict) -> list[tuple[str, list]]:
    models = summary["models"]
    captions = {
        "metrics_bars": "Metrics per model",
        "recall_curves": "Recall@K curves",
        "popularity": "Popularity distribution of recommended vs interacted items",
        "coverage": "Catalog coverage",
    }
    sections: list[tuple[str, list]] = []
    if "examples" in details:
        examples = details["examples"]
        hits = sum(u["hit"] for u in examples)
        sections.append((f"Example users (top {report_k} of gold/recommendations)", [
            ("text", f"{len(examples)} users: the heaviest and the lightest history and a seeded sample "
                     f"(report.seed={ctx.cfg.report.seed}); the held-out item is among the recommendations of {hits}."),
            ("users", examples),
        ]))
    if "lead" in details:
        sections.append(("Is the lstm ahead?", [("text", _lead_text(details["lead"], report_k))]))
    sections.append(("Protocol", [(
        "text",
        f"Chronological leave-one-out, full ranking over every item the user has not interacted with; "
        f"{summary['test_users']} test users, {summary['untied_users']} of them with an untied test event; "
        f"catalog of {summary['catalog_size']} items. {summary['tie_break']}. {_fit_text(summary.get('fit_events'))}"
        + _sample_text(summary.get("sample"), report_k),
    )]))
    sections.append((f"Metrics (full, K={report_k})", [("table", metrics_table(rows, models, "full", report_k))]
                     + [("image", name, captions[name], png) for name, png in images.items()]))
    if details.get("by_history_length"):
        cfg = ctx.cfg.report
        sections.append(("Metrics by history length", [
            ("text", f"Users by distinct items seen before the test event: cold <= {cfg.cold_max_history}, "
                     f"short <= {cfg.short_max_history}, long above."),
            ("table", _by_length_table(details["by_history_length"], report_k)),
        ]))
    if summary.get("metrics_untied"):
        sections.append((f"Metrics (full_untied, K={report_k})", [("table", metrics_table(rows, models, "full_untied", report_k))]))
    for protocol in summary["protocols"]:
        if protocol.startswith("sampled") and not protocol.endswith("untied"):
            sections.append(
                (f"Metrics ({protocol}, K={report_k}): held-out item vs sampled negatives, for comparison with papers only",
                 [("table", metrics_table(rows, models, protocol, report_k))])
            )
    sections.append(("Popularity bias", [(
        "text",
        f"Mean popularity percentile of interacted items: {summary['interacted_pop_percentile']:.3f}; "
        "a model recommending above it leans on popular items (pop_percentile column).",
    )]))
    counts = [["model", "users missing predictions", "duplicate predictions", "seen items removed", "short lists", "seconds"]]
    for model in models:
        counts.append(
            [model]
            + [str(summary[key].get(model, "")) for key in ("users_missing_predictions", "duplicate_predictions", "seen_predictions_removed", "short_lists", "model_seconds")]
        )
    sections.append(("Input checks per model", [("table", counts)]))
    if summary.get("skipped"):
        sections.append(("Skipped models", [("table", [["model", "reason"]] + [[m, r] for m, r in summary["skipped"].items()])]))
    if "health" in details:
        sections.append(("Pipeline health", _health_blocks(details["health"], report_k)))
    sections.append(("Stage timings (seconds)", [("table", [["stage", "seconds"]] + [[s, str(v)] for s, v in stage_timings(ctx, evaluate_seconds).items()])]))
    if "trend" in details:
        sections.append(("Trends across runs", _trend_blocks(details["trend"], report_k)))
    return sections + _closing_sections(ctx)


def _closing_sections(ctx: StageContext) -> list[tuple[str, list]]:
    return [
        ("Table versions", [("table", [["table", "version"]] + [[t, "missing" if v is None else str(v)] for t, v in table_versions(ctx).items()])]),
        ("Config", [("pre", json.dumps(redact(ctx.cfg.to_dict()), indent=2, default=str))]),
    ]


# ---- rendering ------------------------------------------------------------------------------------
STYLE = (
    "*{box-sizing:border-box}body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:1em;color:#222;"
    "line-height:1.4}h1{font-size:1.5em;overflow-wrap:anywhere}.scroll{overflow-x:auto;max-width:100%}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;"
    "unicode-bidi:isolate;overflow-wrap:break-word}th,.n{white-space:nowrap}td:first-child,th:first-child{text-align:left}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto;max-width:100%}img{max-width:100%;height:auto}"
    ".users{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,30em),1fr));gap:1em}"
    ".user{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:0}.user h3{margin:.3em 0}"
    ".user ol{padding-left:1.5em;margin:.3em 0}.user li,.user td.t{unicode-bidi:isolate;overflow-wrap:anywhere;min-width:9em}"
    ".user td,.user th{text-align:left}.hit{background:#e3f6e3;font-weight:bold}.role{color:#666;font-weight:normal;font-size:.8em}"
    ".id{color:#888;font-size:.85em}.failed{background:#fde8e8;border:1px solid #e99;padding:.5em 1em}"
)
# Nothing may load or run: images are data: URIs, styles inline, and no script at all.
ERROR_CHARS = 4000  # of a failed stage's error message shown
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# What could make data text a link, an image, code or a table cell in Markdown (raw HTML is
# escaped before); emphasis characters are left alone, they only change the look.
MARKDOWN_SPECIAL = re.compile(r"([\\`\[\]|])")


class _Renderer:
    """One page in two forms: every data string goes through ``inert_text`` and then
    ``html.escape`` (HTML) or Markdown escaping."""

    def __init__(self, limit: int, out_dir: Path):
        self.limit = limit
        self.out_dir = out_dir
        self.md: list[str] = []
        self.page: list[str] = []

    def h(self, value, limit: Optional[int] = None) -> str:
        return html.escape(inert_text(value, self.limit if limit is None else limit))

    def m(self, value, limit: Optional[int] = None) -> str:
        text = inert_text(value, self.limit if limit is None else limit)
        return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))

    def item(self, entry: dict) -> tuple[str, str]:
        title = entry.get("title")
        shown = "(no title)" if title is None else title
        return (f"<bdi>{self.h(shown)}</bdi> <span class='id'>{self.h(entry['item_id'])}</span>",
                f"{self.m(shown)} ({self.m(entry['item_id'])})")

    def table(self, table: list[list[str]]) -> None:
        self.md += ["| " + " | ".join(self.m(c) for c in table[0]) + " |", "|" + "---|" * len(table[0])]
        self.md += ["| " + " | ".join(self.m(c) for c in row) + " |" for row in table[1:]]
        head = "".join(f"<th>{self.h(c)}</th>" for c in table[0])
        body = "".join("<tr>" + "".join(f"<td>{self.h(c)}</td>" for c in row) + "</tr>" for row in table[1:])
        self.page.append(f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")

    def users(self, users: list[dict]) -> None:
        self.page.append("<div class='users'>")
        for user in users:
            hit = " — hit" if user["hit"] else ""
            self.page.append(
                f"<section class='user'><h3>User <bdi>{self.h(user['user_id'])}</bdi> "
                f"<span class='role'>{self.h(user['role'])}, {user['n_history']} items seen{hit}</span></h3>"
            )
            self.md += [f"### User {self.m(user['user_id'])} ({self.m(user['role'])}, {user['n_history']} items seen{hit})", ""]
            held = [self.item(i) for i in user["test_items"]]
            self.page.append("<p>Held out: " + ", ".join(h for h, _ in held) + "</p>")
            self.md += ["Held out: " + ", ".join(m for _, m in held), ""]
            last = [self.item(i) for i in user["last_items"]]
            self.page.append("<h4>Last items, newest first</h4><ol>" + "".join(f"<li>{h}</li>" for h, _ in last) + "</ol>")
            self.md += ["Last items, newest first:", ""] + [f"{n}. {m}" for n, (_, m) in enumerate(last, 1)] + [""]
            if not user["recommendations"]:
                self.page.append("<p>No recommendations in gold/recommendations.</p></section>")
                self.md += ["No recommendations in gold/recommendations.", ""]
                continue
            rows = []
            self.md += ["| rank | recommended | score | reason | hit |", "|---|---|---|---|---|"]
            for rec in user["recommendations"]:
                shown, md_shown = self.item(rec)
                mark = "hit" if rec["hit"] else ""
                rows.append(
                    f"<tr{' class=hit' if rec['hit'] else ''}><td class=n>{rec['rank']}</td><td class=t>{shown}</td>"
                    f"<td class=n>{self.h(_number(rec['score']))}</td><td class=t><bdi>{self.h(rec['reason'])}</bdi></td>"
                    f"<td class=n>{mark}</td></tr>"
                )
                self.md.append(f"| {rec['rank']} | {md_shown} | {_number(rec['score'])} | {self.m(rec['reason'])} | {mark} |")
            self.md.append("")
            self.page.append(
                "<div class='scroll'><table><thead><tr><th>rank</th><th>recommended</th><th>score</th><th>reason</th>"
                "<th>hit</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div></section>"
            )
        self.page.append("</div>")

    def block(self, block: tuple) -> None:
        kind = block[0]
        if kind == "table":
            self.table(block[1])
        elif kind == "text":  # the report's own sentences: data in them is cut where it is put in
            self.md.append(self.m(block[1], 0))
            self.page.append(f"<p>{self.h(block[1], 0)}</p>")
        elif kind == "pre":
            self.md += ["```json", block[1].replace("```", "'''"), "```"]
            self.page.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "image":
            _, name, caption, png = block
            (self.out_dir / f"{name}.png").write_bytes(png)
            self.md.append(f"![{caption}]({name}.png)")
            encoded = base64.b64encode(png).decode("ascii")
            self.page.append(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>")
        elif kind == "users":
            self.users(block[1])
        self.md.append("")

    def render(self, title: str, generated: str, sections: list[tuple[str, list]], banner: Optional[str] = None) -> tuple[str, str]:
        self.md += [f"# {self.m(title)}", "", f"Generated {generated}.", ""]
        self.page += [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
            f"<title>{self.h(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{self.h(title)}</h1><p>Generated {generated}.</p>",
        ]
        if banner:
            self.md += [f"**{self.m(banner, 0)}**", ""]
            self.page.append(f"<p class='failed'>{self.h(banner, 0)}</p>")
        for heading, blocks in sections:
            self.md += [f"## {self.m(heading)}", ""]
            self.page.append(f"<h2>{self.h(heading)}</h2>")
            for block in blocks:
                self.block(block)
        self.page.append("</body></html>")
        return "\n".join(self.md), "\n".join(self.page)


def _output_dir(reports_dir: str, run_id: str) -> Path:
    # Databricks exposes DBFS paths to local file I/O under /dbfs.
    if reports_dir.startswith("dbfs:/"):
        reports_dir = "/dbfs/" + reports_dir[len("dbfs:/"):].lstrip("/")
    return Path(reports_dir) / run_id


def _write(ctx: StageContext, sections: list[tuple[str, list]], banner: Optional[str] = None) -> dict[str, str]:
    out_dir = _output_dir(ctx.cfg.reports_dir, ctx.run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    renderer = _Renderer(ctx.cfg.report.max_text_chars, out_dir)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    markdown, page = renderer.render(f"recsys-spark run {ctx.run_id}", generated, sections, banner)
    secrets = secret_values(ctx.cfg)
    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    md_path.write_text(scrub(markdown, secrets), encoding="utf-8")
    html_path.write_text(scrub(page, secrets), encoding="utf-8")
    log.info("report written to %s", html_path)
    return {"markdown": str(md_path), "html": str(html_path)}


def write_report(
    ctx: StageContext,
    summary: dict,
    rows: list[dict],
    histograms: dict[str, list[int]],
    report_k: int,
    evaluate_seconds: float,
    details: Optional[dict] = None,
) -> dict[str, str]:
    """Write report.md (+ PNGs beside it) and a self-contained report.html; returns their paths.

    ``details`` (from the evaluate stage, each key optional): ``examples`` (``example_users``),
    ``lead`` (the paired bootstrap of the lstm's NDCG lead), ``by_history_length``, ``health``
    (``pipeline_health``) and ``trend`` (``metric_trends``)."""
    images = plots(rows, summary["models"], summary["ks"], report_k, histograms)
    return _write(ctx, _sections(ctx, summary, rows, report_k, evaluate_seconds, images, details or {}))


def write_failure_report(ctx: StageContext, stage: str, error: BaseException) -> dict[str, str]:
    """The report of a run whose stage ``stage`` failed: which stage and why, the stages that
    ended before it with their timings, table versions and config (no metrics)."""
    done = [[name, str(result.get("seconds"))] for name, result in ctx.results.items()]
    why = inert_text(f"{type(error).__name__}: {error}", ERROR_CHARS)
    sections = [
        ("Failed stage", [("text", f"{stage}: {why}")]),
        ("Stages that ended before it (seconds)", [("table", [["stage", "seconds"]] + done)] if done else [("text", "none")]),
    ]
    return _write(ctx, sections + _closing_sections(ctx), banner=f"Stage {stage} failed: {why}")
