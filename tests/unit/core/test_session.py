"""The session's settings that need no Spark: the driver's memory and the shuffle partitions from
the machine's."""
from __future__ import annotations

import os

import pytest

from recsys_spark.core.config import ConfigError, load_config
from recsys_spark.core.session import driver_memory, physical_memory_bytes, shuffle_partitions

GIB = 2**30


@pytest.mark.parametrize(
    "setting, master, memory, want",
    [
        ("auto", "local[*]", 24 * GIB, "12g"),  # this VM: half for the JVM, half for the Python workers
        ("auto", "local[2]", 7 * GIB + GIB // 2, "3g"),  # whole GiB, rounded down
        ("auto", "local", GIB, "1g"),  # never below 1g
        ("auto", "spark://master:7077", 24 * GIB, None),  # a cluster: the launcher decides
        ("auto", "yarn", 24 * GIB, None),
        ("4g", "local[*]", 24 * GIB, "4g"),  # a size is taken as given, anywhere
        ("512m", "yarn", 24 * GIB, "512m"),
    ],
)
def test_driver_memory_auto_is_half_the_machine_on_a_local_master(setting, master, memory, want):
    assert driver_memory(setting, master, memory) == want


def test_the_local_profile_sizes_the_driver_from_this_machine():
    cfg = load_config("local")
    assert cfg.spark.driver_memory == "auto"
    total = physical_memory_bytes()
    assert total and total > GIB
    assert driver_memory(cfg.spark.driver_memory, cfg.spark.master) == f"{max(1, total // 2 // GIB)}g"


@pytest.mark.parametrize("value", ["lots", "4 g", "-1g", "auto4g"])
def test_a_driver_memory_that_is_not_a_size_names_the_key(value):
    with pytest.raises(ConfigError, match="'spark.driver_memory'"):
        load_config("local", [f"spark.driver_memory={value}"])


@pytest.mark.parametrize(
    "setting, master, want",
    [
        ("auto", "local[2]", "4"),  # twice the local task slots
        ("auto", "local", "2"),  # never below 2
        ("auto", "local[*]", str(max(2, 2 * (os.cpu_count() or 1)))),
        ("auto", "spark://master:7077", None),  # a cluster's own setting stands
        ("auto", None, None),  # Databricks: no master of ours, its auto-optimized shuffle
        (200, "local[2]", "200"),  # a count is taken as given, anywhere
        (2000, "yarn", "2000"),
    ],
)
def test_shuffle_partitions_auto_is_twice_the_local_cores(setting, master, want):
    assert shuffle_partitions(setting, master) == want


def test_the_profiles_size_shuffles_for_where_they_run():
    assert load_config("local").spark.shuffle_partitions == "auto"
    cluster = load_config("cluster").spark
    # a large initial count that AQE coalesces to ~128 MiB partitions: partitions from data size
    assert cluster.shuffle_partitions == 2000
    assert cluster.conf["spark.sql.adaptive.coalescePartitions.enabled"] == "true"
    assert cluster.conf["spark.sql.adaptive.advisoryPartitionSizeInBytes"] == "128m"
    assert cluster.conf["spark.executor.memoryOverhead"] == "2g"
    assert load_config("local", ["spark.shuffle_partitions=3"]).spark.shuffle_partitions == 3


@pytest.mark.parametrize("value", ["0", "-4", "many", "true", "2.5"])
def test_a_shuffle_partitions_that_is_not_a_count_or_auto_names_the_key(value):
    with pytest.raises(ConfigError, match="'spark.shuffle_partitions'"):
        load_config("local", [f"spark.shuffle_partitions={value}"])
