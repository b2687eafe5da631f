"""The one check-and-encode pass of the search: usable rows as unit float32 bytes, with counts.

:func:`encode_vectors` reads ``(id, vector array<float>)`` once: every row gets a code (usable or
why not: missing, wrong dimension, non-finite, zero), usable vectors are unit-normalised into
the binary column ``_vec`` (:mod:`recsys_spark.search.codec`), and the result is kept on the
executors (a local checkpoint) so the k-means sample, the index and the search read bytes
instead of decoding Spark arrays again. It returns :class:`EncodedVectors`: the usable rows and
their :class:`VectorCounts`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import partial
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.core.schemas import QUERY_ID, VECTOR, require_columns
from recsys_spark.search.codec import VEC, unit_binary

log = logging.getLogger(__name__)

MISSING, WRONG_DIMENSION, NON_FINITE, ZERO, USABLE = range(5)
_LENGTH = "_len"
_CODE = "_code"


@dataclass(frozen=True)
class VectorCounts:
    """What :func:`encode_vectors` found: usable rows and each kind of skipped row."""

    rows: int
    usable: int
    missing: int  # null id, null or empty vector
    wrong_dimension: int
    non_finite: int  # NaN, infinite or null component
    zero: int  # all-zero vector: no direction, cosine undefined
    dim: Optional[int]

    @property
    def skipped(self) -> int:
        return self.rows - self.usable

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": self.skipped}

    @classmethod
    def from_dict(cls, values: dict) -> "VectorCounts":
        """The counts :meth:`to_dict` wrote (``skipped`` is derived, so ignored)."""
        return cls(**{name: values[name] for name in ("rows", "usable", "missing", "wrong_dimension", "non_finite", "zero", "dim")})


@dataclass(frozen=True)
class EncodedVectors:
    """The usable rows of one side of a search: ``frame`` is ``(id_col, _vec)`` with ``_vec`` a
    unit float32 vector's bytes, ``counts`` what the encoding pass found."""

    frame: DataFrame
    counts: VectorCounts
    id_col: str

    @property
    def dim(self) -> Optional[int]:
        return self.counts.dim

    def as_queries(self) -> "EncodedVectors":
        """The same vectors with their ids as ``query_id``, in fresh column identities (the
        search may then read the same rows as items and as queries, e.g. item -> item)."""
        frame = self.frame.select(F.col(self.id_col).alias(QUERY_ID), F.col(VEC).alias(VEC))
        return EncodedVectors(frame, self.counts, QUERY_ID)

    def random_sample(self, n: int, seed: int) -> "EncodedVectors":
        """``n`` random usable rows (all when fewer), cached; the caller unpersists ``frame``."""
        frame = self.frame.orderBy(F.rand(seed)).limit(n).cache()
        taken = min(n, self.counts.usable)
        counts = VectorCounts(rows=taken, usable=taken, missing=0, wrong_dimension=0, non_finite=0, zero=0, dim=self.dim)
        return EncodedVectors(frame, counts, self.id_col)


def _vector_codes(ids: pa.Array, vectors: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``(code, length)``: code is ``USABLE`` or why the vector cannot be searched, every
    non-empty length checked as if it were the dimension (the dimension is chosen afterwards)."""
    n = len(vectors)
    lengths = pc.list_value_length(vectors).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = np.full(n, MISSING, dtype=np.int8)
    present = (lengths > 0) & ~ids.is_null().to_numpy(zero_copy_only=False)
    values = vectors.flatten()  # the non-null lists' elements, in row order
    floats = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # null -> NaN
    starts = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))])[:-1]
    for size in np.unique(lengths[present]):
        rows = np.flatnonzero(present & (lengths == size))
        if rows.size == n:  # the usual batch: every row one length, values back to back
            block = floats.reshape(n, size)
        else:
            block = floats[starts[rows][:, None] + np.arange(size)]
        finite = np.isfinite(block).all(axis=1)
        zero = finite & ~block.any(axis=1)
        codes[rows] = np.where(~finite, NON_FINITE, np.where(zero, ZERO, USABLE))
    return codes, lengths


def _encode(id_col: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Every row as ``(id_col, _vec, _len, _code)``: ``_code`` says whether the vector is usable
    at its own length (:func:`_vector_codes`), ``_vec`` holds it unit-normalised."""
    for batch in batches:
        ids, vectors = batch.column(id_col), batch.column(VECTOR)
        codes, lengths = _vector_codes(ids, vectors)
        columns = [ids, unit_binary(vectors, codes == USABLE, lengths), pa.array(lengths, pa.int64()), pa.array(codes.astype(np.int32))]
        yield pa.RecordBatch.from_arrays(columns, [id_col, VEC, _LENGTH, _CODE])


def _tally(stats: list, dim: Optional[int], label: str) -> VectorCounts:
    """:class:`VectorCounts` from rows ``(length, code, n)``; ``dim`` None: the most common
    length among the vectors with finite components."""
    finite_sizes: dict[int, int] = {}
    for row in stats:
        if row["code"] in (ZERO, USABLE):
            finite_sizes[row["length"]] = finite_sizes.get(row["length"], 0) + row["n"]
    if dim is None and finite_sizes:
        dim = max(finite_sizes, key=lambda s: (finite_sizes[s], -s))
    counts = {"missing": 0, "wrong_dimension": 0, "non_finite": 0, "zero": 0, "usable": 0}
    names = {NON_FINITE: "non_finite", ZERO: "zero", USABLE: "usable"}
    for row in stats:
        if row["code"] == MISSING:
            counts["missing"] += row["n"]
        elif row["length"] != dim:
            counts["wrong_dimension"] += row["n"]
        else:
            counts[names[row["code"]]] += row["n"]
    result = VectorCounts(rows=sum(r["n"] for r in stats), dim=dim, **counts)
    if result.skipped:
        log.warning("vector search input (%s): skipped %d bad vector(s): %s", label, result.skipped, result.to_dict())
    return result


def encode_vectors(df: DataFrame, id_col: str, dim: Optional[int] = None) -> EncodedVectors:
    """``df``'s usable rows as ``(id_col, _vec)`` (unit vectors as float32 bytes) and their
    counts by reason, from one pass over ``vector`` (``id_col`` keeps its type).

    The expected dimension is ``dim`` or, when None, the most common length among the vectors
    with finite components. Skipped: a null id or a null/empty vector (missing), another length
    (wrong dimension), a NaN/infinite/null component (non-finite), an all-zero vector (zero).
    The encoded rows are kept on the executors (a local checkpoint, freed when the returned
    frame is garbage-collected). Like any local checkpoint, it does not survive the loss of an
    executor: a search running while one is lost fails and must be rerun.
    """
    require_columns(df, [id_col, VECTOR], "vector search input")
    id_type = df.schema[id_col].dataType
    schema = T.StructType(
        [
            T.StructField(id_col, id_type),
            T.StructField(VEC, T.BinaryType(), False),
            T.StructField(_LENGTH, T.LongType(), False),
            T.StructField(_CODE, T.IntegerType(), False),
        ]
    )
    source = df.select(F.col(id_col).alias(id_col), F.col(VECTOR).alias(VECTOR))
    encoded = source.mapInArrow(partial(_encode, id_col), schema).localCheckpoint(eager=True)
    stats = encoded.groupBy(F.col(_LENGTH).alias("length"), F.col(_CODE).alias("code")).agg(F.count(F.lit(1)).alias("n"))
    counts = _tally(stats.collect(), dim, id_col)
    usable = (F.col(_CODE) == USABLE) & (F.col(_LENGTH) == F.lit(-1 if counts.dim is None else counts.dim))
    return EncodedVectors(encoded.where(usable).select(id_col, VEC), counts, id_col)
