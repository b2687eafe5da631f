# Databricks notebook source
# MAGIC %md
# MAGIC # Shared setup
# MAGIC
# MAGIC Every notebook here starts with `%run ./_setup`, which runs these cells in its own namespace. It defines:
# MAGIC - the widgets (job parameters in a Workflow):
# MAGIC   - `config`: a profile in `conf/` (`databricks`, `cluster`, `local`) or a YAML path (default `../conf/databricks.yaml`, relative to the notebook folder);
# MAGIC   - `overrides`: `key=value` pairs separated by `;`, e.g. `input.events=/Volumes/main/recsys/raw/events;score.k=20`;
# MAGIC   - `run_id`: recorded with the outputs (empty: a new one);
# MAGIC - `ctx`: the stage context for that config (session, tables, run id); in catalog mode the schema is created when missing;
# MAGIC - `databricks` (`recsys_spark.integrations.databricks`: `run_stage_notebook`, `summary_json`) and `schemas` (the table names).
# MAGIC
# MAGIC The cluster needs the `recsys_spark` wheel as a library (see `notebooks/README.md`).

# COMMAND ----------

from recsys_spark.core import schemas
from recsys_spark.integrations import databricks

databricks.define_widgets(dbutils)

# COMMAND ----------

ctx = databricks.notebook_context(spark, dbutils)
