"""Ingest throughput on generated event logs: rows/s per size, and whether cost per event grows.

For each size: ``generate`` writes the JSON Lines (timed on its own), then ``ingest`` reads them
into a fresh warehouse (bronze append, validation, quarantine, dedupe, MERGE into silver). Both
run in one Spark session, one size after the other, so the figures compare side by side.

    python bench/bench_ingest.py --events 1000000 10000000

Prints a Markdown table (the BENCHMARKS.md "Ingestion" rows) and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys_spark import pipeline  # noqa: E402
from recsys_spark.core.config import load_config  # noqa: E402
from recsys_spark.core.session import get_spark  # noqa: E402

log = logging.getLogger("bench_ingest")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--events-per-user", type=int, default=50, help="users = events / this")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--topics", type=int, default=20)
    parser.add_argument("--bad-fraction", type=float, default=0.01)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--shuffle-partitions", type=int, default=16)
    parser.add_argument("--workdir", default="/tmp/recsys-bench-ingest")
    parser.add_argument("--keep", action="store_true", help="keep generated files and warehouses")
    return parser.parse_args()


def measure(args: argparse.Namespace, events: int) -> dict:
    """Generate ``events`` lines, ingest them; returns timings, rates and the count checks."""
    root = Path(args.workdir) / str(events)
    shutil.rmtree(root, ignore_errors=True)
    overrides = [
        f"warehouse={root / 'warehouse'}",
        f"spark.master={args.master}",
        f"spark.driver_memory={args.driver_memory}",
        f"spark.shuffle_partitions={args.shuffle_partitions}",
        f"generate.events={events}",
        f"generate.users={max(1, events // args.events_per_user)}",
        f"generate.items={args.items}",
        f"generate.topics={args.topics}",
        f"generate.bad_fraction={args.bad_fraction}",
        f"generate.output={root / 'input'}",
    ]
    cfg = load_config("local", overrides)
    ctx = pipeline.make_context(get_spark(cfg), cfg)
    generated = pipeline.run_stage(ctx, "generate")

    ingest_cfg = load_config(
        "local",
        overrides
        + [
            "input.format=events",
            f"input.events={generated['events_path']}",
            f"input.items={generated['items_path']}",
        ],
    )
    ingested = pipeline.run_stage(pipeline.make_context(ctx.spark, ingest_cfg), "ingest")
    input_bytes = sum(p.stat().st_size for p in (root / "input" / "events").glob("*.jsonl"))
    result = {
        "events": events,
        "users": generated["users"],
        "generate_partitions": generated["partitions"],
        "input_mib": round(input_bytes / 2**20, 1),
        "generate_seconds": generated["seconds"],
        "generate_rows_per_second": round(events / generated["seconds"]),
        "ingest_seconds": ingested["seconds"],
        "ingest_rows_per_second": round(ingested["rows_in"] / ingested["seconds"]),
        "ingest_us_per_event": round(1e6 * ingested["seconds"] / ingested["rows_in"], 2),
        "rows_in": ingested["rows_in"],
        "rows_good": ingested["rows_good"],
        "rows_quarantined": ingested["rows_quarantined"],
        "rows_duplicate": ingested["rows_duplicate"],
        # What the generator planted, against what ingest found.
        "counts_match": (
            ingested["rows_in"] == generated["event_lines"]
            and ingested["rows_good"] == generated["events_good"]
            and ingested["rows_quarantined"] == generated["events_malformed"]
            and ingested["rows_duplicate"] == generated["events_duplicate"]
        ),
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    results = []
    for events in sorted(args.events):
        result = measure(args, events)
        log.info("%s", json.dumps(result))
        results.append(result)
    smallest, largest = results[0], results[-1]
    growth = round(largest["ingest_us_per_event"] / smallest["ingest_us_per_event"], 3)
    print("| events | users | input MiB | generate s | generate rows/s | ingest s | ingest rows/s | µs/event | counts match |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for r in results:
        print(
            f"| {r['events']:,} | {r['users']:,} | {r['input_mib']:,} | {r['generate_seconds']} | "
            f"{r['generate_rows_per_second']:,} | {r['ingest_seconds']} | {r['ingest_rows_per_second']:,} | "
            f"{r['ingest_us_per_event']} | {'yes' if r['counts_match'] else 'NO'} |"
        )
    print(
        json.dumps(
            {
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": platform.platform(),
                "cost_per_event_ratio_largest_to_smallest": growth,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
