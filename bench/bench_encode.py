"""Texts/second: plain ``SentenceTransformer.encode`` against the Spark path of the encode stage.

Both run in one process on the same cores, on the same few thousand MovieLens texts (title,
genres and tags rendered by ``encode.item_texts``), alternating for ``--rounds`` rounds so load
from other processes hits both alike:

- plain: one SentenceTransformer in this process, torch threads = the cores;
- spark: ``encode.encode_texts`` (mapInPandas) on local[cores] with ``--partitions`` partitions and
  the stage's thread plan (cores / concurrent tasks per worker), once per ``--precisions`` entry
  (``encode.precision``: fp32, bf16). The first Spark run is "cold": the Python workers load the
  model; before each later (timed) run a few rows make sure the reused workers hold it, since
  Spark ends workers that sat idle for a minute.

Each Spark path's vectors are compared with the plain float32 ones: the minimum and mean cosine
of the same text's two vectors.

    python bench/bench_encode.py --n 3000 --rounds 2 --precisions fp32,bf16

Prints one JSON object and a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pyspark.sql import functions as F  # noqa: E402

from recsys_spark.stages import encode  # noqa: E402

from recsys_spark.models import text as text_model
from recsys_spark.core.config import EncodeConfig, load_config  # noqa: E402
from recsys_spark.core.schemas import CATEGORY, CONTENT_HASH, DESCRIPTION, GENRES, ITEM_ID, TAGS, TITLE  # noqa: E402

log = logging.getLogger("bench_encode")


def movielens_folder() -> Path:
    for folder in (REPO.parent / "shared" / "data" / "ml-latest-small", REPO / "recsys_spark" / "data" / "ml-latest-small"):
        if (folder / "movies.csv").is_file():
            return folder
    raise FileNotFoundError("ml-latest-small not found in /work/shared/data or recsys_spark/data")


def movielens_items(spark, folder: Path, n: int):
    """The first n movies as silver/items-like rows: item_id, title, genres[], tags[], content_hash."""
    movies = spark.read.option("header", True).csv(str(folder / "movies.csv")).limit(n)
    tags = (
        spark.read.option("header", True).csv(str(folder / "tags.csv"))
        .groupBy("movieId").agg(F.array_sort(F.collect_set("tag")).alias(TAGS))
    )
    return movies.join(tags, "movieId", "left").select(
        F.col("movieId").alias(ITEM_ID),
        F.col("title").alias(TITLE),
        F.split("genres", r"\|").alias(GENRES),
        F.coalesce(F.col(TAGS), F.array().cast("array<string>")).alias(TAGS),
        F.sha2(F.concat_ws("|", "title", "genres"), 256).alias(CONTENT_HASH),
    )


def generated_items(spark, n: int, topics: int = 20):
    """n catalog items as ``generate`` writes them (title, 12-40 word description, tags, category),
    the longer texts of a generated large catalog."""
    from recsys_spark.stages.generate import _item_record

    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        record = _item_record(i, topics, rng)
        tags = record[TAGS] if isinstance(record[TAGS], list) else record[TAGS].split(",")
        rows.append((record[ITEM_ID], record[TITLE], record[DESCRIPTION], record[CATEGORY], [], tags, f"h{i}"))
    return spark.createDataFrame(
        rows, f"{ITEM_ID} string, {TITLE} string, {DESCRIPTION} string, {CATEGORY} string, "
              f"{GENRES} array<string>, {TAGS} array<string>, {CONTENT_HASH} string"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="texts to encode")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/spark rounds")
    parser.add_argument("--batch-size", type=int, default=EncodeConfig.batch_size)
    parser.add_argument("--partitions", type=int, default=0, help="0: the cores")
    parser.add_argument("--cores", type=int, default=0, help="0: the cores of this machine")
    parser.add_argument("--source", choices=("movielens", "generated"), default="movielens",
                        help="MovieLens titles + genres + tags, or generate's catalog texts (longer)")
    parser.add_argument("--precisions", default="fp32,bf16", help="encode.precision of each Spark path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    cores = args.cores or text_model.process_cores()
    partitions = args.partitions or cores
    cfg = load_config(
        "local",
        [
            f"warehouse={tempfile.mkdtemp(prefix='bench-encode-')}",
            f"spark.master=local[{cores}]",
            f"spark.shuffle_partitions={partitions}",
            "spark.conf.spark.sql.execution.arrow.maxRecordsPerBatch=10000",
        ],
    )
    from recsys_spark.core.session import get_spark

    spark = get_spark(cfg)
    encode_cfg = EncodeConfig(batch_size=args.batch_size)
    model = text_model.resolve_model(encode_cfg.model)
    if args.source == "generated":
        items, template = generated_items(spark, args.n), encode_cfg.text_template
    else:
        items, template = movielens_items(spark, movielens_folder(), args.n), "{title}. {genres}. {tags}"
    texts_df = encode.item_texts(items, template, encode_cfg.max_text_chars).filter(
        F.col("text").isNotNull()
    ).repartition(partitions).cache()
    texts = [row["text"] for row in texts_df.select("text").collect()]  # a few thousand: the plain path's input
    n = len(texts)
    log.info("%d texts, mean %.0f chars; %d cores, %d partitions", n, statistics.mean(map(len, texts)), cores, partitions)

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    specs = {p: encode.encoder_spec(spark, replace(encode_cfg, precision=p), model.path) for p in precisions}
    plain_model, _ = text_model.load_encoder(model.path, "cpu")
    text_model.set_torch_threads(cores)
    plain_model.encode(texts[:64], batch_size=args.batch_size)  # warm-up, like the workers' first batch
    reference = {}

    def run_plain() -> float:
        started = time.perf_counter()
        vectors = plain_model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        rate = n / (time.perf_counter() - started)
        reference.update(zip(texts, vectors))
        return rate

    def run_spark(precision: str) -> tuple[float, int]:
        started = time.perf_counter()
        row = encode.encode_texts(texts_df, specs[precision]).agg(
            F.count(F.lit(1)).alias("n"), F.count_if(F.col(encode.MODEL_LOADED)).alias("loads"),
            F.collect_set(encode.PRECISION).alias("precisions"),
        ).first()
        rate = n / (time.perf_counter() - started)
        assert row["n"] == n, f"spark encoded {row['n']} of {n} texts"
        assert row["precisions"] == [precision], f"asked for {precision}, the workers used {row['precisions']}"
        return rate, row["loads"]

    def spark_vectors(precision: str) -> list:
        """(untimed) every text's vector from the Spark path; content_hash carries the text
        through, so each vector meets its plain twin."""
        encoded = encode.encode_texts(texts_df.withColumn(encode.CONTENT_HASH, F.col(encode.TEXT)), specs[precision])
        return encoded.select(encode.CONTENT_HASH, encode.VECTOR).collect()

    def cosines(rows: list) -> tuple[float, float]:
        values = [float(np.dot(reference[r[encode.CONTENT_HASH]], np.asarray(r[encode.VECTOR], dtype=np.float32))) for r in rows]
        return min(values), statistics.mean(values)

    def warm_workers(precision: str) -> None:
        # Spark ends Python workers idle for over a minute (a fixed timeout): a few rows per
        # partition, untimed, make sure the timed run finds the model loaded.
        sample = texts_df.limit(4 * partitions).repartition(partitions)
        encode.encode_texts(sample, specs[precision]).agg(F.count(F.lit(1))).first()

    spark_cold, cold_loads = run_spark(precisions[0])
    log.info("spark cold (workers load the model, %s): %.1f texts/s, %d model loads", precisions[0], spark_cold, cold_loads)
    plain_rates, warm_loads = [], 0
    spark_rates: dict = {p: [] for p in precisions}
    agreement: dict = {}
    for round_no in range(args.rounds):
        plain_rates.append(run_plain())
        for precision in precisions:
            warm_workers(precision)
            rate, loads = run_spark(precision)
            spark_rates[precision].append(rate)
            warm_loads += loads
            log.info("round %d: plain %.1f texts/s, spark %s %.1f texts/s (%d model loads)",
                     round_no + 1, plain_rates[-1], precision, rate, loads)
    for precision in precisions:
        agreement[precision] = cosines(spark_vectors(precision))
        log.info("spark %s: cosine to plain float32 min %.5f, mean %.5f", precision, *agreement[precision])

    plain = statistics.median(plain_rates)
    warm = {p: statistics.median(r) for p, r in spark_rates.items()}
    result = {
        "source": args.source,
        "texts": n,
        "mean_chars": round(statistics.mean(map(len, texts)), 1),
        "cores": cores,
        "partitions": partitions,
        "batch_size": args.batch_size,
        "torch_threads_plain": cores,
        "torch_threads_per_worker": specs[precisions[0]].threads(),
        "native_bf16": text_model.native_bf16("cpu"),
        "plain_texts_per_s": round(plain, 1),
        "spark_cold_texts_per_s": round(spark_cold, 1),
        "ratio_cold": round(spark_cold / plain, 3),
        "model_loads_cold": cold_loads,
        "model_loads_warm_rounds": warm_loads,
        "plain_rounds": [round(r, 1) for r in plain_rates],
        **{f"spark_{p}_texts_per_s": round(warm[p], 1) for p in precisions},
        **{f"ratio_{p}": round(warm[p] / plain, 3) for p in precisions},
        **{f"spark_{p}_rounds": [round(r, 1) for r in spark_rates[p]] for p in precisions},
        **{f"cosine_{p}_min": round(agreement[p][0], 5) for p in precisions},
        **{f"cosine_{p}_mean": round(agreement[p][1], 5) for p in precisions},
    }
    print(json.dumps(result))
    print("| path | texts/s | × plain | cosine to plain (min / mean) |\n|---|---:|---:|---:|")
    print(f"| plain `SentenceTransformer.encode`, float32 ({cores} torch threads) | {plain:.1f} | 1.00 | 1 / 1 |")
    for p in precisions:
        print(f"| Spark mapInPandas, `encode.precision={p}`, model warm in workers | {warm[p]:.1f} | "
              f"{warm[p] / plain:.2f} | {agreement[p][0]:.5f} / {agreement[p][1]:.5f} |")
    print(f"| Spark mapInPandas, {precisions[0]}, cold (incl. {cold_loads} model loads) | {spark_cold:.1f} | "
          f"{spark_cold / plain:.2f} | |")
    spark.stop()


if __name__ == "__main__":
    main()
