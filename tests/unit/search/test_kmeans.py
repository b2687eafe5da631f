"""k-means centroids trained on a sample of encoded items, on the driver and as Spark jobs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_spark.core.schemas import ITEM_ID
from recsys_spark.search.kernels import normalize_rows
from recsys_spark.search.kmeans import train_centroids
from recsys_spark.search.vectors import encode_vectors
from tests.unit.search.helpers import clustered, vectors_df


@pytest.mark.parametrize("max_driver_sample_mb", [256, 0], ids=["on-driver", "spark-jobs"])
def test_train_centroids_are_unit_vectors_near_the_clusters(spark, max_driver_sample_mb):
    rng = np.random.default_rng(6)
    centers = normalize_rows(rng.normal(size=(4, 10)))
    items = clustered(400, 10, centers, 0.05, rng)
    centroids = train_centroids(
        encode_vectors(vectors_df(spark, ITEM_ID, range(len(items)), items), ITEM_ID), 4, iterations=10, seed=1,
        max_driver_sample_mb=max_driver_sample_mb,
    )
    assert centroids.shape == (4, 10)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    # every true cluster centre has a centroid close to it
    assert (centers @ centroids.T).max(axis=1).min() > 0.9
    assert not math.isnan(float(centroids.sum()))


def test_no_more_cells_than_items_and_no_items_is_an_error(spark):
    items = vectors_df(spark, ITEM_ID, ["a", "b", "c"], np.eye(3, dtype=np.float32))
    assert train_centroids(encode_vectors(items, ITEM_ID), 10).shape == (3, 3)
    empty = encode_vectors(spark.createDataFrame([], f"{ITEM_ID} string, vector array<float>"), ITEM_ID)
    with pytest.raises(ValueError, match="no usable"):
        train_centroids(empty, 4)
