# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Features
# MAGIC
# MAGIC `silver.events` become `gold.user_sequences`: per user the time-ordered items, timestamps and weights, with the leave-one-out (or time-cut) split into history, train, validation and test.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "features", display, show=[schemas.USER_SEQUENCES_TABLE])

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
