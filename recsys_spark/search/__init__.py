"""Cosine top-K search: numpy kernels, the vector codec, k-means, Spark execution and the index."""
