"""Training-step cost against catalog size with the sampled softmax (issue 14: a step must not
grow with the catalog).

    python bench/bench_step_cost.py --items 20000 --items 200000

For each catalog size: the default model (embedding 64, LSTM 64, windows of 50), the trainer of
``recsys_spark.trainers.worker`` with lazy Adam, batches of 64 random windows, and
``train.sampled_negatives`` shared negatives drawn from a Zipf-like count**0.75 plus the in-batch
targets. Reports the median seconds of a step after warm-up steps. No Spark, no data on disk.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys_spark.models.sequence import FIRST_ITEM, ModelSpec, build_model  # noqa: E402


def step_seconds(n_items: int, steps: int, warmup: int, negatives: int, batch: int, max_len: int, seed: int) -> dict:
    import tensorflow as tf

    from recsys_spark.trainers.worker import lazy_adam_class, next_item_trainer_class

    tf.keras.utils.set_random_seed(seed)
    spec = ModelSpec(n_tokens=n_items + FIRST_ITEM, max_len=max_len, embedding_dim=64, lstm_units=64, dropout=0.2)
    counts = 1.0 / np.arange(1, n_items + 1)  # Zipf-like popularity
    log_q = np.full(spec.n_tokens, -np.inf)
    log_q[FIRST_ITEM:] = np.log(counts**0.75 / (counts**0.75).sum())
    log_f = np.full(spec.n_tokens, -np.inf)
    log_f[FIRST_ITEM:] = np.log(counts / counts.sum())
    model = next_item_trainer_class()(build_model(spec), log_q, log_f, False, 1.0)
    model.compile(optimizer=lazy_adam_class()(learning_rate=0.005))
    cdf = np.cumsum(np.exp(log_q[FIRST_ITEM:]))
    rng = np.random.default_rng(seed)

    def batch_of_windows():
        tokens = (np.searchsorted(cdf, rng.random((batch, max_len + 1)) * cdf[-1]) + FIRST_ITEM).astype(np.int32)
        tokens = np.minimum(tokens, spec.n_tokens - 1)
        drawn = np.searchsorted(cdf, rng.random(negatives) * cdf[-1]) + FIRST_ITEM
        return {
            "inputs": tf.constant(tokens[:, :-1]),
            "targets": tf.constant(tokens[:, 1:]),
            "mask": tf.constant(np.ones((batch, max_len), dtype=bool)),
            "negatives": tf.constant(np.minimum(drawn, spec.n_tokens - 1).astype(np.int32)),
        }

    step = tf.function(model.train_step)
    times = []
    for i in range(warmup + steps):
        data = batch_of_windows()
        started = time.perf_counter()
        float(step(data)["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return {"items": n_items, "median_step_s": round(float(np.median(times)), 4), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, action="append", default=[])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.items = args.items or [20000, 200000]
    results = [
        step_seconds(n, args.steps, args.warmup, args.negatives, args.batch, args.max_len, args.seed)
        for n in args.items
    ]
    # A size given more than once (interleaved runs against a drifting machine load): its median.
    by_size = {n: float(np.median([r["median_step_s"] for r in results if r["items"] == n])) for n in args.items}
    if len(by_size) > 1:
        largest, smallest = max(by_size), min(by_size)
        results.append({f"step_ratio_{largest}_to_{smallest}": round(by_size[largest] / by_size[smallest], 3)})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
