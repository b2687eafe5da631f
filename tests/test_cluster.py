"""The pipeline submitted with spark-submit to a real standalone cluster (a master and two
workers on 127.0.0.1), the package shipped as a zip through --py-files, the config through
--files, and the Delta tables in a folder every process shares."""
from __future__ import annotations

import pytest
from cluster_util import (
    REPO,
    StandaloneCluster,
    build_package_zip,
    spark_submit,
    summary_line,
    write_tiny_movielens,
)

from recsys_spark.schemas import SILVER_EVENTS_TABLE, SILVER_ITEMS_TABLE, USER_SEQUENCES_TABLE

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


def test_ingest_and_features_through_spark_submit(cluster, tmp_path, make_ctx):
    movielens = tmp_path / "ml-tiny"
    counts = write_tiny_movielens(movielens)
    package = build_package_zip(tmp_path / "dist" / "recsys_spark.zip")
    warehouse = tmp_path / "shared-warehouse"
    overrides = [f"warehouse={warehouse}", f"input.events={movielens}", "spark.shuffle_partitions=2"]
    completed_before = len(cluster.state()["completedapps"])

    summaries = {}
    for job in ("ingest", "features"):
        code, stdout, stderr = spark_submit(
            cluster, job, package, REPO / "conf" / "cluster.yaml", overrides, cwd=tmp_path
        )
        assert code == 0, f"spark-submit jobs/{job}.py failed ({code}):\n{stderr[-4000:]}"
        summaries[job] = summary_line(stdout)
        assert summaries[job]["status"] == "ok"

    # Each job ran as an application of the standalone master, on both workers.
    apps = cluster.state()["completedapps"][completed_before:]
    assert len(apps) == 2
    assert all(app["state"] == "FINISHED" and app["cores"] == 2 for app in apps)

    assert summaries["ingest"]["rows_good"] == counts["ratings"]
    ctx = make_ctx(f"warehouse={warehouse}")
    assert ctx.lake.read(SILVER_EVENTS_TABLE).count() == counts["ratings"]
    assert ctx.lake.read(SILVER_ITEMS_TABLE).count() == counts["movies"]
    sequences = ctx.lake.read(USER_SEQUENCES_TABLE)
    assert sequences.count() == counts["users"]
    lengths = sequences.selectExpr("sum(size(items))").first()[0]
    assert lengths == counts["ratings"]
