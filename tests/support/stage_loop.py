"""Run one stage several times in a process of its own: the other job of a concurrency test.

    python -m tests.support.stage_loop RESULTS.jsonl STAGE TIMES [--vary KEY=A,B,...] [--set KEY=VALUE]...

Loads the ``local`` profile with the overrides, builds one session, and runs ``STAGE`` ``TIMES``
times through ``pipeline.run_stage`` (run ids ``loop-0``, ``loop-1``, ...); run ``i`` also sets
``KEY`` to the ``i``-th value of ``--vary`` (cycling). Each summary is appended to RESULTS as one
JSON line as soon as its run ends.
"""
from __future__ import annotations

import json
import logging
import sys


def main(argv: list) -> int:
    results, stage, times = argv[0], argv[1], int(argv[2])
    pairs = list(zip(argv[3::2], argv[4::2]))
    overrides = [value for flag, value in pairs if flag == "--set"]
    varied = [value for flag, value in pairs if flag == "--vary"]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from recsys_spark import pipeline
    from recsys_spark.core.config import load_config
    from recsys_spark.core.context import make_context
    from recsys_spark.core.session import get_spark

    key, values = (varied[0].split("=", 1)[0], varied[0].split("=", 1)[1].split(",")) if varied else (None, [])
    spark = get_spark(load_config("local", overrides))
    for i in range(times):
        extra = [f"{key}={values[i % len(values)]}"] if key else []
        ctx = make_context(spark, load_config("local", overrides + extra), run_id=f"loop-{i}")
        summary = pipeline.run_stage(ctx, stage)
        with open(results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"run": i, "set": extra, "summary": summary}, default=str) + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
