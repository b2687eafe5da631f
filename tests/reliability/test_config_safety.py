"""Issue 8.5 — configuration: every invalid value tried (wrong type, unknown key, out of range,
missing required path) is one clear error naming the key; nothing in a config is executed; the
pseudonymisation key never reaches logs, tables or the run summary."""
from __future__ import annotations

import ast
import dataclasses
import json
import logging
import typing
from pathlib import Path

import pytest

from recsys_spark import cli

from recsys_spark.stages import features, ingest
from recsys_spark.core.config import Config, ConfigError, load_config
from recsys_spark.core.schemas import BRONZE_EVENTS_TABLE, QUARANTINE_TABLE, SILVER_EVENTS_TABLE, USER_SEQUENCES_TABLE

PACKAGE = Path(__file__).resolve().parents[2] / "recsys_spark"


def leaf_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """Every dotted config key with its type hint (Optional[X] unwrapped)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            out += leaf_keys(hint, key + ".")
        else:
            out.append((key, hint))
    return out


LEAVES = leaf_keys()
SECTIONS = sorted({key.split(".")[0] for key, _ in LEAVES if "." in key})
# YAML texts of the wrong type for each kind of value.
WRONG_TYPES = {
    int: ["abc", "[1, 2]", "{a: 1}", "true", "1.5"],
    float: ["abc", "[1, 2]", "{a: 1}", "true"],
    bool: ["maybe", "3", "[true]", "{a: 1}"],
    str: ["[1, 2]", "{a: 1}", "true"],
    tuple: ["{a: 1}"],
    dict: ["[1, 2]", "abc", "3"],
}
WRONG_TYPE_CASES = [(key, text) for key, hint in LEAVES for text in WRONG_TYPES[hint]]
OUT_OF_RANGE = [
    ("spark.shuffle_partitions=0", "spark.shuffle_partitions"),
    ("spark.log_level=LOUD", "spark.log_level"),
    ("tables.mode=remote", "tables.mode"),
    ("input.format=xml", "input.format"),
    ("ingest.max_future_seconds=-1", "ingest.max_future_seconds"),
    ("ingest.event_types=[]", "ingest.event_types"),
    ("ingest.max_field_chars=0", "ingest.max_field_chars"),
    ("generate.users=0", "generate.users"),
    ("generate.bad_fraction=1.01", "generate.bad_fraction"),
    ("generate.partitions=-1", "generate.partitions"),
    ("generate.topics=100000", "generate.topics"),
    ("features.max_sequence_length=2", "features.max_sequence_length"),
    ("features.split=random", "features.split"),
    ("features.split=time_cut", "features.time_cut"),
    ("features.event_weights={view: -1}", "features.event_weights.view"),
    ("encode.batch_size=0", "encode.batch_size"),
    ("encode.device=tpu", "encode.device"),
    ("encode.precision=int4", "encode.precision"),
    ("encode.max_text_chars=8", "encode.max_text_chars"),
    ("interests.half_life_days=0", "interests.half_life_days"),
    ("train.backend=spark", "train.backend"),
    ("train.epochs=0", "train.epochs"),
    ("train.learning_rate=0", "train.learning_rate"),
    ("train.sampled_negatives=0", "train.sampled_negatives"),
    ("train.negative_sampling=hard", "train.negative_sampling"),
    ("retrieve.method=lsh", "retrieve.method"),
    ("retrieve.k=0", "retrieve.k"),
    ("retrieve.candidates=5", "retrieve.candidates"),
    ("retrieve.recall_target=0", "retrieve.recall_target"),
    ("score.mode=partial", "score.mode"),
    ("score.k=0", "score.k"),
    ("score.reason_rows_per_group=0", "score.reason_rows_per_group"),
    ("evaluate.ks=[0]", "evaluate.ks"),
    ("evaluate.protocols=[online]", "evaluate.protocols"),
    ("evaluate.baselines=[magic]", "evaluate.baselines"),
    ("evaluate.next_item_successors=-1", "evaluate.next_item_successors"),
    ("evaluate.sample_users=-5", "evaluate.sample_users"),
    ("evaluate.sample_models=[als, bogus]", "evaluate.sample_models"),
    ("report.example_users=-1", "report.example_users"),
    ("report.bootstrap_samples=0", "report.bootstrap_samples"),
    ("report.max_text_chars=0", "report.max_text_chars"),
    ("report.short_max_history=5", "report.short_max_history"),  # not above cold_max_history (5)
]


def one_error_naming(override: str, key: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config("local", [override])
    message = str(caught.value)
    assert f"'{key}'" in message, message
    assert message.count("config key") == 1 and "\n" not in message, message
    return message


@pytest.mark.parametrize("key, text", WRONG_TYPE_CASES, ids=[f"{k}={t}" for k, t in WRONG_TYPE_CASES])
def test_wrong_type_names_the_key(key, text):
    one_error_naming(f"{key}={text}", key)


@pytest.mark.parametrize("section", SECTIONS + [""])
def test_unknown_key_names_the_key(section):
    key = f"{section}.no_such_key" if section else "no_such_key"
    message = one_error_naming(f"{key}=1", key)
    assert "known keys" in message


@pytest.mark.parametrize("override, key", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_names_the_key(override, key):
    one_error_naming(override, key)


def test_cli_prints_one_error_line_and_a_failed_summary(capsys):
    assert cli.main(["features", "--set", "train.epochs=abc"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().count("\n") == 0 and "'train.epochs'" in err and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "failed"


def test_missing_required_input_path_names_the_key(tmp_path, spark, capsys):
    assert cli.main(["ingest", "--set", f"warehouse={tmp_path}", "--set", "input.events=null"]) == 1
    out, err = capsys.readouterr()
    assert "'input.events'" in err and "Traceback" not in err
    assert cli.main(["ingest", "--set", f"warehouse={tmp_path}", "--set", f"input.events={tmp_path / 'absent'}"]) == 1
    out, err = capsys.readouterr()
    assert str(tmp_path / "absent") in err and "Traceback" not in err


def test_stage_without_its_input_table_names_the_table(tmp_path, spark, capsys):
    assert cli.main(["features", "--set", f"warehouse={tmp_path}"]) == 1
    out, err = capsys.readouterr()
    assert "silver/events" in err and "Traceback" not in err


# ---- nothing executed from a config ---------------------------------------------------
def test_yaml_tags_are_not_executed(tmp_path):
    marker = tmp_path / "executed"
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    profile = tmp_path / "evil.yaml"
    profile.write_text(f"warehouse: {payload}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(profile))
    with pytest.raises(ConfigError, match="'warehouse'"):
        load_config("local", [f"warehouse={payload}"])
    with pytest.raises(ConfigError):
        load_config("local", [f"spark.conf.spark.x={payload}"])
    assert not marker.exists()


# Calls that run code or unpickle objects. The one exec runs the repo's own Databricks notebooks
# locally (a path given by the caller, never a config value).
UNSAFE_CALLS = {"eval", "exec", "load", "loads", "unsafe_load", "full_load", "read_pickle", "open_shelf"}
UNSAFE_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "yaml", "torch", "joblib"}
ALLOWED = {("databricks.py", "exec")}


def unsafe_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            name = func.id
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in UNSAFE_MODULES
            and func.attr in UNSAFE_CALLS
        ):
            name = f"{func.value.id}.{func.attr}"
        elif isinstance(func, ast.Attribute) and func.attr == "load" and any(
            kw.arg == "allow_pickle" for kw in node.keywords
        ):
            name = "load(allow_pickle=...)"
        elif isinstance(func, ast.Attribute) and func.attr == "load_model" and any(
            kw.arg == "safe_mode" for kw in node.keywords
        ):
            name = "load_model(safe_mode=...)"
        else:
            continue
        if (path.name, name) not in ALLOWED:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    return found


def test_no_code_is_loaded_from_data_or_config():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    assert [hit for f in files for hit in unsafe_calls(f)] == []


# ---- the pseudonymisation key stays secret ----------------------------------------------
SECRET = "k3y-Th4t-Must-N3ver-Leak-9f8e7d"


def test_pseudonymisation_key_never_leaks(make_ctx, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "input"
    folder.mkdir()
    users = [f"alice.{n}@example.org" for n in range(5)]
    lines = [
        json.dumps({"user_id": u, "item_id": f"i{k}", "event_type": "view", "timestamp": 1680000000 + 60 * k + n})
        for n, u in enumerate(users)
        for k in range(4)
    ]
    lines.append(json.dumps({"user_id": users[0], "item_id": "i1", "event_type": "wishlist", "timestamp": 1680000000}))
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    # py4j's DEBUG lines echo every command sent to the JVM (tens of thousands here) and are
    # not the project's logs; the key never goes to the JVM as text (the UDF holds it).
    caplog.set_level(logging.INFO, logger="py4j")
    ctx = make_ctx("input.format=events", f"input.events={folder}", "privacy.pseudonymize_users=true")
    summaries = [ingest.run(ctx), features.run(ctx)]

    assert SECRET not in json.dumps(summaries, default=str)
    assert SECRET not in caplog.text
    for table in (BRONZE_EVENTS_TABLE, SILVER_EVENTS_TABLE, QUARANTINE_TABLE, USER_SEQUENCES_TABLE):
        text = json.dumps([r.asDict(recursive=True) for r in ctx.lake.read(table).collect()], default=str)
        assert SECRET not in text, f"key found in {table}"
        assert not any(u in text for u in users), f"a raw user id found in {table}"
    # Delta logs, checkpoints and any other file of the warehouse (parquet pages hold the same
    # strings as the rows checked above).
    for path in Path(ctx.cfg.warehouse).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"key found in {path}"
