# Databricks notebook source
# MAGIC %md
# MAGIC # 07 · Score
# MAGIC
# MAGIC The LSTM re-ranks the candidates into `gold.recommendations`; `gold.similar_items` holds each item's nearest neighbours. `score.mode=incremental` rescores only users with new events.
# MAGIC
# MAGIC **Parameters** (widgets, or job parameters in a Workflow):
# MAGIC - `config`: a profile in `conf/` (`databricks`, `cluster`, `local`) or a YAML path;
# MAGIC - `overrides`: `key=value` pairs separated by `;`, e.g. `input.events=/Volumes/main/recsys/raw/events;score.k=20`;
# MAGIC - `run_id`: recorded with the outputs (empty: a new one).
# MAGIC
# MAGIC The cluster needs the `recsys_spark` wheel as a library (see `notebooks/README.md`).

# COMMAND ----------

from recsys_spark.integrations import databricks

databricks.define_widgets(dbutils)

# COMMAND ----------

import json

from recsys_spark import pipeline

ctx = databricks.notebook_context(spark, dbutils)
summary = pipeline.run_stage(ctx, "score")
print(json.dumps(summary, indent=2, default=str))

# COMMAND ----------

from recsys_spark.core.schemas import RECOMMENDATIONS_TABLE, SIMILAR_ITEMS_TABLE

# Recommendations
display(ctx.lake.read(RECOMMENDATIONS_TABLE).limit(20))

# Similar items
display(ctx.lake.read(SIMILAR_ITEMS_TABLE).limit(20))

# COMMAND ----------

# MAGIC %md
# MAGIC The summary is the notebook's result, which a Workflow task shows and passes on.

# COMMAND ----------

dbutils.notebook.exit(json.dumps(summary, default=str))
