# Databricks notebook source
# MAGIC %md
# MAGIC # 00 · Quickstart: the whole pipeline
# MAGIC
# MAGIC Runs every stage in order (ingest → features → encode → interests → train → retrieve → score → evaluate)
# MAGIC on the input the config names, then shows the metrics and a few recommendations.
# MAGIC
# MAGIC **Before the first run**
# MAGIC 1. Attach the `recsys_spark` wheel to the cluster as a library (or run this notebook from a Git folder
# MAGIC    holding the repository), see `notebooks/README.md`.
# MAGIC 2. Put input where the config points: with the `databricks` profile (`conf/databricks.yaml`), the MovieLens folder
# MAGIC    (`ratings.csv`, `movies.csv`, `tags.csv`) goes to `/Volumes/main/recsys/raw/events`.
# MAGIC    Or run `09_generate` first and point `input.events` / `input.items` at its output.
# MAGIC
# MAGIC **Parameters** (widgets, from `./_setup`): `config` (a profile name, default `databricks`, or an absolute YAML path), `overrides`
# MAGIC (`key=value` pairs separated by `;`, e.g. `train.epochs=2;evaluate.ks=[10]`), `run_id`.
# MAGIC Tables are Unity Catalog names `<catalog>.<schema>.<layer>_<table>` (`tables.mode: catalog`).

# COMMAND ----------

# MAGIC %run ./_setup

# COMMAND ----------

summary = databricks.run_stage_notebook(ctx, "run")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Metrics
# MAGIC One row per model (the pipeline and each baseline), protocol, metric and K.

# COMMAND ----------

display(ctx.lake.read(schemas.METRICS_TABLE))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Recommendations and similar items

# COMMAND ----------

display(ctx.lake.read(schemas.RECOMMENDATIONS_TABLE).limit(50))

# COMMAND ----------

display(ctx.lake.read(schemas.SIMILAR_ITEMS_TABLE).limit(50))

# COMMAND ----------

dbutils.notebook.exit(databricks.summary_json(summary))
