"""Stage maintain: every table of the warehouse compacted (Delta OPTIMIZE) and vacuumed.

Incremental runs add a few small files to a table with every commit (an ingest MERGE, a score
MERGE); readers then open more and more files for the same rows. Writes already compact a table
that reaches ``tables.compact_min_files`` files (``Lakehouse``); this stage, scheduled apart
(weekly, say), compacts every table that holds more than one file and then VACUUMs it: the data
files that no version of the last ``tables.vacuum_retain_hours`` (168 by default, Delta's own
floor) reads are deleted, so storage stops growing while time travel and rollback still reach
back that far.

The rows of every table are unchanged: OPTIMIZE rewrites files, not data, and its commit is one
more version in the history. Tables that do not exist yet are skipped (and counted).
"""
from __future__ import annotations

import logging

from recsys_spark.core.context import StageContext
from recsys_spark.core.schemas import TABLES

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict:
    """Compact and vacuum every existing table; return the files before and after, per table."""
    lake = ctx.lake
    hours = ctx.cfg.tables.vacuum_retain_hours
    files: dict = {}
    versions: dict = {}
    missing = []
    for table in TABLES:
        if not lake.exists(table):
            missing.append(str(table))
            continue
        before = lake.file_count(table)
        compacted = lake.compact(table, metadata={"maintain": ctx.run_id}) if before > 1 else None
        after = lake.file_count(table)
        vacuumed = lake.vacuum(table, hours)
        files[str(table)] = {"before": before, "after": after, "vacuumed": vacuumed}
        versions[str(table)] = lake.version(table)
        log.info("maintain %s: %d -> %d files%s, %d old files vacuumed", table, before, after,
                 f" (version {compacted.version})" if compacted is not None and compacted.committed else "", vacuumed)
    return {
        "tables_maintained": len(files),
        "tables_missing": missing,
        "tables_compacted": sum(1 for f in files.values() if f["after"] < f["before"]),
        "files_before": sum(f["before"] for f in files.values()),
        "files_after": sum(f["after"] for f in files.values()),
        "files_vacuumed": sum(f["vacuumed"] for f in files.values()),
        "vacuum_retain_hours": hours,
        "files": files,
        "tables": versions,
    }
