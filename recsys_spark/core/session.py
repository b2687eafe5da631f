"""The one place that builds a SparkSession, for every job, notebook and test.

Locally it starts ``local[*]`` with Delta enabled (the delta-spark jars resolved from Maven
Central through ``spark.jars.packages`` and cached by Ivy). Under ``spark-submit`` on a cluster,
or on Databricks, a session already exists or the launcher configures it: then no jars are added.
"""
from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from recsys_spark.core.config import Config

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


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
    if sc.master and not on_databricks():
        builder = builder.master(sc.master)
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(sc.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.memory": sc.driver_memory,
        "spark.ui.showConsoleProgress": "false",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Keep every Delta write an ACID commit whose history stays readable for rollback.
        "spark.databricks.delta.retentionDurationCheck.enabled": "true",
    }
    if not on_databricks():
        # Harmless when the launcher set them too; needed whoever ships the jars.
        settings["spark.sql.extensions"] = DELTA_EXTENSION
        settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    if sc.add_delta_jars and not on_databricks():
        if sc.delta_jars:
            settings["spark.jars"] = sc.delta_jars
        else:
            settings["spark.jars.packages"] = sc.delta_package
    settings.update({k: str(v) for k, v in sc.conf.items()})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(sc.log_level)
    log.info("Spark %s session started (master=%s)", spark.version, spark.sparkContext.master)
    return spark
