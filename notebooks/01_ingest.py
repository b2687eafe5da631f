# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Ingest
# MAGIC
# MAGIC Raw event logs (JSONL / CSV / Parquet / MovieLens) and the item catalog become `bronze.events`, `silver.events`, `silver.items`; rows that fail validation go to `silver.quarantine` with a reason. Re-running picks up only new files.
# MAGIC
# MAGIC **Parameters** (widgets, or job parameters in a Workflow):
# MAGIC - `config`: a profile in `conf/` (`databricks`, `cluster`, `local`) or a YAML path;
# MAGIC - `overrides`: `key=value` pairs separated by `;`, e.g. `input.events=/Volumes/main/recsys/raw/events;score.k=20`;
# MAGIC - `run_id`: recorded with the outputs (empty: a new one).
# MAGIC
# MAGIC The cluster needs the `recsys_spark` wheel as a library (see `notebooks/README.md`).

# COMMAND ----------

from recsys_spark.integrations import databricks

databricks.define_widgets(dbutils)

# COMMAND ----------

import json

from recsys_spark import pipeline

ctx = databricks.notebook_context(spark, dbutils)
summary = pipeline.run_stage(ctx, "ingest")
print(json.dumps(summary, indent=2, default=str))

# COMMAND ----------

from recsys_spark.core.schemas import SILVER_EVENTS_TABLE, SILVER_ITEMS_TABLE

# Events as typed in silver
display(ctx.lake.read(SILVER_EVENTS_TABLE).limit(20))

# The item catalog
display(ctx.lake.read(SILVER_ITEMS_TABLE).limit(20))

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary, default=str))
