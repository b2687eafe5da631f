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
# MAGIC The run report (`<warehouse>/reports/<run_id>/report.html`: metrics per model, plots, the config).

# COMMAND ----------

displayHTML(databricks.report_html(summary))

# COMMAND ----------

# MAGIC %md
# MAGIC Task values for later tasks of a job to gate on (`{{tasks.<task_key>.values.<key>}}`): `ndcg_at_<K>` (the pipeline model's NDCG@K, one per K in `evaluate.ks`).

# COMMAND ----------

databricks.set_task_values(dbutils, summary)

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
