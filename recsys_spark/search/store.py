"""The item indexes a warehouse keeps: built from a Delta table's vectors, saved under
``<warehouse>/indexes/<name>`` and reused while their source is unchanged.

``item_index`` is the one way a stage gets an index over item vectors: exact or IVF by
``retrieve.method`` (``auto``: exact up to ``retrieve.exact_max_items`` usable items). A saved
IVF index whose manifest names the same source (e.g. a table version) and today's training
settings is loaded without reading the items; otherwise the items are encoded once, and an IVF
index is trained and saved. ``text_index`` is that for the text vectors of gold/item_embeddings:
retrieve's similar items and interest queries, and evaluate's content baseline share it.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Union

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.core import progress
from recsys_spark.core.context import StageContext
from recsys_spark.core.schemas import ACTIVE, ITEM_EMBEDDINGS_TABLE, ITEM_ID, VECTOR
from recsys_spark.search.index import ExactIndex, IVFIndex, read_manifest

log = logging.getLogger(__name__)

Index = Union[ExactIndex, IVFIndex]
TEXT_INDEX = "item_embeddings"  # <warehouse>/indexes/<name>: the text item vectors


def index_path(ctx: StageContext, name: str) -> str:
    """``<warehouse>/indexes/<name>``: where the IVF indexes are kept (both table modes)."""
    return f"{ctx.cfg.warehouse.rstrip('/')}/indexes/{name}"


def _nlist(ctx: StageContext, n_items: int) -> int:
    return min(ctx.cfg.retrieve.nlist or max(1, round(math.sqrt(n_items))), n_items)


def _ivf_params(ctx: StageContext, n_items: int) -> dict:
    """What an IVF index over ``n_items`` items is trained with (compared with a saved one's)."""
    rc = ctx.cfg.retrieve
    return {"nlist": _nlist(ctx, n_items), "iterations": rc.kmeans_iterations, "seed": rc.seed}


def _method(ctx: StageContext, n_items: int) -> str:
    rc = ctx.cfg.retrieve
    if rc.method == "auto":
        return "exact" if n_items <= rc.exact_max_items else "ivf"
    return rc.method


def _saved_index(ctx: StageContext, path: str, source: dict) -> Optional[IVFIndex]:
    """The IVF index at ``path`` when it was built from ``source`` with today's settings (an
    unreadable one is logged and trained again)."""
    rc = ctx.cfg.retrieve
    if rc.method == "exact":
        return None
    try:
        manifest = read_manifest(path)
        usable = manifest["counts"].get("usable", 0)
        params = {key: manifest["params"].get(key) for key in ("nlist", "iterations", "seed")}
        if manifest["kind"] != "ivf" or manifest["source"] != source or not usable or _method(ctx, usable) != "ivf":
            return None
        if params != _ivf_params(ctx, usable):
            return None
        return IVFIndex.load(ctx.spark, path, nprobe=rc.nprobe, block_size=rc.block_size)
    except FileNotFoundError:
        return None
    except ValueError as error:
        log.warning("index %s: %s; training a new index", error)
        return None


def _ivf_info(how: str, index: IVFIndex, nprobe: int) -> dict:
    return {"index": how, "index_path": index.path, "nlist": index.nlist, "nprobe": min(nprobe, index.nlist)}


def item_index(
    ctx: StageContext, name: str, source: dict, items: Callable[[], DataFrame], what: str, empty_hint: str
) -> tuple[str, Index, dict]:
    """``(method, index, info)`` over the item vectors ``items()`` (``item_id, vector``) built from
    ``source``: exact or IVF by ``retrieve.method``. A saved IVF index of the same source and
    settings is loaded (``items()`` is then never read); otherwise the items are encoded once and,
    for IVF, an index is trained and saved under ``<warehouse>/indexes/<name>``. Items without
    one usable vector are an error naming ``what`` and ``empty_hint``.
    """
    rc = ctx.cfg.retrieve
    path = index_path(ctx, name)
    saved = _saved_index(ctx, path, source)
    if saved is not None:
        ctx.progress(f"reusing the IVF index of {what} at {path}")
        return "ivf", saved, _ivf_info("reused", saved, rc.nprobe)
    vectors = ExactIndex.encode_items(items())
    if vectors.counts.usable == 0:
        raise ValueError(f"index {name}: {what} has no usable item vectors ({vectors.counts.to_dict()}); {empty_hint}")
    method = _method(ctx, vectors.counts.usable)
    if method == "exact":
        return method, ExactIndex.from_vectors(vectors, rc.block_size), {"index": "built", "index_path": None}
    params = _ivf_params(ctx, vectors.counts.usable)
    ctx.progress(f"training the IVF index of {what} ({params['nlist']} lists)")
    progress.describe(ctx.spark, f"training the IVF index of {what}")
    index = IVFIndex.from_vectors(
        vectors, params["nlist"], params["iterations"], params["seed"], nprobe=rc.nprobe, block_size=rc.block_size
    )
    index.save(path, source)
    return method, index, _ivf_info("trained", index, rc.nprobe)




def text_index(ctx: StageContext, version: Optional[int] = None) -> tuple[str, Index, dict]:
    """``item_index`` over the active text vectors of gold/item_embeddings (at ``version``, by
    default the current one): the index retrieve saves is the one evaluate's content baseline
    loads while the table version is unchanged."""
    lake = ctx.lake
    version = lake.version(ITEM_EMBEDDINGS_TABLE) if version is None else version

    def text_vectors() -> DataFrame:
        embeddings = lake.read(ITEM_EMBEDDINGS_TABLE, version=version)
        return embeddings.where(F.coalesce(F.col(ACTIVE), F.lit(True))).select(ITEM_ID, VECTOR)

    source = {"table": str(ITEM_EMBEDDINGS_TABLE), "table_version": version, "rows": "active"}
    return item_index(ctx, TEXT_INDEX, source, text_vectors, str(ITEM_EMBEDDINGS_TABLE), "run encode first")
