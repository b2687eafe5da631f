"""The one check-and-encode pass: bad vectors counted by reason and skipped, the rest unit bytes."""
from __future__ import annotations

import numpy as np
import pytest

from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, RANK, VECTOR
from recsys_spark.search.codec import VEC
from recsys_spark.search.index import ExactIndex
from recsys_spark.search.vectors import VectorCounts, encode_vectors


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
    encoded = encode_vectors(items, ITEM_ID)
    counts = encoded.counts
    assert counts.dim == 3
    assert (counts.rows, counts.usable, counts.missing, counts.wrong_dimension, counts.non_finite, counts.zero) == (
        10, 3, 2, 1, 3, 1
    )
    assert sorted(r[ITEM_ID] for r in encoded.frame.collect()) == ["a", "b", "c"]
    # The same rows in one batch of mixed lengths encode and count alike.
    one_batch = encode_vectors(items.coalesce(1), ITEM_ID)
    assert one_batch.counts == counts
    assert one_batch.frame.columns == [ITEM_ID, VEC]
    vectors = {r[ITEM_ID]: np.frombuffer(r[VEC], dtype=np.float32).tolist() for r in one_batch.frame.collect()}
    assert vectors == {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": pytest.approx([0.0, 0.6, 0.8])}
    assert VectorCounts.from_dict(counts.to_dict()) == counts
    queries = spark.createDataFrame([("q", [0.0, 0.0, 1.0]), ("bad", [1.0])], f"{QUERY_ID} string, {VECTOR} array<float>")
    result = ExactIndex.fit(items).search(queries, 2).collect()
    assert [(r[QUERY_ID], r[ITEM_ID]) for r in sorted(result, key=lambda r: r[RANK])] == [("q", "c"), ("q", "a")]


def test_a_given_dimension_counts_other_lengths_as_wrong(spark):
    rows = [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [1.0, 1.0, 1.0])]
    df = spark.createDataFrame(rows, f"{ITEM_ID} string, {VECTOR} array<float>")
    assert encode_vectors(df, ITEM_ID).counts.dim == 2  # the most common length
    counts = encode_vectors(df, ITEM_ID, dim=3).counts
    assert (counts.dim, counts.usable, counts.wrong_dimension, counts.skipped) == (3, 1, 2, 2)
