"""Issue 20.1 — stages that overlap on one warehouse, each pair with a real second process:
``train`` publishing a model while ``score`` loads one, and ``score`` publishing while ``evaluate``
and a reader query gold/recommendations. Every scoring is wholly one model's, every evaluation
wholly one version's, every read one whole version."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from pyspark.sql import functions as F

from recsys_spark.core import schemas as S
from recsys_spark.core.context import make_context
from recsys_spark.models.sequence import cached_ranker, latest_model_dir
from recsys_spark.stages import evaluate, score, train
from recsys_spark.stages.score import POPULAR_REASON
from tests.reliability.test_corrupt_artifacts import SETTINGS, _items_and_candidates
from tests.support import REPO, small_config, small_overrides
from tests.unit.stages.test_train import cyclic_sequences, write_sequences

pytestmark = pytest.mark.slow

USERS = 30
DEADLINE_SECONDS = 600
EVALUATE = ("evaluate.baselines=[popularity]", "evaluate.ks=[3]", "report.bootstrap_samples=50")


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """Sequences, catalog, text vectors and candidates for USERS users, a trained model, and one
    full scoring by it: what score and evaluate read (one warehouse for the module's tests)."""
    ctx = make_context(spark, small_config(tmp_path_factory.mktemp("stages") / "warehouse", *SETTINGS, *EVALUATE), "test-run")
    rows = cyclic_sequences(ctx.spark, users=USERS)
    write_sequences(ctx, rows)
    _items_and_candidates(ctx, rows)
    trained = train.run(ctx)
    score.run(ctx)
    return ctx, trained["model_version"]


def other_process(ctx, results, stage: str, times: int, *vary: str):
    """``stage`` run ``times`` times by tests/support/stage_loop.py on ``ctx``'s warehouse."""
    sets = small_overrides(ctx.cfg.warehouse, "spark.driver_memory=1g", *SETTINGS, *EVALUATE)
    args = [sys.executable, "-m", "tests.support.stage_loop", str(results), stage, str(times)]
    args += [a for v in vary for a in ("--vary", v)] + [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(f"{results}.log", "wb"))


def finished(proc, results) -> list:
    proc.wait(timeout=DEADLINE_SECONDS)
    log = open(f"{results}.log", encoding="utf-8", errors="replace").read()
    assert proc.returncode == 0, log[-4000:]
    return [json.loads(line) for line in open(results, encoding="utf-8")]


def test_train_publishing_while_score_loads_the_model(warehouse, tmp_path):
    ctx, _ = warehouse
    first_version = latest_model_dir(ctx.cfg.models_dir).rstrip("/").split("/")[-1]
    lake = ctx.lake
    results = tmp_path / "train.jsonl"
    trainer = other_process(ctx, results, "train", 1)
    scorings = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        running = trainer.poll() is None
        summary = score.run(ctx)
        scorings.append((summary["model_version"], lake.version(S.RECOMMENDATIONS_TABLE)))
        if not running:  # one scoring started after the new model was published
            break
    (published,) = [r["summary"]["model_version"] for r in finished(trainer, results)]
    assert published != first_version and latest_model_dir(ctx.cfg.models_dir).endswith(published)
    served = [v for v, _ in scorings]
    print(f"train published {published} while score ran {len(scorings)} times: {served}")
    assert len(scorings) >= 2 and served[0] == first_version and served[-1] == published
    assert served == sorted(served, key=[first_version, published].index), "a scoring went back to the old model"

    sequences = {r[S.USER_ID]: list(r[S.HISTORY_ITEMS]) for r in lake.read(S.USER_SEQUENCES_TABLE).collect()}
    for model_version, table_version in scorings:
        rows = lake.read(S.RECOMMENDATIONS_TABLE, table_version)
        assert {r[0] for r in rows.select(S.MODEL_VERSION).distinct().collect()} == {model_version}
        # The scores are that model's own, not the other's.
        ranker = cached_ranker(f"{ctx.cfg.models_dir}/{model_version}")
        ranked = rows.where(~F.col(S.REASON).startswith(POPULAR_REASON)).collect()
        by_user: dict = {}
        for r in sorted(ranked, key=lambda r: r[S.RANK]):
            by_user.setdefault(r[S.USER_ID], []).append(r)
        for user in sorted(by_user)[:3]:
            items = [r[S.ITEM_ID] for r in by_user[user]]
            (expected,) = ranker.score([sequences[user]], [items])
            assert [r[S.SCORE] for r in by_user[user]] == pytest.approx(list(expected), rel=1e-4, abs=1e-5), user


def test_score_publishing_while_evaluate_and_a_reader_query(warehouse, tmp_path):
    ctx, _ = warehouse
    lake = ctx.lake
    # The two lists the other process alternates between: the model's (score.min_history=2) and
    # popular items only (min_history=100, every user cold). Their metrics, each measured alone:
    personal = evaluate.run(ctx)["metrics"]["lstm"]
    score.run(make_context(ctx.spark, small_config(ctx.cfg.warehouse, *SETTINGS, *EVALUATE, "score.min_history=100"), "test-run"))
    popular = evaluate.run(ctx)["metrics"]["lstm"]
    assert personal != popular

    results = tmp_path / "score.jsonl"
    scorer = other_process(ctx, results, "score", 3, "score.min_history=2,100")
    reads, errors, done = [], [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                seen = lake.read(S.RECOMMENDATIONS_TABLE).groupBy(S.RUN_ID).count().collect()
                reads.append({r[S.RUN_ID]: r["count"] for r in seen})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    evaluations = []
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while scorer.poll() is None and time.monotonic() < deadline:
            summary = evaluate.run(ctx)
            evaluations.append((summary["recommendations_version"], summary["metrics"]["lstm"]))
    finally:
        done.set()
        thread.join()
    published = finished(scorer, results)
    assert not errors, errors
    versions = [r["summary"]["tables"]["gold/recommendations"] for r in published]
    print(f"score published versions {versions} while evaluate ran {len(evaluations)} times "
          f"(read versions {[v for v, _ in evaluations]}) and a reader queried {len(reads)} times")
    assert len(evaluations) >= 2 and len(reads) >= 2
    # Every read: one run's whole list (USERS x score.k rows of one run id).
    assert all(len(r) == 1 and list(r.values()) == [USERS * 3] for r in reads), reads[:5]
    # Every evaluation: the metrics of one whole version, whichever it read.
    for version, measured in evaluations:
        assert measured in (personal, popular), (version, measured)
    assert len({v for v, _ in evaluations}) >= 2, "evaluate never saw a version the other process published"
