# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Ingest
# MAGIC
# MAGIC Raw event logs (JSONL / CSV / Parquet / MovieLens) and the item catalog become `bronze.events`, `silver.events`, `silver.items`; rows that fail validation go to `silver.quarantine` with a reason. Re-running picks up only new files.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(
    ctx, "ingest", display, show=[schemas.SILVER_EVENTS_TABLE, schemas.SILVER_ITEMS_TABLE]
)

# COMMAND ----------

# MAGIC %md
# MAGIC Task values for later tasks of a job to gate on (`{{tasks.<task_key>.values.<key>}}`): `rows_ingested` (rows added to `silver.events`).

# COMMAND ----------

databricks.set_task_values(dbutils, summary)

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
