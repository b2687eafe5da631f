"""``recsys-spark <command> [--config PATH] [--set key=value]...``

Two kinds of command, two contracts on stdout:

- **Stage commands** (every stage, and ``run``): the last line on stdout is one JSON object
  summarising the command (what a scheduler or a Databricks job reads); logs go to stderr.
  ``run`` prints one compact JSON line per stage as that stage ends, then the run's summary last.
  A failure still prints a JSON line, with ``"status": "failed"`` and the error (for ``run`` also
  ``failed_stage``), and exits non-zero: 2 for a bad config or a bad ``--from``/``--only``, 1
  otherwise.
- **Questions** (``--version``, ``config show``, ``tables``, ``recommend``): stdout is for a
  person, and its last line is text, not JSON: the version, the config as YAML (secrets masked),
  a table of the warehouse's tables, a user's recommendations. ``tables --json`` and
  ``recommend --json`` print one JSON object instead, for a script. A failure is one line on
  stderr (``recsys-spark <command>: <why>``) and exits non-zero: 2 for a bad config, 1 otherwise
  (an unknown user, a table not written yet).

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
import os
import sys
from datetime import timezone
from typing import Optional, Sequence

from recsys_spark import __version__, pipeline
from recsys_spark.core import progress, schemas
from recsys_spark.core.config import ConfigError, load_config, redact, scrub, secret_values
from recsys_spark.core.context import StageUnavailable, make_context
from recsys_spark.core.display import inert_text
from recsys_spark.core.session import on_databricks
from recsys_spark.integrations import databricks
from recsys_spark.stages import PIPELINE_ORDER, STAGES

log = logging.getLogger("recsys_spark")

QUESTIONS = {
    "config": "the resolved config: 'config show' prints it as YAML, secrets masked",
    "tables": "each table of the warehouse: its version, rows and last write (or missing)",
    "recommend": "a user's current recommendations from gold/recommendations, with titles and reasons",
}


def _common_options(p: argparse.ArgumentParser) -> None:
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
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="warnings and errors only: no progress (default: $RECSYS_LOG_LEVEL or INFO)")
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-spark",
        description="Distributed recommender on Spark + Delta. Every stage reads and writes Delta tables.",
    )
    parser.add_argument("--version", action="version", version=f"recsys-spark {__version__}")
    # ``stage`` holds any command (a question too): what jobs and the bundle's tests read.
    sub = parser.add_subparsers(dest="stage", metavar="<command>", required=True)
    stages = dict(STAGES)
    stages["run"] = "every stage in order: " + " -> ".join(PIPELINE_ORDER)
    for name, help_text in stages.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common_options(p)
        p.add_argument("--run-id", help="id recorded with this run's outputs (default: a new one)")
        if name == "run":
            p.add_argument("--from", dest="start", metavar="STAGE",
                           help=f"start at this stage and run the rest ({', '.join(PIPELINE_ORDER)})")
            p.add_argument("--only", metavar="STAGE,STAGE",
                           help="run only these stages, comma-separated, in the pipeline's order")

    p = sub.add_parser("config", help=QUESTIONS["config"], description=QUESTIONS["config"])
    config_sub = p.add_subparsers(dest="action", metavar="<action>", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML (secrets masked)",
                                 description="print the resolved config (profile + --set) as YAML, secrets masked")
    _common_options(show)

    p = sub.add_parser("tables", help=QUESTIONS["tables"], description=QUESTIONS["tables"])
    _common_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    p = sub.add_parser("recommend", help=QUESTIONS["recommend"], description=QUESTIONS["recommend"])
    p.add_argument("user_id", metavar="USER_ID", help="the user's id as gold/recommendations holds it")
    p.add_argument("--k", type=int, metavar="N", help="show the first N (default: all the user has)")
    _common_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the list")
    return parser


def _emit(summary: dict) -> None:
    """One JSON object on one line of stdout (compact: no spaces after separators)."""
    sys.stdout.flush()
    print(json.dumps(summary, default=str, separators=(",", ":")), flush=True)


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
    level = log_level(args)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # basicConfig leaves a logging set up before alone (a notebook, a test, main() called twice):
    # the package's logger takes the level for this command, and gives it back after.
    previous = log.level
    log.setLevel(level)
    try:
        if args.stage in QUESTIONS:
            return _answer(args)
        return _run_stages(args)
    finally:
        log.setLevel(previous)


LOG_LEVEL_ENV = "RECSYS_LOG_LEVEL"


def log_level(args: argparse.Namespace) -> int:
    """``-q``: WARNING (no progress either); ``-v``: DEBUG; neither: ``$RECSYS_LOG_LEVEL``
    (a level name, e.g. WARNING for a job's log) or INFO."""
    if getattr(args, "quiet", False):
        return logging.WARNING
    if getattr(args, "verbose", False):
        return logging.DEBUG
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().upper()
    level = logging.getLevelName(name) if name else logging.INFO
    return level if isinstance(level, int) else logging.INFO


# ---- stage commands: the last stdout line is JSON ------------------------------------------
def _run_stages(args: argparse.Namespace) -> int:
    stages = PIPELINE_ORDER
    try:
        cfg = load_config(args.config, args.overrides)
        if args.stage == "run":
            only = None if args.only is None else [n for n in args.only.split(",") if n.strip()]
            stages = pipeline.select_stages(args.start, only)
    except (ConfigError, pipeline.StageSelectionError) as exc:
        print(f"recsys-spark {args.stage}: {exc}", file=sys.stderr)
        _emit({"stage": args.stage, "status": "failed", "error": str(exc)})
        return _failed(2)
    done: list[str] = []

    def stage_ended(result: dict) -> None:
        done.append(result["stage"])
        _emit({**result, "status": "ok"})

    def failure(error: str) -> dict:
        failed = {"stage": args.stage, "status": "failed", "error": error}
        if args.stage == "run" and len(done) < len(stages):
            failed["failed_stage"] = stages[len(done)]
        return failed

    try:
        from recsys_spark.core.session import get_spark

        spark = get_spark(cfg)
        databricks.prepare_catalog(spark, cfg)
        ctx = make_context(spark, cfg, args.run_id)
        with progress.active(progress.Progress.from_config(cfg.progress), spark):
            if args.stage == "run":
                summary = pipeline.run_all(ctx, stages, on_stage=stage_ended)
            else:
                summary = pipeline.run_stage(ctx, args.stage)
    except (StageUnavailable, FileNotFoundError, ValueError, ConfigError) as exc:
        print(f"recsys-spark {args.stage}: {exc}", file=sys.stderr)
        _emit(failure(str(exc)))
        return _failed(1)
    except Exception as exc:  # noqa: BLE001 - the JSON line must come out whatever failed
        log.exception("stage %s failed", args.stage)
        _emit(failure(f"{type(exc).__name__}: {exc}"))
        return _failed(1)
    summary.setdefault("status", "ok")
    if on_databricks():
        _publish_task_values(spark, summary)
    _emit(summary)
    return 0


# ---- questions: stdout is for a person ------------------------------------------------------
class _Unanswerable(Exception):
    """A question with no answer (an unknown user): its message goes to stderr, exit 1."""


def _answer(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"recsys-spark {args.stage}: {exc}", file=sys.stderr)
        return _failed(2)
    if args.stage == "config":
        print(config_yaml(cfg), end="", flush=True)
        return 0
    try:
        from recsys_spark.core.session import get_spark

        ctx = make_context(get_spark(cfg), cfg, "cli")
        if args.stage == "tables":
            rows = table_status(ctx.lake)
            text = json.dumps({"tables": rows}, default=str) if args.json else format_tables(rows)
        else:
            answer = user_recommendations(ctx.lake, args.user_id, args.k, pseudonym_key(cfg))
            text = json.dumps(answer, default=str) if args.json else format_recommendations(answer)
    except (_Unanswerable, FileNotFoundError, ValueError) as exc:
        print(f"recsys-spark {args.stage}: {exc}", file=sys.stderr)
        return _failed(1)
    except Exception as exc:  # noqa: BLE001 - one line saying what failed, and a non-zero exit
        log.exception("%s failed", args.stage)
        print(f"recsys-spark {args.stage}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _failed(1)
    print(text, flush=True)
    return 0


def config_yaml(cfg) -> str:
    """The resolved config as YAML: secret-looking keys masked, and the pseudonymisation key's
    value (which lives in the environment) in no value (masked before dumping, so the YAML
    stays valid: a bare ``***`` would read as an alias)."""
    import yaml

    secrets = secret_values(cfg)

    def mask(value):
        if isinstance(value, dict):
            return {k: mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mask(v) for v in value]
        return scrub(value, secrets) if isinstance(value, str) else value

    text = yaml.safe_dump(mask(redact(cfg.to_dict())), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return scrub(text, secrets)  # and in a key, should one hold it


TEXT_LIMIT = 80  # characters of a title or reason shown in a terminal table


def _utc(ts) -> Optional[str]:
    if ts is None:
        return None
    # PySpark hands back naive local datetimes; made aware, they print the same instant in UTC.
    aware = ts if ts.tzinfo is not None else ts.astimezone()
    return aware.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def table_status(lake) -> list[dict]:
    """One row per table of ``schemas.TABLES``: name, location, version, rows, and the last
    commit's time and operation; a table not written yet has ``missing: true`` and no numbers."""
    rows = []
    for table in schemas.TABLES:
        row = {"table": str(table), "location": lake.location(table)}
        if not lake.exists(table):
            rows.append({**row, "missing": True, "version": None, "rows": None, "last_write": None, "operation": None})
            continue
        last = lake.history(table, 1)[0]
        rows.append({
            **row,
            "missing": False,
            "version": last.version,
            "rows": lake.read(table, last.version).count(),
            "last_write": _utc(last.timestamp),
            "operation": last.operation,
        })
    return rows


def _columns(header: Sequence[str], rows: list[Sequence[str]], right: Sequence[int] = ()) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def format_tables(rows: list[dict]) -> str:
    body = [
        [r["table"], "missing", "", "", ""] if r["missing"]
        else [r["table"], str(r["version"]), str(r["rows"]), r["last_write"] or "", r["operation"] or ""]
        for r in rows
    ]
    written = sum(not r["missing"] for r in rows)
    # <warehouse>/<layer>/<name> in path mode, <catalog>.<schema>.<layer>_<name> in catalog mode
    first = rows[0]["location"] if rows else ""
    where = first.rsplit("/", 2)[0] if "/" in first else first.rsplit(".", 1)[0]
    return (
        _columns(["table", "version", "rows", "last write", "operation"], body, right=(1, 2))
        + f"\n{written} of {len(rows)} tables written, under {where}"
    )


def pseudonym_key(cfg):
    """The HMAC key when ``privacy.pseudonymize_users`` is on (its variable unset is an error), else None."""
    from recsys_spark.stages.ingest import privacy_key

    return privacy_key(cfg.privacy)


def user_recommendations(lake, user_id: str, k: Optional[int] = None, key: Optional[bytes] = None) -> dict:
    """``user_id``'s rows of gold/recommendations (rank order, the first ``k``), each with its
    item's title from silver/items (None when the catalog does not have it). With ``key`` (users
    pseudonymised at ingestion) the user is looked up by its pseudonym, so a person types the id
    they know; a pseudonym typed as it is in the table is found too."""
    from pyspark.sql import functions as F

    if k is not None and k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    recs_table = schemas.RECOMMENDATIONS_TABLE
    version = lake.version(recs_table)
    if version is None:
        raise FileNotFoundError(
            f"table {recs_table} not found at {lake.location(recs_table)}: run the score stage (or run) first"
        )
    stored = user_id
    if key is not None:
        from recsys_spark.stages.ingest import pseudonym

        stored = pseudonym(key, user_id)
    recs = lake.read(recs_table, version).where(F.col(schemas.USER_ID).isin(stored, user_id))
    if lake.exists(schemas.SILVER_ITEMS_TABLE):
        titles = lake.read(schemas.SILVER_ITEMS_TABLE).select(schemas.ITEM_ID, schemas.TITLE)
        recs = recs.join(titles, schemas.ITEM_ID, "left")
    else:
        recs = recs.withColumn(schemas.TITLE, F.lit(None).cast("string"))
    recs = recs.orderBy(schemas.RANK)
    if k is not None:
        recs = recs.limit(k)
    rows = recs.select(
        schemas.RANK, schemas.ITEM_ID, schemas.TITLE, schemas.SCORE, schemas.REASON,
        schemas.MODEL_VERSION, schemas.RUN_ID, schemas.GENERATED_AT,
    ).collect()
    if not rows:
        raise _Unanswerable(
            f"user {user_id!r} has no recommendations in {recs_table} (version {version}): an unknown user, "
            "or one the last score run did not cover (with privacy.pseudonymize_users the table holds pseudonyms)"
        )
    first = rows[0]
    return {
        "user_id": user_id,
        **({"pseudonym": stored} if key is not None else {}),
        "table": str(recs_table),
        "version": version,
        "model_version": first[schemas.MODEL_VERSION],
        "run_id": first[schemas.RUN_ID],
        "generated_at": _utc(first[schemas.GENERATED_AT]),
        "recommendations": [
            {
                "rank": r[schemas.RANK],
                "item_id": r[schemas.ITEM_ID],
                "title": r[schemas.TITLE],
                "score": None if r[schemas.SCORE] is None else round(float(r[schemas.SCORE]), 4),
                "reason": r[schemas.REASON],
            }
            for r in rows
        ],
    }


def format_recommendations(answer: dict) -> str:
    """The answer as a table for a terminal: titles and reasons are catalog text, shown through
    ``inert_text`` (no control or bidi character reaches the terminal; long ones are cut)."""
    recs = answer["recommendations"]
    head = (
        f"recommendations for user {inert_text(answer['user_id'])} ({answer['table']} v{answer['version']}, "
        f"model {inert_text(answer['model_version'])}, run {inert_text(answer['run_id'])}, generated {answer['generated_at']}):"
    )
    body = [
        [str(r["rank"]), "" if r["score"] is None else f"{r['score']:.4f}", inert_text(r["item_id"], TEXT_LIMIT),
         inert_text(r["title"], TEXT_LIMIT) or "(no title)", inert_text(r["reason"], TEXT_LIMIT)]
        for r in recs
    ]
    return head + "\n" + _columns(["rank", "score", "item", "title", "reason"], body, right=(0, 1)) + f"\n{len(recs)} items"


if __name__ == "__main__":
    sys.exit(main())
