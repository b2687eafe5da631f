"""The pipeline submitted with spark-submit to a real standalone cluster (a master and two
workers on 127.0.0.1), the package shipped as a zip through --py-files, the config through
--files, and the Delta tables in a folder every process shares."""
from __future__ import annotations

import pytest
from tests.support.cluster import (
    REPO,
    StandaloneCluster,
    build_package_zip,
    spark_submit,
    summary_line,
    write_tiny_movielens,
)

from recsys_spark.core.schemas import (
    ITEM_EMBEDDINGS_TABLE,
    METRICS_TABLE,
    RECOMMENDATIONS_TABLE,
    SILVER_EVENTS_TABLE,
    SILVER_ITEMS_TABLE,
    SIMILAR_ITEMS_TABLE,
    USER_SEQUENCES_TABLE,
    USER_VECTORS_TABLE,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    standalone = StandaloneCluster(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="1g")
    standalone.start()
    yield standalone
    standalone.stop()


def test_cluster_has_two_workers(cluster):
    state = cluster.state()
    assert state["status"] == "ALIVE"
    assert state["aliveworkers"] == 2
    assert state["cores"] == 2


# Small enough for two 1-core workers; the stages and the backend are the cluster profile's own
# (conf/cluster.yaml: train.backend=horovod on 2 workers, when Horovod is installed).
PIPELINE_SETTINGS = (
    "train.epochs=2",
    "train.batch_size=32",
    "train.max_len=8",
    "train.embedding_dim=16",
    "train.lstm_units=16",
    "train.tf_threads=1",
    "retrieve.candidates=20",
    "evaluate.baselines=[popularity, next_item]",
    "evaluate.ks=[10]",
)


def test_whole_pipeline_through_spark_submit(cluster, tmp_path, make_ctx):
    """``jobs/main.py run`` runs every stage as one application on the two workers; each silver
    and gold table it writes is checked, not only its exit code. (One application: a separate
    spark-submit of ingest and features cost a third of this file's time and checked a subset of
    what this run writes; jobs/main.py's per-command entry is tested in test_jobs.)"""
    try:
        import horovod.spark  # noqa: F401

        backend = ()
    except ImportError:
        backend = ("train.backend=tf_distribute",)
    movielens = tmp_path / "ml-tiny"
    counts = write_tiny_movielens(movielens)
    package = build_package_zip(tmp_path / "dist" / "recsys_spark.zip")
    warehouse = tmp_path / "shared-warehouse"
    overrides = [f"warehouse={warehouse}", f"input.events={movielens}", "spark.shuffle_partitions=2",
                 *PIPELINE_SETTINGS, *backend]

    completed_before = len(cluster.state()["completedapps"])

    code, stdout, stderr = spark_submit(cluster, "run", package, REPO / "conf" / "cluster.yaml", overrides, cwd=tmp_path)
    assert code == 0, f"spark-submit jobs/main.py run failed ({code}):\n{stderr[-4000:]}"
    summary = summary_line(stdout)
    assert summary["status"] == "ok"
    stages = summary["stages"]
    assert list(stages) == ["ingest", "features", "encode", "interests", "train", "retrieve", "score", "evaluate"]
    assert stages["train"]["world_size"] == 2
    assert stages["train"]["identical_weights"]

    # The job ran as one application of the standalone master, on both workers.
    apps = cluster.state()["completedapps"][completed_before:]
    assert len(apps) == 1
    assert all(app["state"] == "FINISHED" and app["cores"] == 2 for app in apps)

    assert stages["ingest"]["rows_good"] == counts["ratings"]
    ctx = make_ctx(f"warehouse={warehouse}")
    assert ctx.lake.read(SILVER_EVENTS_TABLE).count() == counts["ratings"]
    assert ctx.lake.read(SILVER_ITEMS_TABLE).count() == counts["movies"]
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    assert sequences.count() == counts["users"]
    assert sequences.selectExpr("sum(size(items))").first()[0] == counts["ratings"]
    assert stages["encode"]["items_encoded"] == counts["movies"]
    dims = ctx.lake.read(ITEM_EMBEDDINGS_TABLE).selectExpr("size(vector) AS d").distinct().collect()
    assert [r["d"] for r in dims] == [384]
    assert ctx.lake.read(USER_VECTORS_TABLE).count() == counts["users"]

    recommendations = ctx.lake.read(RECOMMENDATIONS_TABLE)
    assert recommendations.select("user_id").distinct().count() == counts["users"]
    assert recommendations.agg({"rank": "max"}).first()[0] <= 10
    # Nothing a user has already rated is recommended to them: the complete seen set, not only
    # the history window.
    seen = ctx.lake.read(USER_SEQUENCES_TABLE).selectExpr("user_id", "explode(seen_items) AS item_id")
    assert recommendations.join(seen, ["user_id", "item_id"]).count() == 0
    assert recommendations.where("reason IS NULL OR reason = ''").count() == 0
    assert ctx.lake.read(SIMILAR_ITEMS_TABLE).select("item_id").distinct().count() == counts["movies"]

    metrics = ctx.lake.read(METRICS_TABLE).where(f"run_id = '{summary['run_id']}'")
    models = {r["model"] for r in metrics.select("model").distinct().collect()}
    assert {"lstm", "popularity", "next_item"} <= models
