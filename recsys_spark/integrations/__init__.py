"""Adapters to the platforms the pipeline runs on (Databricks notebooks and jobs)."""
