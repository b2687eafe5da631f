"""Run stages on a Spark Connect session, in a process of their own (tests/integration/test_connect.py).

    python -m tests.support.connect_run RESULT.json STAGE[,STAGE...] [--set KEY=VALUE]...

Loads the ``local`` profile with the overrides (which set ``spark.remote``), builds the session
through ``get_spark``, checks it is a Connect session, runs the stages in order with the run id
``RECSYS_RUN_ID`` and then tries ``train``, expecting it to refuse the session. Writes
``{"connect": bool, "stages": {name: summary}, "train_error": str or null, "seconds": float}``.

A process of its own because ``SparkSession.builder.remote("local[N]")`` starts its server as a
classic SparkContext in the calling process, which refuses to start where a classic session already
runs (the tests' ``spark`` fixture: SESSION_OR_CONTEXT_EXISTS). The process also needs the Connect client's protobuf 6 first on its path
(``RECSYS_CONNECT_SITE``), which TensorFlow's pin keeps out of the shared site-packages.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time


def main(argv: list) -> int:
    result_path, stages = argv[0], [s for s in argv[1].split(",") if s]
    overrides = [value for flag, value in zip(argv[2::2], argv[3::2]) if flag == "--set"]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from recsys_spark import pipeline
    from recsys_spark.core.config import load_config
    from recsys_spark.core.context import StageUnavailable, make_context
    from recsys_spark.core.session import get_spark, is_connect

    started = time.perf_counter()
    cfg = load_config("local", overrides)
    spark = get_spark(cfg)
    result = {"connect": is_connect(spark), "stages": {}, "train_error": None}
    if result["connect"]:
        ctx = make_context(spark, cfg, run_id=os.environ["RECSYS_RUN_ID"])
        for name in stages:
            result["stages"][name] = pipeline.run_stage(ctx, name)
        try:
            pipeline.run_stage(ctx, "train")
        except StageUnavailable as exc:
            result["train_error"] = str(exc)
    result["seconds"] = round(time.perf_counter() - started, 1)
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, default=str)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
