"""Readers of raw input formats (event logs, catalogs, every MovieLens layout)."""
