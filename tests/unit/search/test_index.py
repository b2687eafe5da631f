"""ExactIndex / IVFIndex: fit, search, save, load (also in a new Spark session), bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, RANK, SCORE, VECTOR
from recsys_spark.search.index import MANIFEST, ExactIndex, IVFIndex, read_manifest
from recsys_spark.search.kernels import normalize_rows
from tests.support import REPO
from tests.unit.search.helpers import clustered, ranked_lists, vectors_df

# Runs in a fresh interpreter, so a fresh Spark session: load the index, search, print the rows.
LOAD_AND_SEARCH = textwrap.dedent(
    """
    import json, sys
    from tests.support import small_config
    from recsys_spark.core.session import get_spark
    from recsys_spark.search.index import IVFIndex

    index_path, queries_path, warehouse = sys.argv[1:4]
    spark = get_spark(small_config(warehouse))
    queries = spark.createDataFrame(json.load(open(queries_path)), "query_id string, vector array<float>")
    index = IVFIndex.load(spark, index_path)
    rows = index.search(queries, 5, nprobe=3).collect()
    print("RESULT " + json.dumps({"rows": [[r.query_id, r.item_id, r.rank, float(r.score)] for r in rows],
                                  "nlist": index.nlist, "source": index.source, "counts": index.counts.to_dict()}))
    spark.stop()
    """
)


def _data(spark, seed=21, n_items=400, n_queries=25, dim=10):
    rng = np.random.default_rng(seed)
    centers = normalize_rows(rng.normal(size=(8, dim)))
    items, queries = clustered(n_items, dim, centers, 0.3, rng), clustered(n_queries, dim, centers, 0.3, rng)
    return vectors_df(spark, ITEM_ID, [f"i{j:03d}" for j in range(n_items)], items), queries


def test_ivf_index_saved_and_loaded_in_a_new_session_gives_the_same_results(spark, tmp_path):
    items_df, queries = _data(spark)
    query_rows = [(f"q{j:02d}", [float(x) for x in row]) for j, row in enumerate(queries)]
    queries_df = spark.createDataFrame(query_rows, f"{QUERY_ID} string, {VECTOR} array<float>")
    index = IVFIndex.fit(items_df, 12, iterations=6, seed=3)
    before = sorted((r[QUERY_ID], r[ITEM_ID], r[RANK], r[SCORE]) for r in index.search(queries_df, 5, nprobe=3).collect())
    assert len(before) == 25 * 5
    path = index.save(str(tmp_path / "index"), source={"table_version": 4, "model_version": None})
    assert index.path == path
    assert sorted(os.listdir(path)) == ["centroids.npy", "items", MANIFEST]
    manifest = read_manifest(path)
    assert manifest["kind"] == "ivf" and manifest["dim"] == 10
    assert manifest["params"] == {"nlist": 12, "iterations": 6, "seed": 3, "train_points_per_list": 64}
    assert manifest["counts"]["usable"] == 400 and manifest["source"] == {"table_version": 4, "model_version": None}
    queries_path = tmp_path / "queries.json"
    queries_path.write_text(json.dumps(query_rows))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_SEARCH, path, str(queries_path), str(tmp_path / "other-warehouse")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert (loaded["nlist"], loaded["source"], loaded["counts"]) == (12, manifest["source"], index.counts.to_dict())
    after = sorted(tuple(row) for row in loaded["rows"])
    assert [row[:3] for row in after] == [row[:3] for row in before]
    assert [row[3] for row in after] == pytest.approx([row[3] for row in before], abs=1e-6)


def test_saved_exact_index_and_a_resave_replace_the_folder(spark, tmp_path):
    items_df, queries = _data(spark, seed=22, n_items=60, n_queries=5)
    queries_df = vectors_df(spark, QUERY_ID, [f"q{j}" for j in range(5)], queries)
    index = ExactIndex.fit(items_df.withColumnRenamed(ITEM_ID, "movie").withColumnRenamed(VECTOR, "v"), id_col="movie", vector_col="v")
    expected = ranked_lists(index.search(queries_df, 4))
    path = str(tmp_path / "exact")
    index.save(path, source={"version": 1})
    index.save(path, source={"version": 2})  # an index folder is replaced
    loaded = ExactIndex.load(spark, path)
    assert loaded.source == {"version": 2} and loaded.size == 60 and loaded.dim == 10
    assert ranked_lists(loaded.search(queries_df, 4)) == expected
    assert not [name for name in os.listdir(tmp_path) if "staging" in name]


def test_empty_index_and_dimension_mismatch_are_clear_errors(spark):
    empty = spark.createDataFrame([], f"{ITEM_ID} string, {VECTOR} array<float>")
    queries = spark.createDataFrame([("q", [1.0, 0.0])], f"{QUERY_ID} string, {VECTOR} array<float>")
    with pytest.raises(ValueError, match="no usable item vectors"):
        ExactIndex.fit(empty)
    with pytest.raises(ValueError, match="no usable item vectors"):
        IVFIndex.fit(empty, nlist=4)
    items = spark.createDataFrame([("x", [1.0, 0.0, 0.0])], f"{ITEM_ID} string, {VECTOR} array<float>")
    with pytest.raises(ValueError, match="dimension 3"):
        ExactIndex.fit(items).search(queries, 3)
    no_queries = spark.createDataFrame([], f"{QUERY_ID} string, {VECTOR} array<float>")
    assert ExactIndex.fit(items).search(no_queries, 3).count() == 0
    with pytest.raises(ValueError, match="k must be >= 1"):
        ExactIndex.fit(items).search(queries, 0)
    with pytest.raises(ValueError, match="nlist and nprobe must be >= 1"):
        IVFIndex.fit(items, nlist=0)


def test_loading_what_is_not_an_index_names_the_path_and_the_problem(spark, tmp_path):
    items_df, _ = _data(spark, seed=23, n_items=40, n_queries=3)
    missing = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=f"no search index at {missing}"):
        IVFIndex.load(spark, missing)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not an index")
    with pytest.raises(ValueError, match=f"{plain} is not a search index: it has no {MANIFEST}"):
        IVFIndex.load(spark, str(plain))
    with pytest.raises(ValueError, match="not replacing it"):
        ExactIndex.fit(items_df).save(str(plain))
    path = IVFIndex.fit(items_df, 4).save(str(tmp_path / "ivf"), source={"v": 1})
    with pytest.raises(ValueError, match="holds a 'ivf' index, not 'exact'"):
        ExactIndex.load(spark, path)
    manifest_path = os.path.join(path, MANIFEST)
    manifest = json.loads(open(manifest_path).read())
    with open(manifest_path, "w") as handle:
        json.dump({**manifest, "format_version": 99}, handle)
    with pytest.raises(ValueError, match=f"{path}: search index manifest version 99, this code reads version 1"):
        IVFIndex.load(spark, path)
    with open(manifest_path, "w") as handle:
        json.dump({**manifest, "format": "something else"}, handle)
    with pytest.raises(ValueError, match="not a search index manifest"):
        IVFIndex.load(spark, path)
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    loaded = IVFIndex.load(spark, path)
    wrong_dim = spark.createDataFrame([("q", [1.0, 0.0])], f"{QUERY_ID} string, {VECTOR} array<float>")
    with pytest.raises(ValueError, match=f"ivf index at {path}: no query vector has the index's dimension 10"):
        loaded.search(wrong_dim, 3)
    with pytest.raises(ValueError, match="not JSON"):
        loaded.save(path, source={"when": object()})
