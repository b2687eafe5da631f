"""Spherical k-means for the IVF index: numpy k-means(++) and its training on a Spark sample.

:func:`train_centroids` takes one random sample of the encoded items (:func:`_sample`, at most
``nlist x TRAIN_POINTS_PER_LIST`` rows). When it fits in ``MAX_DRIVER_SAMPLE_MB`` it is fetched
to the driver and trained there with :func:`kmeans`, the same code as the numpy baseline (ten
Spark jobs of ~0.5 s each would cost more than the arithmetic). Otherwise the sample is cached
on the workers and each iteration is one Spark job: workers return per-centroid counts and sums
(``nlist x dim`` per partition); seeds come from k-means++ on ``nlist x 8`` rows.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.core import progress
from recsys_spark.core.session import default_parallelism
from recsys_spark.search.codec import VEC, column, to_matrix
from recsys_spark.search.kernels import normalize_rows
from recsys_spark.search.vectors import EncodedVectors

# k-means is trained on at most this many sampled items per centroid (faiss uses 39..256).
TRAIN_POINTS_PER_LIST = 64
# ... and on the driver when that sample takes at most this many MiB.
MAX_DRIVER_SAMPLE_MB = 256
# k-means++ draws its seeds from this many random candidates per centroid.
SEED_CANDIDATES_PER_LIST = 8


def _kmeans_stats(points: np.ndarray, centroids: np.ndarray, block_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-centroid ``(counts, sums)`` of the points nearest (by cosine) to each centroid."""
    counts = np.zeros(len(centroids), dtype=np.int64)
    sums = np.zeros(centroids.shape, dtype=np.float64)
    for start in range(0, len(points), block_size):
        block = points[start : start + block_size]
        nearest = np.argmax(block @ centroids.T, axis=1)
        block_counts = np.bincount(nearest, minlength=len(centroids))
        counts += block_counts
        # Segment sums over the points sorted by cell (np.add.at is ~100x slower).
        order = np.argsort(nearest, kind="stable")
        cells = np.nonzero(block_counts)[0]
        starts = np.searchsorted(nearest[order], cells)
        sums[cells] += np.add.reduceat(block[order], starts, axis=0)
    return counts, sums


def _kmeans_update(counts: np.ndarray, sums: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Spherical k-means step: normalised means; an empty cell keeps its old centroid."""
    updated = normalize_rows(sums.astype(np.float32))
    return np.where((counts > 0)[:, None], updated, centroids).astype(np.float32)


def seed_centroids(candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` starting centroids picked from unit-vector ``candidates`` by k-means++: each next
    one drawn with probability proportional to its cosine distance from the nearest already
    picked, so the seeds spread over the clusters instead of doubling up in the big ones."""
    candidates = np.asarray(candidates, dtype=np.float32)
    n = min(n, len(candidates))
    picked = [int(rng.integers(len(candidates)))]
    distance = np.clip(1.0 - candidates @ candidates[picked[0]], 0.0, None).astype(np.float64)
    for _ in range(n - 1):
        total = distance.sum()
        if total > 0:
            choice = int(rng.choice(len(candidates), p=distance / total))
        else:  # every candidate coincides with a seed: any unpicked one
            choice = int(rng.choice(np.setdiff1d(np.arange(len(candidates)), picked)))
        picked.append(choice)
        distance = np.minimum(distance, np.clip(1.0 - candidates @ candidates[choice], 0.0, None))
    return candidates[picked].copy()


def kmeans(points: np.ndarray, nlist: int, iterations: int = 10, seed: int = 17) -> np.ndarray:
    """Spherical k-means centroids ``(nlist, dim)`` of unit vectors, seeded by k-means++ on a
    random subset (:func:`seed_centroids`)."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float32)
    nlist = min(nlist, len(points))
    pool = points[rng.choice(len(points), min(len(points), nlist * SEED_CANDIDATES_PER_LIST), replace=False)]
    centroids = seed_centroids(pool, nlist, rng)
    for _ in range(iterations):
        centroids = _kmeans_update(*_kmeans_stats(points, centroids), centroids)
    return centroids


def numpy_centroids(
    items: np.ndarray, nlist: int, iterations: int = 10, seed: int = 17, train_points_per_list: int = TRAIN_POINTS_PER_LIST
) -> np.ndarray:
    """k-means centroids on a random sample of ``nlist * train_points_per_list`` items (numpy)."""
    rng = np.random.default_rng(seed)
    n_train = min(len(items), nlist * train_points_per_list)
    return kmeans(items[rng.choice(len(items), n_train, replace=False)], nlist, iterations, seed)


def train_centroids(
    items: EncodedVectors,
    nlist: int,
    iterations: int = 10,
    seed: int = 17,
    train_points_per_list: int = TRAIN_POINTS_PER_LIST,
    max_driver_sample_mb: int = MAX_DRIVER_SAMPLE_MB,
) -> np.ndarray:
    """Spherical k-means centroids ``(min(nlist, usable items), dim)`` of encoded ``items``,
    trained on a random sample of about ``nlist x train_points_per_list`` rows (module doc)."""
    n_items, dim = items.counts.usable, items.counts.dim
    if n_items == 0:
        raise ValueError(f"IVF index: the items have no usable vectors ({items.counts.to_dict()})")
    nlist = min(nlist, n_items)
    sample, rows = _sample(items.frame.select(VEC), n_items, nlist * train_points_per_list, seed)
    if rows * dim * 4 <= max_driver_sample_mb * 2**20:
        points = to_matrix(column(sample.toArrow(), VEC))
        if len(points) == 0:
            raise ValueError("IVF index: the k-means sample is empty")
        return kmeans(points, nlist, iterations, seed)
    return _train_in_spark(sample, nlist, iterations, seed)


def _sample(df: DataFrame, n_rows: int, wanted: int, seed: int) -> tuple[DataFrame, float]:
    """About ``wanted`` random rows of ``df`` (``n_rows`` rows), and the expected count."""
    fraction = min(1.0, wanted / n_rows)
    return (df if fraction >= 1.0 else df.sample(False, fraction, seed)), fraction * n_rows


def _train_in_spark(sample: DataFrame, nlist: int, iterations: int, seed: int) -> np.ndarray:
    """k-means on ``sample`` (unit vectors in ``_vec``) as one Spark job per iteration."""
    parallelism = default_parallelism(sample.sparkSession)
    sample = sample.repartition(parallelism).cache()
    try:
        pool = sample.orderBy(F.rand(seed)).limit(nlist * SEED_CANDIDATES_PER_LIST).collect()
        if not pool:
            raise ValueError("IVF index: the k-means sample is empty")
        pool = np.stack([np.frombuffer(row[VEC], dtype=np.float32) for row in pool])
        centroids = seed_centroids(pool, nlist, np.random.default_rng(seed))
        for iteration in range(iterations):
            progress.step("k-means", iteration, iterations, unit="iterations")
            stats = sample.mapInArrow(partial(_partition_stats, centroids), "cell int, n long, total binary")
            counts = np.zeros(len(centroids), dtype=np.int64)
            sums = np.zeros(centroids.shape, dtype=np.float64)
            for row in stats.collect():
                counts[row["cell"]] += row["n"]
                sums[row["cell"]] += np.frombuffer(row["total"], dtype=np.float64)
            centroids = _kmeans_update(counts, sums, centroids)
        progress.step("k-means", iterations, iterations, unit="iterations")
    finally:
        sample.unpersist()
    return centroids


def _partition_stats(centroids: np.ndarray, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    counts = np.zeros(len(centroids), dtype=np.int64)
    sums = np.zeros(centroids.shape, dtype=np.float64)
    for batch in batches:
        if batch.num_rows:
            c, s = _kmeans_stats(to_matrix(batch.column(VEC)), centroids)
            counts += c
            sums += s
    cells = np.nonzero(counts)[0]
    yield pa.RecordBatch.from_arrays(
        [pa.array(cells.astype(np.int32)), pa.array(counts[cells]), pa.array([row.tobytes() for row in sums[cells]], pa.binary())],
        ["cell", "n", "total"],
    )
