"""Texts/second: plain ``SentenceTransformer.encode`` against the Spark path of the encode stage.

Both run in one process on the same cores, on the same few thousand MovieLens texts (title,
genres and tags rendered by ``encode.item_texts``), alternating for ``--rounds`` rounds so load
from other processes hits both alike:

- plain: one SentenceTransformer in this process, torch threads = the cores;
- spark: ``encode.encode_texts`` (mapInPandas) on local[cores] with ``--partitions`` partitions and
  the stage's thread plan (cores / concurrent tasks per worker). The first Spark run is "cold":
  the Python workers load the model; before each later (timed) run a few rows make sure the
  reused workers hold it, since Spark ends workers that sat idle for a minute.

    python bench/bench_encode.py --n 3000 --rounds 2

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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pyspark.sql import functions as F  # noqa: E402

from recsys_spark.stages import encode  # noqa: E402

from recsys_spark.models import text as text_model
from recsys_spark.core.config import EncodeConfig, load_config  # noqa: E402
from recsys_spark.core.schemas import CONTENT_HASH, GENRES, ITEM_ID, TAGS, TITLE  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="texts to encode")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/spark rounds")
    parser.add_argument("--batch-size", type=int, default=EncodeConfig.batch_size)
    parser.add_argument("--partitions", type=int, default=0, help="0: the cores")
    parser.add_argument("--cores", type=int, default=0, help="0: the cores of this machine")
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
    items = movielens_items(spark, movielens_folder(), args.n)
    texts_df = encode.item_texts(items, "{title}. {genres}. {tags}", encode_cfg.max_text_chars).filter(
        F.col("text").isNotNull()
    ).repartition(partitions).cache()
    texts = [row["text"] for row in texts_df.select("text").collect()]  # a few thousand: the plain path's input
    n = len(texts)
    log.info("%d texts, mean %.0f chars; %d cores, %d partitions", n, statistics.mean(map(len, texts)), cores, partitions)

    spec = encode.encoder_spec(spark, encode_cfg, model.path)
    plain_model, _ = text_model.load_encoder(model.path, "cpu")
    text_model.set_torch_threads(cores)
    plain_model.encode(texts[:64], batch_size=args.batch_size)  # warm-up, like the workers' first batch

    def run_plain() -> float:
        started = time.perf_counter()
        plain_model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return n / (time.perf_counter() - started)

    def run_spark() -> tuple[float, int]:
        started = time.perf_counter()
        row = encode.encode_texts(texts_df, spec).agg(
            F.count(F.lit(1)).alias("n"), F.count_if(F.col(encode.MODEL_LOADED)).alias("loads")
        ).first()
        assert row["n"] == n, f"spark encoded {row['n']} of {n} texts"
        return n / (time.perf_counter() - started), row["loads"]

    def warm_workers() -> None:
        # Spark ends Python workers idle for over a minute (a fixed timeout): a few rows per
        # partition, untimed, make sure the timed run finds the model loaded.
        sample = texts_df.limit(4 * partitions).repartition(partitions)
        encode.encode_texts(sample, spec).agg(F.count(F.lit(1))).first()

    spark_cold, cold_loads = run_spark()
    log.info("spark cold (workers load the model): %.1f texts/s, %d model loads", spark_cold, cold_loads)
    plain_rates, spark_rates, warm_loads = [], [], 0
    for round_no in range(args.rounds):
        plain_rates.append(run_plain())
        warm_workers()
        rate, loads = run_spark()
        spark_rates.append(rate)
        warm_loads += loads
        log.info("round %d: plain %.1f texts/s, spark %.1f texts/s (%d model loads)", round_no + 1, plain_rates[-1], rate, loads)

    plain, spark_warm = statistics.median(plain_rates), statistics.median(spark_rates)
    result = {
        "texts": n,
        "cores": cores,
        "partitions": partitions,
        "batch_size": args.batch_size,
        "torch_threads_plain": cores,
        "torch_threads_per_worker": spec.threads(),
        "plain_texts_per_s": round(plain, 1),
        "spark_warm_texts_per_s": round(spark_warm, 1),
        "spark_cold_texts_per_s": round(spark_cold, 1),
        "ratio_warm": round(spark_warm / plain, 3),
        "ratio_cold": round(spark_cold / plain, 3),
        "model_loads_cold": cold_loads,
        "model_loads_warm_rounds": warm_loads,
        "plain_rounds": [round(r, 1) for r in plain_rates],
        "spark_rounds": [round(r, 1) for r in spark_rates],
    }
    print(json.dumps(result))
    print("| path | texts/s | × plain |\n|---|---:|---:|")
    print(f"| plain `SentenceTransformer.encode` ({cores} torch threads) | {plain:.1f} | 1.00 |")
    print(f"| Spark mapInPandas, model warm in workers | {spark_warm:.1f} | {spark_warm / plain:.2f} |")
    print(f"| Spark mapInPandas, cold (incl. {cold_loads} model loads) | {spark_cold:.1f} | {spark_cold / plain:.2f} |")
    spark.stop()


if __name__ == "__main__":
    main()
