"""The session's settings that need no Spark: the driver's memory from the machine's."""
from __future__ import annotations

import pytest

from recsys_spark.core.config import ConfigError, load_config
from recsys_spark.core.session import driver_memory, physical_memory_bytes

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
