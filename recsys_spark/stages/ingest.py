"""Ingestion: raw logs and catalog -> bronze/events, silver/events, silver/quarantine, silver/items.

Reads ``input.events`` / ``input.items`` (generic JSON Lines / CSV / Parquet logs, or any MovieLens
release, auto-detected), appends what was received to ``bronze/events``, types and validates every
row, and MERGEs the good ones into ``silver/events`` on the event key (``event_id`` when given, else a
hash of user, item, event type and timestamp). Every bad row lands in ``silver/quarantine`` with a
reason. Files already ingested (same path, size and modification time) are skipped, so a rerun adds
nothing and new files in the input folder are picked up on the next run.

Invariant reported in the summary: ``rows_in == rows_good + rows_quarantined + rows_duplicate``.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from datetime import datetime, timezone
from typing import Callable, Optional

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_spark.io import sources
from recsys_spark.core import progress
from recsys_spark.core.config import Config, IngestConfig, PrivacyConfig
from recsys_spark.core.context import StageContext
from recsys_spark.core.schemas import (
    BRONZE_EVENTS_TABLE,
    CATEGORY,
    CONTENT_HASH,
    DESCRIPTION,
    EVENT_ID,
    EVENT_TYPE,
    GENRES,
    INGESTED_AT,
    INGESTED_FILES_TABLE,
    ITEM_ID,
    KIND,
    QUARANTINE_TABLE,
    RATING_EVENT,
    RAW,
    RAW_EVENT_FIELDS,
    REASON,
    SESSION_ID,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
    SOURCE,
    TAGS,
    TIMESTAMP,
    TITLE,
    TS,
    USER_ID,
    VALUE,
)

log = logging.getLogger(__name__)

PARSE_ERROR = sources.PARSE_ERROR


class PrivacyKeyError(ValueError):
    """Pseudonymisation is on but its key is missing from the environment."""


# ---- pure transforms ----------------------------------------------------------------
def _blank(col: Column) -> Column:
    return col.isNull() | (F.trim(col) == "")


def parse_event_time(raw: Column) -> Column:
    """Epoch seconds (or milliseconds when >= 1e11), or an ISO-8601 / 'yyyy-MM-dd HH:mm:ss' string,
    -> TimestampType; null when unparsable."""
    text = F.trim(raw)
    numeric = text.rlike(r"^-?\d+(\.\d+)?$")
    number = text.try_cast("double")
    seconds = F.when(F.abs(number) >= 1e11, number / 1000.0).otherwise(number)
    from_number = F.when(F.abs(seconds) < 1e11, F.timestamp_micros((seconds * 1e6).cast("long")))
    return F.when(numeric, from_number).otherwise(text.try_cast("timestamp"))


# An id is printable text: no control characters, no U+FFFD (invalid UTF-8 that was replaced),
# and not a JSON object or array that a parser turned into text.
_BAD_ID = r"[\p{Cntrl}\x{FFFD}]|^\s*[\[{]"


def _bad_id(col: Column) -> Column:
    return col.rlike(_BAD_ID)


def validate_events(raw_events: DataFrame, cfg: IngestConfig, now: datetime) -> DataFrame:
    """Add ``reason`` (null for a good row) and the typed columns ``ts`` and ``value_num``.

    Reads RAW_EVENT_FIELDS (strings) and ``_parse_error``; the first failing check is the reason."""
    ts = parse_event_time(F.col(TIMESTAMP))
    value = F.trim(F.col(VALUE)).try_cast("double")
    too_long = None
    for name in RAW_EVENT_FIELDS:
        cond = F.length(F.col(name)) > cfg.max_field_chars
        too_long = cond if too_long is None else (too_long | cond)
    max_ts = F.lit(now).cast("timestamp") + F.make_interval(secs=F.lit(cfg.max_future_seconds))
    min_ts = F.lit(cfg.min_timestamp).cast("timestamp")
    etype = F.lower(F.trim(F.col(EVENT_TYPE)))
    reason = (
        F.when(F.col(PARSE_ERROR).isNotNull(), F.col(PARSE_ERROR))
        .when(_blank(F.col(USER_ID)), F.lit("missing_user_id"))
        .when(_blank(F.col(ITEM_ID)), F.lit("missing_item_id"))
        .when(_bad_id(F.col(USER_ID)), F.lit("invalid_user_id"))
        .when(_bad_id(F.col(ITEM_ID)), F.lit("invalid_item_id"))
        .when(F.coalesce(too_long, F.lit(False)), F.lit(f"field_too_long: over {cfg.max_field_chars} characters"))
        .when(_blank(F.col(EVENT_TYPE)), F.lit("missing_event_type"))
        .when(~etype.isin(*cfg.event_types), F.lit("unknown_event_type"))
        .when(_blank(F.col(TIMESTAMP)), F.lit("missing_timestamp"))
        .when(ts.isNull(), F.lit("unparsable_timestamp"))
        .when(ts > max_ts, F.lit("future_timestamp"))
        .when(ts < min_ts, F.lit("past_timestamp"))
        .when(~_blank(F.col(VALUE)) & (value.isNull() | F.isnan(value)), F.lit("invalid_value"))
        .when((etype == RATING_EVENT) & value.isNull(), F.lit("missing_rating_value"))
    )
    return raw_events.withColumn(REASON, reason).withColumn(TS, ts).withColumn("value_num", value)


def event_key(user: Column, item: Column, etype: Column, ts: Column) -> Column:
    """The dedupe key when a log carries no event_id: a hash of user, item, type and time."""
    return F.sha2(
        F.concat_ws("\u001f", user, item, etype, F.unix_micros(ts).cast("string")), 256
    ).substr(1, 32)


def type_events(validated: DataFrame) -> DataFrame:
    """Good rows (``reason`` null) -> the silver/events columns."""
    good = validated.where(F.col(REASON).isNull())
    user = F.trim(F.col(USER_ID))
    item = F.trim(F.col(ITEM_ID))
    etype = F.lower(F.trim(F.col(EVENT_TYPE)))
    given_id = F.trim(F.col(EVENT_ID))
    return good.select(
        F.when(_blank(F.col(EVENT_ID)), event_key(user, item, etype, F.col(TS))).otherwise(given_id).alias(EVENT_ID),
        user.alias(USER_ID),
        item.alias(ITEM_ID),
        etype.alias(EVENT_TYPE),
        F.col(TS),
        F.col("value_num").alias(VALUE),
        F.when(~_blank(F.col(SESSION_ID)), F.trim(F.col(SESSION_ID))).alias(SESSION_ID),
        F.col(SOURCE),
        F.col(INGESTED_AT),
    )


def quarantine_rows(validated: DataFrame, kind: str) -> DataFrame:
    """Bad rows -> silver/quarantine columns (kind, raw, reason, _source, _ingested_at)."""
    return validated.where(F.col(REASON).isNotNull()).select(
        F.lit(kind).alias(KIND), F.col(RAW), F.col(REASON), F.col(SOURCE), F.col(INGESTED_AT)
    )


def content_hash(cols: list[Column]) -> Column:
    return F.sha2(F.concat_ws("\u001f", *[F.coalesce(c, F.lit("")) for c in cols]), 256)


def validate_items(raw_items: DataFrame, cfg: IngestConfig) -> DataFrame:
    """Add ``reason`` to raw catalog rows: parse errors and missing or over-long ids."""
    reason = (
        F.when(F.col(PARSE_ERROR).isNotNull(), F.col(PARSE_ERROR))
        .when(_blank(F.col(ITEM_ID)), F.lit("missing_item_id"))
        .when(F.length(F.col(ITEM_ID)) > 512, F.lit("field_too_long: item_id"))
    )
    return raw_items.withColumn(REASON, reason)


def type_items(validated: DataFrame) -> DataFrame:
    """Good catalog rows -> silver/items columns, one row per item (the last file wins)."""
    good = validated.where(F.col(REASON).isNull())
    text_cols = [F.col(TITLE), F.col(DESCRIPTION), F.col(CATEGORY), F.concat_ws("|", GENRES), F.concat_ws("|", TAGS)]
    typed = good.select(
        F.trim(ITEM_ID).alias(ITEM_ID),
        F.trim(TITLE).alias(TITLE),
        F.trim(DESCRIPTION).alias(DESCRIPTION),
        F.trim(CATEGORY).alias(CATEGORY),
        F.col(GENRES),
        F.col(TAGS),
        content_hash(text_cols).alias(CONTENT_HASH),
        F.col(SOURCE),
        F.col(INGESTED_AT),
    )
    return typed


def pseudonym(key: bytes, user_id: str) -> str:
    """The pseudonym ingestion gives ``user_id`` under ``key`` (what ``pseudonymizer`` computes)."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def pseudonymizer(key: bytes):
    """A pandas UDF mapping a user id to HMAC-SHA256(key, id), hex, first 32 characters.

    The key travels inside the UDF's pickled closure, never as a literal in a query plan or a log."""

    @F.pandas_udf("string")
    def pseudonymize(ids: pd.Series) -> pd.Series:
        return ids.map(lambda v: None if v is None else pseudonym(key, v))

    return pseudonymize


def privacy_key(cfg: PrivacyConfig) -> Optional[bytes]:
    if not cfg.pseudonymize_users:
        return None
    key = os.environ.get(cfg.key_env, "")
    if not key:
        raise PrivacyKeyError(
            f"privacy.pseudonymize_users is true but the environment variable {cfg.key_env} "
            f"holding the HMAC key is empty or unset"
        )
    return key.encode("utf-8")


def apply_pseudonyms(raw_events: DataFrame, key: bytes) -> DataFrame:
    """Replace user ids by their keyed hash, in the field and inside the raw record."""
    pseudo = pseudonymizer(key)
    with_pseudo = raw_events.withColumn("_pseudo", pseudo(F.trim(F.col(USER_ID))))
    raw = F.when(
        ~_blank(F.col(USER_ID)), F.replace(F.col(RAW), F.trim(F.col(USER_ID)), F.col("_pseudo"))
    ).otherwise(F.col(RAW))
    return with_pseudo.withColumn(RAW, raw).withColumn(USER_ID, F.col("_pseudo")).drop("_pseudo")


# ---- the stage ----------------------------------------------------------------------
def _new_files(ctx: StageContext, files: list[sources.InputFile], kind: str) -> list[sources.InputFile]:
    """Files not ingested before (path, size and modification time all seen) for this kind."""
    if not ctx.cfg.ingest.incremental or not ctx.lake.exists(INGESTED_FILES_TABLE):
        return files
    seen = {
        (r["path"], r["size"], r["modified"])
        for r in ctx.lake.read(INGESTED_FILES_TABLE).where(F.col(KIND) == kind).select("path", "size", "modified").collect()
    }
    return [f for f in files if (f.path, f.size, f.modified) not in seen]


def _record_files(ctx: StageContext, files_by_kind: dict[str, list[sources.InputFile]], now: datetime) -> None:
    """One MERGE (one commit) recording every file ingested in this run, of every kind."""
    rows = [(f.path, f.size, f.modified, kind, now) for kind, files in files_by_kind.items() for f in files]
    if not rows:
        return
    df = ctx.spark.createDataFrame(rows, INGESTED_FILES_TABLE.schema)
    ctx.lake.merge(df, INGESTED_FILES_TABLE, ["path", KIND])


def _resolve_format(cfg: Config, files: list[sources.InputFile]) -> tuple[str, Optional[sources.MovieLensLayout]]:
    layout = sources.detect_movielens(files)
    fmt = cfg.input.format
    if fmt == "movielens" and layout is None:
        raise sources.InputError(
            f"input path {cfg.input.events}: input.format is movielens but no ratings.csv, ratings.dat "
            f"or u.data was found there"
        )
    if fmt == "auto":
        fmt = "movielens" if layout is not None else "events"
    return fmt, layout if fmt == "movielens" else None


def _sources_condition(sources_seen: list[str], kind: Optional[str] = None) -> str:
    quoted = ", ".join("'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'" for s in sources_seen)
    condition = f"{SOURCE} IN ({quoted})"
    return f"{KIND} = '{kind}' AND {condition}" if kind else condition


def ingest_events(ctx: StageContext, raw_events: DataFrame, now: datetime) -> dict:
    """Bronze write, validation, quarantine, dedupe and MERGE into silver/events; returns counts.

    Bronze and quarantine rows of this batch replace any earlier rows of the same source files
    (``replaceWhere``), so a rerun after a failure part-way through adds nothing twice."""
    key = privacy_key(ctx.cfg.privacy)
    stamped = raw_events.withColumn(INGESTED_AT, F.lit(now).cast("timestamp"))
    if key is not None:
        stamped = apply_pseudonyms(stamped, key)
    batch = stamped.select(RAW, *RAW_EVENT_FIELDS, PARSE_ERROR, SOURCE, INGESTED_AT).persist()
    try:
        return _ingest_event_batch(ctx, batch, now)
    finally:
        batch.unpersist()


def _ingest_event_batch(ctx: StageContext, batch: DataFrame, now: datetime) -> dict:
    lake = ctx.lake
    sources_seen = [r[0] for r in batch.select(SOURCE).distinct().collect()]  # one per file
    if not sources_seen:
        return {"rows_in": 0, "rows_good": 0, "rows_quarantined": 0, "rows_duplicate": 0, "quarantine_reasons": {}}
    lake.replace_where(batch, BRONZE_EVENTS_TABLE, _sources_condition(sources_seen))

    validated = validate_events(batch, ctx.cfg.ingest, now).persist()
    try:
        # One job: rows per reason's code, good rows under a null reason.
        by_reason = {
            r[REASON]: int(r["count"])
            for r in validated.groupBy(F.regexp_extract(F.col(REASON), r"^([a-z_]+)", 1).alias(REASON)).count().collect()
        }
        reasons = {reason: n for reason, n in by_reason.items() if reason is not None}
        counts = {"rows_in": sum(by_reason.values()), "rows_quarantined": sum(reasons.values())}
        quarantine = quarantine_rows(validated, "events")
        lake.replace_where(quarantine, QUARANTINE_TABLE, _sources_condition(sources_seen, "events"))

        typed = type_events(validated)
        merged = _merge_insert_only(lake, typed)
        n_valid = counts["rows_in"] - counts["rows_quarantined"]
        inserted = merged.metric("numTargetRowsInserted")
    finally:
        validated.unpersist()
    rows_in = int(counts["rows_in"])
    quarantined = int(counts["rows_quarantined"])
    return {
        "rows_in": rows_in,
        "rows_good": int(inserted),
        "rows_quarantined": quarantined,
        "rows_duplicate": int(n_valid - inserted),
        "quarantine_reasons": dict(sorted(reasons.items())),
    }


def _merge_insert_only(lake, typed: DataFrame):
    """MERGE the batch's events into silver/events: one row per event key within the batch, and a
    key silver already has is a counted duplicate, never updated. Returns the WriteResult."""
    return lake.merge(typed.dropDuplicates([EVENT_ID]), SILVER_EVENTS_TABLE, [EVENT_ID], update=False)


def ingest_items(ctx: StageContext, raw_items: DataFrame, now: datetime) -> dict:
    """Validate, quarantine and upsert the catalog into silver/items (update only changed content)."""
    lake = ctx.lake
    stamped = raw_items.withColumn(INGESTED_AT, F.lit(now).cast("timestamp"))
    validated = validate_items(stamped, ctx.cfg.ingest).persist()
    try:
        # One job: rows and quarantined rows per source file.
        per_source = validated.groupBy(SOURCE).agg(F.count(F.lit(1)).alias("n"), F.count(F.col(REASON)).alias("bad")).collect()
        counts = {"n": sum(r["n"] for r in per_source), "bad": sum(r["bad"] for r in per_source)}
        sources_seen = [r[SOURCE] for r in per_source]
        if sources_seen:
            lake.replace_where(
                quarantine_rows(validated, "items"), QUARANTINE_TABLE, _sources_condition(sources_seen, "items")
            )
        typed = type_items(validated)
        unique = typed.dropDuplicates([ITEM_ID])
        n_unique = unique.count()
        # Only items whose content changed are updated; a MERGE that changes nothing commits nothing.
        merged = lake.merge(
            unique, SILVER_ITEMS_TABLE, [ITEM_ID], update_condition=f"t.{CONTENT_HASH} <> s.{CONTENT_HASH}"
        )
    finally:
        validated.unpersist()
    good = int(counts["n"] - counts["bad"])
    inserted, updated = merged.metric("numTargetRowsInserted"), merged.metric("numTargetRowsUpdated")
    return {
        "items_in": int(counts["n"]),
        "items_quarantined": int(counts["bad"]),
        "items_duplicate": good - n_unique,
        "items_inserted": inserted,
        "items_updated": updated,
        "items_unchanged": n_unique - inserted - updated,
    }


def _ingest_new(
    ctx: StageContext,
    layout: Optional[sources.MovieLensLayout],
    new_files: list[sources.InputFile],
    files: list[sources.InputFile],
    readers: tuple[Callable, Callable],
    ingest: Callable[[StageContext, DataFrame, datetime], dict],
    now: datetime,
    nothing: dict,
) -> dict:
    """Ingest one kind of input (events or items) when it has ``new_files``: read with the
    MovieLens reader of ``readers`` for a ``layout``, else with the generic reader over ``files``.
    Returns ``ingest``'s counts, or ``nothing`` when there is no new file or nothing to read."""
    if not new_files:
        return nothing
    read_movielens, read_files = readers
    raw = read_movielens(ctx.spark, layout) if layout is not None else read_files(ctx.spark, files)
    return nothing if raw is None else ingest(ctx, raw, now)


def run(ctx: StageContext) -> dict:
    """The ingest stage. Summary: rows_in, rows_good, rows_quarantined, rows_duplicate,
    quarantine_reasons, files_new, items_* counts and ``tables`` (the versions of the tables it
    writes, as it leaves them)."""
    cfg = ctx.cfg
    if not cfg.input.events:
        raise sources.InputError("config key 'input.events': no input path given")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    privacy_key(cfg.privacy)  # fail before any work when the key is missing
    progress.describe(ctx.spark, "listing input files")
    event_files = sources.list_files(ctx.spark, cfg.input.events)
    if not event_files:
        raise sources.InputError(f"input path {cfg.input.events}: no input files found (empty folder)")
    fmt, layout = _resolve_format(cfg, event_files)
    summary: dict = {"format": fmt}

    if layout is not None:
        events_in = [layout.ratings]
        catalog_in = [f for f in (layout.movies, layout.tags, layout.genres) if f is not None]
    else:
        events_in = event_files
        catalog_in = sources.list_files(ctx.spark, cfg.input.items) if cfg.input.items else []
        for f in events_in + catalog_in:
            sources.event_file_format(f.path)  # an unknown file fails before anything is written

    new_events = _new_files(ctx, events_in, "events")
    new_catalog = _new_files(ctx, catalog_in, "items")
    summary["files_new"] = len(new_events) + len(new_catalog)
    summary["files_skipped"] = len(events_in) + len(catalog_in) - summary["files_new"]

    progress.describe(ctx.spark, f"events: {len(new_events)} new file(s) -> bronze/silver events, quarantine")
    no_events = {"rows_in": 0, "rows_good": 0, "rows_quarantined": 0, "rows_duplicate": 0, "quarantine_reasons": {}}
    event_readers = (sources.read_movielens_events, sources.read_event_files)
    summary.update(_ingest_new(ctx, layout, new_events, new_events, event_readers, ingest_events, now, no_events))
    # The whole catalog is re-read when any of its files changed (tags span files); the
    # MERGE updates only items whose content_hash changed.
    item_readers = (sources.read_movielens_items, sources.read_item_files)
    progress.describe(ctx.spark, f"catalog: {len(new_catalog)} new file(s) -> silver/items")
    no_items = {"items_in": 0, "items_quarantined": 0}
    summary.update(_ingest_new(ctx, layout, new_catalog, catalog_in, item_readers, ingest_items, now, no_items))

    if not ctx.lake.exists(SILVER_ITEMS_TABLE):
        # Logs without a catalog: items are known by id only, so later stages still have a table.
        ctx.lake.replace(ctx.spark.createDataFrame([], SILVER_ITEMS_TABLE.schema), SILVER_ITEMS_TABLE)
    progress.describe(ctx.spark, "recording the ingested files")
    _record_files(ctx, {"events": new_events, "items": new_catalog}, now)

    outputs = (BRONZE_EVENTS_TABLE, SILVER_EVENTS_TABLE, QUARANTINE_TABLE, SILVER_ITEMS_TABLE, INGESTED_FILES_TABLE)
    summary["tables"] = {str(t): v for t in outputs if (v := ctx.lake.version(t)) is not None}
    log.info(
        "ingest: %d rows in, %d good, %d quarantined, %d duplicate",
        summary["rows_in"], summary["rows_good"], summary["rows_quarantined"], summary["rows_duplicate"],
    )
    return summary
