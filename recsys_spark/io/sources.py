"""Readers for raw inputs: generic event logs (JSON Lines, CSV, Parquet) and every MovieLens layout.

Every reader returns rows "as received": the raw record as text plus the raw fields as strings
(``RAW_EVENT_FIELDS`` or ``RAW_ITEM_FIELDS``), a ``_parse_error`` when the record could not be
split into fields, and ``_source`` (the file). Typing and validation happen in ``ingest``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core.session import is_connect
from recsys_spark.core.schemas import (
    CATEGORY,
    DESCRIPTION,
    EVENT_TYPE,
    GENRES,
    ITEM_ID,
    RATING_EVENT,
    RAW,
    RAW_EVENT_FIELDS,
    RAW_ITEM_FIELDS,
    SOURCE,
    TAGS,
    TIMESTAMP,
    TITLE,
    USER_ID,
    VALUE,
)

log = logging.getLogger(__name__)

PARSE_ERROR = "_parse_error"
CORRUPT = "_corrupt_record"
EVENT_EXTENSIONS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".snappy", ".zst", ".lz4")

# ml-100k's genre flags, in u.item's column order (used when u.genre is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)


class InputError(ValueError):
    """An input path or file cannot be read as any supported format. The message names the path."""


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    modified: int


# ---- listing ----------------------------------------------------------------------
def list_files(spark: SparkSession, path: str) -> list[InputFile]:
    """Data files under ``path`` (a file or a folder, recursive), hidden files skipped.

    Uses the Hadoop FileSystem so local folders, HDFS, S3 and DBFS paths behave alike."""
    if is_connect(spark):  # no JVM handle: only local (or mounted) paths can be listed from the client
        return _list_local(path)
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())
    if not fs.exists(hpath):
        raise FileNotFoundError(f"input path {path} does not exist")
    status = fs.getFileStatus(hpath)
    if status.isFile():
        return [InputFile(str(status.getPath()), int(status.getLen()), int(status.getModificationTime()))]
    files = []
    it = fs.listFiles(hpath, True)
    while it.hasNext():
        st = it.next()
        relative = str(st.getPath())[len(str(status.getPath())):]
        if any(part.startswith((".", "_")) for part in relative.split("/") if part):
            continue
        files.append(InputFile(str(st.getPath()), int(st.getLen()), int(st.getModificationTime())))
    return sorted(files, key=lambda f: f.path)


def _list_local(path: str) -> list[InputFile]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"input path {path} does not exist")
    if os.path.isfile(path):
        st = os.stat(path)
        return [InputFile("file:" + os.path.abspath(path), st.st_size, int(st.st_mtime * 1000))]
    out = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        for name in names:
            if name.startswith((".", "_")):
                continue
            full = os.path.join(root, name)
            st = os.stat(full)
            out.append(InputFile("file:" + os.path.abspath(full), st.st_size, int(st.st_mtime * 1000)))
    return sorted(out, key=lambda f: f.path)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def event_file_format(path: str) -> str:
    """json | csv | parquet from the file name; an unknown extension is an InputError naming the file."""
    name = basename(path).lower()
    for comp in COMPRESSIONS:
        if name.endswith(comp) and not name.endswith(".parquet" + comp):
            name = name[: -len(comp)]
    if ".parquet" in name:
        return "parquet"
    for ext, fmt in EVENT_EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise InputError(
        f"input file {path}: unknown format (expected .jsonl/.json/.ndjson, .csv or .parquet, "
        f"optionally compressed)"
    )


# ---- MovieLens ----------------------------------------------------------------------
@dataclass(frozen=True)
class MovieLensLayout:
    """Which files of a MovieLens release are present in a folder."""

    variant: str  # "csv" (ml-latest, 20m, 25m), "dat" (1m, 10m), "100k"
    ratings: InputFile
    movies: Optional[InputFile]
    tags: Optional[InputFile]
    genres: Optional[InputFile] = None  # ml-100k u.genre


def detect_movielens(files: list[InputFile]) -> Optional[MovieLensLayout]:
    """The MovieLens layout of a folder's files, or None when it is not a MovieLens folder."""
    by_name = {basename(f.path): f for f in files}
    if "ratings.csv" in by_name:
        return MovieLensLayout("csv", by_name["ratings.csv"], by_name.get("movies.csv"), by_name.get("tags.csv"))
    if "ratings.dat" in by_name:
        return MovieLensLayout("dat", by_name["ratings.dat"], by_name.get("movies.dat"), by_name.get("tags.dat"))
    if "u.data" in by_name:
        return MovieLensLayout("100k", by_name["u.data"], by_name.get("u.item"), None, by_name.get("u.genre"))
    return None


def _text_lines(spark: SparkSession, paths: list[str], encoding: str = "UTF-8") -> DataFrame:
    """One row per line: raw text (trailing CR removed) and its source file."""
    if encoding.upper() in ("UTF-8", "UTF8"):
        df = spark.read.text(paths)
        raw = F.col("value")
    else:
        # The text source is UTF-8 only; the CSV source decodes any charset. A separator and a
        # quote that never occur keep each line whole in one column.
        df = (
            spark.read.option("encoding", encoding)
            .option("sep", "\u0001")
            .option("quote", "\u0000")
            .option("header", "false")
            .csv(paths)
        )
        raw = F.col(df.columns[0])
    return df.select(
        F.regexp_replace(raw, "\r$", "").alias(RAW),
        F.col("_metadata.file_path").alias(SOURCE),
    )


def _split_fields(lines: DataFrame, sep_regex: str, names: tuple[str, ...], header_first: Optional[str]) -> DataFrame:
    """Split delimited lines into named string fields; a wrong field count is a parse error."""
    if header_first is not None:
        lines = lines.where(~F.col(RAW).startswith(header_first))
    lines = lines.where(~F.col(RAW).rlike(r"^\s*$"))
    parts = F.split(F.col(RAW), sep_regex)
    n = len(names)
    error = F.when(
        F.size(parts) != n,
        F.concat(F.lit(f"malformed_line: expected {n} fields, got "), F.size(parts).cast("string")),
    )
    return lines.select(
        F.col(RAW),
        *[F.when(F.size(parts) == n, parts.getItem(i)).alias(name) for i, name in enumerate(names)],
        error.alias(PARSE_ERROR),
        F.col(SOURCE),
    )


def _as_raw_events(df: DataFrame, mapping: dict[str, Column]) -> DataFrame:
    """Project to RAW, RAW_EVENT_FIELDS, PARSE_ERROR, SOURCE (missing fields as null strings)."""
    cols = [F.col(RAW)]
    for name in RAW_EVENT_FIELDS:
        cols.append(mapping.get(name, F.lit(None).cast("string")).alias(name))
    cols += [F.col(PARSE_ERROR), F.col(SOURCE)]
    return df.select(*cols)


def read_movielens_events(spark: SparkSession, layout: MovieLensLayout) -> DataFrame:
    """Ratings of any MovieLens release as raw events (event_type ``rating``, value = the rating)."""
    names = ("u", "i", "r", "t")
    if layout.variant == "csv":
        parsed = _split_fields(_text_lines(spark, [layout.ratings.path]), ",", names, "userId,")
    elif layout.variant == "dat":
        parsed = _split_fields(_text_lines(spark, [layout.ratings.path]), "::", names, None)
    else:
        parsed = _split_fields(_text_lines(spark, [layout.ratings.path]), "\t", names, None)
    return _as_raw_events(
        parsed,
        {
            USER_ID: F.trim(F.col("u")),
            ITEM_ID: F.trim(F.col("i")),
            EVENT_TYPE: F.when(F.col(PARSE_ERROR).isNull(), F.lit(RATING_EVENT)),
            TIMESTAMP: F.trim(F.col("t")),
            VALUE: F.trim(F.col("r")),
        },
    )


def _as_raw_items(df: DataFrame, mapping: dict[str, Column]) -> DataFrame:
    cols = [F.col(RAW)]
    for name in RAW_ITEM_FIELDS:
        default = F.lit(None).cast("array<string>") if name in (TAGS, GENRES) else F.lit(None).cast("string")
        cols.append(mapping.get(name, default).alias(name))
    cols += [F.col(PARSE_ERROR), F.col(SOURCE)]
    return df.select(*cols)


def read_movielens_items(spark: SparkSession, layout: MovieLensLayout) -> Optional[DataFrame]:
    """The movie catalog with genres and the users' tags as item text; None without a movies file."""
    if layout.movies is None:
        return None
    if layout.variant == "csv":
        movies = (
            spark.read.option("header", "true").option("multiLine", "false").option("mode", "PERMISSIVE")
            .schema("movieId string, title string, genres string, _corrupt_record string")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .csv(layout.movies.path)
            .select(
                F.coalesce(
                    F.col(CORRUPT), F.concat_ws(",", "movieId", "title", "genres")
                ).alias(RAW),
                F.trim("movieId").alias("id"),
                F.col("title"),
                F.col("genres"),
                F.when(F.col(CORRUPT).isNotNull(), F.lit("malformed_line: wrong number of CSV fields")).alias(PARSE_ERROR),
                F.col("_metadata.file_path").alias(SOURCE),
            )
        )
        tags = None
        if layout.tags is not None:
            tags = (
                spark.read.option("header", "true")
                .schema("userId string, movieId string, tag string, timestamp string")
                .csv(layout.tags.path)
                .select(F.trim("movieId").alias("id"), F.trim("tag").alias("tag"))
            )
    elif layout.variant == "dat":
        encoding = "ISO-8859-1"
        lines = _text_lines(spark, [layout.movies.path], encoding)
        parsed = _split_fields(lines, "::", ("id", "title", "genres"), None)
        movies = parsed.select(RAW, F.trim("id").alias("id"), "title", "genres", PARSE_ERROR, SOURCE)
        tags = None
        if layout.tags is not None:
            tag_lines = _split_fields(_text_lines(spark, [layout.tags.path], encoding), "::", ("u", "id", "tag", "t"), None)
            tags = tag_lines.where(F.col(PARSE_ERROR).isNull()).select(F.trim("id").alias("id"), F.trim("tag").alias("tag"))
    else:
        lines = _text_lines(spark, [layout.movies.path], "ISO-8859-1")
        genre_names = list(ML100K_GENRES)
        if layout.genres is not None:
            rows = spark.read.option("sep", "|").csv(layout.genres.path).collect()  # ~19 rows
            genre_names = [r[0] for r in sorted((r for r in rows if r[0]), key=lambda r: int(r[1]))]
        parts = F.split(F.col(RAW), "\\|")
        n_fields = 5 + len(genre_names)
        flags = [F.when(parts.getItem(5 + i) == "1", F.lit(g)) for i, g in enumerate(genre_names)]
        movies = lines.where(F.length(F.trim(RAW)) > 0).select(
            F.col(RAW),
            F.trim(parts.getItem(0)).alias("id"),
            parts.getItem(1).alias("title"),
            F.concat_ws("|", *flags).alias("genres"),
            F.when(F.size(parts) != n_fields, F.lit(f"malformed_line: expected {n_fields} fields")).alias(PARSE_ERROR),
            F.col(SOURCE),
        )
        tags = None
    if tags is not None:
        tag_lists = (
            tags.where(F.col("tag").isNotNull() & (F.length("tag") > 0))
            .groupBy("id")
            .agg(F.array_sort(F.collect_set(F.lower("tag"))).alias("tag_list"))
        )
        movies = movies.join(tag_lists, "id", "left")
    else:
        movies = movies.withColumn("tag_list", F.lit(None).cast("array<string>"))
    genres = F.when(
        F.col("genres").isNull() | F.col("genres").isin("(no genres listed)", ""), F.lit(None).cast("array<string>")
    ).otherwise(F.split("genres", "\\|"))
    return _as_raw_items(
        movies,
        {ITEM_ID: F.col("id"), TITLE: F.trim("title"), GENRES: genres, TAGS: F.col("tag_list")},
    )


# ---- generic event logs -----------------------------------------------------------
EVENTS_JSON_SCHEMA = T.StructType(
    [T.StructField(c, T.StringType()) for c in RAW_EVENT_FIELDS] + [T.StructField(CORRUPT, T.StringType())]
)


def _paths_by_format(files: list[InputFile]) -> dict[str, list[str]]:
    """File paths grouped by format (json | csv | parquet); an unknown file is an InputError."""
    by_format: dict[str, list[str]] = {}
    for f in files:
        by_format.setdefault(event_file_format(f.path), []).append(f.path)
    return by_format


def _union_all(parts: list[DataFrame]) -> Optional[DataFrame]:
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def read_event_files(spark: SparkSession, files: list[InputFile]) -> Optional[DataFrame]:
    """Generic event logs, any mix of JSON Lines, CSV and Parquet, as raw events."""
    by_format = _paths_by_format(files)
    parts = []
    if "json" in by_format:
        parts.append(_read_json_events(spark, by_format["json"]))
    if "csv" in by_format:
        parts.extend(_read_csv_events(spark, by_format["csv"]))
    if "parquet" in by_format:
        parts.append(_read_parquet_events(spark, by_format["parquet"]))
    return _union_all(parts)


def _read_json_events(spark: SparkSession, paths: list[str]) -> DataFrame:
    lines = _text_lines(spark, paths).where(~F.col(RAW).rlike(r"^\s*$"))
    parsed = F.from_json(F.col(RAW), EVENTS_JSON_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    df = lines.select(F.col(RAW), parsed.alias("j"), F.col(SOURCE))
    # A line that is valid JSON but not an object (a list, a number) yields an all-null struct;
    # text after the closing brace is ignored by the parser, so it is checked here.
    stripped = F.regexp_replace(F.col(RAW), r"^\s+|\s+$", "")
    is_object = stripped.startswith("{") & stripped.endswith("}")
    error = F.when(F.col("j").isNull() | F.col(f"j.{CORRUPT}").isNotNull(), F.lit("malformed_json")).when(
        ~is_object, F.lit("malformed_json: not an object")
    )
    return _as_raw_events(
        df.withColumn(PARSE_ERROR, error),
        {name: F.when(error.isNull(), F.col(f"j.{name}")) for name in RAW_EVENT_FIELDS},
    )


def _csv_header(spark: SparkSession, path: str) -> list[str]:
    first = spark.read.text(path).limit(1).collect()
    if not first:
        return []
    return [h.strip().strip('"').strip() for h in first[0][0].rstrip("\r").split(",")]


def _read_csv_events(spark: SparkSession, paths: list[str]) -> list[DataFrame]:
    """CSV logs grouped by header (files may order columns differently); each needs user_id and item_id."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for path in paths:
        header = tuple(_csv_header(spark, path))
        if not header:
            continue  # an empty file holds no rows
        if USER_ID not in header or ITEM_ID not in header:
            raise InputError(
                f"input file {path}: CSV header {','.join(header)!r} lacks user_id/item_id "
                f"(expected columns {', '.join(RAW_EVENT_FIELDS)})"
            )
        groups.setdefault(header, []).append(path)
    out = []
    for header, group in groups.items():
        names = [h if h in RAW_EVENT_FIELDS else f"_extra_{i}" for i, h in enumerate(header)]
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names] + [T.StructField(CORRUPT, T.StringType())])
        df = (
            spark.read.option("header", "true")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("enforceSchema", "true")
            .schema(schema)
            .csv(group)
        )
        raw = F.coalesce(F.col(CORRUPT), F.concat_ws(",", *[F.coalesce(F.col(n), F.lit("")) for n in names]))
        df = df.select(
            *[F.col(n) for n in names],
            raw.alias(RAW),
            F.when(F.col(CORRUPT).isNotNull(), F.lit("malformed_csv: wrong number of fields")).alias(PARSE_ERROR),
            F.col("_metadata.file_path").alias(SOURCE),
        )
        out.append(
            _as_raw_events(df, {name: F.when(F.col(PARSE_ERROR).isNull(), F.col(name)) for name in RAW_EVENT_FIELDS if name in names})
        )
    return out


def _read_parquet_events(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Parquet logs grouped by schema: files may disagree on a column's type (``user_id`` a
    number in one, text in another) or on which columns they hold, and one read of them all
    takes one file's schema and fails deep in Spark on the others. Each group is read with its
    own schema; every field becomes text (nested values as JSON, which the id checks quarantine)."""
    groups: dict[str, tuple[T.StructType, list[str]]] = {}
    for path in paths:
        schema = spark.read.parquet(path).schema  # the footer, read on the driver: no job
        groups.setdefault(schema.json(), (schema, []))[1].append(path)
    parts = [_parquet_group(spark, schema, group) for schema, group in groups.values()]
    return _union_all(parts)


def _as_text(field: T.StructField) -> Column:
    nested = isinstance(field.dataType, (T.StructType, T.ArrayType, T.MapType))
    return (F.to_json(F.col(field.name)) if nested else F.col(field.name).cast("string")).alias(field.name)


def _parquet_group(spark: SparkSession, schema: T.StructType, paths: list[str]) -> DataFrame:
    present = [c for c in RAW_EVENT_FIELDS if c in schema.fieldNames()]
    if USER_ID not in present or ITEM_ID not in present:
        raise InputError(
            f"input file {paths[0]}: Parquet columns {', '.join(schema.fieldNames())} lack user_id/item_id "
            f"(expected {', '.join(RAW_EVENT_FIELDS)})"
        )
    df = spark.read.schema(schema).parquet(*paths)
    df = df.select(
        F.to_json(F.struct(*[F.col(c) for c in schema.fieldNames()])).alias(RAW),
        *[_as_text(schema[c]) for c in present],
        F.lit(None).cast("string").alias(PARSE_ERROR),
        F.col("_metadata.file_path").alias(SOURCE),
    )
    return _as_raw_events(df, {c: F.col(c) for c in present})


# ---- generic item catalogs ---------------------------------------------------------
ITEMS_JSON_SCHEMA = "item_id string, title string, description string, category string, tags string, genres string, _corrupt_record string"


def _list_field(col: Column) -> Column:
    """tags/genres given as a JSON array, or a string separated by | , or ;, -> array<string>."""
    as_json = F.from_json(col, "array<string>")
    split = F.split(col, "\\s*[|,;]\\s*")
    arr = F.when(F.trim(col).startswith("["), as_json).otherwise(split)
    return F.when(col.isNull() | (F.trim(col) == ""), F.lit(None).cast("array<string>")).otherwise(
        F.filter(F.transform(arr, lambda x: F.trim(x)), lambda x: x != "")
    )


def read_item_files(spark: SparkSession, files: list[InputFile]) -> Optional[DataFrame]:
    """A generic item catalog (JSON Lines, CSV or Parquet) as raw items."""
    by_format = _paths_by_format(files)
    parts = []
    if "json" in by_format:
        lines = _text_lines(spark, by_format["json"]).where(~F.col(RAW).rlike(r"^\s*$"))
        parsed = F.from_json(F.col(RAW), ITEMS_JSON_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
        df = lines.select(RAW, parsed.alias("j"), SOURCE)
        error = F.when(
            F.col("j").isNull() | F.col(f"j.{CORRUPT}").isNotNull() | ~F.trim(F.col(RAW)).startswith("{"),
            F.lit("malformed_json"),
        )
        df = df.withColumn(PARSE_ERROR, error)
        parts.append(
            _as_raw_items(
                df,
                {
                    ITEM_ID: F.trim("j.item_id"),
                    TITLE: F.col("j.title"),
                    DESCRIPTION: F.col("j.description"),
                    CATEGORY: F.col("j.category"),
                    TAGS: _list_field(F.col("j.tags")),
                    GENRES: _list_field(F.col("j.genres")),
                },
            )
        )
    for fmt in ("csv", "parquet"):
        if fmt not in by_format:
            continue
        if fmt == "csv":
            df = spark.read.option("header", "true").option("multiLine", "true").option("escape", '"').csv(by_format[fmt])
        else:
            df = spark.read.parquet(*by_format[fmt])
        if ITEM_ID not in df.columns:
            raise InputError(f"input file {by_format[fmt][0]}: item catalog lacks an item_id column (got {', '.join(df.columns)})")

        def col_or_null(name: str) -> Column:
            return F.col(name).cast("string") if name in df.columns else F.lit(None).cast("string")

        def list_col(name: str) -> Column:
            if name not in df.columns:
                return F.lit(None).cast("array<string>")
            if isinstance(df.schema[name].dataType, T.ArrayType):
                return F.col(name).cast("array<string>")
            return _list_field(F.col(name).cast("string"))

        df = df.select(
            F.to_json(F.struct(*df.columns)).alias(RAW),
            F.trim(col_or_null(ITEM_ID)).alias(ITEM_ID),
            col_or_null(TITLE).alias(TITLE),
            col_or_null(DESCRIPTION).alias(DESCRIPTION),
            col_or_null(CATEGORY).alias(CATEGORY),
            list_col(TAGS).alias(TAGS),
            list_col(GENRES).alias(GENRES),
            F.lit(None).cast("string").alias(PARSE_ERROR),
            F.col("_metadata.file_path").alias(SOURCE),
        )
        parts.append(df.select(RAW, *RAW_ITEM_FIELDS, PARSE_ERROR, SOURCE))
    return _union_all(parts)

