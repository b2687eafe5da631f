"""The one place that builds a SparkSession, for every job, notebook and test, and that tells a
Spark Connect session from a classic one.

Locally it starts ``local[*]`` with Delta enabled (the delta-spark jars resolved from Maven
Central through ``spark.jars.packages`` and cached by Ivy). Under ``spark-submit`` on a cluster,
or on Databricks, a session already exists or the launcher configures it: then no jars are added.

With ``spark.remote`` set the session is a Spark Connect client: ``local[N]`` starts a local
Connect server inside this process (pyspark ships its jar) and hands it the Delta jars and
settings; ``sc://host:port`` connects to a server that already has Delta. A Connect session has
no ``sparkContext``, RDDs or JVM handle: code that needs a setting asks :func:`conf_value` or
:func:`default_parallelism` here, and code that cannot run on Connect asks :func:`is_connect`.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from typing import Optional

from pyspark.sql import SparkSession

from recsys_spark.core.config import Config
from recsys_spark.core.context import StageUnavailable

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
# Settings of the server process (its JVM, classpath, UI): a Connect client may set them only when
# it starts the server itself (remote local[N]); a running server (sc://) has its own.
SERVER_SETTINGS = (
    "spark.driver.memory",
    "spark.ui.showConsoleProgress",
    "spark.sql.extensions",
    "spark.sql.catalog.spark_catalog",
    "spark.jars",
    "spark.jars.packages",
)
_LOCAL_MASTER = re.compile(r"local(?:\[(\*|\d+)(?:\s*,\s*\d+)?\]|$)")  # not local-cluster[...]


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (serverless, standard access mode, ``spark.remote``):
    no ``sparkContext``, no RDDs, no barrier tasks, no JVM handle."""
    # Never imported here: a process that made no Connect session has not loaded the module, and
    # importing it without the Connect client's packages fails (or, under `python -c`, exits).
    module = sys.modules.get("pyspark.sql.connect.session")
    return module is not None and isinstance(spark, module.SparkSession)


def conf_value(spark: SparkSession, key: str, default: Optional[str] = None) -> Optional[str]:
    """A setting of the session (runtime or, where the server shows them, static ones like
    ``spark.master``), on classic and Connect sessions alike; ``default`` when unset."""
    return spark.conf.get(key, default)


def local_cores(master: str) -> Optional[int]:
    """The task slots of a ``local``/``local[N]``/``local[*]`` master; None for any other master."""
    match = _LOCAL_MASTER.match(master or "")
    if not match:
        return None
    slots = match.group(1) or "1"
    return (os.cpu_count() or 1) if slots == "*" else int(slots)


def physical_memory_bytes() -> Optional[int]:
    """This machine's memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def driver_memory(setting: str, master: Optional[str], memory_bytes: Optional[int] = None) -> Optional[str]:
    """``spark.driver.memory`` for ``spark.driver_memory``: a size as given; ``auto`` on a local
    master is half the machine's memory in whole GiB (at least 1g: the driver is the executor
    too, and the Python workers need the other half), and no setting elsewhere (the launcher's)."""
    if setting != "auto":
        return setting
    if local_cores(master or "") is None:
        return None
    total = physical_memory_bytes() if memory_bytes is None else memory_bytes
    if not total:
        return "2g"
    return f"{max(1, total // 2 // 2**30)}g"


def shuffle_partitions(setting, master: Optional[str]) -> Optional[str]:
    """``spark.sql.shuffle.partitions`` for ``spark.shuffle_partitions``: a count as given;
    ``auto`` on a local master is twice its cores (at least 2), and no setting elsewhere (the
    cluster's own: Databricks sizes shuffles itself, a cluster profile's AQE coalesces by size)."""
    if setting != "auto":
        return str(setting)
    cores = local_cores(master or "")
    return None if cores is None else str(max(2, 2 * cores))


def default_parallelism(spark: SparkSession) -> int:
    """How many tasks the session runs at once: ``sparkContext.defaultParallelism`` on classic
    Spark; on Connect, ``spark.default.parallelism`` when set, else the cores of a local master,
    else ``spark.sql.shuffle.partitions``."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    configured = conf_value(spark, "spark.default.parallelism")
    if configured:
        return max(1, int(configured))
    cores = local_cores(conf_value(spark, "spark.master", "") or "")
    if cores is not None:
        return max(1, cores)
    return max(1, int(conf_value(spark, "spark.sql.shuffle.partitions", "200")))


def require_classic(spark: SparkSession, what: str) -> None:
    """Fail at once, in one line naming the compute needed, when ``what`` gets a Connect session."""
    if is_connect(spark):
        raise ClassicSparkRequired(
            f"{what} needs classic Spark (barrier tasks, RDDs, the JVM): run it on a classic cluster "
            "(Databricks dedicated/single-user access mode, spark-submit, or local[*]), "
            "not on Spark Connect (serverless compute or standard/shared access mode)"
        )


class ClassicSparkRequired(StageUnavailable):
    """A job that needs classic Spark was given a Spark Connect session."""


def get_spark(cfg: Config) -> SparkSession:
    """Return the active session (Databricks, notebooks, an outer job) or build one from ``cfg.spark``."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Executors must run this interpreter, or pandas UDFs fail with missing modules.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    sc = cfg.spark
    builder = SparkSession.builder.appName(sc.app_name)
    if sc.remote:
        builder = builder.remote(sc.remote)
    elif sc.master and not on_databricks():
        builder = builder.master(sc.master)
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Keep every Delta write an ACID commit whose history stays readable for rollback.
        "spark.databricks.delta.retentionDurationCheck.enabled": "true",
    }
    partitions = shuffle_partitions(sc.shuffle_partitions, sc.remote or sc.master)
    if partitions is not None:
        settings["spark.sql.shuffle.partitions"] = partitions
    memory = driver_memory(sc.driver_memory, sc.remote or sc.master)
    if memory is not None:
        settings["spark.driver.memory"] = memory
    if not on_databricks():
        # Harmless when the launcher set them too; needed whoever ships the jars.
        settings["spark.sql.extensions"] = DELTA_EXTENSION
        settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    if sc.add_delta_jars and not on_databricks():
        if sc.delta_jars:
            settings["spark.jars"] = sc.delta_jars
        else:
            settings["spark.jars.packages"] = sc.delta_package
    if sc.remote and sc.remote.startswith("sc://"):
        settings = {k: v for k, v in settings.items() if k not in SERVER_SETTINGS}
    settings.update({k: str(v) for k, v in sc.conf.items()})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if is_connect(spark):
        # A Connect client cannot set the server's log level; the local server runs in this process.
        if not sc.remote.startswith("sc://"):
            from pyspark import SparkContext

            if SparkContext._active_spark_context is not None:
                SparkContext._active_spark_context.setLogLevel(sc.log_level)
        log.info("Spark %s Connect session started (remote=%s)", spark.version, sc.remote)
        return spark
    spark.sparkContext.setLogLevel(sc.log_level)
    log.info("Spark %s session started (master=%s)", spark.version, spark.sparkContext.master)
    return spark
