"""Entry point of one training rank started as its own process (horovodrun, barrier tasks).

``python -m recsys_spark.trainers.entry <distribution> <job.json>`` trains one rank with
``train_worker`` and writes its result to ``<work_dir>/result-rank<r>.json``.
"""
from __future__ import annotations

import json
import logging
import sys

from recsys_spark.trainers import TrainJob, rank_result_path
from recsys_spark.trainers.worker import train_worker


def main(argv: "list[str]") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    distribution, job_path = argv
    with open(job_path, encoding="utf-8") as handle:
        job = TrainJob.from_json(handle.read())
    result = train_worker(job, distribution)
    with open(rank_result_path(job.work_dir, result["rank"]), "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
