"""The evaluate stage end to end on a tiny two-taste split written as gold/user_sequences."""
from __future__ import annotations

import math
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from recsys_spark.stages import evaluate
from recsys_spark.core.config import ConfigError
from recsys_spark.core.context import make_context
from recsys_spark.core.schemas import (
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    METRICS_TABLE,
    RECOMMENDATIONS,
    RECOMMENDATIONS_TABLE,
    USER_SEQUENCES,
    USER_SEQUENCES_TABLE,
    USER_VECTORS,
    USER_VECTORS_TABLE,
)

NOW = datetime(2026, 1, 1)


def sequence_row(user: str, history: list, test: list, untied: bool) -> tuple:
    """A USER_SEQUENCES row: history = train + the validation item (its last element)."""
    items = history + test
    stamps = list(range(1000, 1000 + len(items)))
    ones = [1.0] * len(items)
    train = history[:-1]
    return (
        user, items, stamps, ones,
        history, stamps[: len(history)], ones[: len(history)],
        train, stamps[: len(train)], ones[: len(train)],
        history[-1:], test, untied, len(items),
    )


def two_tastes() -> tuple[list, dict]:
    """Users u0..u5 hold five of the six p items, v0..v5 five of the six q items (the last of the
    five is the test item); w0 holds one of each."""
    rows, tests = [], {}
    for prefix, letter in (("u", "p"), ("v", "q")):
        for n in range(6):
            user = f"{prefix}{n}"
            own = [f"{letter}{(n + i) % 6}" for i in range(5)]
            rows.append(sequence_row(user, own[:4], own[4:], untied=n < 3))
            tests[user] = own[4]
    rows.append(sequence_row("w0", ["p0", "q0"], [], untied=False))  # no test event: not evaluated
    return rows, tests


def write_inputs(ctx, with_recommendations: bool = True) -> dict:
    spark = ctx.spark
    rows, tests = two_tastes()
    ctx.lake.replace(spark.createDataFrame(rows, USER_SEQUENCES), USER_SEQUENCES_TABLE)
    vectors = {"p": [1.0, 0.0], "q": [0.0, 1.0]}
    ctx.lake.replace(
        spark.createDataFrame(
            [(f"{l}{n}", "h", "m", "v1", 2, vectors[l], NOW, True) for l in "pq" for n in range(6)], ITEM_EMBEDDINGS
        ),
        ITEM_EMBEDDINGS_TABLE,
    )
    ctx.lake.replace(
        spark.createDataFrame([(u, vectors["p" if u[0] == "u" else "q"], 4, "m", NOW) for u in tests], USER_VECTORS),
        USER_VECTORS_TABLE,
    )
    if with_recommendations:
        recs = []
        for user, test in tests.items():
            if user.startswith("u"):
                recs += [(user, 1, test), (user, 2, "q0"), (user, 3, test)]  # duplicate of the hit
            elif user == "v0":
                recs += [(user, 1, "q0"), (user, 2, "p0"), (user, 3, test)]  # q0 is seen: removed
            elif user != "v5":  # v5 gets nothing: a miss
                recs += [(user, 1, "p0"), (user, 2, test)]
        ctx.lake.replace(
            spark.createDataFrame([(u, r, i, 1.0, "", "v1", "run0", NOW) for u, r, i in recs], RECOMMENDATIONS),
            RECOMMENDATIONS_TABLE,
        )
    return tests


@pytest.mark.slow
def test_evaluate_all_models_protocols_and_report(make_ctx, tmp_path):
    ctx = make_ctx(
        "evaluate.ks=[1, 3]",
        "evaluate.protocols=[full, sampled]",
        "evaluate.sampled_negatives=3",
        "evaluate.sampled_distribution=uniform",
        "evaluate.als_ranks=[2, 4]",
        "evaluate.als_reg_params=[0.05]",
        "evaluate.als_max_iter=5",
        "spark.conf.fs.s3a.secret.key=do-not-print-me",
    )
    write_inputs(ctx)
    summary = evaluate.run(ctx)

    assert summary["models"] == ["popularity", "als", "item_knn", "next_item", "content", "lstm"]
    assert summary["skipped"] == {}
    assert summary["test_users"] == 12 and summary["untied_users"] == 6
    lstm = summary["metrics"]["lstm"]
    # Hand-worked: u0..u5 hit at 1; v0..v4 hit at 2 (v0 once its seen q0 is removed); v5 misses.
    assert lstm["hit_rate@1"] == pytest.approx(6 / 12, abs=1e-4)
    assert lstm["hit_rate@3"] == pytest.approx(11 / 12, abs=1e-4)
    assert lstm["ndcg@3"] == pytest.approx((6 + 5 / math.log2(3)) / 12, abs=1e-4)
    assert lstm["mrr@3"] == pytest.approx((6 + 5 * 0.5) / 12, abs=1e-4)
    assert summary["metrics_untied"]["lstm"]["hit_rate@1"] == pytest.approx(3 / 6, abs=1e-4)
    assert summary["users_missing_predictions"]["lstm"] == 1
    assert summary["duplicate_predictions"]["lstm"] == 6
    assert summary["seen_predictions_removed"]["lstm"] == 1
    # Two items of the user's own taste are unseen (its test item and the sixth): both rank above
    # every item of the other taste, so co-occurrence and content find the test item within 3.
    assert summary["metrics"]["item_knn"]["hit_rate@3"] == 1.0
    assert summary["metrics"]["content"]["hit_rate@3"] == 1.0
    assert len(summary["als"]["grid"]) == 2 and summary["als"]["chosen"]["rank"] in (2, 4)
    assert summary["metrics_sampled"]["lstm"]["hit_rate@3"] >= lstm["hit_rate@3"]

    table = ctx.lake.read(METRICS_TABLE)
    rows = table.collect()
    assert {r["run_id"] for r in rows} == {"test-run"}
    assert {r["protocol"] for r in rows} == {"full", "full_untied", "sampled_uniform_3", "sampled_uniform_3_untied"}
    assert all(r["value"] is not None and not math.isnan(r["value"]) for r in rows)
    assert {r["n_users"] for r in rows if r["protocol"] == "full"} == {12}
    assert {r["n_users"] for r in rows if r["protocol"] == "full_untied"} == {6}
    assert {r["metric"] for r in rows} == {"recall", "ndcg", "hit_rate", "mrr", "coverage", "novelty", "pop_percentile"}

    html = Path(summary["report"]["html"]).read_text()
    markdown = Path(summary["report"]["markdown"]).read_text()
    assert html.count("data:image/png;base64,") == 4 and "src='http" not in html
    assert "| lstm |" in markdown and "full_untied" in markdown
    assert "do-not-print-me" not in html + markdown
    assert Path(summary["report"]["html"]).parent == Path(ctx.cfg.reports_dir) / "test-run"


def test_evaluate_appends_each_run_and_skips_what_is_missing(make_ctx, spark):
    ctx = make_ctx("evaluate.ks=[2]", "evaluate.baselines=[popularity, content, lstm]")
    write_inputs(ctx, with_recommendations=False)
    first = evaluate.run(ctx)
    assert first["models"] == ["popularity", "content"]
    assert "score" in first["skipped"]["lstm"]

    shutil.rmtree(ctx.lake.location(USER_VECTORS_TABLE))
    second = evaluate.run(make_context(spark, ctx.cfg, run_id="second-run"))
    assert second["models"] == ["popularity"]
    assert "user_vectors" in second["skipped"]["content"]
    assert second["tables"]["gold/metrics"] == first["tables"]["gold/metrics"] + 1
    runs = ctx.lake.read(METRICS_TABLE).groupBy("run_id").count().collect()
    assert {r["run_id"] for r in runs} == {"test-run", "second-run"}


def test_empty_test_set_is_a_clear_error(make_ctx):
    ctx = make_ctx("evaluate.baselines=[popularity]")
    rows = [sequence_row("a", ["x", "y"], [], False)]
    ctx.lake.replace(ctx.spark.createDataFrame(rows, USER_SEQUENCES), USER_SEQUENCES_TABLE)
    with pytest.raises(ValueError, match="empty test set"):
        evaluate.run(ctx)


def test_missing_sequences_and_bad_k_are_clear_errors(make_ctx):
    with pytest.raises(FileNotFoundError, match="gold/user_sequences"):
        evaluate.run(make_ctx())
    with pytest.raises(ConfigError, match="evaluate.ks"):
        make_ctx("evaluate.ks=[0, 5]")
