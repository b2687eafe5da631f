"""One home for table names, column names and schemas.

Every stage imports its column names from here, so a rename happens in one place and
every table's shape can be read in one file.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# ---- column names -----------------------------------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_ID = "event_id"
EVENT_TYPE = "event_type"
TIMESTAMP = "timestamp"  # raw, as received
TS = "ts"  # typed event time (TimestampType)
VALUE = "value"
SESSION_ID = "session_id"
WEIGHT = "weight"

TITLE = "title"
DESCRIPTION = "description"
TAGS = "tags"
GENRES = "genres"
CATEGORY = "category"
CONTENT_HASH = "content_hash"

RAW = "raw"
REASON = "reason"
SOURCE = "_source"
INGESTED_AT = "_ingested_at"
KIND = "kind"

# gold/user_sequences
ITEMS = "items"  # full (truncated) history, ordered by time
TS_LIST = "timestamps"  # epoch seconds, aligned with ITEMS
WEIGHTS = "weights"
# everything but the held-out test events: what interests, retrieval and scoring see
HISTORY_ITEMS = "history_items"
HISTORY_TS = "history_timestamps"
HISTORY_WEIGHTS = "history_weights"
TRAIN_ITEMS = "train_items"
TRAIN_TS = "train_timestamps"
TRAIN_WEIGHTS = "train_weights"
VAL_ITEMS = "val_items"
TEST_ITEMS = "test_items"
TEST_UNTIED = "test_untied"
N_EVENTS = "n_events"
# What a user has seen: every distinct item (sorted) of its events before the held-out test
# events (all events for split=none), never cut at features.max_sequence_length. The exclusion
# set: no stage, baseline or metric recommends one of these again. history_items stays the
# model's bounded input window.
SEEN_ITEMS = "seen_items"
# The same before the validation event too (what tuning on val_items excludes).
TRAIN_SEEN_ITEMS = "train_seen_items"

# vectors
VECTOR = "vector"
MODEL = "model"
MODEL_VERSION = "model_version"
NO_MODEL = "none"  # gold/recommendations.model_version when no model ranked (retrieval order)
DIM = "dim"
ENCODED_AT = "encoded_at"
ACTIVE = "active"
N_HISTORY = "n_history"
COMPUTED_AT = "computed_at"
SOURCE_KIND = "source"

# recommendations
RANK = "rank"
SCORE = "score"
RETRIEVAL_SCORE = "retrieval_score"
QUERY_ID = "query_id"
NEIGHBOUR_ID = "neighbour_id"
COSINE = "cosine"
RUN_ID = "run_id"
GENERATED_AT = "generated_at"

# training examples (the Parquet shards train writes and every trainer rank reads): one row per
# window of train.max_len positions, right-padded with 0 (the layout cuDNN's masked LSTM needs)
EXAMPLE_INPUTS = "inputs"  # token ids, oldest -> newest
EXAMPLE_TARGETS = "targets"  # the token that follows each input position
EXAMPLE_MASK = "mask"  # true where the position has a target to learn (not padding, not out-of-vocabulary)
# validation examples: the last train.max_len training tokens (right-padded) -> the validation item
EXAMPLE_TARGET = "target"  # the validation item's token id
EXAMPLE_SEEN = "seen"  # the tokens of every training item of the user: excluded from the ranking

# the served model (the MLflow pyfunc of recsys_spark.tracking): its signature's columns
SERVED_HISTORY = "history"  # item ids, oldest -> newest
SERVED_CANDIDATES = "candidates"  # optional: the item ids to rank (default: every item not in the history)
SERVED_ITEMS = "items"  # the top-K item ids, best first
SERVED_SCORES = "scores"  # their P(next item)
SERVED_K = "k"  # the inference parameter: how many items

# metrics
PROTOCOL = "protocol"
METRIC = "metric"
K = "k"
N_USERS = "n_users"
N_INTERACTIONS = "n_interactions"  # item popularity: how many users hold the item

# ---- event types ------------------------------------------------------------------
# The one list of event types: the default of ingest.event_types and features.event_weights,
# and what generate writes.
VIEW_EVENT = "view"
CLICK_EVENT = "click"
CART_EVENT = "cart"
PURCHASE_EVENT = "purchase"  # its value is the price
RATING_EVENT = "rating"  # its value is the rating
EVENT_TYPES = (VIEW_EVENT, CLICK_EVENT, CART_EVENT, PURCHASE_EVENT, RATING_EVENT)

# ---- model names (evaluate.baselines, gold/metrics.model) ----------------------------
POPULARITY_MODEL = "popularity"
ALS_MODEL = "als"
ITEM_KNN_MODEL = "item_knn"
NEXT_ITEM_MODEL = "next_item"
CONTENT_MODEL = "content"
PIPELINE_MODEL = "lstm"  # the pipeline's own gold/recommendations
BASELINE_MODELS = (POPULARITY_MODEL, ALS_MODEL, ITEM_KNN_MODEL, NEXT_ITEM_MODEL, CONTENT_MODEL)
EVALUATED_MODELS = BASELINE_MODELS + (PIPELINE_MODEL,)

# ---- schemas ----------------------------------------------------------------------
# Raw columns are strings: bronze keeps what was received, typing happens in silver.
RAW_EVENT_FIELDS = (USER_ID, ITEM_ID, EVENT_TYPE, TIMESTAMP, VALUE, SESSION_ID, EVENT_ID)
RAW_ITEM_FIELDS = (ITEM_ID, TITLE, DESCRIPTION, TAGS, CATEGORY, GENRES)

BRONZE_EVENTS = T.StructType(
    [T.StructField(RAW, T.StringType())]
    + [T.StructField(c, T.StringType()) for c in RAW_EVENT_FIELDS]
    + [
        T.StructField("_parse_error", T.StringType()),
        T.StructField(SOURCE, T.StringType()),
        T.StructField(INGESTED_AT, T.TimestampType()),
    ]
)

SILVER_EVENTS = T.StructType(
    [
        T.StructField(EVENT_ID, T.StringType(), False),
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(EVENT_TYPE, T.StringType(), False),
        T.StructField(TS, T.TimestampType(), False),
        T.StructField(VALUE, T.DoubleType()),
        T.StructField(SESSION_ID, T.StringType()),
        T.StructField(SOURCE, T.StringType()),
        T.StructField(INGESTED_AT, T.TimestampType()),
    ]
)

QUARANTINE = T.StructType(
    [
        T.StructField(KIND, T.StringType(), False),  # "events" | "items"
        T.StructField(RAW, T.StringType()),
        T.StructField(REASON, T.StringType(), False),
        T.StructField(SOURCE, T.StringType()),
        T.StructField(INGESTED_AT, T.TimestampType()),
    ]
)

SILVER_ITEMS = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(TITLE, T.StringType()),
        T.StructField(DESCRIPTION, T.StringType()),
        T.StructField(CATEGORY, T.StringType()),
        T.StructField(GENRES, T.ArrayType(T.StringType())),
        T.StructField(TAGS, T.ArrayType(T.StringType())),
        T.StructField(CONTENT_HASH, T.StringType(), False),
        T.StructField(SOURCE, T.StringType()),
        T.StructField(INGESTED_AT, T.TimestampType()),
    ]
)

USER_SEQUENCES = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEMS, T.ArrayType(T.StringType())),
        T.StructField(TS_LIST, T.ArrayType(T.LongType())),
        T.StructField(WEIGHTS, T.ArrayType(T.DoubleType())),
        T.StructField(HISTORY_ITEMS, T.ArrayType(T.StringType())),
        T.StructField(HISTORY_TS, T.ArrayType(T.LongType())),
        T.StructField(HISTORY_WEIGHTS, T.ArrayType(T.DoubleType())),
        T.StructField(TRAIN_ITEMS, T.ArrayType(T.StringType())),
        T.StructField(TRAIN_TS, T.ArrayType(T.LongType())),
        T.StructField(TRAIN_WEIGHTS, T.ArrayType(T.DoubleType())),
        T.StructField(VAL_ITEMS, T.ArrayType(T.StringType())),
        T.StructField(TEST_ITEMS, T.ArrayType(T.StringType())),
        T.StructField(TEST_UNTIED, T.BooleanType()),
        T.StructField(N_EVENTS, T.LongType()),
        T.StructField(SEEN_ITEMS, T.ArrayType(T.StringType())),
        T.StructField(TRAIN_SEEN_ITEMS, T.ArrayType(T.StringType())),
    ]
)

ITEM_EMBEDDINGS = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(CONTENT_HASH, T.StringType()),
        T.StructField(MODEL, T.StringType()),
        T.StructField(MODEL_VERSION, T.StringType()),
        T.StructField(DIM, T.IntegerType()),
        T.StructField(VECTOR, T.ArrayType(T.FloatType())),  # L2-normalised
        T.StructField(ENCODED_AT, T.TimestampType()),
        T.StructField(ACTIVE, T.BooleanType()),  # false once the item left the catalog
    ]
)

USER_VECTORS = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(VECTOR, T.ArrayType(T.FloatType())),  # L2-normalised
        T.StructField(N_HISTORY, T.LongType()),
        T.StructField(MODEL, T.StringType()),
        T.StructField(COMPUTED_AT, T.TimestampType()),
    ]
)

CANDIDATES = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(RANK, T.IntegerType()),
        T.StructField(RETRIEVAL_SCORE, T.FloatType()),
        T.StructField(SOURCE_KIND, T.StringType()),  # ivf | exact | popular
        T.StructField(RUN_ID, T.StringType()),
    ]
)

RECOMMENDATIONS = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(SCORE, T.FloatType()),
        T.StructField(REASON, T.StringType()),
        T.StructField(MODEL_VERSION, T.StringType()),
        T.StructField(RUN_ID, T.StringType()),
        T.StructField(GENERATED_AT, T.TimestampType()),
    ]
)

SIMILAR_ITEMS = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(NEIGHBOUR_ID, T.StringType(), False),
        T.StructField(COSINE, T.FloatType()),
    ]
)

METRICS = T.StructType(
    [
        T.StructField(RUN_ID, T.StringType()),
        T.StructField(MODEL, T.StringType()),
        T.StructField(PROTOCOL, T.StringType()),
        T.StructField(METRIC, T.StringType()),
        T.StructField(K, T.IntegerType()),
        T.StructField(VALUE, T.DoubleType()),
        T.StructField(N_USERS, T.LongType()),
    ]
)

INGESTED_FILES = T.StructType(
    [
        T.StructField("path", T.StringType(), False),
        T.StructField("size", T.LongType()),
        T.StructField("modified", T.LongType()),
        T.StructField(KIND, T.StringType()),
        T.StructField(INGESTED_AT, T.TimestampType()),
    ]
)


@dataclass(frozen=True)
class TableRef:
    """A table of the lakehouse: its layer (bronze/silver/gold), name and schema.

    Every write conforms its frame to ``schema`` (see ``Lakehouse``). Two refs are equal when
    layer and name are."""

    layer: str
    name: str
    schema: T.StructType = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.layer}/{self.name}"


BRONZE_EVENTS_TABLE = TableRef("bronze", "events", BRONZE_EVENTS)
INGESTED_FILES_TABLE = TableRef("bronze", "ingested_files", INGESTED_FILES)
SILVER_EVENTS_TABLE = TableRef("silver", "events", SILVER_EVENTS)
QUARANTINE_TABLE = TableRef("silver", "quarantine", QUARANTINE)
SILVER_ITEMS_TABLE = TableRef("silver", "items", SILVER_ITEMS)
USER_SEQUENCES_TABLE = TableRef("gold", "user_sequences", USER_SEQUENCES)
ITEM_EMBEDDINGS_TABLE = TableRef("gold", "item_embeddings", ITEM_EMBEDDINGS)
USER_VECTORS_TABLE = TableRef("gold", "user_vectors", USER_VECTORS)
CANDIDATES_TABLE = TableRef("gold", "candidates", CANDIDATES)
RECOMMENDATIONS_TABLE = TableRef("gold", "recommendations", RECOMMENDATIONS)
SIMILAR_ITEMS_TABLE = TableRef("gold", "similar_items", SIMILAR_ITEMS)
METRICS_TABLE = TableRef("gold", "metrics", METRICS)
# Every table of the warehouse, in the order data flows through them (what `recsys-spark tables`
# lists and the run report versions). A new TableRef belongs here too; a test checks it.
TABLES = (
    BRONZE_EVENTS_TABLE,
    INGESTED_FILES_TABLE,
    SILVER_EVENTS_TABLE,
    QUARANTINE_TABLE,
    SILVER_ITEMS_TABLE,
    USER_SEQUENCES_TABLE,
    ITEM_EMBEDDINGS_TABLE,
    USER_VECTORS_TABLE,
    CANDIDATES_TABLE,
    SIMILAR_ITEMS_TABLE,
    RECOMMENDATIONS_TABLE,
    METRICS_TABLE,
)


def empty_items() -> Column:
    """An empty array<string> (what a missing item list counts as)."""
    return F.array().cast("array<string>")


def require_columns(df: DataFrame, columns: "list[str] | tuple[str, ...]", where: str) -> None:
    """Fail with a message naming the missing columns, at the boundary of a stage."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {', '.join(missing)}; got {', '.join(df.columns)}"
        )


def conform(df: DataFrame, schema: T.StructType, where: str) -> DataFrame:
    """``df``'s columns in ``schema``'s order and types, ready to write to that table.

    Unlike ``DataFrame.to`` this keeps the data's nullability: a key column that went through a
    join is nullable in Spark's eyes even when it never holds a null, and Delta enforces a table's
    NOT NULL columns on write anyway."""
    require_columns(df, schema.fieldNames(), where)
    return df.select(*[df[f.name].cast(f.dataType).alias(f.name) for f in schema])
