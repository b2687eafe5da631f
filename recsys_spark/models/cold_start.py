"""Cold-start items: catalog items the served model has never trained on, placed in its item
space through the learned text projection, so that ``retrieve`` and ``score`` serve them before
the next retrain.

An item added to gold/item_embeddings after the model was trained (absent from the table
version the model records in ``config.json``, ``inputs.item_embeddings_version``; when that
version can no longer be read, encoded after the model's ``created_at``) and outside its
vocabulary gets the item tower of an item whose own embedding is zero, ``normalise(text @ projection)``, and the
bias of the vocabulary's least-trained items (``SequenceRanker.cold_bias``). ``find_cold_items`` picks them on the
driver (newest encoded first, at most ``train.cold_start_max_items``); the resulting
``ColdItems`` is small (items x model dim), pickles into the Python workers with the UDF and
gives each worker one extended ranker.

Items the trainer saw in the table but left out of the vocabulary (no training event in the
window, or fewer than ``train.min_item_count``) are not cold: the model has judged them, and
their text-only vectors would crowd the lists (measured on ml-latest-small: 2,306 such items
took 41% of the top-10 and NDCG@10 fell from 0.051 to 0.042).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import numpy as np
from pyspark.sql import functions as F

from recsys_spark.core.lakehouse import Lakehouse
from recsys_spark.core.schemas import ACTIVE, ENCODED_AT, ITEM_EMBEDDINGS_TABLE, ITEM_ID, VECTOR
from recsys_spark.models.sequence import CONFIG_FILE, SequenceRanker, cached_ranker

log = logging.getLogger(__name__)

_RANKERS: "dict[tuple[str, str], SequenceRanker]" = {}  # per process: (model_dir, key) -> ranker


@dataclass(frozen=True)
class ColdItems:
    """The cold items of one model: ids, their (n, d) unit vectors in its item space, and a key
    that names the set (an index built from other cold items is not reused)."""

    model_dir: str
    item_ids: "tuple[str, ...]"
    vectors: np.ndarray
    key: str

    def __len__(self) -> int:
        return len(self.item_ids)

    def ranker(self) -> SequenceRanker:
        """The model of ``model_dir`` that also ranks these items, built once per process."""
        cache_key = (self.model_dir, self.key)
        ranker = _RANKERS.get(cache_key)
        if ranker is None:
            base = cached_ranker(self.model_dir)
            ranker = base.with_cold_items(list(self.item_ids), self.vectors) if self.item_ids else base
            if len(_RANKERS) >= 2:
                _RANKERS.clear()
            _RANKERS[cache_key] = ranker
        return ranker


def _key(item_ids: "list[str]", vectors: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(item_ids).encode("utf-8"))
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _added_after_training(lake: Lakehouse, model_dir: str, rows):
    """``rows`` (item_embeddings rows outside the vocabulary) less those the trainer already had:
    the ids of the table version the model was trained on, else rows encoded before the model
    was created; and what the cut was (for the summary)."""
    try:
        with open(os.path.join(model_dir, CONFIG_FILE), encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        meta = {}
    trained_on = (meta.get("inputs") or {}).get("item_embeddings_version")
    if trained_on is not None:
        try:
            known = lake.read(ITEM_EMBEDDINGS_TABLE, version=int(trained_on)).select(ITEM_ID)
            known.limit(1).collect()  # a vacuumed or expired version fails here, not later
            return rows.join(known, ITEM_ID, "left_anti"), f"{ITEM_EMBEDDINGS_TABLE} version {trained_on}"
        except Exception as exc:  # noqa: BLE001 - any unreadable version: fall back to the time
            log.warning("cold start: %s version %s cannot be read (%s); using the model's creation time",
                        ITEM_EMBEDDINGS_TABLE, trained_on, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    created = meta.get("created_at")
    if created:
        stamp = datetime.fromisoformat(created)
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(timezone.utc).replace(tzinfo=None)
        return rows.where(F.col(ENCODED_AT) > F.lit(stamp)), f"encoded after {stamp.isoformat()}"
    return rows, "every item outside the vocabulary (the model records neither)"


def no_cold_items(model_dir: str) -> ColdItems:
    return ColdItems(model_dir, (), np.zeros((0, 0), dtype=np.float32), "none")


def find_cold_items(lake: Lakehouse, model_dir: str, max_items: int, version: Optional[int] = None) -> "tuple[ColdItems, dict]":
    """The active items of gold/item_embeddings (at ``version``) that the model's vocabulary lacks,
    projected into its item space, and their counts: ``cold_start_items`` (served),
    ``cold_start_over_limit`` (beyond ``max_items``), ``cold_start_bad_vectors`` (wrong
    dimension, not finite or all zero: not served) and ``cold_start`` (why none, when none)."""
    ranker = cached_ranker(model_dir)
    counts = {"cold_start_items": 0, "cold_start_over_limit": 0, "cold_start_bad_vectors": 0}
    if max_items == 0:
        return no_cold_items(model_dir), {**counts, "cold_start": "off (train.cold_start_max_items=0)"}
    if not ranker.has_text_projection:
        return no_cold_items(model_dir), {**counts, "cold_start": "the model has no text projection"}
    if not lake.exists(ITEM_EMBEDDINGS_TABLE):
        return no_cold_items(model_dir), {**counts, "cold_start": f"no {ITEM_EMBEDDINGS_TABLE}"}
    spark, dim = lake.spark, ranker.spec.text_dim
    vocabulary = spark.createDataFrame([(item,) for item in ranker.item_ids[: ranker.vocabulary_size]], f"{ITEM_ID} string")
    outside = (
        lake.read(ITEM_EMBEDDINGS_TABLE, version=version)
        .where(F.coalesce(F.col(ACTIVE), F.lit(True)))
        .join(vocabulary, ITEM_ID, "left_anti")
    )
    outside, counts["cold_start_since"] = _added_after_training(lake, model_dir, outside)
    finite = F.forall(VECTOR, lambda x: x.isNotNull() & ~F.isnan(x) & (F.abs(x) != F.lit(float("inf"))))
    usable = F.coalesce((F.size(VECTOR) == dim) & finite & F.exists(VECTOR, lambda x: x != 0), F.lit(False))
    tally = outside.agg(F.count(F.lit(1)).alias("rows"), F.sum(usable.cast("long")).alias("usable")).first()
    n_usable = int(tally["usable"] or 0)
    counts["cold_start_bad_vectors"] = int(tally["rows"]) - n_usable
    counts["cold_start_over_limit"] = max(n_usable - max_items, 0)
    if n_usable == 0:
        return no_cold_items(model_dir), {**counts, "cold_start": "no item added since training has a usable vector outside the vocabulary"}
    chosen = (
        outside.where(usable).orderBy(F.col(ENCODED_AT).desc_nulls_last(), ITEM_ID).limit(max_items)
        .select(ITEM_ID, VECTOR).collect()
    )
    item_ids = [row[ITEM_ID] for row in chosen]
    vectors = ranker.project_text(np.asarray([row[VECTOR] for row in chosen], dtype=np.float32))
    counts["cold_start_items"] = len(item_ids)
    return ColdItems(model_dir, tuple(item_ids), vectors, _key(item_ids, vectors)), counts
