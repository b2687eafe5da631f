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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recsys_spark.core import schemas
# The masking lives with the config (recsys-spark config show masks the same keys); redact,
# REDACTED and SECRET_KEY stay importable from here.
from recsys_spark.core.config import REDACTED, SECRET_KEY, redact, scrub, secret_values  # noqa: F401
from recsys_spark.core.context import StageContext

log = logging.getLogger(__name__)

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


# ---- text ------------------------------------------------------------------------------
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


def _markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def _html_table(table: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sections(ctx: StageContext, summary: dict, rows: list[dict], report_k: int, evaluate_seconds: float) -> list[tuple[str, Any]]:
    """(title, content) in report order; content is a table (list of rows) or plain text."""
    models = summary["models"]
    sections: list[tuple[str, Any]] = [
        (
            "Protocol",
            f"Chronological leave-one-out, full ranking over every item the user has not interacted with; "
            f"{summary['test_users']} test users, {summary['untied_users']} of them with an untied test event; "
            f"catalog of {summary['catalog_size']} items. {summary['tie_break']}.",
        ),
        (f"Metrics (full, K={report_k})", metrics_table(rows, models, "full", report_k)),
    ]
    if summary.get("metrics_untied"):
        sections.append((f"Metrics (full_untied, K={report_k})", metrics_table(rows, models, "full_untied", report_k)))
    for protocol in summary["protocols"]:
        if protocol.startswith("sampled") and not protocol.endswith("untied"):
            sections.append(
                (f"Metrics ({protocol}, K={report_k}): held-out item vs sampled negatives, for comparison with papers only",
                 metrics_table(rows, models, protocol, report_k))
            )
    sections.append(
        (
            "Popularity bias",
            f"Mean popularity percentile of interacted items: {summary['interacted_pop_percentile']:.3f}; "
            "a model recommending above it leans on popular items (pop_percentile column).",
        )
    )
    counts = [["model", "users missing predictions", "duplicate predictions", "seen items removed", "short lists", "seconds"]]
    for model in models:
        counts.append(
            [model]
            + [str(summary[key].get(model, "")) for key in ("users_missing_predictions", "duplicate_predictions", "seen_predictions_removed", "short_lists", "model_seconds")]
        )
    sections.append(("Input checks per model", counts))
    if summary.get("skipped"):
        sections.append(("Skipped models", [["model", "reason"]] + [[m, r] for m, r in summary["skipped"].items()]))
    sections.append(("Stage timings (seconds)", [["stage", "seconds"]] + [[s, str(v)] for s, v in stage_timings(ctx, evaluate_seconds).items()]))
    sections.append(("Table versions", [["table", "version"]] + [[t, "missing" if v is None else str(v)] for t, v in table_versions(ctx).items()]))
    sections.append(("Config", json.dumps(redact(ctx.cfg.to_dict()), indent=2, default=str)))
    return sections


def _output_dir(reports_dir: str, run_id: str) -> Path:
    # Databricks exposes DBFS paths to local file I/O under /dbfs.
    if reports_dir.startswith("dbfs:/"):
        reports_dir = "/dbfs/" + reports_dir[len("dbfs:/"):].lstrip("/")
    return Path(reports_dir) / run_id


def write_report(
    ctx: StageContext,
    summary: dict,
    rows: list[dict],
    histograms: dict[str, list[int]],
    report_k: int,
    evaluate_seconds: float,
) -> dict[str, str]:
    """Write report.md (+ PNGs beside it) and a self-contained report.html; returns their paths."""
    out_dir = _output_dir(ctx.cfg.reports_dir, ctx.run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plots(rows, summary["models"], summary["ks"], report_k, histograms)
    sections = _sections(ctx, summary, rows, report_k, evaluate_seconds)
    secrets = secret_values(ctx.cfg)
    title = f"recsys-spark run {ctx.run_id}"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    captions = {
        "metrics_bars": "Metrics per model",
        "recall_curves": "Recall@K curves",
        "popularity": "Popularity distribution of recommended vs interacted items",
        "coverage": "Catalog coverage",
    }

    md = [f"# {title}", "", f"Generated {generated}.", ""]
    page = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>Generated {generated}.</p>",
    ]
    for position, (heading, content) in enumerate(sections):
        md += [f"## {heading}", ""]
        page.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, list):
            md.append(_markdown_table(content))
            page.append(_html_table(content))
        elif heading == "Config":
            md += ["```json", content, "```"]
            page.append(f"<pre>{html.escape(content)}</pre>")
        else:
            md.append(content)
            page.append(f"<p>{html.escape(content)}</p>")
        md.append("")
        if position == 1:  # the plots follow the headline table
            for name, png in images.items():
                (out_dir / f"{name}.png").write_bytes(png)
                md += [f"![{captions[name]}]({name}.png)", ""]
                encoded = base64.b64encode(png).decode("ascii")
                page.append(f"<h3>{captions[name]}</h3><img alt='{captions[name]}' src='data:image/png;base64,{encoded}'>")
    page.append("</body></html>")

    md_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    md_path.write_text(scrub("\n".join(md), secrets), encoding="utf-8")
    html_path.write_text(scrub("\n".join(page), secrets), encoding="utf-8")
    log.info("report written to %s", html_path)
    return {"markdown": str(md_path), "html": str(html_path)}
