"""Exact and IVF cosine search: numpy kernels against brute force, Spark against numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_spark.search import ann
from recsys_spark.search.ann import (
    TopK,
    clean_vectors,
    encode_vectors,
    exact_search,
    ivf_search,
    normalize_rows,
    numpy_exact_search,
    numpy_ivf_search,
    recall_vs_exact,
    train_centroids,
)
from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, RANK, SCORE, VECTOR


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


def test_topk_matches_brute_force_with_ties_over_many_blocks():
    rng = np.random.default_rng(1)
    items = normalize_rows(rng.normal(size=(900, 8)))
    items[[10, 400, 899]] = items[5]  # exact ties: the smaller index must win
    queries = normalize_rows(rng.normal(size=(50, 8)))
    queries[0] = items[5]
    index, values = numpy_exact_search(queries, items, 6, block_size=64)
    np.testing.assert_array_equal(index, brute_force(queries, items, 6))
    assert list(index[0][:4]) == [5, 10, 400, 899]
    assert np.all(np.diff(values, axis=1) <= 0)


def test_topk_pads_when_fewer_columns_than_k():
    top = TopK(2, 5)
    top.push(np.array([[0.1, 0.9], [0.5, 0.2]], dtype=np.float32), np.array([7, 3]))
    index, values = top.results()
    assert index.tolist() == [[3, 7, -1, -1, -1], [7, 3, -1, -1, -1]]
    assert np.isneginf(values[:, 2:]).all()


def test_numpy_ivf_with_every_list_probed_is_exact():
    rng = np.random.default_rng(2)
    items = normalize_rows(rng.normal(size=(2000, 16)))
    queries = normalize_rows(rng.normal(size=(100, 16)))
    index, _ = numpy_ivf_search(queries, items, 5, nlist=20, nprobe=20)
    np.testing.assert_array_equal(index, brute_force(queries, items, 5))


def test_exact_search_matches_numpy_reference_and_excludes(spark):
    rng = np.random.default_rng(3)
    items = normalize_rows(rng.normal(size=(300, 12)))
    items[42] = items[7]  # a tie, broken by item_id ("i007" < "i042")
    queries = normalize_rows(rng.normal(size=(40, 12)))
    queries[0] = items[7]
    item_ids = [f"i{j:03d}" for j in range(len(items))]
    query_ids = [f"q{j:02d}" for j in range(len(queries))]
    excluded = {("q01", item_ids[j]) for j in brute_force(queries[1:2], items, 3)[0]}
    exclude = spark.createDataFrame(sorted(excluded), f"{QUERY_ID} string, {ITEM_ID} string")
    # block_size 16: several item groups and query blocks, so the per-query merge is exercised.
    result = exact_search(
        vectors_df(spark, QUERY_ID, query_ids, queries), vectors_df(spark, ITEM_ID, item_ids, items), 5,
        exclude=exclude, block_size=16,
    ).toPandas()
    assert len(result) == 40 * 5
    got = result.sort_values([QUERY_ID, RANK]).groupby(QUERY_ID)[ITEM_ID].apply(list).to_dict()
    reference = brute_force(queries, items, 8)
    for q, qid in enumerate(query_ids):
        expected = [item_ids[j] for j in reference[q] if (qid, item_ids[j]) not in excluded][:5]
        assert got[qid] == expected, qid
    assert got["q00"][:2] == ["i007", "i042"]
    first = result[result[QUERY_ID] == "q05"].sort_values(RANK)
    assert first[SCORE].tolist() == pytest.approx(sorted((queries[5] @ items.T).tolist(), reverse=True)[:5], abs=1e-5)


@pytest.mark.parametrize("shuffle_partitions", [2, 8, 16])
def test_exact_search_with_exclusions_loses_no_query_at_any_partitioning(spark, shuffle_partitions, monkeypatch):
    """Regression: the two sides of the search's cogroup had keys of different types (int and
    long), which hash to different shuffle partitions; with exclusions joined in, every pair
    vanished without an error (ml-latest-small's content baseline came back empty). Adaptive
    execution hid it on small inputs by coalescing the shuffle into one partition, so it is off
    here, as it may be on a cluster."""
    rng = np.random.default_rng(4)
    items = normalize_rows(rng.normal(size=(200, 8)))
    queries = normalize_rows(rng.normal(size=(30, 8)))
    item_ids = [f"i{j:03d}" for j in range(len(items))]
    query_ids = [f"q{j:02d}" for j in range(len(queries))]
    exclude = spark.createDataFrame(
        [(q, item_ids[j]) for q in query_ids for j in range(0, 200, 20)], f"{QUERY_ID} string, {ITEM_ID} string"
    )
    monkeypatch.setattr(ann, "BROADCAST_QUERY_BYTES", 0)  # the cogroup path, where the key types matter
    previous = {key: spark.conf.get(key) for key in ("spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled")}
    spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        for block_size in (16, 4096):  # several groups and blocks; one group and one block
            result = exact_search(
                vectors_df(spark, QUERY_ID, query_ids, queries), vectors_df(spark, ITEM_ID, item_ids, items), 4,
                exclude=exclude, block_size=block_size,
            ).toPandas()
            assert len(result) == 30 * 4, (block_size, len(result))
            assert not set(result[ITEM_ID]) & {item_ids[j] for j in range(0, 200, 20)}
    finally:
        for key, value in previous.items():
            spark.conf.set(key, value)


@pytest.mark.parametrize("queries_travel", ["with-the-task", "cogrouped"])
def test_searches_cut_into_many_parts_and_query_blocks_match_brute_force(spark, monkeypatch, queries_travel):
    """Small task limits cut the work into many pieces: with the queries sent along, each item
    partition is searched in chunks of 37 items; cogrouped, every item goes into one of several
    parts and every query into one of several blocks. Exact search and IVF probing every cell
    must still give the exact top-k, ties by id, exclusions honoured."""
    monkeypatch.setattr(ann, "ITEMS_PER_TASK", 37)
    monkeypatch.setattr(ann, "QUERIES_PER_TASK", 9)
    if queries_travel == "cogrouped":
        monkeypatch.setattr(ann, "BROADCAST_QUERY_BYTES", 0)
    assert ann._plan(spark, 250, 30, 250, 250) == (7, 4)
    rng = np.random.default_rng(8)
    items = normalize_rows(rng.normal(size=(250, 8)))
    items[100] = items[3]
    queries = normalize_rows(rng.normal(size=(30, 8)))
    queries[0] = items[3]
    item_ids = [f"i{j:03d}" for j in range(len(items))]
    query_ids = [f"q{j:02d}" for j in range(len(queries))]
    reference = brute_force(queries, items, 6)
    excluded = {(query_ids[q], item_ids[reference[q][1]]) for q in range(1, len(queries))}
    exclude = spark.createDataFrame(sorted(excluded), f"{QUERY_ID} string, {ITEM_ID} string")
    queries_df = vectors_df(spark, QUERY_ID, query_ids, queries)
    items_df = vectors_df(spark, ITEM_ID, item_ids, items)
    for result in (
        exact_search(queries_df, items_df, 5, exclude=exclude, block_size=16),
        ivf_search(queries_df, items_df, 5, nlist=12, nprobe=12, exclude=exclude, block_size=16),
    ):
        got = result.toPandas().sort_values([QUERY_ID, RANK]).groupby(QUERY_ID)[ITEM_ID].apply(list).to_dict()
        assert len(got) == len(queries)
        for q, qid in enumerate(query_ids):
            assert got[qid] == [item_ids[j] for j in reference[q] if (qid, item_ids[j]) not in excluded][:5], qid
        assert got["q00"][:2] == ["i003", "i100"]


def test_ivf_recall_on_clustered_set_meets_target(spark, make_ctx):
    target = make_ctx().cfg.retrieve.recall_target
    rng = np.random.default_rng(4)
    dim = 24
    centers = normalize_rows(rng.normal(size=(30, dim)))
    items = clustered(3000, dim, centers, 0.25, rng)
    queries = clustered(200, dim, centers, 0.25, rng)
    item_ids = [f"i{j}" for j in range(len(items))]
    items_df = vectors_df(spark, ITEM_ID, item_ids, items)
    queries_df = vectors_df(spark, QUERY_ID, [f"q{j}" for j in range(len(queries))], queries)
    approx = ivf_search(queries_df, items_df, 10, nlist=40, nprobe=8, iterations=8)
    exact = exact_search(queries_df, items_df, 10)
    recall = recall_vs_exact(approx, exact, 10)
    assert recall >= target
    reference = brute_force(queries, items, 10)
    truth = {(f"q{q}", item_ids[j]) for q in range(len(queries)) for j in reference[q]}
    found = {(r[QUERY_ID], r[ITEM_ID]) for r in approx.collect()}
    assert len(found & truth) / len(truth) == pytest.approx(recall)


def test_ivf_recall_is_low_with_one_probe_on_diffuse_data(spark):
    """The recall figure can fail: one probe out of many cells on unclustered data misses."""
    rng = np.random.default_rng(5)
    items = normalize_rows(rng.normal(size=(1500, 16)))
    queries = normalize_rows(rng.normal(size=(60, 16)))
    items_df = vectors_df(spark, ITEM_ID, range(len(items)), items)
    queries_df = vectors_df(spark, QUERY_ID, range(len(queries)), queries)
    recall = recall_vs_exact(
        ivf_search(queries_df, items_df, 10, nlist=30, nprobe=1), exact_search(queries_df, items_df, 10), 10
    )
    assert recall < 0.8


def test_bad_vectors_are_counted_and_skipped(spark):
    rows = [
        ("a", [2.0, 0.0, 0.0]),
        ("b", [0.0, 1.0, 0.0]),
        ("c", [0.0, 0.6, 0.8]),
        ("short", [1.0, 0.0]),
        ("nan", [float("nan"), 0.0, 1.0]),
        ("inf", [float("inf"), 0.0, 1.0]),
        ("zero", [0.0, 0.0, 0.0]),
        ("null", None),
        ("empty", []),
        ("null element", [1.0, None, 0.0]),
    ]
    items = spark.createDataFrame(rows, f"{ITEM_ID} string, {VECTOR} array<float>")
    clean, counts = clean_vectors(items, ITEM_ID)
    assert counts.dim == 3
    assert (counts.rows, counts.usable, counts.missing, counts.wrong_dimension, counts.non_finite, counts.zero) == (
        10, 3, 2, 1, 3, 1
    )
    assert sorted(r[ITEM_ID] for r in clean.collect()) == ["a", "b", "c"]
    # One pass encodes the same rows as unit float32 bytes and counts alike (one batch, mixed lengths).
    encoded, encoded_counts = encode_vectors(items.coalesce(1), ITEM_ID)
    assert encoded_counts == counts
    assert encoded.columns == [ITEM_ID, ann.VEC]
    vectors = {r[ITEM_ID]: np.frombuffer(r[ann.VEC], dtype=np.float32).tolist() for r in encoded.collect()}
    assert vectors == {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": pytest.approx([0.0, 0.6, 0.8])}
    queries = spark.createDataFrame([("q", [0.0, 0.0, 1.0]), ("bad", [1.0])], f"{QUERY_ID} string, {VECTOR} array<float>")
    result = exact_search(queries, items, 2).collect()
    assert [(r[QUERY_ID], r[ITEM_ID]) for r in sorted(result, key=lambda r: r[RANK])] == [("q", "c"), ("q", "a")]


def test_k_larger_than_catalog_returns_every_item(spark):
    items = spark.createDataFrame(
        [("x", [1.0, 0.0]), ("y", [0.0, 1.0]), ("z", [0.7, 0.7])], f"{ITEM_ID} string, {VECTOR} array<float>"
    )
    queries = spark.createDataFrame([("q", [1.0, 0.1])], f"{QUERY_ID} string, {VECTOR} array<float>")
    for result in (exact_search(queries, items, 50), ivf_search(queries, items, 50, nlist=2, nprobe=2)):
        rows = sorted(result.collect(), key=lambda r: r[RANK])
        assert [r[ITEM_ID] for r in rows] == ["x", "z", "y"]
        assert [r[RANK] for r in rows] == [1, 2, 3]


def test_empty_item_table_gives_empty_result_and_dimension_mismatch_is_an_error(spark):
    empty = spark.createDataFrame([], f"{ITEM_ID} string, {VECTOR} array<float>")
    queries = spark.createDataFrame([("q", [1.0, 0.0])], f"{QUERY_ID} string, {VECTOR} array<float>")
    assert exact_search(queries, empty, 3).count() == 0
    assert ivf_search(queries, empty, 3, nlist=4, nprobe=2).count() == 0
    items = spark.createDataFrame([("x", [1.0, 0.0, 0.0])], f"{ITEM_ID} string, {VECTOR} array<float>")
    with pytest.raises(ValueError, match="dimension 3"):
        exact_search(queries, items, 3)


@pytest.mark.parametrize("max_driver_sample_mb", [256, 0], ids=["on-driver", "spark-jobs"])
def test_train_centroids_are_unit_vectors_near_the_clusters(spark, max_driver_sample_mb):
    rng = np.random.default_rng(6)
    centers = normalize_rows(rng.normal(size=(4, 10)))
    items = clustered(400, 10, centers, 0.05, rng)
    centroids = train_centroids(
        vectors_df(spark, ITEM_ID, range(len(items)), items), 4, iterations=10, seed=1, max_driver_sample_mb=max_driver_sample_mb
    )
    assert centroids.shape == (4, 10)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    # every true cluster centre has a centroid close to it
    assert (centers @ centroids.T).max(axis=1).min() > 0.9
    assert not math.isnan(float(centroids.sum()))
