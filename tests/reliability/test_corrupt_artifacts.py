"""Damaged artifacts: a truncated model file, a vocabulary that does not match the network and a
damaged Delta log entry each end in one error naming the artifact; nothing is written from a
broken model, and the last good model's recommendations stay served."""
from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq
import pytest

from recsys_spark.core import schemas as S
from recsys_spark.core.lakehouse import TableDamaged
from recsys_spark.models.sequence import LATEST_FILE, VOCABULARY_DIR, latest_model_dir, read_vocabulary
from recsys_spark import pipeline
from recsys_spark.stages import score, train
from tests.unit.stages.test_score import recommendations, write_candidates, write_inputs
from tests.unit.stages.test_train import cyclic_sequences, write_sequences

pytestmark = pytest.mark.slow

SETTINGS = (
    "tracking.enabled=false",
    "train.epochs=2",
    "train.batch_size=32",
    "train.max_len=6",
    "train.embedding_dim=8",
    "train.lstm_units=8",
    "train.tf_threads=1",
    "score.k=3",
    "score.min_history=2",
)


def _items_and_candidates(ctx, rows) -> None:
    """The tables score reads besides the sequences: titles, text vectors, events, candidates."""
    spark, lake = ctx.spark, ctx.lake
    items = sorted({item for row in rows for item in row[1]})
    t0 = __import__("datetime").datetime(2026, 1, 1)
    lake.replace(
        spark.createDataFrame([(i, "h", "t", "v", 2, [1.0, float(n)], t0, True) for n, i in enumerate(items)], S.ITEM_EMBEDDINGS),
        S.ITEM_EMBEDDINGS_TABLE,
    )
    lake.replace(
        spark.createDataFrame([(i, f"Title {i}", None, None, [], [], "h", "s", t0) for i in items], S.SILVER_ITEMS),
        S.SILVER_ITEMS_TABLE,
    )
    events = [(f"{r[0]}-{j}", r[0], item, "view", t0, None, None, "s", t0) for r in rows for j, item in enumerate(r[1])]
    lake.replace(spark.createDataFrame(events, S.SILVER_EVENTS), S.SILVER_EVENTS_TABLE)
    # Every user: the items it has not seen, in a fixed order (retrieval's order does not matter here).
    write_candidates(ctx, {r[0]: [i for i in items if i not in set(r[4])][:6] for r in rows})


def _point_latest(models_dir: str, version: str) -> None:
    with open(os.path.join(models_dir, LATEST_FILE), "w", encoding="utf-8") as handle:
        handle.write(version + "\n")


def _copy_model(good: str, name: str) -> str:
    copy = os.path.join(os.path.dirname(good), name)
    shutil.copytree(good, copy)
    return copy


def test_a_broken_model_is_named_and_the_last_good_recommendations_stay(make_ctx):
    ctx = make_ctx(*SETTINGS)
    rows = cyclic_sequences(ctx.spark, users=30)
    write_sequences(ctx, rows)
    _items_and_candidates(ctx, rows)
    trained = train.run(ctx)
    first = score.run(ctx)
    assert first["model_version"] == trained["model_version"] and first["rows"] == 30 * 3
    served_version = ctx.lake.version(S.RECOMMENDATIONS_TABLE)
    served = recommendations(ctx)
    good = latest_model_dir(ctx.cfg.models_dir)
    models_dir = ctx.cfg.models_dir

    # 1. model.keras cut in half (a copy interrupted, a disk filled up)
    truncated = _copy_model(good, "v-truncated")
    path = os.path.join(truncated, "model.keras")
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    _point_latest(models_dir, "v-truncated")
    with pytest.raises(ValueError) as error:
        score.run(ctx)
    message = str(error.value)
    assert truncated in message and "model.keras is not a complete Keras archive" in message
    assert "Nothing was written" in message and "point" in message

    # 2. a vocabulary with one item too few (edited, or copied from another model)
    mismatched = _copy_model(good, "v-vocabulary")
    vocab = read_vocabulary(mismatched)
    shutil.rmtree(os.path.join(mismatched, VOCABULARY_DIR))
    os.makedirs(os.path.join(mismatched, VOCABULARY_DIR))
    pq.write_table(vocab.slice(0, vocab.num_rows - 1), os.path.join(mismatched, VOCABULARY_DIR, "part-0.parquet"))
    _point_latest(models_dir, "v-vocabulary")
    with pytest.raises(ValueError, match=r"v-vocabulary.*the vocabulary \(\d+ items.*does not match the model"):
        score.run(ctx)

    # 3. a vocabulary file that is not Parquet any more
    damaged = _copy_model(good, "v-damaged-vocabulary")
    for name in os.listdir(os.path.join(damaged, VOCABULARY_DIR)):
        if name.endswith(".parquet"):
            with open(os.path.join(damaged, VOCABULARY_DIR, name), "wb") as handle:
                handle.write(b"PAR1 not really")
    _point_latest(models_dir, "v-damaged-vocabulary")
    with pytest.raises(ValueError, match=r"v-damaged-vocabulary.*vocabulary/ cannot be read"):
        score.run(ctx)

    # None of the three wrote anything: the table is at the version the good model wrote.
    assert ctx.lake.version(S.RECOMMENDATIONS_TABLE) == served_version
    assert recommendations(ctx) == served
    # Train never publishes such a folder (its publish runs the same check).
    with pytest.raises(ValueError, match="model.keras is not a complete Keras archive"):
        train.check_model_folder(truncated)

    # The good model pointed at again is served again, and scores as before.
    _point_latest(models_dir, os.path.basename(good))
    again = score.run(ctx)
    assert again["model_version"] == trained["model_version"]
    assert {u: [r[S.ITEM_ID] for r in recs] for u, recs in recommendations(ctx).items()} == {
        u: [r[S.ITEM_ID] for r in recs] for u, recs in served.items()
    }


@pytest.mark.parametrize("checksums", [True, False], ids=["local-fs-crc", "object-store-no-crc"])
def test_a_damaged_log_entry_is_named_with_the_table_and_the_way_back(make_ctx, checksums):
    ctx = make_ctx("tracking.enabled=false", "train.models_dir=/nonexistent/models", "score.k=2")
    write_inputs(ctx)  # gold/candidates version 0: 7 candidates of 3 users
    write_candidates(ctx, {"u1": ["e", "f"], "u2": ["h"]})  # gold/candidates version 1: the one damaged
    log_dir = os.path.join(ctx.lake.location(S.CANDIDATES_TABLE), "_delta_log")
    entry = os.path.join(log_dir, "00000000000000000001.json")
    with open(entry, "r+b") as handle:
        handle.truncate(os.path.getsize(entry) // 3)  # a half-written or overwritten commit file
    if not checksums:  # object stores keep no .crc beside the file: the damage shows as unreadable JSON
        for name in os.listdir(log_dir):
            if name.endswith(".crc"):
                os.remove(os.path.join(log_dir, name))

    with pytest.raises(TableDamaged) as error:
        pipeline.run_stage(ctx, "score")
    damaged = error.value
    message = str(damaged)
    assert damaged.table == S.CANDIDATES_TABLE and damaged.version == 1
    assert f"table {S.CANDIDATES_TABLE} ({ctx.lake.location(S.CANDIDATES_TABLE)})" in message
    assert "00000000000000000001.json (version 1)" in message and "move it" in message
    assert not ctx.lake.exists(S.RECOMMENDATIONS_TABLE), "nothing written from a damaged input"

    # What the message says to do: move the newest entry aside; the table is then at version 0.
    aside = os.path.join(str(ctx.cfg.warehouse), "damaged-entry.json")
    shutil.move(entry, aside)
    for name in os.listdir(log_dir):
        if name.startswith(".00000000000000000001.json"):
            os.remove(os.path.join(log_dir, name))
    assert ctx.lake.version(S.CANDIDATES_TABLE) == 0 and ctx.lake.read(S.CANDIDATES_TABLE).count() == 7
    again = pipeline.run_stage(ctx, "score")
    assert again["recommended_users"] == 4 and again["rows"] == 4 * 2


def test_an_error_that_is_no_log_damage_is_left_alone(make_ctx):
    ctx = make_ctx("tracking.enabled=false")
    assert ctx.lake.damage(ValueError("score: no candidates")) is None
    found = ctx.lake.damage(RuntimeError(
        "org.apache.spark.SparkException: [FAILED_READ_FILE.NO_HINT] Encountered error while reading file "
        "file:///elsewhere/t/_delta_log/00000000000000000007.json.  SQLSTATE: KD001"
    ))
    assert found.table is None and found.version == 7 and "the Delta table at file:///elsewhere/t" in str(found)
