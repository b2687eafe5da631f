"""Spark Connect: what holds for a classic session here. The data stages' parity run on Connect
(the stage notebooks' tables written again by a Connect session, table for table) and train's
refusal of a Connect session are in test_notebooks.py, next to the classic run they compare with
(tests/support/connect.py says how the child process runs)."""
from __future__ import annotations

from recsys_spark.core.session import default_parallelism, is_connect


def test_a_classic_session_is_not_connect_and_keeps_its_parallelism(spark):
    assert not is_connect(spark)
    assert default_parallelism(spark) == spark.sparkContext.defaultParallelism
