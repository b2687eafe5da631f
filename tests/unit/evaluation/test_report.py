"""The run report: self-contained HTML with plots, Markdown, redacted config, versions, timings."""
from __future__ import annotations

import base64
import re
from pathlib import Path

from recsys_spark.evaluation import report
from recsys_spark.core.schemas import USER_SEQUENCES, USER_SEQUENCES_TABLE

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
