"""Cosine top-K search, by role: ``kernels`` (numpy), ``codec`` (vectors <-> Arrow binary),
``vectors`` (the one check-and-encode pass), ``kmeans``, ``spark`` (planning and execution over
DataFrames) and ``index`` (:class:`~recsys_spark.search.index.ExactIndex` and
:class:`~recsys_spark.search.index.IVFIndex`: fit, save, load, search)."""
