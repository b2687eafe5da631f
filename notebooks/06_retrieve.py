# Databricks notebook source
# MAGIC %md
# MAGIC # 06 · Retrieve candidates
# MAGIC
# MAGIC Approximate cosine top-N (IVF, or exact on small catalogs) from user vectors to item embeddings, seen items excluded, into `gold.candidates`.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "retrieve", display, show=[schemas.CANDIDATES_TABLE])

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
