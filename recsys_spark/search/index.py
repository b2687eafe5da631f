"""Search indexes like Spark ML's estimators and models: fitted once, saved, loaded, searched.

    index = IVFIndex.fit(items, nlist=100, iterations=10, seed=17)   # items: (item_id, vector)
    index.save(path, source={"table_version": 7})                     # a folder, see below
    index = IVFIndex.load(spark, path)                                # any later session
    index.search(queries, k=10, exclude=seen)                         # (query_id, item_id, rank, score)

``fit`` checks and encodes the items once (:func:`~recsys_spark.search.vectors.encode_vectors`:
rows that cannot be searched are counted by reason and skipped) and, for :class:`IVFIndex`, trains
the k-means centroids (:func:`~recsys_spark.search.kmeans.train_centroids`); each item then lies
in its nearest cell. ``search`` reads queries ``(query_id, vector)`` (or vectors already encoded,
e.g. :meth:`EncodedVectors.as_queries` of the index's own items) and returns the top ``k`` items
of every query by cosine, ties broken by ``item_id``, never a pair listed in ``exclude``
``(query_id, item_id)``; the execution is :func:`recsys_spark.search.spark.search`.

A saved index is a folder: ``items/`` (Parquet: ``item_id``, ``_vec`` the unit float32 bytes and,
for IVF, ``_list`` the cell), ``centroids.npy`` (IVF) and ``manifest.json`` (format version, kind,
params, dim, vector counts and the caller's ``source``, e.g. the table or model version the items
came from, so a caller can tell whether the index still matches its items). The folder is written
beside and moved into place, so a reader finds the old index, none, or the new one. Manifest and
centroids are plain files: ``path`` is a local or mounted path (like the models folder), or a
``file:`` URI.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Optional, Union
from urllib.parse import urlparse

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core.schemas import ITEM_ID, QUERY_ID, VECTOR, require_columns
from recsys_spark.search import spark as spark_search
from recsys_spark.search.codec import VEC
from recsys_spark.search.kmeans import TRAIN_POINTS_PER_LIST, train_centroids
from recsys_spark.search.vectors import EncodedVectors, VectorCounts, encode_vectors

FORMAT = "recsys_spark.search.index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEMS_DIR = "items"
CENTROIDS_FILE = "centroids.npy"
_MANIFEST_KEYS = ("format", "format_version", "kind", "params", "dim", "counts", "source")

Queries = Union[DataFrame, EncodedVectors]


def _local(path: str) -> str:
    """``path`` as a file-system path for Python's own file calls."""
    parsed = urlparse(path)
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme and len(parsed.scheme) > 1:  # (a one-letter scheme is a Windows drive)
        raise ValueError(f"search index path {path}: only local or mounted paths (or file: URIs) are supported")
    return path


def read_manifest(path: str) -> dict:
    """The manifest of the index saved at ``path``; a clear error when there is none or it is
    not one this code reads."""
    folder = _local(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no search index at {path}: the folder does not exist")
    manifest_path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise ValueError(f"{path} is not a search index: it has no {MANIFEST}")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}/{MANIFEST} is not valid JSON ({error}): not a search index") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}/{MANIFEST} is not a search index manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: search index manifest version {manifest.get('format_version')!r}, this code reads version "
            f"{FORMAT_VERSION}: rebuild the index"
        )
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{path}/{MANIFEST} lacks {missing}: not a complete search index manifest")
    return manifest


class _Index:
    """What both indexes share: the encoded items, their counts, ``search``, ``save`` and ``load``."""

    kind = ""

    def __init__(self, vectors: EncodedVectors, block_size: int, path: Optional[str] = None, source: Optional[dict] = None):
        self._path = path
        self._source = dict(source or {})
        if vectors.id_col != ITEM_ID:
            frame = vectors.frame.select(F.col(vectors.id_col).alias(ITEM_ID), F.col(VEC).alias(VEC))
            vectors = EncodedVectors(frame, vectors.counts, ITEM_ID)
        if vectors.counts.usable == 0:
            raise ValueError(f"{self.label}: no usable item vectors, the index would be empty ({vectors.counts.to_dict()})")
        if block_size < 1:
            raise ValueError(f"{self.label}: block_size must be >= 1, got {block_size}")
        self.vectors = vectors
        self.block_size = block_size

    # ---- what the index holds -------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.kind} index" + (f" at {self._path}" if self._path else "")

    @property
    def counts(self) -> VectorCounts:
        return self.vectors.counts

    @property
    def dim(self) -> int:
        return self.vectors.counts.dim

    @property
    def size(self) -> int:
        """The number of items the index searches."""
        return self.vectors.counts.usable

    @property
    def path(self) -> Optional[str]:
        """Where the index was saved to or loaded from (None: only in memory)."""
        return self._path

    @property
    def source(self) -> dict:
        """What the caller said the items came from (``save``'s ``source``)."""
        return dict(self._source)

    @property
    def params(self) -> dict:
        return {}

    @staticmethod
    def encode_items(items: DataFrame, id_col: str = ITEM_ID, vector_col: str = VECTOR) -> EncodedVectors:
        """Check and encode an items frame once (``id_col`` read as the string ``item_id``)."""
        require_columns(items, [id_col, vector_col], "index items")
        return encode_vectors(items.select(F.col(id_col).cast("string").alias(ITEM_ID), F.col(vector_col).alias(VECTOR)), ITEM_ID)

    # ---- searching ---------------------------------------------------------------------------
    def encode_queries(self, queries: Queries) -> EncodedVectors:
        """Queries ``(query_id, vector)`` checked and encoded at the index's dimension (encoded
        vectors pass through). No query of that dimension among some is a clear error."""
        if isinstance(queries, EncodedVectors):
            encoded = queries if queries.id_col == QUERY_ID else EncodedVectors(
                queries.frame.select(F.col(queries.id_col).alias(QUERY_ID), F.col(VEC).alias(VEC)), queries.counts, QUERY_ID
            )
            if encoded.counts.usable and encoded.dim != self.dim:
                raise ValueError(f"{self.label} has dimension {self.dim}, the encoded queries {encoded.dim}")
            return encoded
        require_columns(queries, [QUERY_ID, VECTOR], "vector search queries")
        frame = queries.select(F.col(QUERY_ID).cast("string").alias(QUERY_ID), F.col(VECTOR).alias(VECTOR))
        encoded = encode_vectors(frame, QUERY_ID, self.dim)
        if encoded.counts.usable == 0 and encoded.counts.rows:
            raise ValueError(
                f"{self.label}: no query vector has the index's dimension {self.dim} (query vectors: {encoded.counts.to_dict()})"
            )
        return encoded

    def _search(self, queries: Queries, k: int, exclude: Optional[DataFrame], items: DataFrame, centroids, nprobe: int) -> DataFrame:
        if k < 1:
            raise ValueError(f"{self.label}: k must be >= 1, got {k}")
        encoded = self.encode_queries(queries)
        spark = encoded.frame.sparkSession
        if encoded.counts.usable == 0:
            return spark_search.empty_results(spark)
        return spark_search.search(
            spark_search.with_exclusions(encoded.frame, exclude), encoded.counts.usable,
            items, self.size, self.dim, k, self.block_size, centroids, nprobe,
        )

    # ---- saving and loading ----------------------------------------------------------------
    def _items_to_save(self) -> DataFrame:
        return self.vectors.frame

    def _centroids(self) -> Optional[np.ndarray]:
        return None

    def save(self, path: str, source: Optional[dict] = None) -> str:
        """Write the index to the folder ``path`` (replacing an index there) and return it.

        ``source`` (JSON values) says what the items came from, e.g. ``{"table_version": 7}``.
        A folder that exists and is not an index is never replaced.
        """
        source = dict(self._source if source is None else source)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "params": self.params,
            "dim": self.dim, "counts": self.counts.to_dict(), "source": source,
            "search_defaults": self._search_defaults(),
        }
        try:
            text = json.dumps(manifest, indent=1, sort_keys=True)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{self.label}: the index source {source!r} is not JSON ({error})") from error
        folder = _local(path).rstrip("/")
        if os.path.exists(folder) and not os.path.isfile(os.path.join(folder, MANIFEST)) and (
            not os.path.isdir(folder) or os.listdir(folder)
        ):
            raise ValueError(f"{path} exists and is not a search index (no {MANIFEST}): not replacing it")
        suffix = f".staging-{uuid.uuid4().hex[:12]}"
        staging, staging_uri = folder + suffix, path.rstrip("/") + suffix
        try:
            self._items_to_save().write.parquet(f"{staging_uri}/{ITEMS_DIR}")
            centroids = self._centroids()
            if centroids is not None:
                np.save(os.path.join(staging, CENTROIDS_FILE), centroids)
            with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as handle:
                handle.write(text)
            if os.path.exists(folder):
                shutil.rmtree(folder)
            os.rename(staging, folder)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging, ignore_errors=True)
        self._path, self._source = path, source
        return path

    def _search_defaults(self) -> dict:
        return {"block_size": self.block_size}

    @classmethod
    def _read(cls, spark, path: str) -> tuple[dict, DataFrame, EncodedVectors]:
        """The manifest and items of the ``cls.kind`` index at ``path``, checked."""
        manifest = read_manifest(path)
        if manifest["kind"] != cls.kind:
            raise ValueError(f"{path} holds a {manifest['kind']!r} index, not {cls.kind!r}: load it with its own class")
        items = spark.read.parquet(f"{path.rstrip('/')}/{ITEMS_DIR}")
        expected = {ITEM_ID: T.StringType(), VEC: T.BinaryType(), **cls._extra_item_columns()}
        found = {field.name: field.dataType for field in items.schema.fields}
        if any(found.get(name) != kind for name, kind in expected.items()):
            raise ValueError(
                f"{path}/{ITEMS_DIR}: items have columns {sorted(found.items(), key=str)}, expected {sorted(expected.items(), key=str)}"
            )
        counts = VectorCounts.from_dict(manifest["counts"])
        if counts.dim != manifest["dim"]:
            raise ValueError(f"{path}/{MANIFEST}: dim {manifest['dim']} but the counts say {counts.dim}")
        return manifest, items, EncodedVectors(items.select(ITEM_ID, VEC), counts, ITEM_ID)

    @staticmethod
    def _extra_item_columns() -> dict:
        return {}


class ExactIndex(_Index):
    """Exact cosine search: every query is compared with every item (in ``block_size`` blocks)."""

    kind = "exact"

    @classmethod
    def fit(cls, items: DataFrame, id_col: str = ITEM_ID, vector_col: str = VECTOR, block_size: int = 4096) -> "ExactIndex":
        """Encode ``items`` (``id_col``, ``vector_col``); an items frame with no usable vector is
        an error (see :attr:`counts` for the skipped rows)."""
        return cls(cls.encode_items(items, id_col, vector_col), block_size)

    @classmethod
    def from_vectors(cls, vectors: EncodedVectors, block_size: int = 4096) -> "ExactIndex":
        """An index over items already encoded (no second pass over their vectors)."""
        return cls(vectors, block_size)

    def search(self, queries: Queries, k: int, exclude: Optional[DataFrame] = None) -> DataFrame:
        """``(query_id, item_id, rank, score)``: the exact top ``k`` items of every query."""
        return self._search(queries, k, exclude, self.vectors.frame, None, 1)

    @classmethod
    def load(cls, spark, path: str, block_size: Optional[int] = None) -> "ExactIndex":
        manifest, _, vectors = cls._read(spark, path)
        block_size = block_size or manifest.get("search_defaults", {}).get("block_size", 4096)
        return cls(vectors, block_size, path=path, source=manifest["source"])


class IVFIndex(_Index):
    """Approximate cosine search through an inverted file: items in their nearest of ``nlist``
    k-means cells, each query scanning the items of its ``nprobe`` nearest cells (``nprobe >=
    nlist`` is an exact search)."""

    kind = "ivf"

    def __init__(
        self,
        vectors: EncodedVectors,
        centroids: np.ndarray,
        params: dict,
        nprobe: int = 8,
        block_size: int = 4096,
        listed: Optional[DataFrame] = None,
        path: Optional[str] = None,
        source: Optional[dict] = None,
    ):
        super().__init__(vectors, block_size, path, source)
        centroids = np.asarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != self.dim or len(centroids) == 0:
            raise ValueError(f"{self.label}: centroids of shape {centroids.shape} for items of dimension {self.dim}")
        if nprobe < 1:
            raise ValueError(f"{self.label}: nprobe must be >= 1, got {nprobe}")
        self.centroids = centroids
        self.nprobe = nprobe
        self._params = dict(params)
        self._listed = listed  # the items with their cell (``_list``), when read from a saved index

    @classmethod
    def fit(
        cls, items: DataFrame, nlist: int, iterations: int = 10, seed: int = 17, id_col: str = ITEM_ID,
        vector_col: str = VECTOR, nprobe: int = 8, block_size: int = 4096, **training,
    ) -> "IVFIndex":
        """Encode ``items`` once and train ``nlist`` cells (at most one per usable item) on a
        sample of them; ``nprobe`` and ``block_size`` are the search defaults, ``training`` is
        passed to :func:`~recsys_spark.search.kmeans.train_centroids` (``train_points_per_list``,
        ``max_driver_sample_mb``)."""
        vectors = cls.encode_items(items, id_col, vector_col)
        return cls.from_vectors(vectors, nlist, iterations, seed, nprobe, block_size, **training)

    @classmethod
    def from_vectors(
        cls, vectors: EncodedVectors, nlist: int, iterations: int = 10, seed: int = 17, nprobe: int = 8,
        block_size: int = 4096, **training,
    ) -> "IVFIndex":
        """An index over items already encoded: only the centroids are trained (see :meth:`fit`)."""
        if nlist < 1 or nprobe < 1:
            raise ValueError(f"IVF index: nlist and nprobe must be >= 1, got nlist={nlist}, nprobe={nprobe}")
        if vectors.counts.usable == 0:
            raise ValueError(f"IVF index: no usable item vectors, the index would be empty ({vectors.counts.to_dict()})")
        centroids = train_centroids(vectors, nlist, iterations, seed, **training)
        params = {
            "nlist": nlist, "iterations": iterations, "seed": seed,
            "train_points_per_list": training.get("train_points_per_list", TRAIN_POINTS_PER_LIST),
        }
        return cls(vectors, centroids, params, nprobe, block_size)

    @property
    def params(self) -> dict:
        return dict(self._params)

    @property
    def nlist(self) -> int:
        """The number of cells (``min(nlist, items)``)."""
        return len(self.centroids)

    def search(self, queries: Queries, k: int, exclude: Optional[DataFrame] = None, nprobe: Optional[int] = None) -> DataFrame:
        """``(query_id, item_id, rank, score)``: the top ``k`` items of every query among those
        of its ``nprobe`` (default: the index's) nearest cells."""
        nprobe = self.nprobe if nprobe is None else nprobe
        if nprobe < 1:
            raise ValueError(f"{self.label}: nprobe must be >= 1, got {nprobe}")
        items = self.vectors.frame if self._listed is None else self._listed
        return self._search(queries, k, exclude, items, self.centroids, min(nprobe, self.nlist))

    def _items_to_save(self) -> DataFrame:
        return self._listed if self._listed is not None else spark_search.assign_lists(self.vectors.frame, self.centroids)

    def _centroids(self) -> Optional[np.ndarray]:
        return self.centroids

    def _search_defaults(self) -> dict:
        return {"block_size": self.block_size, "nprobe": self.nprobe}

    @staticmethod
    def _extra_item_columns() -> dict:
        return {spark_search.LIST_ID: T.IntegerType()}

    @classmethod
    def load(cls, spark, path: str, nprobe: Optional[int] = None, block_size: Optional[int] = None) -> "IVFIndex":
        """The IVF index saved at ``path``; ``nprobe``/``block_size`` override its search defaults."""
        manifest, items, vectors = cls._read(spark, path)
        centroids_path = os.path.join(_local(path), CENTROIDS_FILE)
        if not os.path.isfile(centroids_path):
            raise ValueError(f"{path}: IVF index without {CENTROIDS_FILE}")
        centroids = np.load(centroids_path)  # numpy never unpickles by default
        defaults = manifest.get("search_defaults", {})
        return cls(
            vectors, centroids, manifest["params"],
            nprobe=nprobe or defaults.get("nprobe", 8), block_size=block_size or defaults.get("block_size", 4096),
            listed=items.select(ITEM_ID, VEC, spark_search.LIST_ID), path=path, source=manifest["source"],
        )
