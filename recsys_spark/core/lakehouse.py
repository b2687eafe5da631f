"""Table I/O: where each Delta table lives and the few ways stages write to it.

Path mode lays tables out as ``<warehouse>/<layer>/<table>``; catalog mode (Databricks / Unity
Catalog) names them ``<catalog>.<schema>.<layer>_<table>``. Every write is one Delta commit:
``replace`` swaps a whole table atomically (readers see the old or the new version, and the old
one stays in the history for time travel), ``merge`` upserts on a key.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from pyspark.sql import DataFrame, SparkSession

from recsys_spark.core.config import Config
from recsys_spark.core.schemas import TableRef

log = logging.getLogger(__name__)


class Lakehouse:
    """The Delta tables of one config: ``read``, ``replace``, ``merge``, ``version``, ``exists``."""

    def __init__(self, spark: SparkSession, cfg: Config):
        self.spark = spark
        self.cfg = cfg

    # ---- naming ------------------------------------------------------------------
    @property
    def catalog_mode(self) -> bool:
        return self.cfg.tables.mode == "catalog"

    def location(self, table: TableRef) -> str:
        """The path (path mode) or the qualified name (catalog mode) of ``table``."""
        if self.catalog_mode:
            prefix = f"{self.cfg.tables.catalog}." if self.cfg.tables.catalog else ""
            return f"{prefix}{self.cfg.tables.schema}.{table.layer}_{table.name}"
        return f"{self.cfg.warehouse.rstrip('/')}/{table.layer}/{table.name}"

    def raw_path(self, name: str) -> str:
        return f"{self.cfg.warehouse.rstrip('/')}/raw/{name}"

    def checkpoint_path(self, name: str) -> str:
        return f"{self.cfg.warehouse.rstrip('/')}/_checkpoints/{name}"

    def _delta_table(self, table: TableRef):
        from delta.tables import DeltaTable

        if self.catalog_mode:
            return DeltaTable.forName(self.spark, self.location(table))
        return DeltaTable.forPath(self.spark, self.location(table))

    # ---- reading -----------------------------------------------------------------
    def exists(self, table: TableRef) -> bool:
        if self.catalog_mode:
            return self.spark.catalog.tableExists(self.location(table))
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, self.location(table))

    def read(self, table: TableRef, version: Optional[int] = None) -> DataFrame:
        """The table (at ``version`` when given). A missing table is a clear error naming it."""
        if not self.exists(table):
            raise FileNotFoundError(
                f"table {table} not found at {self.location(table)}: run the stage that writes it first"
            )
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if self.catalog_mode:
            return reader.table(self.location(table))
        return reader.load(self.location(table))

    def version(self, table: TableRef) -> Optional[int]:
        """The latest committed version, or None when the table does not exist."""
        if not self.exists(table):
            return None
        return int(self._delta_table(table).history(1).select("version").first()[0])

    # ---- writing -----------------------------------------------------------------
    def _ensure_schema(self) -> None:
        if self.catalog_mode:
            prefix = f"{self.cfg.tables.catalog}." if self.cfg.tables.catalog else ""
            self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {prefix}{self.cfg.tables.schema}")

    def replace(self, df: DataFrame, table: TableRef, partition_by: Sequence[str] = ()) -> int:
        """Replace the table's content in one commit; returns the new version."""
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if self.catalog_mode:
            self._ensure_schema()
            writer.saveAsTable(self.location(table))
        else:
            writer.save(self.location(table))
        return self.version(table)

    def replace_where(self, df: DataFrame, table: TableRef, condition: str) -> int:
        """Replace the rows matching ``condition`` with ``df`` in one commit (``df`` must match it
        too). A rerun of the same batch therefore replaces its rows instead of adding them again."""
        if not self.exists(table):
            return self.append(df, table)
        writer = df.write.format("delta").mode("overwrite").option("replaceWhere", condition)
        if self.catalog_mode:
            writer.saveAsTable(self.location(table))
        else:
            writer.save(self.location(table))
        return self.version(table)

    def append(self, df: DataFrame, table: TableRef) -> int:
        writer = df.write.format("delta").mode("append")
        if self.catalog_mode:
            self._ensure_schema()
            writer.saveAsTable(self.location(table))
        else:
            writer.save(self.location(table))
        return self.version(table)

    def merge(
        self,
        df: DataFrame,
        table: TableRef,
        keys: Sequence[str],
        update: bool = True,
        delete_condition: Optional[str] = None,
    ) -> int:
        """Upsert ``df`` on ``keys`` in one commit (insert new keys; update matched rows when
        ``update``). Creates the table from ``df`` when it does not exist yet."""
        if not self.exists(table):
            return self.replace(df, table)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        builder = self._delta_table(table).alias("t").merge(df.alias("s"), condition)
        if update:
            builder = builder.whenMatchedUpdateAll()
        builder = builder.whenNotMatchedInsertAll()
        if delete_condition:
            builder = builder.whenNotMatchedBySourceDelete(delete_condition)
        builder.execute()
        return self.version(table)

    def delete_where(self, table: TableRef, condition: str) -> None:
        self._delta_table(table).delete(condition)
