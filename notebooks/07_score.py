# Databricks notebook source
# MAGIC %md
# MAGIC # 07 · Score
# MAGIC
# MAGIC The LSTM re-ranks the candidates into `gold.recommendations`; `gold.similar_items` holds each item's nearest neighbours. `score.mode=incremental` rescores only users with new events.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(
    ctx, "score", display, show=[schemas.RECOMMENDATIONS_TABLE, schemas.SIMILAR_ITEMS_TABLE]
)

# COMMAND ----------

# MAGIC %md
# MAGIC Task values for later tasks of a job to gate on (`{{tasks.<task_key>.values.<key>}}`): `model_version` (the model that scored).

# COMMAND ----------

databricks.set_task_values(dbutils, summary)

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
