"""``Schema.fit`` on data bigger than memory: Parquet files or an iterable of DataFrame chunks.

One pass over the chunks, one chunk in memory at a time. What is kept between chunks is the
learned state itself: the exact count of every distinct value of each vocabulary, in order of
first appearance (memory grows with the number of distinct values, not with rows; hashed
features keep nothing), and ``(count, mean, M2)`` per :class:`~recsys_mt.data.Dense` feature,
merged chunk by chunk in float64 with the parallel update of Chan, Golub and LeVeque. The
result is the one ``Schema.fit`` gives on the concatenated frame: vocabularies exactly (same
counts, same first-appearance order, same ``min_freq`` / ``max_vocab`` trimming and ties),
dense statistics up to float64 rounding.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from .columns import dense_stats_from, dense_values
from .features import Dense, FunnelStats, Sequence, Sparse, Text, Vector
from .group_support import GroupSupport, filtered_by_support, supported_features
from .id_lists import _flatten_lists
from .parquet_plan import ParquetReadError, check_int, import_pyarrow, list_files, read_metadata
from .parquet_read import arrow_frame
from .vectors import VectorStats, vector_stats_from, vector_values
from .vocab import (
    SchemaError,
    _canonical,
    _id_kind,
    _Vocab,
    is_hashed,
    vocab_from_counts,
)

__all__ = ["fit_chunks"]

STREAMED = (Sparse, Dense, Sequence, Text, Vector)
"""Feature kinds a streaming fit learns exactly (:class:`Text` learns nothing at fit)."""


def fit_chunks(schema: Any, data: Any, progress_bar: bool, chunk_rows: int) -> None:
    """Fit ``schema`` in one pass over Parquet files or DataFrame chunks (see ``Schema.fit``).

    Every chunk is validated as ``Schema.fit`` validates a frame; a :class:`SchemaError` is
    prefixed with the chunk (``chunk 3 (rows 21 to 27)``, or the file and its rows), row
    numbers inside the message counting from the chunk's first row. The schema changes only
    once every chunk has been read.

    Raises:
        NotImplementedError: a feature whose fit needs every row at once (FunnelStats), or a
            kind this module does not know.
        TypeError: ``data`` is neither paths nor an iterable of DataFrames.
    """
    check_streamable(schema)
    chunk_rows = check_int("chunk_rows", chunk_rows, 1)
    chunks, total = _chunks(schema, data, chunk_rows)
    fit = _StreamFit(schema)
    bar = tqdm(
        total=total,
        unit=" rows",
        desc="Schema.fit",
        file=sys.stderr,
        disable=not progress_bar,
        dynamic_ncols=True,
    )
    with bar:
        for where, df in chunks:
            try:
                fit.add(df)
            except SchemaError as e:
                raise SchemaError(f"{where}: {e}") from e
            bar.update(len(df))
    vocabs, stats, vector_stats = fit.result()
    schema.vocabularies_ = vocabs
    schema.dense_stats_ = stats
    schema.vector_stats_ = vector_stats
    schema.funnel_stats_ = {}


def check_streamable(schema: Any) -> None:
    """``NotImplementedError`` naming the first feature a one-pass fit cannot learn exactly."""
    for f in schema.features:
        if isinstance(f, FunnelStats):
            raise NotImplementedError(
                f"Schema.fit from files or chunks does not support FunnelStats features "
                f"(FunnelStats({f.name!r})): their per-entity sums would stream, but their "
                "standardisation is that of out-of-fold training values, which need every row "
                "at once (and Schema.fit_transform's training values need the rows in memory); "
                "fit such a schema on a DataFrame"
            )
        if type(f) not in STREAMED:
            raise NotImplementedError(
                f"Schema.fit from files or chunks does not support {type(f).__name__} features "
                f"yet ({type(f).__name__}({f.name!r})); fit such a schema on a DataFrame"
            )


# ----------------------------------------------------------------------------- state
class _Ids:
    """Id kind and exact per-value counts of one vocabulary over the chunks seen so far.

    The kind is fixed by the first chunk holding a value (a chunk whose values are all missing
    has no say: its dtype tells nothing), then every chunk must agree. Counts are kept in a
    dict in first-appearance order: new values are appended in the order
    ``value_counts(sort=False)`` lists them, i.e. their order of first appearance in the chunk.
    """

    def __init__(self, count: bool):
        self.count = count
        self.kind: str | None = None
        self.decided = False
        self.counts: dict[Any, int] = {}

    def add(self, values: pd.Series, what: str) -> None:
        kind = _id_kind(values, what)
        if not values.notna().any():
            self.kind = self.kind or kind
            return
        if self.decided and kind != self.kind:
            raise SchemaError(
                f"{what} holds {kind} ids but earlier chunks hold {self.kind} ids; cast it to "
                "one type in every chunk"
            )
        self.kind, self.decided = kind, True
        if not self.count:
            return
        canonical, missing = _canonical(values, kind)
        chunk = pd.Series(canonical[~missing]).value_counts(sort=False)
        counts, get = self.counts, self.counts.get
        for value, n in zip(chunk.index.tolist(), chunk.tolist()):
            counts[value] = get(value, 0) + n

    def vocab(self, spec: Sparse | Sequence, support: GroupSupport | None = None) -> _Vocab:
        counts = None
        if self.count:
            counts = pd.Series(list(self.counts.values()), index=list(self.counts), dtype=np.int64)
            if support is not None:
                counts = filtered_by_support(counts, support.support(), support.k)
        return vocab_from_counts(spec, self.kind or "int", counts)


class _Moments:
    """Count, mean and sum of squared deviations (M2) of the values seen so far: scalars
    (``Dense``) or per dimension (``Vector``, rows ``[m, dim]``)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        """Merge a chunk's rows (Chan et al.'s parallel update, float64)."""
        m = len(x)
        if not m:
            return
        mean = x.mean(axis=0)
        m2 = np.square(x - mean).sum(axis=0)
        n = self.n + m
        delta = mean - self.mean
        self.mean = self.mean + delta * (m / n)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * m / n)
        self.n = n

    def stats(self, f: Dense) -> dict[str, float]:
        """``dense_stats`` of all values: population std (ddof 0), as ``np.nanstd``."""
        if not self.n:
            return dense_stats_from(f, None, None)
        return dense_stats_from(f, float(self.mean), math.sqrt(float(self.m2) / self.n))

    def vector_stats(self, f: Vector) -> VectorStats:
        """``vector_stats`` of all rows holding a vector (per-dimension population std)."""
        if not self.n:
            return vector_stats_from(f, None, None)
        return vector_stats_from(f, self.mean, np.sqrt(self.m2 / self.n))


class _StreamFit:
    """What a streaming fit has learned so far (the schema is assigned only at the end)."""

    def __init__(self, schema: Any):
        self.schema = schema
        self.rows = 0
        self.has_labels: bool | None = None
        self.ids = {f.name: _Ids(count=not is_hashed(f)) for f in schema.sparse}
        self.ids.update({f.name: _Ids(True) for f in schema.sequences if f.vocab_from is None})
        self.moments = {f.name: _Moments() for f in schema.dense}
        self.vectors = {f.name: _Moments() for f in schema.vectors}
        self.pending: dict[str, pd.Series] = {}  # shared-vocabulary ids awaiting their kind
        self.support = {f.name: GroupSupport(schema.min_groups) for f in supported_features(schema)}

    def add(self, df: pd.DataFrame) -> None:
        """Validate one chunk as ``Schema.fit`` validates a frame, then learn from it."""
        schema = self.schema
        has_labels = schema._check_df(df, labels="auto")
        if self.has_labels is None:
            self.has_labels = has_labels
        elif has_labels != self.has_labels:
            held = "holds" if has_labels else "lacks"
            raise SchemaError(
                f"the chunk {held} the label column(s) {schema._label_columns()}, unlike the "
                "first chunk; every chunk needs them, or none"
            )
        for f in schema.sparse:
            self.ids[f.name].add(df[f.column], f"column {f.column!r}")
        for name, support in self.support.items():
            f, ids = schema.feature(name), self.ids[name]
            if ids.decided:
                support.add(*_canonical(df[f.column], ids.kind), df[schema.group])
        for f in schema.sequences:
            _, flat = _flatten_lists(df[f.column], f.column)
            if f.vocab_from is None:
                if len(flat):
                    self.ids[f.name].add(flat, f"sequence column {f.column!r}")
            else:
                self._check_shared(f, flat)
        for f in schema.dense:
            x = dense_values(df, f, None)
            self.moments[f.name].add(x[~np.isnan(x)])
        for f in schema.vectors:  # validated always; moments for "standard" ones
            x, present = vector_values(df[f.column], f)
            if f.normalize == "standard":
                self.vectors[f.name].add(x[present])
        if has_labels:
            schema._labels(df)  # validation only
        self.rows += len(df)

    def _check_shared(self, f: Sequence, flat: pd.Series) -> None:
        """The ids of a ``vocab_from`` sequence must be of its Sparse feature's kind; while that
        is unknown (all its values missing so far), one id is kept to check later."""
        source = self.ids[f.vocab_from]
        if source.decided and f.name in self.pending:
            self.schema._check_seq_kind(f, self.pending.pop(f.name), source.kind)
        if not len(flat) or flat.isna().all():
            return
        if source.decided:
            self.schema._check_seq_kind(f, flat, source.kind)
        else:
            _id_kind(flat, f"sequence column {f.column!r}")
            self.pending.setdefault(f.name, flat[flat.notna()].iloc[:1])

    def result(self) -> tuple[dict[str, _Vocab], dict[str, Any], dict[str, VectorStats]]:
        """Vocabularies, dense and vector statistics, as ``Schema.fit`` orders them."""
        schema = self.schema
        if not self.rows:
            raise SchemaError("the data holds no rows (no chunk, or only empty ones)")
        for f in schema.sequences:
            if f.name in self.pending:
                schema._check_seq_kind(f, self.pending[f.name], self.ids[f.vocab_from].kind)
        owned = schema.sparse + [f for f in schema.sequences if f.vocab_from is None]
        vocabs = {f.name: self.ids[f.name].vocab(f, self.support.get(f.name)) for f in owned}
        stats = {f.name: self.moments[f.name].stats(f) for f in schema.dense}
        vector_stats = {
            f.name: self.vectors[f.name].vector_stats(f)
            for f in schema.vectors
            if f.normalize == "standard"
        }
        return vocabs, stats, vector_stats


# ----------------------------------------------------------------------------- sources
def _chunks(
    schema: Any, data: Any, chunk_rows: int
) -> tuple[Iterator[tuple[str, pd.DataFrame]], int | None]:
    """``(where, chunk)`` pairs of ``data`` and the total row count when known (files)."""
    if _is_paths(data):
        files = list_files(data)
        groups, arrow_schemas = read_metadata(files)
        columns = _columns(schema)
        total = sum(g.rows for g in groups)
        lists = [f.column for f in schema.sequences]
        return _parquet_chunks(files, arrow_schemas, columns, lists, chunk_rows), total
    not_chunks = (str, bytes, Mapping, pd.Series, np.ndarray)
    if isinstance(data, not_chunks) or not isinstance(data, Iterable):
        raise TypeError(
            "Schema.fit takes a pandas DataFrame, a Parquet file or directory (or a list of "
            f"them), or an iterable of DataFrame chunks; got {type(data).__name__}"
        )
    return _frame_chunks(data), None


def _is_paths(data: Any) -> bool:
    if isinstance(data, (str, os.PathLike)):
        return True
    return (
        isinstance(data, (list, tuple))
        and bool(data)
        and all(isinstance(p, (str, os.PathLike)) for p in data)
    )


def _columns(schema: Any) -> list[str]:
    """Columns a fit reads: feature inputs, the group column and the labels."""
    columns = [c for f in schema.features for c in f.input_columns]
    if schema.group is not None:
        columns.append(schema.group)
    return list(dict.fromkeys(columns + schema._label_columns()))


def _frame_chunks(data: Iterable[Any]) -> Iterator[tuple[str, pd.DataFrame]]:
    start = 0
    for i, df in enumerate(data):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(
                f"chunk {i} is a {type(df).__name__}, not a pandas DataFrame: Schema.fit takes "
                "an iterable of DataFrame chunks (or Parquet paths)"
            )
        if len(df):
            yield f"chunk {i} (rows {start} to {start + len(df) - 1})", df
            start += len(df)


def _parquet_chunks(
    files: list[str],
    arrow_schemas: list[Any],
    columns: list[str],
    lists: list[str],
    chunk_rows: int,
) -> Iterator[tuple[str, pd.DataFrame]]:
    """Raw chunks of ``chunk_rows`` rows of each file in turn, only the wanted columns that the
    file holds (a missing one is then reported by the chunk's validation), as pandas frames
    with the dtypes :class:`~recsys_mt.data.ParquetSource` encodes (``lists``: the id-list
    columns, kept Arrow lists so their ids stay exact)."""
    pa, pq = import_pyarrow()
    for path, arrow_schema in zip(files, arrow_schemas):
        held = [c for c in columns if c in arrow_schema.names]
        start = 0
        pf = None
        try:
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=held):
                batch = pa.Table.from_batches([batch.replace_schema_metadata(None)])
                df = arrow_frame(batch, lists)
                if len(df):
                    yield f"{path} (rows {start} to {start + len(df) - 1})", df
                    start += len(df)
        except (OSError, ValueError, TypeError, pa.ArrowException) as e:
            raise ParquetReadError(f"{path}: cannot read rows from {start} on: {e}") from e
        finally:
            if pf is not None:
                pf.close()
