# Databricks notebook source
# MAGIC %md
# MAGIC # 10 · Maintain the tables
# MAGIC
# MAGIC Compacts every table of the warehouse (Delta `OPTIMIZE`) and VACUUMs it, keeping `tables.vacuum_retain_hours` (168 by default) of time travel for rollback. The rows of every table stay the same. Schedule it apart from the pipeline, weekly say; where Databricks predictive optimization already maintains Unity Catalog managed tables, it is not needed.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "maintain")

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
