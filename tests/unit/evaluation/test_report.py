"""The run report: self-contained HTML with plots, Markdown, redacted config, versions, timings;
on the tiny fixture its sections for a person, hostile catalog text shown inert, and a failure report."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from recsys_spark.evaluation import report
from recsys_spark.core.schemas import METRICS_TABLE, SILVER_ITEMS_TABLE, USER_SEQUENCES, USER_SEQUENCES_TABLE

MODELS = ["popularity", "lstm"]


def fake_evaluation(ks=(5, 10)) -> tuple[dict, list[dict]]:
    rows = []
    for position, model in enumerate(MODELS, 1):
        for protocol, n_users in (("full", 100), ("full_untied", 40)):
            for k in ks:
                for metric in report.HEADLINE_METRICS:
                    value = position * k / 1000 + (0.5 if metric == "novelty" else 0.0)
                    rows.append({"model": model, "protocol": protocol, "metric": metric, "k": k, "value": value, "n_users": n_users})
    summary = {
        "models": MODELS,
        "skipped": {"content": "table(s) gold/user_vectors missing"},
        "ks": list(ks),
        "protocols": ["full", "full_untied"],
        "test_users": 100,
        "untied_users": 40,
        "catalog_size": 500,
        "metrics_untied": {"lstm": {}},
        "interacted_pop_percentile": 0.81,
        "users_missing_predictions": {"popularity": 0, "lstm": 3},
        "duplicate_predictions": {"popularity": 0, "lstm": 2},
        "seen_predictions_removed": {"popularity": 0, "lstm": 1},
        "short_lists": {"popularity": 0, "lstm": 0},
        "model_seconds": {"popularity": 1.5, "lstm": 0.7},
        "tie_break": "ties broken by a seeded random order",
    }
    return summary, rows


def test_redact_hides_secret_looking_keys_only():
    config = {"spark": {"conf": {"fs.s3a.secret.key": "abc", "spark.sql.shuffle.partitions": "8"}},
              "privacy": {"key_env": "RECSYS_PSEUDONYM_KEY"}, "db": {"password": "pw", "token": None}}
    clean = report.redact(config)
    assert clean["spark"]["conf"] == {"fs.s3a.secret.key": "***", "spark.sql.shuffle.partitions": "8"}
    assert clean["privacy"]["key_env"] == "RECSYS_PSEUDONYM_KEY"  # the variable's name, not the key
    assert clean["db"] == {"password": "***", "token": None}


def test_report_is_self_contained_and_never_shows_the_key(make_ctx, monkeypatch):
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", "s3cr3t-pseudonym-key")
    # Even a config value equal to the key (here a run label) must not carry it into the report.
    ctx = make_ctx("spark.app_name=s3cr3t-pseudonym-key")
    ctx.lake.replace(ctx.spark.createDataFrame([], USER_SEQUENCES), USER_SEQUENCES_TABLE)
    ctx.results["features"] = {"stage": "features", "seconds": 12.5}
    summary, rows = fake_evaluation()
    histograms = {"interacted": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "popularity": [0] * 9 + [50], "lstm": [5] * 10}
    paths = report.write_report(ctx, summary, rows, histograms, report_k=10, evaluate_seconds=3.25)

    html = Path(paths["html"]).read_text()
    markdown = Path(paths["markdown"]).read_text()
    assert "s3cr3t-pseudonym-key" not in html + markdown
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == 4
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert not re.search(r"(src|href)=['\"](http|file|/)", html)  # nothing outside the file
    for name in ("metrics_bars", "recall_curves", "popularity", "coverage"):
        assert f"({name}.png)" in markdown and (Path(paths["markdown"]).parent / f"{name}.png").is_file()
    # Headline table, untied table, timings, versions, skipped models and config are all there.
    assert "| lstm | 0.0200 | 0.0200 |" in markdown
    assert "Metrics (full_untied, K=10)" in markdown
    assert "| features | 12.5 |" in markdown and "| evaluate | 3.25 |" in markdown
    assert "| gold/user_sequences | 0 |" in markdown and "| gold/metrics | missing |" in markdown
    assert "gold/user_vectors missing" in markdown
    assert '"shuffle_partitions": 2' in markdown
    assert "<table>" in html and "<h2>Config</h2>" in html


# ---- the report of a real evaluation: the tiny MovieLens fixture, half its titles hostile ---------
# The hostile part of a title: markup that would run or inject an element if it were not escaped,
# a terminal escape and bell, a right-to-left override, and (on one movie) invalid UTF-8 bytes.
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=document.title=/pwned/.source>\x1b[31m\x07\u202e"
HUGE_TITLE_ITEM = "1"  # Toy Story: rated by several users of the fixture
RUN_ID = "20261203T080000Z-report"
EARLIER_RUN = "20261201T080000Z-before"


def hostile_catalog(source: Path, target: Path) -> None:
    """The fixture's movies.csv with HOSTILE appended to every odd-numbered movie's title, a
    1 MB title on movie 1 and invalid UTF-8 in movie 3's."""
    import csv

    with (source / "movies.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        if row[0] == HUGE_TITLE_ITEM:
            row[1] = row[1] + " " + "x" * 1_000_000 + HOSTILE
        elif row[0] == "3":
            row[1] = row[1] + " \udcff\udcfe" + HOSTILE  # bytes 0xff 0xfe: not UTF-8
        elif int(row[0]) % 2:
            row[1] = row[1] + " " + HOSTILE
    with (target / "movies.csv").open("w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        csv.writer(handle, lineterminator="\r\n").writerows(rows)


@pytest.fixture(scope="module")
def evaluated(spark, tmp_path_factory):
    """ingest -> features on the hostile tiny fixture, then evaluate with a made-up
    gold/recommendations (reasons built from the titles, as score builds them), gold/candidates,
    a served model's history.json, this run's retrieve summary and an earlier run in gold/metrics.
    Returns (ctx, evaluate summary, the held-out item per user)."""
    import shutil
    from datetime import datetime

    from pyspark.sql import functions as F

    from recsys_spark.core.context import make_context
    from recsys_spark.core.schemas import CANDIDATES, CANDIDATES_TABLE, METRICS, METRICS_TABLE, RECOMMENDATIONS, RECOMMENDATIONS_TABLE, SILVER_ITEMS_TABLE
    from recsys_spark.stages import evaluate, features, ingest
    from tests.support import FIXTURES, small_config

    root = tmp_path_factory.mktemp("report-run")
    data = root / "ml"
    shutil.copytree(FIXTURES / "ml-latest-tiny", data)
    hostile_catalog(FIXTURES / "ml-latest-tiny", data)
    models = root / "models"
    (models / "v1").mkdir(parents=True)
    (models / "v1" / "model.keras").write_bytes(b"")
    (models / "v1" / "history.json").write_text(json.dumps(
        {"loss": [6.1, 5.2, 4.9], "val_loss": [6.3, 5.6, 5.4], "val_ndcg@10": [0.01, 0.03, 0.04], "epoch_seconds": [3.0, 2.9, 2.8]}
    ))
    (models / "latest").write_text("v1")
    cfg = small_config(
        root / "warehouse", f"input.events={data}", f"train.models_dir={models}",
        "evaluate.ks=[5, 10]", "evaluate.baselines=[popularity, next_item]", "report.bootstrap_samples=200",
    )
    ctx = make_context(spark, cfg, run_id=RUN_ID)
    ctx.results["ingest"] = {"stage": "ingest", "seconds": 4.0, **ingest.run(ctx)}
    features.run(ctx)
    spark_ = ctx.spark
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE).where(F.size("test_items") > 0).collect()
    titles = {r["item_id"]: r["title"] for r in ctx.lake.read(SILVER_ITEMS_TABLE).select("item_id", "title").collect()}
    unseen_pool = sorted(titles)
    now = datetime(2026, 12, 3)
    recs, candidates, held_out = [], [], {}
    for n, row in enumerate(sorted(sequences, key=lambda r: r["user_id"])):
        user, test = row["user_id"], row["test_items"][0]
        held_out[user] = test
        seen = set(row["seen_items"])
        others = [i for i in dict.fromkeys([HUGE_TITLE_ITEM, "3", "5"] + unseen_pool) if i not in seen and i != test][:9]
        listed = others[:1] + [test] + others[1:] if n % 2 == 0 else others  # even users: a hit at rank 2
        because = titles.get(row["history_items"][-1], row["history_items"][-1])
        recs += [(user, rank, item, 1.0 / rank, f"because you watched {because}", "v1", "run0", now)
                 for rank, item in enumerate(listed, 1)]
        candidates += [(user, item, rank, 0.5, "exact", "run0") for rank, item in enumerate(listed, 1)]
    ctx.lake.replace(spark_.createDataFrame(recs, RECOMMENDATIONS), RECOMMENDATIONS_TABLE)
    ctx.lake.replace(spark_.createDataFrame(candidates, CANDIDATES), CANDIDATES_TABLE)
    ctx.lake.append(
        spark_.createDataFrame(
            [(EARLIER_RUN, m, "full", "ndcg", 10, v, 8) for m, v in (("popularity", 0.05), ("next_item", 0.08), ("lstm", 0.1))],
            METRICS,
        ),
        METRICS_TABLE,
    )
    ctx.results["retrieve"] = {"stage": "retrieve", "seconds": 2.5, "method": "ivf", "k": 10,
                               "recall_at_k_vs_exact": 0.9731, "recall_target": 0.95, "recall_sample": 8}
    summary = evaluate.run(ctx)
    return ctx, summary, held_out


def test_the_report_reads_the_history_file_train_writes():
    from recsys_spark.stages import train

    assert report.HISTORY_FILE == train.HISTORY_FILE


def _section(html_text: str, heading: str) -> str:
    """The HTML between the <h2> of ``heading`` and the next <h2>."""
    start = html_text.index(f"<h2>{heading}")
    end = html_text.find("<h2>", start + 4)
    return html_text[start: end if end >= 0 else len(html_text)]


def test_report_sections_hold_real_content_on_the_tiny_fixture(evaluated):
    ctx, summary, held_out = evaluated
    page = Path(summary["report"]["html"]).read_text(encoding="utf-8")
    markdown = Path(summary["report"]["markdown"]).read_text(encoding="utf-8")
    assert "width=device-width" in page and "Content-Security-Policy" in page

    examples = _section(page, "Example users")
    assert "heaviest history" in examples and "lightest history (cold start)" in examples
    assert examples.count("<section class='user'>") >= 3
    assert "Jumanji (1995)" in page or "Heat (1995)" in page or "Grumpier Old Men (1995)" in examples
    assert "because you watched" in examples and "class=hit" in examples
    held = [item for item in held_out.values()]
    assert any(f"<span class='id'>{item}</span>" in examples for item in held)

    lead = _section(page, "Is the lstm ahead?")
    assert "best baseline" in lead and "paired bootstrap" in lead and "the interval" in lead
    assert "chars)" not in _section(page, "Protocol")  # the report's own sentences are never cut
    assert summary["lead"]["baseline"] in ("popularity", "next_item")
    interval = summary["lead"]["full"]
    assert interval["low"] <= interval["mean"] <= interval["high"] and interval["n_users"] == summary["test_users"]
    lead_rows = ctx.lake.read(METRICS_TABLE).where(f"run_id = '{RUN_ID}' AND metric LIKE 'ndcg_lead%'").collect()
    assert {r["metric"] for r in lead_rows} >= {"ndcg_lead", "ndcg_lead_low", "ndcg_lead_high"}
    assert {r["model"] for r in lead_rows} == {f"lstm-vs-{summary['lead']['baseline']}"}
    assert set(summary["metrics"]) == {"popularity", "next_item", "lstm"}  # the lead stays apart in the summary

    by_length = _section(page, "Metrics by history length")
    assert "<td>short</td>" in by_length and "<td>long</td>" in by_length
    assert {r["bucket"] for r in summary["by_history_length"]} == {"short", "long"}  # 29..314 ratings per user

    health = _section(page, "Pipeline health")
    assert "<td>1073</td>" in health and "this run" in health
    assert "0.9731" in health and "Candidate recall" in health
    assert "val_ndcg@10" in health and "<td>5.4000</td>" in health and "Training curves" in health
    assert "<td>evaluate</td>" in _section(page, "Stage timings") and "<td>ingest</td>" in page

    trends = _section(page, "Trends across runs")
    assert EARLIER_RUN in trends and RUN_ID in trends and "NDCG per run" in trends

    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 6  # 4 metric plots, training curves, trends
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert not re.search(r"(src|href)=['\"](http|file|/)", page)
    assert "## Example users" in markdown and "## Trends across runs" in markdown


def test_hostile_catalog_text_reaches_the_report_and_the_cli_as_inert_text(evaluated):
    from recsys_spark import cli

    ctx, summary, held_out = evaluated
    page = Path(summary["report"]["html"]).read_text(encoding="utf-8")
    markdown = Path(summary["report"]["markdown"]).read_text(encoding="utf-8")
    # Shown, escaped: the markup is text, never an element.
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "&lt;script&gt;" in markdown and "<script" not in markdown and "<img src=x" not in markdown
    for shown in (page, markdown):
        assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
        assert "\ufffd" in shown  # what replaced them (and the invalid UTF-8)
    # The 1 MB title is cut for display, saying by how much; the pages stay small.
    assert "… (+" in page and len(page) < 400_000
    assert len(ctx.lake.read(SILVER_ITEMS_TABLE).where("item_id = '1'").first()["title"]) > 1_000_000  # the table keeps it
    # The summary (the CLI's JSON line, MLflow's summary.json and metrics) holds no catalog text.
    assert "pwned" not in json.dumps(summary, default=str)

    user = next(u for u, item in held_out.items())
    answer = cli.user_recommendations(ctx.lake, user)
    assert any("<script>" in (r["title"] or "") for r in answer["recommendations"])  # the data as stored
    text = cli.format_recommendations(answer)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert max(len(line) for line in text.splitlines()) < 2_000
    assert "\x1b" not in json.dumps(answer)  # --json: JSON escapes every control character


def test_a_failed_stage_still_gets_a_report_naming_it_and_why(make_ctx):
    from recsys_spark import pipeline

    ctx = make_ctx("tracking.enabled=false")
    ctx.results["features"] = {"stage": "features", "seconds": 1.5}
    with pytest.raises(FileNotFoundError, match="gold/user_sequences"):
        pipeline.run_stage(ctx, "evaluate")
    page = (Path(ctx.cfg.reports_dir) / ctx.run_id / "report.html").read_text(encoding="utf-8")
    assert "Stage evaluate failed: FileNotFoundError" in page and "gold/user_sequences" in page
    assert "<td>features</td><td>1.5</td>" in page and "<h2>Config</h2>" in page


# ---- the report in a real browser (Chromium from Debian's packages; CI: .ci/browser) ---------------
def _chromium() -> "str | None":
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


CHROMIUM = _chromium()


def _browse(page: Path, profile: Path, *args: str) -> "subprocess.CompletedProcess":
    import subprocess

    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )


class _Elements:
    """The tags of a dumped DOM, with their attributes, and the document's <title> text."""

    def __init__(self, dom: str):
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        self.title = ""
        elements = self

        class Parser(HTMLParser):
            in_title = False

            def handle_starttag(self, tag, attrs):
                elements.tags.append((tag, dict(attrs)))
                self.in_title = tag == "title"

            def handle_endtag(self, tag):
                self.in_title = False

            def handle_data(self, data):
                if self.in_title:
                    elements.title += data

        Parser().feed(dom)

    def named(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: apt-get install chromium (CI runs .ci/browser)")
def test_the_report_in_a_headless_browser_has_whole_images_and_runs_nothing(evaluated, tmp_path):
    ctx, summary, _ = evaluated
    page = Path(summary["report"]["html"])
    loaded = _browse(page, tmp_path / "profile", "--dump-dom")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    dom = _Elements(loaded.stdout)
    # No script ran: the hostile titles' <script> would have set document.title, their <img
    # onerror> too; neither exists as an element, and no script was even refused by the policy.
    assert dom.title == f"recsys-spark run {RUN_ID}"
    assert dom.named("script") == [] and not any("onerror" in attrs for _, attrs in dom.tags)
    assert "Uncaught" not in loaded.stderr and "Refused to execute" not in loaded.stderr
    assert "&lt;script&gt;document.title" in loaded.stdout  # the text is there, as text
    images = dom.named("img")
    assert len(images) == 6
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
        width, height = _png_size(base64.b64decode(attrs["src"].split(",", 1)[1], validate=True))
        assert width > 100 and height > 100
    # Screenshots at a phone's and a wide screen's width, kept in the test's folder.
    for name, size in (("phone", "390,2000"), ("wide", "1400,2000")):
        shot = tmp_path / f"report-{name}.png"
        taken = _browse(page, tmp_path / f"profile-{name}", f"--window-size={size}", f"--screenshot={shot}")
        assert taken.returncode == 0, taken.stderr[-3000:]
        assert _png_size(shot.read_bytes()) == tuple(int(v) for v in size.split(","))
