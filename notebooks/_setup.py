# Databricks notebook source
# MAGIC %md
# MAGIC # Shared setup
# MAGIC
# MAGIC Every notebook here starts with `%run ./_setup`, which runs these cells in its own namespace. It defines:
# MAGIC - the widgets (job parameters in a Workflow):
# MAGIC   - `config`: a profile name (`databricks`, the default; `cluster`, `local`), found in the installed package (or `conf/` of a checkout) wherever the notebook runs, or an absolute YAML path;
# MAGIC   - `overrides`: `key=value` pairs separated by `;`, e.g. `input.events=/Volumes/main/recsys/raw/events;score.k=20`;
# MAGIC   - `run_id`: recorded with the outputs (empty: a new one);
# MAGIC - `ctx`: the stage context for that config (session, tables, run id); in catalog mode the schema and the warehouse volume are created when missing (a missing catalog is an error naming it);
# MAGIC - `databricks` (`recsys_spark.integrations.databricks`: `run_stage_notebook`, `set_task_values`, `report_html`, `summary_json`) and `schemas` (the table names).
# MAGIC
# MAGIC The cluster needs the `recsys_spark` wheel as a library (see `notebooks/README.md`).

# COMMAND ----------

from recsys_spark.core import schemas
from recsys_spark.integrations import databricks

databricks.define_widgets(dbutils)

# COMMAND ----------

ctx = databricks.notebook_context(spark, dbutils)
