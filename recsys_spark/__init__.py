"""recsys-spark: a distributed recommender on Apache Spark and Delta Lake."""

__version__ = "0.1.0"
