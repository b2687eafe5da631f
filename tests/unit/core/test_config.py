"""Typed config: profiles load, overrides apply, bad values fail with the key and the reason."""
from __future__ import annotations

import pytest

from recsys_spark.core.config import ConfigError, load_config, parse_override


def test_profiles_load_and_validate():
    local = load_config("local")
    assert local.spark.master == "local[*]" and local.input.format == "auto"
    assert local.input.events.endswith("ml-latest-small")
    assert load_config("cluster").spark.add_delta_jars is False
    databricks = load_config("databricks")
    assert databricks.tables.mode == "catalog" and databricks.spark.add_delta_jars is False


def test_overrides_are_typed():
    cfg = load_config(
        "local",
        [
            "warehouse=/tmp/x",
            "train.epochs=3",
            "evaluate.ks=[1, 5]",
            "privacy.pseudonymize_users=true",
            "spark.conf.spark.sql.adaptive.enabled=false",
            "interests.half_life_days=30",
            "features.time_cut=2024-01-02T03:04:05+00:00",
            "ingest.min_timestamp=2000-01-01",
        ],
    )
    assert cfg.features.time_cut == "2024-01-02T03:04:05+00:00" and cfg.ingest.min_timestamp == "2000-01-01"
    assert cfg.warehouse == "/tmp/x" and cfg.train.epochs == 3 and cfg.evaluate.ks == (1, 5)
    assert cfg.privacy.pseudonymize_users is True
    assert cfg.spark.conf == {"spark.sql.adaptive.enabled": False}
    assert cfg.interests.half_life_days == 30.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochs=three", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("train.bogus=1", "train.bogus"),
        ("nonsense=1", "nonsense"),
        ("input.format=xml", "input.format"),
        ("generate.bad_fraction=1.5", "generate.bad_fraction"),
        ("privacy.pseudonymize_users=maybe", "privacy.pseudonymize_users"),
        ("evaluate.ks=[0]", "evaluate.ks"),
        ("retrieve.candidates=2", "retrieve.candidates"),
        ("train=5", "train"),
        ("features.event_weights.click=-1", "features.event_weights.click"),
        ("tables.compact_min_files=1", "tables.compact_min_files"),
        ("tables.vacuum_retain_hours=24", "tables.vacuum_retain_hours"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("local", [override])


def test_override_syntax_and_missing_profile():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-profile")


def test_yaml_is_never_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("warehouse: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(evil))


def test_spark_remote_takes_a_local_master_or_a_connect_url():
    assert load_config("local").spark.remote is None
    assert load_config("local", ["spark.remote=local[2]"]).spark.remote == "local[2]"
    assert load_config("local", ["spark.remote=sc://spark-host:15002"]).spark.remote == "sc://spark-host:15002"
    for bad in ("spark://master:7077", "yarn", "local[two]"):
        with pytest.raises(ConfigError, match=r"'spark.remote': must be local\[N\] .* or sc://host:port; got"):
            load_config("local", [f"spark.remote={bad}"])
