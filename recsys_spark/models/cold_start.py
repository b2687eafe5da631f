"""Cold-start items: catalog items the served model has never trained on, placed in its item
space through the learned text projection, so that ``retrieve`` and ``score`` serve them before
the next retrain.

An item with an active vector in gold/item_embeddings but outside the model's vocabulary gets
the item tower of an item whose own embedding is zero, ``normalise(text @ projection)``, and the
bias of the vocabulary's least-trained items (``SequenceRanker.cold_bias``). ``find_cold_items`` picks them on the
driver (newest encoded first, at most ``train.cold_start_max_items``); the resulting
``ColdItems`` is small (items x model dim), pickles into the Python workers with the UDF and
gives each worker one extended ranker.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from pyspark.sql import functions as F

from recsys_spark.core.lakehouse import Lakehouse
from recsys_spark.core.schemas import ACTIVE, ENCODED_AT, ITEM_EMBEDDINGS_TABLE, ITEM_ID, VECTOR
from recsys_spark.models.sequence import SequenceRanker, cached_ranker

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
    finite = F.forall(VECTOR, lambda x: x.isNotNull() & ~F.isnan(x) & (F.abs(x) != F.lit(float("inf"))))
    usable = F.coalesce((F.size(VECTOR) == dim) & finite & F.exists(VECTOR, lambda x: x != 0), F.lit(False))
    tally = outside.agg(F.count(F.lit(1)).alias("rows"), F.sum(usable.cast("long")).alias("usable")).first()
    n_usable = int(tally["usable"] or 0)
    counts["cold_start_bad_vectors"] = int(tally["rows"]) - n_usable
    counts["cold_start_over_limit"] = max(n_usable - max_items, 0)
    if n_usable == 0:
        return no_cold_items(model_dir), {**counts, "cold_start": "no catalog item outside the vocabulary has a usable vector"}
    chosen = (
        outside.where(usable).orderBy(F.col(ENCODED_AT).desc_nulls_last(), ITEM_ID).limit(max_items)
        .select(ITEM_ID, VECTOR).collect()
    )
    item_ids = [row[ITEM_ID] for row in chosen]
    vectors = ranker.project_text(np.asarray([row[VECTOR] for row in chosen], dtype=np.float32))
    counts["cold_start_items"] = len(item_ids)
    return ColdItems(model_dir, tuple(item_ids), vectors, _key(item_ids, vectors)), counts
