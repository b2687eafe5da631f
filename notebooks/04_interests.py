# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · User interests
# MAGIC
# MAGIC Each user's history becomes a weighted, time-decayed interest vector in `gold.user_vectors`.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "interests", display, show=[schemas.USER_VECTORS_TABLE])

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
