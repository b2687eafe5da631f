"""The evaluate stage end to end on a tiny two-taste split written as gold/user_sequences."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from recsys_spark.evaluation import baselines, metrics
from recsys_spark.search import store
from recsys_spark.stages import evaluate, features, retrieve, score
from recsys_spark.core.config import ConfigError
from recsys_spark.core.context import make_context
from recsys_spark.core.schemas import (
    BASELINE_MODELS,
    CANDIDATES_TABLE,
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    METRICS_TABLE,
    RECOMMENDATIONS,
    RECOMMENDATIONS_TABLE,
    SILVER_EVENTS,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS,
    SILVER_ITEMS_TABLE,
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
        sorted(set(history)), sorted(set(train)),
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
    os.makedirs(os.path.join(ctx.cfg.models_dir, "v1"))  # the model that wrote the recommendations
    with open(os.path.join(ctx.cfg.models_dir, "v1", "config.json"), "w", encoding="utf-8") as handle:
        json.dump({"version": "v1", "final_fit": {"events": "train_val", "note": "train + validation, 3 epochs"}}, handle)
    summary = evaluate.run(ctx)

    assert summary["fit_events"] == {"baselines": "train_val", "lstm": "train_val"}
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
    assert {r["metric"] for r in rows if r["model"] in summary["models"]} == {
        "recall", "ndcg", "hit_rate", "mrr", "coverage", "novelty", "pop_percentile"
    }
    # The lstm's lead over the best baseline at K=3, with its paired bootstrap interval.
    lead = summary["lead"]
    assert lead["k"] == 3 and lead["baseline"] in BASELINE_MODELS
    assert lead["full"]["low"] <= lead["full"]["mean"] <= lead["full"]["high"]
    assert lead["full"]["mean"] == pytest.approx(lstm["ndcg@3"] - summary["metrics"][lead["baseline"]]["ndcg@3"], abs=1e-4)
    lead_rows = {(r["protocol"], r["metric"]): r for r in rows if r["model"] == f"lstm-vs-{lead['baseline']}"}
    assert set(lead_rows) == {(p, m) for p in ("full", "full_untied") for m in evaluate.LEAD_METRICS}
    assert lead_rows[("full", "ndcg_lead")]["n_users"] == 12 and lead_rows[("full_untied", "ndcg_lead")]["n_users"] == 6
    assert {r["bucket"] for r in summary["by_history_length"]} == {"cold"}  # 4 items seen each, <= 5

    html = Path(summary["report"]["html"]).read_text()
    markdown = Path(summary["report"]["markdown"]).read_text()
    assert html.count("data:image/png;base64,") == 4 and "src='http" not in html
    assert "| lstm |" in markdown and "full_untied" in markdown
    assert "the served LSTM from train + validation items (trained again for the epoch early stopping chose)" in markdown
    assert "do-not-print-me" not in html + markdown
    assert Path(summary["report"]["html"]).parent == Path(ctx.cfg.reports_dir) / "test-run"


def test_evaluate_appends_each_run_and_skips_what_is_missing(make_ctx, spark):
    ctx = make_ctx("evaluate.ks=[2]", "evaluate.baselines=[popularity, content, lstm]")
    write_inputs(ctx, with_recommendations=False)
    first = evaluate.run(ctx)
    assert first["models"] == ["popularity", "content"]
    assert "score" in first["skipped"]["lstm"]
    assert first["fit_events"] == {"baselines": "train_val"}  # no recommendations: no lstm

    shutil.rmtree(ctx.lake.location(USER_VECTORS_TABLE))
    second = evaluate.run(make_context(spark, ctx.cfg, run_id="second-run"))
    assert second["models"] == ["popularity"]
    assert "user_vectors" in second["skipped"]["content"]
    assert second["tables"]["gold/metrics"] == first["tables"]["gold/metrics"] + 1
    runs = ctx.lake.read(METRICS_TABLE).groupBy("run_id").count().collect()
    assert {r["run_id"] for r in runs} == {"test-run", "second-run"}


def many_users(n_users: int = 300, n_items: int = 80, seed: int = 5) -> list:
    """USER_SEQUENCES rows of ``n_users`` users in four tastes of twenty items each: a user's
    history is 3-6 items of its taste (one stray item now and then), its test item one more."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        taste = [f"t{u % 4}i{n}" for n in range(n_items // 4)]
        picked = rng.sample(taste, rng.randint(4, 7))
        if rng.random() < 0.3:
            picked.insert(rng.randrange(len(picked)), f"t{(u + 1) % 4}i{rng.randrange(n_items // 4)}")
        rows.append(sequence_row(f"user{u:03d}", picked[:-1], picked[-1:], untied=rng.random() < 0.5))
    return rows


def test_sample_targets_is_seeded_nested_and_a_subset(spark):
    targets = spark.createDataFrame([(f"u{n}",) for n in range(200)], "user_id string")
    draw = lambda n, seed: {r[0] for r in evaluate.sample_targets(targets, n, seed).collect()}
    first, again, larger, other = draw(50, 3), draw(50, 3), draw(80, 3), draw(50, 4)
    assert len(first) == 50 and first == again
    assert first < larger and len(larger) == 80  # a larger sample keeps every user of a smaller one
    assert other != first and len(other) == 50
    assert draw(500, 3) == {f"u{n}" for n in range(200)}


def test_costly_models_on_a_seeded_sample_agree_with_every_user_within_two_standard_errors(make_ctx, tmp_path):
    """evaluate.sample_users: the models of sample_models are scored on a seeded sample of the
    test users, with a standard error per metric; the others on every user. On 300 users, a
    sample of 150 gives item-kNN's metrics within two standard errors of its all-users ones."""
    settings = ("evaluate.ks=[5, 10]", "evaluate.baselines=[popularity, item_knn]")
    everyone = make_ctx(*settings, warehouse=tmp_path / "everyone")
    everyone.lake.replace(everyone.spark.createDataFrame(many_users(), USER_SEQUENCES), USER_SEQUENCES_TABLE)
    full = evaluate.run(everyone)
    assert "sample" not in full
    sampled_ctx = make_ctx(*settings, "evaluate.sample_users=150", "evaluate.sample_models=[item_knn]",
                           warehouse=tmp_path / "everyone")
    sampled = evaluate.run(make_context(sampled_ctx.spark, sampled_ctx.cfg, run_id="sampled"))

    assert sampled["sample"]["users"] == 150 and sampled["sample"]["of_test_users"] == 300
    assert sampled["sample"]["models"] == ["item_knn"] and sampled["test_users"] == 300
    rows = everyone.lake.read(METRICS_TABLE).where(F.col("run_id") == "sampled").collect()
    users = {r["model"]: r["n_users"] for r in rows if r["protocol"] == "full"}
    assert users == {"popularity": 300, "item_knn": 150}
    assert not [r for r in rows if r["model"] == "popularity" and r["metric"].endswith(metrics.STDERR_SUFFIX)]
    # popularity (every user) is the same in both runs; item_knn's sampled metrics sit within
    # two of their standard errors of the all-users value, for every metric and K.
    assert sampled["metrics"]["popularity"] == full["metrics"]["popularity"]
    errors = sampled["sample"]["stderr"]["item_knn"]
    assert set(errors) == {f"{m}@{k}" for m in metrics.ACCURACY_METRICS for k in (5, 10)}
    for name, error in errors.items():
        assert 0 < error < 0.1, (name, error)
        assert abs(sampled["metrics"]["item_knn"][name] - full["metrics"]["item_knn"][name]) <= 2 * error, name
    assert full["metrics"]["item_knn"]["ndcg@10"] > 2 * full["metrics"]["popularity"]["ndcg@10"] > 0  # not a null test
    report = Path(sampled["report"]["html"]).read_text(encoding="utf-8")
    assert "seeded sample of 150 of the 300 test users" in report


def test_content_baseline_searches_the_warehouse_text_index_and_reuses_a_saved_ivf_index(make_ctx, tmp_path):
    """The content baseline goes through search.store.text_index: exact or IVF by retrieve.method;
    an IVF index is saved and reused while gold/item_embeddings is unchanged, and with every list
    probed its lists equal the exact search's."""
    settings = ("evaluate.ks=[2, 5]", "evaluate.baselines=[content]")
    exact_ctx = make_ctx(*settings, "retrieve.method=exact", warehouse=tmp_path / "w")
    write_inputs(exact_ctx, with_recommendations=False)
    exact = evaluate.run(exact_ctx)
    assert exact["content_search"] == {"method": "exact", "index": "built"}
    ivf_ctx = make_ctx(*settings, "retrieve.method=ivf", "retrieve.nlist=3", "retrieve.nprobe=3", warehouse=tmp_path / "w")
    first = evaluate.run(ivf_ctx)
    assert first["content_search"] == {"method": "ivf", "index": "trained", "nlist": 3, "nprobe": 3}
    method, index, info = store.text_index(ivf_ctx)  # what the next evaluate (or retrieve) gets
    assert (method, info["index"], index.nlist) == ("ivf", "reused", 3)
    assert first["metrics"]["content"] == exact["metrics"]["content"]
    assert exact["metrics"]["content"]["ndcg@5"] > 0


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


def write_heavy_user_inputs(ctx) -> tuple[list, list]:
    """silver/events, silver/items, item vectors and user vectors around one user with 300 events.

    ``heavy`` rated h000..h298, then its test item t. Six light users rated h290..h298, then
    h000..h009 (heavy's oldest items, which the 200-event window drops), then six x items. The h
    items and t point the way heavy's vector does, so every model would rank heavy's old items high.
    """
    spark = ctx.spark
    heavy = [f"h{i:03d}" for i in range(299)]
    sequences = {"heavy": heavy + ["t"]}
    for j in range(6):
        sequences[f"o{j}"] = heavy[290:] + heavy[:10] + [f"x{n}" for n in range(j, j + 6)]
    events = [
        (f"{user}-{n}", user, item, "rating", NOW + timedelta(minutes=n), 4.0, None, "s", NOW)
        for user, items in sequences.items()
        for n, item in enumerate(items)
    ]
    ctx.lake.replace(spark.createDataFrame(events, SILVER_EVENTS), SILVER_EVENTS_TABLE)
    catalog = sorted({item for items in sequences.values() for item in items})
    ctx.lake.replace(
        spark.createDataFrame([(i, f"Title {i}", None, None, [], [], "h", "s", NOW) for i in catalog], SILVER_ITEMS),
        SILVER_ITEMS_TABLE,
    )

    def vector(item: str) -> list:
        n = int(item[1:]) if item[1:].isdigit() else 0
        wobble = 0.05 * math.sin(n + 1)
        return [1.0, wobble, 0.0] if item[0] in "ht" else [wobble, 1.0, 0.0]

    ctx.lake.replace(
        spark.createDataFrame([(i, "h", "m", "v1", 3, vector(i), NOW, True) for i in catalog], ITEM_EMBEDDINGS),
        ITEM_EMBEDDINGS_TABLE,
    )
    user_vectors = [(u, [1.0, 0.0, 0.0] if u == "heavy" else [0.0, 1.0, 0.0], len(s), "m", NOW) for u, s in sequences.items()]
    ctx.lake.replace(spark.createDataFrame(user_vectors, USER_VECTORS), USER_VECTORS_TABLE)
    return heavy, list(sequences)


@pytest.mark.slow
def test_a_user_with_300_events_is_never_recommended_any_of_them(make_ctx):
    """features -> retrieve -> score, then every baseline as evaluate runs it: no list holds an
    item the user has seen, although the model's window (200 events) holds only the last 199."""
    ctx = make_ctx(
        "retrieve.query=interests",
        "retrieve.candidates=10",  # heavy has 12 unseen items
        "retrieve.k=5",
        "retrieve.recall_sample=0",
        "retrieve.similar_items_k=1",
        "train.models_dir=/nonexistent/models",
        "score.k=5",
        "evaluate.ks=[5]",
        "evaluate.als_ranks=[2]",
        "evaluate.als_max_iter=3",
    )
    heavy, users = write_heavy_user_inputs(ctx)
    features.run(ctx)
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    row = sequences.where("user_id = 'heavy'").first()
    assert row["n_events"] == 300 and len(row["history_items"]) == 199
    assert row["seen_items"] == heavy and row["test_items"] == ["t"]
    seen = sequences.selectExpr("user_id", "explode(seen_items) AS item_id").cache()

    def seen_and_short(predictions, k):
        """(predictions of a seen item, users with fewer than k predictions), in one job."""
        flagged = predictions.select("user_id", "item_id").join(
            seen.withColumn("_seen", F.lit(1)), ["user_id", "item_id"], "left"
        )
        per_user = {
            r["user_id"]: (r["n"], r["n_seen"])
            for r in flagged.groupBy("user_id").agg(F.count(F.lit(1)).alias("n"), F.count("_seen").alias("n_seen")).collect()
        }
        return sum(n_seen for _, n_seen in per_user.values()), {u for u in users if per_user.get(u, (0, 0))[0] < k}

    retrieve.run(ctx)
    score.run(ctx)
    assert seen_and_short(ctx.lake.read(CANDIDATES_TABLE), 10) == (0, set())
    assert seen_and_short(ctx.lake.read(RECOMMENDATIONS_TABLE), 5) == (0, set())
    recs = ctx.lake.read(RECOMMENDATIONS_TABLE).where("user_id = 'heavy'").orderBy("rank").collect()
    assert recs[0]["item_id"] == "t"  # the held-out item is not in the exclusion set

    # The baselines as evaluate runs them, on the test split: top-K lists of unseen items.
    targets = evaluate.test_targets(sequences)
    queries = evaluate.baseline_queries(targets)
    histories = evaluate.fit_histories(sequences, "history_items", "history_weights")
    k = 5
    predictions = {
        "popularity": baselines.popularity(histories, queries, k),
        "item_knn": baselines.item_knn(histories, queries, k, ctx.cfg.evaluate.knn_neighbours),
        "next_item": baselines.next_item(histories, queries, k),
        "content": evaluate._content_predictions(ctx, queries, k)[0],
        "als": evaluate._als_predictions(ctx, sequences, queries, k, k)[0],
    }
    assert sorted(predictions) == sorted(BASELINE_MODELS)
    for model, frame in predictions.items():
        assert seen_and_short(frame, k) == (0, set()), model
    # ... and the evaluation filter keeps the held-out item: heavy's content hit counts.
    frame = metrics.evaluation_frame(metrics.rank_lists(predictions["content"]), targets, k)
    heavy_row = frame.where("user_id = 'heavy'").first()
    assert heavy_row["recs"][0] == "t" and heavy_row["n_seen"] == 0
    seen.unpersist()
