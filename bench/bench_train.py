"""Training benchmark on MovieLens ml-latest-small: model quality against baselines, and
training throughput (targets per second: positions whose next item is trained, every timestep
of every window) for each backend / worker count given.

    python bench/bench_train.py --data ../shared/data/ml-latest-small \
        --run local:1 --run horovod:2 --set train.epochs=10

Before issue 14 the model trained one example (prefix -> next item) per LSTM pass, 4,079
examples/s in one process on the 2-core VM (BENCHMARKS.md); a target is the same unit of
learning (one next item predicted), so the two figures compare.

Split (the same as the features stage): per user, events ordered by time with ties broken by a
seeded random order; the last event is the test item, the one before it the validation item,
the rest are training events. Every run trains on the same gold/user_sequences table.

Quality: full-ranking HR@10 / NDCG@10 of the held-out test item among all items the user has
not seen (history = train + validation events), computed here with numpy, for the LSTM of the
first run and for two baselines fitted on the same histories:
- popularity: items by number of history events;
- next_item: first-order transitions (item -> next item counts over all histories) from the
  user's last item, popularity as the tie-break.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys_spark.core import schemas as S  # noqa: E402
from recsys_spark.core.config import load_config  # noqa: E402

log = logging.getLogger("bench_train")
K = 10
OLD_EXAMPLES_PER_S = 4079.0  # one-example-per-prefix training, one process (BENCHMARKS.md, 2026-11-29)


def leave_one_out(ratings: pd.DataFrame, seed: int) -> pd.DataFrame:
    """ratings (userId, movieId, timestamp) -> one row per user in the USER_SEQUENCES layout."""
    rng = np.random.default_rng(seed)
    ratings = ratings.assign(tie=rng.random(len(ratings))).sort_values(["userId", "timestamp", "tie"])
    rows = []
    for user, events in ratings.groupby("userId", sort=True):
        items = [str(i) for i in events["movieId"]]
        ts = [int(t) for t in events["timestamp"]]
        w = [1.0] * len(items)
        n_test = 1 if len(items) >= 3 else 0
        n_val = 1 if len(items) >= 3 else 0
        hist = len(items) - n_test
        tr = hist - n_val
        rows.append(
            {
                S.USER_ID: str(user), S.ITEMS: items, S.TS_LIST: ts, S.WEIGHTS: w,
                S.HISTORY_ITEMS: items[:hist], S.HISTORY_TS: ts[:hist], S.HISTORY_WEIGHTS: w[:hist],
                S.TRAIN_ITEMS: items[:tr], S.TRAIN_TS: ts[:tr], S.TRAIN_WEIGHTS: w[:tr],
                S.VAL_ITEMS: items[tr:hist], S.TEST_ITEMS: items[hist:],
                S.TEST_UNTIED: bool(n_test) and (len(ts) < 2 or ts[-1] > ts[-2]), S.N_EVENTS: len(items),
                S.SEEN_ITEMS: sorted(set(items[:hist])), S.TRAIN_SEEN_ITEMS: sorted(set(items[:tr])),
            }
        )
    return pd.DataFrame(rows)


def rank_metrics(scores: np.ndarray, seen: "list[np.ndarray]", targets: np.ndarray) -> "tuple[float, float]":
    """Mean HR@K and NDCG@K of ``targets`` (column indices) in ``scores`` (users x items),
    each user's seen items excluded."""
    hits = ndcg = 0.0
    for row, (excluded, target) in enumerate(zip(seen, targets)):
        s = scores[row].astype(np.float64).copy()
        s[excluded[excluded != target]] = -np.inf
        rank = int((s > s[target]).sum())
        if rank < K:
            hits += 1.0
            ndcg += 1.0 / np.log2(rank + 2.0)
    return hits / len(targets), ndcg / len(targets)


def evaluate(sequences: pd.DataFrame, ranker) -> dict:
    """HR@10 / NDCG@10 on the test items for the LSTM and the baselines (known items only)."""
    column = {item: j for j, item in enumerate(ranker.item_ids)}
    users = sequences[sequences[S.TEST_ITEMS].map(len) > 0]
    users = users[users[S.TEST_ITEMS].map(lambda t: t[0] in column)]
    histories = list(users[S.HISTORY_ITEMS])
    targets = np.array([column[t[0]] for t in users[S.TEST_ITEMS]])
    seen = [np.array([column[i] for i in h if i in column], dtype=np.int64) for h in histories]

    n = len(ranker.item_ids)
    popularity = np.zeros(n)
    transitions: dict = {}
    for h in histories:
        for a, b in zip(h, h[1:]):
            if b in column:
                transitions.setdefault(a, {}).setdefault(column[b], 0)
                transitions[a][column[b]] += 1
        for i in h:
            if i in column:
                popularity[column[i]] += 1
    pop_scores = np.tile(popularity, (len(histories), 1))
    next_scores = pop_scores / (popularity.max() + 1.0)
    for row, h in enumerate(histories):
        for j, c in transitions.get(h[-1], {}).items() if h else ():
            next_scores[row, j] += c

    lstm_scores = np.concatenate(
        [ranker.all_item_scores(ranker.user_states(histories[i:i + 256])) for i in range(0, len(histories), 256)]
    )
    out = {"users": len(histories), "items": n}
    for name, scores in (("lstm", lstm_scores), ("popularity", pop_scores), ("next_item", next_scores)):
        hr, ndcg = rank_metrics(scores, seen, targets)
        out[name] = {"hr@10": round(hr, 4), "ndcg@10": round(ndcg, 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-latest-small"))
    parser.add_argument("--run", action="append", default=[], help="backend:workers (repeatable; default local:1)")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    from recsys_spark.stages import train
    from recsys_spark.models.sequence import SequenceRanker, latest_model_dir
    from recsys_spark.core.context import make_context
    from recsys_spark.core.session import get_spark

    ratings = pd.read_csv(Path(args.data) / "ratings.csv")
    sequences = leave_one_out(ratings, args.seed)
    warehouse = tempfile.mkdtemp(prefix="bench-train-")
    base = [f"warehouse={warehouse}", "spark.master=local[2]", "spark.shuffle_partitions=4"] + args.set
    cfg = load_config("local", base)
    spark = get_spark(cfg)
    ctx = make_context(spark, cfg)
    ctx.lake.replace(spark.createDataFrame(sequences, S.USER_SEQUENCES), S.USER_SEQUENCES_TABLE)

    results = {"ratings": len(ratings), "users": len(sequences), "runs": []}
    for run_spec in args.run or ["local:1"]:
        backend, workers = run_spec.split(":")
        run_cfg = load_config("local", base + [f"train.backend={backend}", f"train.num_workers={workers}"])
        run_ctx = make_context(spark, run_cfg)
        started = time.perf_counter()
        summary = train.run(run_ctx)
        summary["stage_seconds"] = round(time.perf_counter() - started, 1)
        summary["speedup_vs_4079_examples_per_s"] = round(summary["targets_per_s"] / OLD_EXAMPLES_PER_S, 2)
        log.info("%s", json.dumps(summary))
        results["runs"].append(summary)
        if "quality" not in results:
            ranker = SequenceRanker.load(latest_model_dir(run_cfg.models_dir), threads=0)
            results["quality"] = {"model_version": summary["model_version"], **evaluate(sequences, ranker)}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    spark.stop()


if __name__ == "__main__":
    main()
