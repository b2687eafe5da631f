# Databricks notebook source
# MAGIC %md
# MAGIC # 08 · Evaluate
# MAGIC
# MAGIC Recall / NDCG / HR / MRR @K, coverage and novelty for the pipeline and its baselines, into `gold.metrics`.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "evaluate", display, show=[schemas.METRICS_TABLE])

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
