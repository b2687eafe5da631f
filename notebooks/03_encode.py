# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Encode items
# MAGIC
# MAGIC Item text from `silver.items` is encoded by a sentence-transformers model in a pandas UDF into `gold.item_embeddings`; only items whose `content_hash` is new or changed are encoded again.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "encode", display, show=[schemas.ITEM_EMBEDDINGS_TABLE])

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
