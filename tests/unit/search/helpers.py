"""What the search tests share: a brute-force reference, clustered data, vector frames."""
from __future__ import annotations

import numpy as np

from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, RANK, VECTOR
from recsys_spark.search.kernels import normalize_rows


def brute_force(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Top-k indices by score descending, ties by smaller index."""
    scores = queries @ items.T
    order = np.lexsort((np.tile(np.arange(len(items)), (len(queries), 1)), -scores), axis=1)
    return order[:, :k]


def clustered(n: int, dim: int, centers: np.ndarray, noise: float, rng) -> np.ndarray:
    picks = rng.integers(0, len(centers), n)
    return normalize_rows(centers[picks] + noise * rng.normal(size=(n, dim)))


def vectors_df(spark, id_col: str, ids, matrix):
    return spark.createDataFrame(
        [(str(i), [float(x) for x in row]) for i, row in zip(ids, matrix)],
        f"{id_col} string, {VECTOR} array<float>",
    )


def ranked_lists(results) -> dict:
    """``{query_id: [item_id in rank order]}`` of a search result (frame or collected rows)."""
    rows = results.collect() if hasattr(results, "collect") else results
    out: dict = {}
    for row in sorted(rows, key=lambda r: (r[QUERY_ID], r[RANK])):
        out.setdefault(row[QUERY_ID], []).append(row[ITEM_ID])
    return out
