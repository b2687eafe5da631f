# Databricks notebook source
# MAGIC %md
# MAGIC # 09 · Generate synthetic data
# MAGIC
# MAGIC Writes a synthetic event log and item catalog of any size (`generate.users`, `generate.items`, `generate.events`) to `generate.output`, to try the pipeline at scale; point `input.events` / `input.items` at it.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "generate")

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
