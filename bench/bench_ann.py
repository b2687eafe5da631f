"""Cosine top-K side by side: numpy exact / IVF, Spark exact / IVF (recsys_spark.search.index), Spark MLlib
BucketedRandomProjectionLSH, in one process on one synthetic data set.

    python bench/bench_ann.py --items 100000 --queries 20000 --dim 384 --scale 10000,100000,1000000

The vectors are hard on purpose: items come from a two-level mixture (topics -> many overlapping
sub-topics -> noisy items) around a shared mean direction (real sentence embeddings are anisotropic),
queries are noisy means of a few items of one topic, like interest vectors. The bench reports how
many IVF cells a query's true top-10 spans, to show the neighbours are not one clean cluster.
Spark timings exclude session start and a warm-up search on 5,000 items x 500 queries (the
fresh JVM's first searches load classes and fork Python workers; its time is reported) and include
everything else (vector checks, k-means); both Spark searches read the vectors from Parquet and run
to completion (``noop`` sink). BRP-LSH is timed on a subsample of queries at two sizes (it needs
seconds per query) and its time for all queries extrapolated linearly (stated in the output).
``--repeat N`` times numpy IVF and Spark IVF N times each and compares the fastest of each (the
machine is shared and noisy). The growth table repeats numpy exact / IVF and Spark exact / IVF on fresh sets of ``--scale``
items with ``--scale-queries`` queries. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys_spark.search.index import ExactIndex, IVFIndex  # noqa: E402
from recsys_spark.search.kernels import normalize_rows, numpy_exact_search, numpy_ivf_search  # noqa: E402
from recsys_spark.search.kmeans import numpy_centroids  # noqa: E402
from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, RANK, VECTOR  # noqa: E402

log = logging.getLogger("bench_ann")


def make_vectors(n_items: int, n_queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items and queries from the overlapping two-level mixture described in the module doc."""
    rng = np.random.default_rng(seed)
    n_topics, subtopics = 64, 48
    mean = normalize_rows(rng.normal(size=(1, dim)))[0]
    topics = normalize_rows(rng.normal(size=(n_topics, dim)) + 1.2 * mean)
    subs = normalize_rows(np.repeat(topics, subtopics, axis=0) + 3.0 * rng.normal(size=(n_topics * subtopics, dim)) / math.sqrt(dim))
    items = np.empty((n_items, dim), dtype=np.float32)
    for start in range(0, n_items, 100_000):
        n = min(100_000, n_items - start)
        picks = rng.integers(0, len(subs), n)
        noise = rng.normal(size=(n, dim)).astype(np.float32) / math.sqrt(dim)
        items[start : start + n] = normalize_rows(subs[picks] + 1.0 * noise)
    topic_of = rng.integers(0, n_topics, n_queries)
    queries = np.empty((n_queries, dim), dtype=np.float32)
    for q in range(n_queries):
        members = topic_of[q] * subtopics + rng.integers(0, subtopics, rng.integers(1, 6))
        queries[q] = subs[members].mean(axis=0)
    queries = normalize_rows(queries + 0.5 * rng.normal(size=queries.shape).astype(np.float32) / math.sqrt(dim))
    return items, queries


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, truth)]))


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def matmul_only(queries: np.ndarray, items: np.ndarray, block_size: int) -> None:
    """The blocked matrix multiply of numpy_exact_search without any top-K selection."""
    for q0 in range(0, len(queries), block_size):
        block = queries[q0 : q0 + block_size]
        for i0 in range(0, len(items), block_size):
            block @ items[i0 : i0 + block_size].T


def naive_exact(queries: np.ndarray, items: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """Top-K by argpartition over each query block's full score row (the naive selection)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for q0 in range(0, len(queries), block_size):
        scores = queries[q0 : q0 + block_size] @ items.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[q0 : q0 + block_size] = np.take_along_axis(part, order, axis=1)
    return out


def numpy_ivf(queries: np.ndarray, items: np.ndarray, k: int, nlist: int, nprobe: int, seed: int):
    """numpy IVF with its k-means training (on a sample), as timed against Spark IVF."""
    return numpy_ivf_search(queries, items, k, nprobe, numpy_centroids(items, nlist, 10, seed))


def ivf_search(queries, items, k: int, nlist: int, nprobe: int, seed: int, block_size: int):
    """Spark IVF from scratch: fit the index (encode, k-means on a sample) and search it."""
    return IVFIndex.fit(items, nlist, seed=seed, block_size=block_size).search(queries, k, nprobe=nprobe)


def exact_search(queries, items, k: int, block_size: int):
    """Spark exact search from scratch: fit (encode) the index and search it."""
    return ExactIndex.fit(items, block_size=block_size).search(queries, k)


def cells_spanned(queries: np.ndarray, items: np.ndarray, truth: np.ndarray, nlist: int, seed: int) -> float:
    """Mean number of distinct IVF cells holding a query's true top-10 (1 = one clean cluster)."""
    centroids = numpy_centroids(items, nlist, 10, seed)
    cell = np.argmax(items[np.unique(truth)] @ centroids.T, axis=1)
    lookup = dict(zip(np.unique(truth).tolist(), cell.tolist()))
    return float(np.mean([len({lookup[i] for i in row}) for row in truth]))


def pick_nprobe(queries, items, truth, k, nlist, target, seed) -> tuple[int, float]:
    """Smallest nprobe (doubling) whose numpy IVF recall reaches ``target`` on these queries."""
    centroids = numpy_centroids(items, nlist, 10, seed)
    nprobe = 4
    while True:
        index, _ = numpy_ivf_search(queries, items, k, nprobe, centroids)
        r = recall(index, truth)
        if r >= target or nprobe >= nlist:
            return nprobe, r
        nprobe *= 2


def write_parquet(path: Path, id_col: str, matrix: np.ndarray, prefix: str) -> str:
    ids = pa.array([f"{prefix}{i}" for i in range(len(matrix))])
    values = pa.array(matrix.ravel(), type=pa.float32())
    vectors = pa.ListArray.from_arrays(pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)), values)
    pq.write_table(pa.table({id_col: ids, VECTOR: vectors}), path, row_group_size=50_000)
    return str(path)


def spark_indices(result, prefix: str, n_queries: int, k: int) -> np.ndarray:
    rows = result.select(QUERY_ID, ITEM_ID, RANK).toPandas()
    out = np.full((n_queries, k), -1, dtype=np.int64)
    q = rows[QUERY_ID].str.slice(1).astype(int).to_numpy()
    i = rows[ITEM_ID].str.slice(len(prefix)).astype(int).to_numpy()
    out[q, rows[RANK].to_numpy() - 1] = i
    return out


def noop(df) -> None:
    df.write.format("noop").mode("overwrite").save()


def spark_timed(search, *args, **kwargs):
    """``(result, seconds)``: building the search (its eager parts: vector checks, k-means on a
    sample) and running it to completion, both timed."""
    started = time.perf_counter()
    result = search(*args, **kwargs)
    noop(result)
    return result, time.perf_counter() - started


def brp_lsh(spark, items_path, queries_np, truth, k, settings, sizes, seed) -> list[dict]:
    """BucketedRandomProjectionLSH approxSimilarityJoin + top-K, on query subsamples."""
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    items = spark.read.parquet(items_path).select(F.col(ITEM_ID), array_to_vector(VECTOR).alias("features"))
    out = []
    for bucket_length, tables in settings:
        model = BucketedRandomProjectionLSH(
            inputCol="features", outputCol="hashes", bucketLength=bucket_length, numHashTables=tables, seed=seed
        ).fit(items)
        hashed_items = model.transform(items).cache()
        hashed_items.count()
        times = []
        for n in sizes:
            sub = queries_np[:n]
            frame = spark.createDataFrame(
                [(f"q{i}", [float(x) for x in row]) for i, row in enumerate(sub)], f"{QUERY_ID} string, {VECTOR} array<float>"
            ).select(QUERY_ID, array_to_vector(VECTOR).alias("features"))
            # unit vectors: euclidean distance sqrt(2 - 2 cos); threshold 2.0 keeps every colliding pair
            started = time.perf_counter()
            joined = model.approxSimilarityJoin(frame, hashed_items, 2.0, distCol="dist").select(
                F.col(f"datasetA.{QUERY_ID}").alias(QUERY_ID), F.col(f"datasetB.{ITEM_ID}").alias(ITEM_ID), "dist"
            )
            ranked = joined.withColumn(RANK, F.row_number().over(Window.partitionBy(QUERY_ID).orderBy("dist", ITEM_ID)))
            top = ranked.where(F.col(RANK) <= k).toPandas()
            times.append(time.perf_counter() - started)
        found = np.full((sizes[-1], k), -1, dtype=np.int64)
        q = top[QUERY_ID].str.slice(1).astype(int).to_numpy()
        found[q, top[RANK].to_numpy() - 1] = top[ITEM_ID].str.slice(1).astype(int).to_numpy()
        # Proportional to the larger sample: includes LSH's fixed costs, so it errs in LSH's
        # disfavour only by those (reported separately as the raw timings).
        per_query = times[-1] / sizes[-1]
        out.append(
            {
                "bucket_length": bucket_length,
                "num_hash_tables": tables,
                "queries_timed": sizes,
                "seconds": [round(t, 2) for t in times],
                "recall_at_k": round(recall(found, truth[: sizes[-1]]), 4),
                "seconds_per_query": round(per_query, 4),
            }
        )
        hashed_items.unpersist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--lsh-queries", default="10,20", help="two query-subsample sizes for BRP-LSH")
    parser.add_argument("--lsh-settings", default="1.0:4", help="bucketLength:numHashTables,...")
    parser.add_argument("--scale", default="", help="item counts for the growth table, e.g. 10000,100000,1000000")
    parser.add_argument("--scale-queries", type=int, default=2000)
    parser.add_argument("--selection-queries", type=int, default=1000, help="queries for the top-K vs matmul split")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=1, help="runs of numpy IVF and Spark IVF; the fastest of each is compared")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    k, bs = args.k, args.block_size
    report: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "args": vars(args)}

    items, queries = make_vectors(args.items, args.queries, args.dim, args.seed)
    nlist = max(1, round(math.sqrt(args.items)))
    log.info("numpy exact")
    (truth, _), t_exact = timed(numpy_exact_search, queries, items, k, bs)
    # Selection cost vs the multiply, measured side by side on one subset of queries.
    sub = queries[: args.selection_queries]
    _, t_sub_exact = timed(numpy_exact_search, sub, items, k, bs)
    _, t_sub_matmul = timed(matmul_only, sub, items, bs)
    naive, t_naive = timed(naive_exact, sub, items, k, bs)
    report["numpy_exact"] = {
        "seconds": round(t_exact, 2),
        "subset_queries": len(sub),
        "subset_seconds": round(t_sub_exact, 2),
        "subset_matmul_seconds": round(t_sub_matmul, 2),
        "subset_naive_argpartition_seconds": round(t_naive, 2),
        "gflops_matmul": round(2 * len(sub) * len(items) * args.dim / t_sub_matmul / 1e9, 1),
        "naive_matches": round(float((naive == truth[: len(sub)]).mean()), 4),
    }
    report["data"] = {
        "items": len(items), "queries": len(queries), "dim": args.dim, "nlist": nlist,
        "mean_cells_spanned_by_true_top10": round(cells_spanned(queries[:2000], items, truth[:2000], nlist, args.seed), 2),
        "mean_cosine_10th_neighbour": round(float(np.mean([queries[i] @ items[truth[i, -1]] for i in range(min(1000, len(queries)))])), 3),
    }
    log.info("choosing nprobe")
    nprobe, _ = pick_nprobe(queries[:1000], items, truth[:1000], k, nlist, args.target, args.seed)
    log.info("numpy ivf nprobe=%d", nprobe)
    ivf_runs = [timed(numpy_ivf, queries, items, k, nlist, nprobe, args.seed) for _ in range(args.repeat)]
    (ivf_index, _), t_ivf = ivf_runs[0][0], min(t for _, t in ivf_runs)
    report["numpy_ivf"] = {
        "seconds": round(t_ivf, 2), "runs": [round(t, 2) for _, t in ivf_runs], "nprobe": nprobe,
        "recall_at_k": round(recall(ivf_index, truth), 4),
    }

    from recsys_spark.core.config import load_config
    from recsys_spark.core.session import get_spark

    workdir = Path(tempfile.mkdtemp(prefix="bench_ann_"))
    items_path = write_parquet(workdir / "items.parquet", ITEM_ID, items, "i")
    queries_path = write_parquet(workdir / "queries.parquet", QUERY_ID, queries, "q")
    spark = get_spark(load_config("local", [f"warehouse={workdir}/wh", "spark.driver_memory=6g", "spark.shuffle_partitions=8"]))
    spark_items = spark.read.parquet(items_path)
    spark_queries = spark.read.parquet(queries_path)
    # A fresh JVM compiles and loads classes and forks Python workers on its first searches; time
    # that once on a small slice and leave it out, as a long-running cluster would.
    log.info("spark warm-up")
    warm_items = spark.read.parquet(write_parquet(workdir / "warm_items.parquet", ITEM_ID, items[:5000], "i"))
    warm_queries = spark.read.parquet(write_parquet(workdir / "warm_queries.parquet", QUERY_ID, queries[:500], "q"))
    _, t_warm_ivf = spark_timed(ivf_search, warm_queries, warm_items, k, 70, 8, seed=args.seed, block_size=bs)
    _, t_warm_exact = spark_timed(exact_search, warm_queries, warm_items, k, block_size=bs)
    report["spark_warmup"] = {"items": 5000, "queries": 500, "ivf_seconds": round(t_warm_ivf, 2), "exact_seconds": round(t_warm_exact, 2)}
    log.info("partial report: %s", json.dumps(report))
    log.info("spark ivf")
    spark_runs = [
        spark_timed(ivf_search, spark_queries, spark_items, k, nlist, nprobe, seed=args.seed, block_size=bs)
        for _ in range(args.repeat)
    ]
    result, t_spark_ivf = spark_runs[0][0], min(t for _, t in spark_runs)
    spark_ivf = spark_indices(result, "i", len(queries), k)
    report["spark_ivf"] = {
        "seconds": round(t_spark_ivf, 2), "runs": [round(t, 2) for _, t in spark_runs], "nprobe": nprobe,
        "recall_at_k": round(recall(spark_ivf, truth), 4),
    }
    log.info("partial report: %s", json.dumps(report))
    log.info("spark exact")
    result, t_spark_exact = spark_timed(exact_search, spark_queries, spark_items, k, block_size=bs)
    spark_exact = spark_indices(result, "i", len(queries), k)
    report["spark_exact"] = {"seconds": round(t_spark_exact, 2), "recall_at_k": round(recall(spark_exact, truth), 4)}

    log.info("partial report: %s", json.dumps(report))
    log.info("BRP-LSH")
    sizes = [int(s) for s in args.lsh_queries.split(",")]
    settings = [(float(a), int(b)) for a, b in (s.split(":") for s in args.lsh_settings.split(","))]
    lsh = brp_lsh(spark, items_path, queries, truth, k, settings, sizes, args.seed)
    for entry in lsh:
        entry["seconds_extrapolated_all_queries"] = round(entry["seconds_per_query"] * len(queries), 1)
    report["brp_lsh"] = lsh
    best_lsh = max(lsh, key=lambda e: e["recall_at_k"])
    # Spark IVF again at the smallest nprobe whose numpy IVF recall reaches BRP-LSH's best, for
    # the comparison at equal or better recall.
    lsh_nprobe, _ = pick_nprobe(queries[:1000], items, truth[:1000], k, nlist, best_lsh["recall_at_k"], args.seed)
    log.info("spark ivf at BRP-LSH's recall: nprobe=%d", lsh_nprobe)
    result, t_lsh_ivf = spark_timed(ivf_search, spark_queries, spark_items, k, nlist, lsh_nprobe, seed=args.seed, block_size=bs)
    report["spark_ivf_at_lsh_recall"] = {
        "seconds": round(t_lsh_ivf, 2), "nprobe": lsh_nprobe,
        "recall_at_k": round(recall(spark_indices(result, "i", len(queries), k), truth), 4),
    }
    report["ratios"] = {
        "spark_ivf_over_numpy_ivf": round(t_spark_ivf / t_ivf, 2),
        "spark_exact_over_numpy_exact": round(t_spark_exact / t_exact, 2),
        "numpy_topk_over_matmul": round((t_sub_exact - t_sub_matmul) / t_sub_matmul, 2),
        "numpy_naive_topk_over_matmul": round((t_naive - t_sub_matmul) / t_sub_matmul, 2),
        "brp_lsh_best_recall_over_spark_ivf_at_lsh_recall_time": round(best_lsh["seconds_extrapolated_all_queries"] / t_lsh_ivf, 1),
        "brp_lsh_best_recall_over_spark_exact_time": round(best_lsh["seconds_extrapolated_all_queries"] / t_spark_exact, 1),
    }

    growth = []
    for n in [int(s) for s in args.scale.split(",") if s]:
        log.info("partial report: %s", json.dumps(report))
        log.info("growth: %d items", n)
        g_items, g_queries = make_vectors(n, args.scale_queries, args.dim, args.seed + 1)
        g_nlist = max(1, round(math.sqrt(n)))
        (g_truth, _), g_exact = timed(numpy_exact_search, g_queries, g_items, k, bs)
        g_nprobe, _ = pick_nprobe(g_queries[:500], g_items, g_truth[:500], k, g_nlist, args.target, args.seed)
        (g_ivf, _), g_t_ivf = timed(numpy_ivf, g_queries, g_items, k, g_nlist, g_nprobe, args.seed)
        g_items_path = write_parquet(workdir / f"items_{n}.parquet", ITEM_ID, g_items, "i")
        g_queries_path = write_parquet(workdir / f"queries_{n}.parquet", QUERY_ID, g_queries, "q")
        del g_items
        s_items, s_queries = spark.read.parquet(g_items_path), spark.read.parquet(g_queries_path)
        result, g_spark_ivf = spark_timed(ivf_search, s_queries, s_items, k, g_nlist, g_nprobe, seed=args.seed, block_size=bs)
        g_found = spark_indices(result, "i", len(g_queries), k)
        result, g_spark_exact = spark_timed(exact_search, s_queries, s_items, k, block_size=bs)
        g_exact_found = spark_indices(result, "i", len(g_queries), k)
        growth.append(
            {
                "items": n, "queries": len(g_queries), "nlist": g_nlist, "nprobe": g_nprobe,
                "numpy_exact_s": round(g_exact, 2), "numpy_ivf_s": round(g_t_ivf, 2),
                "numpy_ivf_recall": round(recall(g_ivf, g_truth), 4),
                "spark_ivf_s": round(g_spark_ivf, 2), "spark_ivf_recall": round(recall(g_found, g_truth), 4),
                "spark_exact_s": round(g_spark_exact, 2), "spark_exact_recall": round(recall(g_exact_found, g_truth), 4),
                "spark_ivf_over_numpy_ivf": round(g_spark_ivf / g_t_ivf, 2),
                "spark_exact_over_numpy_exact": round(g_spark_exact / g_exact, 2),
            }
        )
    report["growth"] = growth
    spark.stop()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
