# Databricks notebook source
# MAGIC %md
# MAGIC # 05 · Train the LSTM
# MAGIC
# MAGIC The LSTM sequence model is trained on `gold.user_sequences` (backend from `train.backend`: `local`, `horovod`, or `tf_distribute` on Databricks) and saved under `models/<version>/`.
# MAGIC
# MAGIC Parameters (`config`, `overrides`, `run_id`) and `ctx` come from `./_setup`.

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "train")

# COMMAND ----------

# MAGIC %md
# MAGIC Task values for later tasks of a job to gate on (`{{tasks.<task_key>.values.<key>}}`): `model_version` and `val_ndcg_at_10`.

# COMMAND ----------

databricks.set_task_values(dbutils, summary)

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
