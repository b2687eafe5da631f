"""Reproduce the baselines-vs-pipeline table on MovieLens ml-latest-small.

    python bench/bench_evaluate.py --data ../shared/data/ml-latest-small --warehouse /tmp/bench-evaluate
    python bench/bench_evaluate.py --warehouse /tmp/bench-evaluate --stages evaluate   # re-evaluate only

Runs the pipeline stages (default: all of them, in order) on one config and prints, as Markdown,
full-ranking NDCG@10 / Recall@10 / HitRate@10 / coverage@10 per model for the ``full`` and
``full_untied`` protocols, the stage timings, and the path of the HTML report. Extra config
overrides go through ``--set key=value`` as on the CLI.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys_spark import pipeline  # noqa: E402
from recsys_spark.core.config import load_config  # noqa: E402
from recsys_spark.core.session import get_spark  # noqa: E402

log = logging.getLogger("bench_evaluate")
COLUMNS = ("ndcg@10", "recall@10", "hit_rate@10", "mrr@10", "coverage@10", "novelty@10", "pop_percentile@10")


def table(metrics: dict, title: str) -> str:
    lines = [f"**{title}**", "", "| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for model, values in sorted(metrics.items(), key=lambda kv: -kv[1].get("ndcg@10", 0.0)):
        lines.append(f"| {model} | " + " | ".join(f"{values.get(c, float('nan')):.4f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ml-latest-small"))
    parser.add_argument("--warehouse", default="/tmp/bench-evaluate")
    parser.add_argument("--stages", default=",".join(pipeline.PIPELINE_ORDER), help="comma-separated stages to run, in order")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the run summary to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    cfg = load_config("local", [f"warehouse={args.warehouse}", f"input.events={args.data}", "evaluate.ks=[5, 10, 20]"] + args.overrides)
    ctx = pipeline.make_context(get_spark(cfg), cfg)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    summary = pipeline.run_all(ctx, stages)
    evaluation = summary["stages"]["evaluate"]
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")

    print(f"run {ctx.run_id}: {evaluation['test_users']} test users ({evaluation['untied_users']} untied), "
          f"catalog {evaluation['catalog_size']} items")
    print()
    print(table(evaluation["metrics"], "full ranking (chronological leave-one-out)"))
    print()
    print(table(evaluation["metrics_untied"], "full_untied (users whose test event is strictly last)"))
    print()
    print("stage seconds: " + ", ".join(f"{name} {seconds}" for name, seconds in summary["timings"].items()))
    print(f"evaluate seconds per model: {evaluation['model_seconds']}")
    print(f"skipped: {evaluation['skipped']}")
    print(f"ALS: {evaluation.get('als', {}).get('chosen')}")
    print(f"report: {evaluation['report']['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
