"""Table I/O: where each Delta table lives, the few ways stages write to it, and its history.

Path mode lays tables out as ``<warehouse>/<layer>/<table>``; catalog mode (Databricks / Unity
Catalog) names them ``<catalog>.<schema>.<layer>_<table>``. Every write is one Delta commit:
``replace`` swaps a whole table atomically (readers see the old or the new version, and the old
one stays in the history for time travel), ``replace_where`` swaps the rows matching a condition,
``append`` adds rows, ``merge`` upserts on a key.

Every write first conforms the frame to the table's schema (``TableRef.schema``: columns in
schema order, cast to its types; a missing column is an error naming the table and the column)
and returns a ``WriteResult``: the new version, the commit's operation and its
``operationMetrics``. An optional ``metadata`` dict becomes the commit's ``userMetadata`` (JSON),
readable again through ``history``.

Tables stay healthy as they grow: a write that leaves a table with ``tables.compact_min_files``
data files or more compacts it (``compact``: Delta's OPTIMIZE, its own commit, the rows and the
older versions unchanged), and ``vacuum`` deletes the files no version younger than
``tables.vacuum_retain_hours`` needs (the ``maintain`` stage runs both on every table).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Mapping, Optional, Sequence
from urllib.parse import urlparse

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession

from recsys_spark.core.config import Config
from recsys_spark.core.schemas import TABLES, TableRef, conform

log = logging.getLogger(__name__)

# Delta reads a commit's userMetadata from this session conf (a MERGE has no writer options).
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
# How many tasks Delta's VACUUM lists a table's folders in (Spark's default: 10000).
LISTING_TASKS_CONF = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
# Session confs are session-wide: the operations that set one take turns, so one write's
# metadata never lands on another's commit made from this process.
_SESSION_CONF_LOCK = threading.RLock()
# What Delta says when a path holds no Delta table (nothing there, or files that are not one).
# ``Lakehouse._fast`` could not answer: ask SQL.
_SLOW = object()
_NOT_A_TABLE = ("DELTA_TABLE_ONLY_OPERATION", "DELTA_MISSING_DELTA_TABLE", "PATH_NOT_FOUND", "DELTA_PATH_DOES_NOT_EXIST")


# A Delta log entry named in an error: ``<table location>/_delta_log/<20-digit version>.json`` (or a
# checkpoint of that version).
_LOG_ENTRY = re.compile(r"(?P<table>[^\s'\"\[\]]+?)/_delta_log/(?P<version>\d{20})\.(?P<kind>json|checkpoint[\w.-]*parquet)")


# Delta's optimistic-concurrency conflicts (their error conditions; the same text reaches a classic
# and a Connect session): the commit did not happen, and the operation may be tried again.
_CONFLICT = re.compile(
    r"\b(DELTA_CONCURRENT_[A-Z_]+|DELTA_METADATA_CHANGED|DELTA_PROTOCOL_CHANGED|DELTA_CONCURRENT_TRANSACTION"
    r"|ConcurrentAppendException|ConcurrentDeleteReadException|ConcurrentDeleteDeleteException"
    r"|ConcurrentTransactionException|MetadataChangedException|ProtocolChangedException)\b"
)
_BACKOFF_CAP_S = 30.0
# How far back a write looks for its own commit when other jobs committed after it began.
_RESULT_DEPTH = 50


class ConcurrentWriteConflict(RuntimeError):
    """A write that lost to concurrent writers on every try: ``table``, the ``tries`` made and
    ``other`` (what Delta said about the winning commit)."""

    def __init__(self, message: str, table: TableRef, tries: int, other: str):
        super().__init__(message)
        self.table, self.tries, self.other = table, tries, other


def conflict_of(exc: BaseException) -> Optional[str]:
    """Delta's words about the concurrent commit ``exc`` lost to (its first line naming the
    conflict), or None when ``exc`` is no write conflict."""
    for e in _chain(exc):
        text = str(e)
        if _CONFLICT.search(text):
            lines = [ln.strip() for ln in text.splitlines() if _CONFLICT.search(ln)]
            line = lines[0] if lines else text.strip().splitlines()[0]
            # "...: [DELTA_CONCURRENT_APPEND...] Transaction conflict detected. a concurrent MERGE added ..."
            return line[line.find("[") if "[" in line else 0:][:400]
    return None


def _backoff(base: float, tried: int) -> float:
    """Seconds to wait after the ``tried``-th lost try: doubling from ``base``, capped, jittered."""
    return min(_BACKOFF_CAP_S, base * 2 ** (tried - 1)) * random.uniform(0.5, 1.5)


# Delta's error for CREATE TABLE on a folder that holds files but no commit yet: another job's
# first write of the table in flight (or a folder that is no table at all).
_BEING_CREATED = "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"


class TableDamaged(RuntimeError):
    """A table whose Delta log holds an entry that cannot be read (truncated, overwritten, failing
    its checksum). ``table`` is its ``TableRef`` (None when the location is no table of ours),
    ``entry`` the log file, ``version`` the version it holds."""

    def __init__(self, message: str, table: Optional[TableRef], entry: str, version: int):
        super().__init__(message)
        self.table, self.entry, self.version = table, entry, version


# Every write of this package tags its commit's userMetadata with a fresh id under this key, so
# that the write can find its own commit (and metrics) even when another job committed meanwhile.
WRITE_ID_KEY = "recsys_write_id"


def _split_write_id(raw: Optional[str]) -> "tuple[Optional[str], Optional[str]]":
    """(userMetadata without the write id — None when nothing else is in it —, the write id)."""
    try:
        value = json.loads(raw or "")
    except ValueError:
        return raw, None
    if not isinstance(value, dict) or WRITE_ID_KEY not in value:
        return raw, None
    write_id = value.pop(WRITE_ID_KEY)
    return (json.dumps(value, sort_keys=True) if value else None), write_id


def _int_metrics(raw: Optional[Mapping[str, str]]) -> dict[str, int]:
    """``operationMetrics`` (a map of strings) as ints; values that are not integers are left out."""
    out = {}
    for key, value in (raw or {}).items():
        try:
            out[key] = int(value)
        except (TypeError, ValueError):
            continue
    return out


@dataclass(frozen=True)
class Commit:
    """One entry of a table's Delta history."""

    version: int
    timestamp: datetime
    operation: str
    operationMetrics: dict[str, int] = field(default_factory=dict)
    userMetadata: Optional[str] = None
    # The id this package gave the write that made the commit (None for commits of others).
    write_id: Optional[str] = None

    @property
    def metadata(self) -> Optional[dict]:
        """``userMetadata`` as a dict when it holds a JSON object (as ``metadata=`` writes it), else None."""
        try:
            value = json.loads(self.userMetadata or "")
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class WriteResult:
    """What one write did: the table's version after it, the commit's operation and metrics.

    A MERGE that changes nothing writes no commit: then ``committed`` is False, ``version`` is the
    unchanged current version, ``operation`` is None and ``metrics`` is empty (never the metrics of
    an older commit)."""

    table: TableRef
    version: int
    operation: Optional[str] = None
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def committed(self) -> bool:
        return self.operation is not None

    def metric(self, name: str) -> int:
        """One operation metric (e.g. ``numTargetRowsInserted``, ``numOutputRows``); 0 when absent."""
        return self.metrics.get(name, 0)


def table_versions(*results: WriteResult) -> dict[str, int]:
    """``{"<layer>/<name>": version}`` of the given writes: a stage summary's ``tables``."""
    return {str(r.table): r.version for r in results}


def _user_metadata(raw: Optional[str]) -> dict:
    user, write_id = _split_write_id(raw)
    return {"userMetadata": user, "write_id": write_id}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes, once each."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _same_path(a: str, b: str) -> bool:
    strip = lambda p: os.path.normpath(os.path.abspath(urlparse(p).path if urlparse(p).scheme == "file" else p))
    return strip(a) == strip(b)


class Lakehouse:
    """The Delta tables of one config: ``read``, ``version``, ``exists``, ``history``,
    ``file_count``, the writes ``replace``, ``replace_where``, ``append``, ``merge``,
    ``delete_where``, and the upkeep ``compact`` and ``vacuum``."""

    def __init__(self, spark: SparkSession, cfg: Config):
        self.spark = spark
        self.cfg = cfg
        # When a dict (the tracking of a stage sets one), ``read`` records in it the version of
        # each table it reads: ``{"<layer>/<name>": version}``, the first read of a table winning.
        self.read_versions: Optional[dict[str, Optional[int]]] = None

    # ---- naming ------------------------------------------------------------------
    @property
    def catalog_mode(self) -> bool:
        return self.cfg.tables.mode == "catalog"

    def _schema_name(self) -> str:
        prefix = f"{self.cfg.tables.catalog}." if self.cfg.tables.catalog else ""
        return f"{prefix}{self.cfg.tables.schema}"

    def location(self, table: TableRef) -> str:
        """The path (path mode) or the qualified name (catalog mode) of ``table``."""
        if self.catalog_mode:
            return f"{self._schema_name()}.{table.layer}_{table.name}"
        return f"{self.cfg.warehouse.rstrip('/')}/{table.layer}/{table.name}"

    def raw_path(self, name: str) -> str:
        return f"{self.cfg.warehouse.rstrip('/')}/raw/{name}"

    def checkpoint_path(self, name: str) -> str:
        return f"{self.cfg.warehouse.rstrip('/')}/_checkpoints/{name}"

    def _sql_name(self, table: TableRef) -> str:
        """``table`` as SQL names it: the qualified name, or ``delta.`<path>```."""
        if self.catalog_mode:
            return self.location(table)
        path = self.location(table)
        if not urlparse(path).scheme and not os.path.isabs(path):
            # Delta's SQL takes a path only when it is absolute (the default warehouse is
            # ./warehouse): `delta`.`./warehouse/...` would be looked up as a table name.
            path = os.path.abspath(path)
        return "delta.`" + path.replace("`", "``") + "`"

    # ---- reading -----------------------------------------------------------------
    # Delta's Python ``DeltaTable`` needs Delta's own Spark Connect plugin on a Connect server,
    # which Delta does not publish for this Spark; its SQL (DESCRIBE HISTORY, MERGE INTO,
    # DELETE FROM) runs on classic and Connect sessions alike, so every table operation is SQL.
    def _history_rows(self, table: TableRef, limit: int) -> Optional[list]:
        """The newest ``limit`` rows of DESCRIBE HISTORY; None when the table does not exist."""
        if self.catalog_mode and not self.spark.catalog.tableExists(self.location(table)):
            return None
        try:
            return (
                self.spark.sql(f"DESCRIBE HISTORY {self._sql_name(table)} LIMIT {int(limit)}")
                .select("version", "timestamp", "operation", "operationMetrics", "userMetadata")
                .collect()
            )
        except AnalysisException as exc:
            if not self.catalog_mode and exc.getCondition() in _NOT_A_TABLE:
                return None
            raise

    @property
    def _classic(self) -> bool:
        from recsys_spark.core.session import is_connect  # session imports context, which imports this

        return not is_connect(self.spark)

    # ---- the log itself, on a classic session in path mode ----------------------------
    # Every write asks for the version before it and the commit after it, and a tracked read
    # asks for the version: through SQL each is a query to plan and run (0.2-0.9 s), through
    # Delta's log object a listing and one small file (~20 ms). Both give the same answers (a
    # test compares them); anything the JVM side refuses (another Delta, a Connect session, a
    # catalog table) takes the SQL way.
    def _delta_log(self, table: TableRef):
        """Delta's ``DeltaLog`` of a path-mode table on a classic session, else None."""
        if self.catalog_mode or not self._classic:
            return None
        try:
            return self.spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(
                self.spark._jsparkSession, self.location(table)
            )
        except Exception as exc:  # noqa: BLE001 - any py4j failure: the SQL way answers
            log.debug("no DeltaLog for %s (%s): using SQL", table, exc)
            return None

    def _log_version(self, delta_log) -> Optional[int]:
        """The latest version the log holds (None when no commit: not a Delta table)."""
        empty = self.spark._jvm.scala.Option.empty()
        version = int(delta_log.update(False, empty, empty).version())
        return None if version < 0 else version

    def _log_commits(self, delta_log, latest: int, limit: int) -> Optional[list]:
        """The newest ``limit`` commits read from their commit files, newest first; None when a
        file holds no commit info (a file gone raises), so that SQL answers instead."""
        jvm = self.spark._jvm
        delta = jvm.org.apache.spark.sql.delta
        conf = delta_log.newDeltaHadoopConf()
        commits = []
        for version in range(latest, max(-1, latest - limit), -1):
            path = delta.util.FileNames.unsafeDeltaFile(delta_log.logPath(), version)
            # One status call: a file gone (log cleanup) raises, and SQL answers instead.
            modified = path.getFileSystem(conf).getFileStatus(path).getModificationTime()
            info = delta.DeltaHistoryManager.getCommitInfoOpt(delta_log.store(), path, conf)
            if info.isEmpty():
                return None
            info = info.get()
            metrics = info.operationMetrics()
            user = info.userMetadata()
            commits.append(
                Commit(
                    version=version,
                    # DESCRIBE HISTORY's timestamp: the commit file's modification time.
                    timestamp=datetime.fromtimestamp(modified / 1000.0),
                    operation=info.operation(),
                    operationMetrics=_int_metrics(
                        dict(jvm.scala.jdk.javaapi.CollectionConverters.asJava(metrics.get()))
                        if metrics.isDefined() else {}
                    ),
                    **_user_metadata(user.get() if user.isDefined() else None),
                )
            )
        return commits

    def _fast(self, table: TableRef, answer):
        """``answer(delta_log)`` on the log fast path; ``_SLOW`` when SQL must answer."""
        delta_log = self._delta_log(table)
        if delta_log is None:
            return _SLOW
        try:
            return answer(delta_log)
        except Exception as exc:  # noqa: BLE001 - py4j or an unexpected Delta: SQL answers
            log.debug("Delta log fast path failed for %s (%s): using SQL", table, exc)
            return _SLOW

    def exists(self, table: TableRef) -> bool:
        found = self._fast(table, self._log_version)
        if found is not _SLOW:
            return found is not None
        return self._history_rows(table, 1) is not None

    def _require(self, table: TableRef) -> None:
        if not self.exists(table):
            raise FileNotFoundError(
                f"table {table} not found at {self.location(table)}: run the stage that writes it first"
            )

    def read(self, table: TableRef, version: Optional[int] = None) -> DataFrame:
        """The table (at ``version`` when given). A missing table is a clear error naming it; a
        damaged log entry is a ``TableDamaged`` (Delta reads the newest state even for ``versionAsOf``)."""
        try:
            if self.read_versions is not None and str(table) not in self.read_versions:
                latest = self.version(table)  # recorded for the run's tracking; None: missing
                if latest is None:
                    self._require(table)
                self.read_versions[str(table)] = version if version is not None else latest
            else:
                self._require(table)
        except Exception as exc:
            damaged = self.damage(exc)
            if damaged is None:
                raise
            raise damaged from exc
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if self.catalog_mode:
            return reader.table(self.location(table))
        return reader.load(self.location(table))

    def damage(self, exc: BaseException) -> Optional[TableDamaged]:
        """``exc`` explained as a ``TableDamaged`` when what failed is the read of a Delta log entry
        (Spark reads a table's log lazily, so this shows in whichever job first needs the table's
        files), else None. The message names the table, the entry, what still reads and the way
        back."""
        text = "\n".join(str(e) for e in _chain(exc))
        found = _LOG_ENTRY.search(text)
        if found is None:
            return None
        where = found.group("table")
        path = urlparse(where).path if urlparse(where).scheme == "file" else where
        table = next(
            (t for t in TABLES if not self.catalog_mode and _same_path(self.location(t), path)), None
        )
        version = int(found.group("version"))
        entry = f"{where}/_delta_log/{found.group(0).rsplit('/', 1)[-1]}"
        line = next((ln.strip() for ln in text.splitlines() if "_delta_log" in ln or "Checksum" in ln), "")
        name = f"table {table} ({self.location(table)})" if table is not None else f"the Delta table at {where}"
        return TableDamaged(
            f"{name}: its Delta log entry {entry} (version {version}) cannot be read: {line[:300]}. "
            "Restore that file from a backup; or, when it is the newest entry, move it (and its .crc) out of "
            "_delta_log, which leaves the table at the version before it as if that write had not happened, "
            "and rerun the stage that writes the table. (RESTORE TABLE cannot help: it reads the newest "
            "version first.)",
            table, entry, version,
        )

    def version(self, table: TableRef) -> Optional[int]:
        """The latest committed version, or None when the table does not exist."""
        found = self._fast(table, self._log_version)
        if found is not _SLOW:
            return found
        rows = self._history_rows(table, 1)
        return None if rows is None else int(rows[0]["version"])

    def history(self, table: TableRef, limit: int = 1) -> list[Commit]:
        """The newest ``limit`` commits of ``table``, newest first (a missing table is an error)."""
        if limit < 1:
            raise ValueError(f"history of table {table}: limit must be at least 1, got {limit}")
        def from_log(delta_log):
            latest = self._log_version(delta_log)
            return _SLOW if latest is None else (self._log_commits(delta_log, latest, limit) or _SLOW)

        fast = self._fast(table, from_log)
        if fast is not _SLOW:
            return fast
        rows = self._history_rows(table, limit)
        if rows is None:
            self._require(table)
        commits = [
            Commit(
                version=int(r["version"]),
                timestamp=r["timestamp"],
                operation=r["operation"],
                operationMetrics=_int_metrics(r["operationMetrics"]),
                **_user_metadata(r["userMetadata"]),
            )
            for r in rows
        ]
        return sorted(commits, key=lambda c: -c.version)

    def file_count(self, table: TableRef) -> int:
        """How many data files the table's current version holds (a missing table is an error)."""
        def from_log(delta_log):
            if self._log_version(delta_log) is None:
                return _SLOW
            empty = self.spark._jvm.scala.Option.empty()
            snapshot = delta_log.update(False, empty, empty)
            # The version's checksum file (<version>.crc, written with each commit) holds the
            # count: one small read. numOfFiles without it rebuilds the table state, a Spark
            # job of seconds after every write (measured 4-5 s on tiny tables).
            checksum = snapshot.checksumOpt()
            if checksum.isDefined():
                return int(checksum.get().numFiles())
            return int(snapshot.numOfFiles())

        fast = self._fast(table, from_log)
        if fast is not _SLOW:
            return fast
        self._require(table)
        return int(self.spark.sql(f"DESCRIBE DETAIL {self._sql_name(table)}").first()["numFiles"])

    # ---- upkeep ------------------------------------------------------------------
    def compact(self, table: TableRef, metadata: Optional[dict] = None) -> WriteResult:
        """Rewrite the table's small files into fewer large ones (Delta's OPTIMIZE) in one commit
        whose operation metrics say how many files went (``numRemovedFiles``) and came
        (``numAddedFiles``). The rows are the same; readers of older versions are not disturbed
        (their files stay until ``vacuum``). Nothing to compact: no commit."""
        self._require(table)
        return self._sql_commit(table, "OPTIMIZE", f"OPTIMIZE {self._sql_name(table)}", metadata)

    def vacuum(self, table: TableRef, retain_hours: Optional[float] = None) -> int:
        """Delete the data files that no version of the last ``retain_hours`` (default
        ``tables.vacuum_retain_hours``) reads; returns how many. Time travel and rollback reach
        back that far afterwards.

        Delta (4.x) takes the window from the table property ``delta.deletedFileRetentionDuration``
        and ignores ``RETAIN n HOURS`` unless n is 0, so the property is set first (one metadata
        commit, only when it differs), with ``delta.logRetentionDuration`` raised to match when the
        window passes the log's default 30 days (time travel needs the log entries too)."""
        self._require(table)
        hours = self.cfg.tables.vacuum_retain_hours if retain_hours is None else retain_hours
        name = self._sql_name(table)
        if hours > 0:
            self._retain_for(table, hours)
            retain = ""
        else:  # only with Delta's retentionDurationCheck turned off, as a test may
            retain = " RETAIN 0 HOURS"
        with self._session_conf(LISTING_TASKS_CONF, str(self._vacuum_listing_tasks())):
            # Hadoop's local file system keeps a .crc checksum beside every file: not data files.
            doomed = [r["path"] for r in self.spark.sql(f"VACUUM {name}{retain} DRY RUN").collect()]
            doomed = [p for p in doomed if not p.endswith(".crc")]
            if doomed:
                self.spark.sql(f"VACUUM {name}{retain}").collect()
        return len(doomed)

    def _vacuum_listing_tasks(self) -> int:
        """``tables.vacuum_listing_tasks``, or the session's parallelism when 0."""
        from recsys_spark.core.session import default_parallelism  # session imports context, which imports this

        return self.cfg.tables.vacuum_listing_tasks or default_parallelism(self.spark)

    def _retain_for(self, table: TableRef, hours: float) -> None:
        """Make the table's file (and, past 30 days, log) retention ``hours``."""
        want = {"delta.deletedFileRetentionDuration": f"interval {hours:g} hours"}
        if hours > 720:
            want["delta.logRetentionDuration"] = f"interval {hours:g} hours"
        detail = self.spark.sql(f"DESCRIBE DETAIL {self._sql_name(table)}").first()
        current = dict(detail["properties"] or {})
        changed = {k: v for k, v in want.items() if current.get(k) != v}
        if changed:
            settings = ", ".join(f"'{k}' = '{v}'" for k, v in changed.items())
            self._retrying(table, "SET TBLPROPERTIES",
                           lambda: self.spark.sql(f"ALTER TABLE {self._sql_name(table)} SET TBLPROPERTIES ({settings})"))

    def _compact_if_fragmented(self, table: TableRef) -> None:
        """After a write: compact the table once it holds ``tables.compact_min_files`` files."""
        threshold = self.cfg.tables.compact_min_files
        if threshold <= 0:
            return
        files = self.file_count(table)
        if files < threshold:
            return
        result = self.compact(table, metadata={"compaction": "tables.compact_min_files", "files_before": files})
        log.info("table %s: %d files compacted into %d (version %d)", table,
                 result.metric("numRemovedFiles"), result.metric("numAddedFiles"), result.version)

    # ---- writing -----------------------------------------------------------------
    def conform(self, df: DataFrame, table: TableRef) -> DataFrame:
        """``df`` as ``table``'s rows: its schema's columns in order, cast to its types (extra
        columns dropped; nullability as the data has it, Delta enforces NOT NULL on write)."""
        return conform(df, table.schema, f"table {table}")

    def _retrying(self, table: TableRef, operation: str, attempt):
        """``attempt()`` (one write: it commits or raises), tried again while it loses to a
        concurrent writer: ``tables.conflict_retries`` more times, after a jittered backoff that
        doubles from ``tables.conflict_backoff_seconds``. Every write here may be repeated: an
        overwrite or a replaceWhere swaps the same rows in, a MERGE upserts on its key, and a
        lost commit wrote nothing. Then one ``ConcurrentWriteConflict`` naming the table."""
        retries = self.cfg.tables.conflict_retries
        base = self.cfg.tables.conflict_backoff_seconds
        for tried in range(1, retries + 2):
            try:
                return attempt()
            except Exception as exc:  # noqa: BLE001 - only Delta's conflicts are retried
                other = conflict_of(exc)
                if other is None:
                    raise
                if tried > retries:
                    raise ConcurrentWriteConflict(
                        f"table {table} ({self.location(table)}): {operation} lost to a concurrent write "
                        f"{tried} time(s) and was not committed: {other}. Another job writes this table at "
                        "the same time; run the two one after the other, or raise tables.conflict_retries",
                        table, tried, other,
                    ) from exc
                delay = _backoff(base, tried)
                log.warning("table %s: %s lost to a concurrent write (%s); try %d of %d in %.1f s",
                            table, operation, other, tried + 1, retries + 1, delay)
                time.sleep(delay)

    def replace(
        self,
        df: DataFrame,
        table: TableRef,
        partition_by: Sequence[str] = (),
        metadata: Optional[dict] = None,
    ) -> WriteResult:
        """Replace the table's content (and schema) in one commit."""
        return self._write(df, table, "overwrite", {"overwriteSchema": "true"}, partition_by, metadata)

    def replace_where(
        self, df: DataFrame, table: TableRef, condition: str, metadata: Optional[dict] = None
    ) -> WriteResult:
        """Replace the rows matching ``condition`` with ``df`` in one commit (``df`` must match it
        too). A rerun of the same batch therefore replaces its rows instead of adding them again.
        A missing table is created empty from its schema first."""
        self._create_if_missing(table)
        return self._write(df, table, "overwrite", {"replaceWhere": condition}, (), metadata)

    def append(self, df: DataFrame, table: TableRef, metadata: Optional[dict] = None) -> WriteResult:
        return self._write(df, table, "append", {}, (), metadata)

    def merge(
        self,
        df: DataFrame,
        table: TableRef,
        keys: Sequence[str],
        update: bool = True,
        update_condition: Optional[str] = None,
        delete_condition: Optional[str] = None,
        metadata: Optional[dict] = None,
        delete_when: Optional[str] = None,
        insert_when: Optional[str] = None,
    ) -> WriteResult:
        """Upsert ``df`` on ``keys`` in one commit: insert new keys (those whose source row matches
        ``insert_when``, if given); delete matched rows whose source row matches ``delete_when``;
        update the other matched rows when ``update`` (and ``update_condition`` holds); delete
        target rows without a source row matching ``delete_condition``. Conditions are SQL over the
        aliases ``t`` (target) and ``s`` (source). A missing table is created empty from its schema
        first, so the result always holds MERGE metrics."""
        self._create_if_missing(table)
        source = self.conform(df, table)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        clauses = [f"WHEN MATCHED AND ({delete_when}) THEN DELETE"] if delete_when else []
        if update:
            clauses.append(f"WHEN MATCHED{f' AND ({update_condition})' if update_condition else ''} THEN UPDATE SET *")
        clauses.append(f"WHEN NOT MATCHED{f' AND ({insert_when})' if insert_when else ''} THEN INSERT *")
        if delete_condition:
            clauses.append(f"WHEN NOT MATCHED BY SOURCE AND ({delete_condition}) THEN DELETE")
        view = f"_recsys_merge_source_{uuid.uuid4().hex}"
        source.createOrReplaceTempView(view)
        statement = f"MERGE INTO {self._sql_name(table)} AS t USING {view} AS s ON {condition} " + " ".join(clauses)

        def attempt() -> WriteResult:
            before = self.version(table)
            write_id = uuid.uuid4().hex
            with self._commit_metadata(metadata, write_id):
                self.spark.sql(statement)
            return self._result(table, before, write_id)

        try:
            result = self._retrying(table, "MERGE", attempt)
        finally:
            self.spark.catalog.dropTempView(view)
        self._compact_if_fragmented(table)
        return result

    def delete_where(self, table: TableRef, condition: str, metadata: Optional[dict] = None) -> WriteResult:
        return self._sql_commit(table, "DELETE", f"DELETE FROM {self._sql_name(table)} WHERE {condition}", metadata)

    def _sql_commit(self, table: TableRef, operation: str, statement: str, metadata: Optional[dict]) -> WriteResult:
        """One SQL ``statement`` as one commit tagged with ``metadata``, retried on conflicts."""
        def attempt() -> WriteResult:
            before = self.version(table)
            write_id = uuid.uuid4().hex
            with self._commit_metadata(metadata, write_id):
                self.spark.sql(statement)
            return self._result(table, before, write_id)

        return self._retrying(table, operation, attempt)

    def _create_if_missing(self, table: TableRef) -> None:
        """An empty table from ``table.schema``: in path mode one metadata-only CREATE TABLE
        commit (no write job: 0.4 s against 0.6 s), with every column nullable as a path write
        leaves them; in catalog mode an empty replace, which creates the schema too."""
        if self.exists(table):
            return
        if self.catalog_mode:
            self.replace(self.spark.createDataFrame([], table.schema), table)
            return
        columns = ", ".join(
            "`" + f.name.replace("`", "``") + "` " + f.dataType.simpleString() for f in table.schema.fields
        )
        # Two jobs creating it at once: the loser's commit of version 0 conflicts; its retry finds
        # the table there (IF NOT EXISTS) and does nothing. A job that finds the other's first
        # files there before its first commit (DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION) waits
        # for that commit the same bounded way; a folder that never becomes a table stays an error.
        statement = f"CREATE TABLE IF NOT EXISTS {self._sql_name(table)} ({columns}) USING DELTA"
        retries, base = self.cfg.tables.conflict_retries, self.cfg.tables.conflict_backoff_seconds
        for tried in range(1, retries + 2):
            try:
                self._retrying(table, "CREATE TABLE", lambda: self.spark.sql(statement))
                return
            except Exception as exc:  # noqa: BLE001 - only a location being created is waited for
                if tried > retries or not any(_BEING_CREATED in str(e) for e in _chain(exc)):
                    raise
                delay = _backoff(base, tried)
                log.warning("table %s: its folder holds another job's first files, not yet a commit; "
                            "try %d of %d in %.1f s", table, tried + 1, retries + 1, delay)
                time.sleep(delay)

    def _write(
        self,
        df: DataFrame,
        table: TableRef,
        mode: str,
        options: Mapping[str, str],
        partition_by: Sequence[str],
        metadata: Optional[dict],
    ) -> WriteResult:
        writer = self.conform(df, table).write.format("delta").mode(mode)
        for key, value in options.items():
            writer = writer.option(key, value)
        if partition_by:
            writer = writer.partitionBy(*partition_by)

        def attempt() -> WriteResult:
            before = self.version(table)
            write_id = uuid.uuid4().hex
            with self._commit_metadata(metadata, write_id):
                self._save(writer, table)
            return self._result(table, before, write_id)

        what = "append" if mode == "append" else ("replaceWhere" if "replaceWhere" in options else "overwrite")
        result = self._retrying(table, what, attempt)
        self._compact_if_fragmented(table)
        return result

    def _save(self, writer: DataFrameWriter, table: TableRef) -> None:
        """The one place that knows a path from a catalog name."""
        if self.catalog_mode:
            self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {self._schema_name()}")
            writer.saveAsTable(self.location(table))
        else:
            writer.save(self.location(table))

    def _commit_metadata(self, metadata: Optional[dict], write_id: str):
        """Make ``metadata`` (JSON, with ``write_id`` added under ``WRITE_ID_KEY``) the userMetadata
        of the commits made inside (a context manager)."""
        text = json.dumps({**(metadata or {}), WRITE_ID_KEY: write_id}, sort_keys=True, default=str)
        return self._session_conf(USER_METADATA_CONF, text)

    @contextmanager
    def _session_conf(self, key: str, value: str) -> Iterator[None]:
        """The session conf ``key`` set to ``value`` inside; its previous value is restored
        afterwards, also when the body fails. Such uses in this process take turns (the conf is
        session-wide)."""
        conf = self.spark.conf
        with _SESSION_CONF_LOCK:
            previous = conf.get(key, None)
            conf.set(key, value)
            try:
                yield
            finally:
                if previous is None:
                    conf.unset(key)
                else:
                    conf.set(key, previous)

    def _result(self, table: TableRef, version_before: Optional[int], write_id: str) -> WriteResult:
        """The write just made: the commit tagged ``write_id`` (the newest, unless another job
        committed since), or no commit when none is (a MERGE that changed nothing)."""
        commits = self.history(table, 1)
        if commits[0].write_id != write_id and version_before is not None and commits[0].version > version_before + 1:
            # Others committed after this write began: look among the commits since then.
            commits = self.history(table, min(commits[0].version - version_before, _RESULT_DEPTH))
        mine = next((c for c in commits if c.write_id == write_id), None)
        if mine is None:
            return WriteResult(table, commits[0].version)
        return WriteResult(table, mine.version, mine.operation, mine.operationMetrics)
