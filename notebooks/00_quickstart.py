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
# MAGIC 2. Put input where the config points: with `conf/databricks.yaml`, the MovieLens folder
# MAGIC    (`ratings.csv`, `movies.csv`, `tags.csv`) goes to `/Volumes/main/recsys/raw/events`.
# MAGIC    Or run `09_generate` first and point `input.events` / `input.items` at its output.
# MAGIC
# MAGIC **Parameters** (widgets): `config` (a profile in `conf/` or a YAML path), `overrides`
# MAGIC (`key=value` pairs separated by `;`, e.g. `train.epochs=2;evaluate.ks=[10]`), `run_id`.
# MAGIC Tables are Unity Catalog names `<catalog>.<schema>.<layer>_<table>` (`tables.mode: catalog`).

# COMMAND ----------

from recsys_spark.integrations import databricks

databricks.define_widgets(dbutils)

# COMMAND ----------

import json

from recsys_spark import pipeline

ctx = databricks.notebook_context(spark, dbutils)
summary = pipeline.run_all(ctx)
print(json.dumps(summary["timings"], indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Metrics
# MAGIC One row per model (the pipeline and each baseline), protocol, metric and K.

# COMMAND ----------

from recsys_spark.core.schemas import METRICS_TABLE, RECOMMENDATIONS_TABLE, SIMILAR_ITEMS_TABLE

display(ctx.lake.read(METRICS_TABLE))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Recommendations and similar items

# COMMAND ----------

display(ctx.lake.read(RECOMMENDATIONS_TABLE).limit(50))

# COMMAND ----------

display(ctx.lake.read(SIMILAR_ITEMS_TABLE).limit(50))

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary, default=str))
