"""``recsys-spark <stage> [--config PATH] [--set key=value]...``

The last line on stdout of every command is one JSON object summarising it (what a scheduler
or a Databricks job reads); logs go to stderr. A failure still prints a JSON line, with
``"status": "failed"`` and the error, and exits non-zero.

A Databricks ``python_wheel_task`` (``$DATABRICKS_RUNTIME_VERSION`` set) calls the entry point as
a function, not through the console script that exits with its return value: there a failure
raises ``SystemExit`` with the exit status, so the task fails, and a success publishes the
stage's key numbers as task values (``recsys_spark.integrations.databricks.task_values``) for
later tasks to gate on.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from recsys_spark import pipeline
from recsys_spark.core.context import StageUnavailable, make_context
from recsys_spark.core.session import on_databricks
from recsys_spark.integrations import databricks
from recsys_spark.stages import PIPELINE_ORDER, STAGES
from recsys_spark.core.config import ConfigError, load_config

log = logging.getLogger("recsys_spark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-spark",
        description="Distributed recommender on Spark + Delta. Every stage reads and writes Delta tables.",
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    stages = dict(STAGES)
    stages["run"] = "every stage in order: " + " -> ".join(PIPELINE_ORDER)
    for name, help_text in stages.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            metavar="PATH",
            help="YAML config file, or a profile name in conf/ (local, cluster, databricks); "
            "default: $RECSYS_CONFIG or 'local'",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one config key, e.g. --set warehouse=/tmp/wh --set train.epochs=3 (repeatable)",
        )
        p.add_argument("--run-id", help="id recorded with this run's outputs (default: a new one)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _emit(summary: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(summary, default=str, sort_keys=False), flush=True)


def _failed(code: int) -> int:
    """``code`` back to the console script, which exits with it; on Databricks the status is
    raised, since a wheel task calls ``main`` itself and would not see a returned one."""
    if on_databricks():
        raise SystemExit(code)
    return code


def _publish_task_values(spark, summary: dict) -> None:
    try:
        dbutils = databricks.runtime_dbutils(spark)
        values = databricks.set_task_values(dbutils, summary)
    except Exception as exc:  # noqa: BLE001 - the stage succeeded; a job gating on a value then names it missing
        log.warning("could not set task values for %s: %s: %s", summary.get("stage"), type(exc).__name__, exc)
        return
    log.info("task values: %s", values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"recsys-spark: {exc}", file=sys.stderr)
        _emit({"stage": args.stage, "status": "failed", "error": str(exc)})
        return _failed(2)
    try:
        from recsys_spark.core.session import get_spark

        spark = get_spark(cfg)
        databricks.prepare_catalog(spark, cfg)
        ctx = make_context(spark, cfg, args.run_id)
        if args.stage == "run":
            summary = pipeline.run_all(ctx)
        else:
            summary = pipeline.run_stage(ctx, args.stage)
    except (StageUnavailable, FileNotFoundError, ValueError, ConfigError) as exc:
        print(f"recsys-spark {args.stage}: {exc}", file=sys.stderr)
        _emit({"stage": args.stage, "status": "failed", "error": str(exc)})
        return _failed(1)
    except Exception as exc:  # noqa: BLE001 - the JSON line must come out whatever failed
        log.exception("stage %s failed", args.stage)
        _emit({"stage": args.stage, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return _failed(1)
    summary.setdefault("status", "ok")
    if on_databricks():
        _publish_task_values(spark, summary)
    _emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
