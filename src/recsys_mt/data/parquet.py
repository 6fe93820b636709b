"""``ParquetSource``: stream training batches from Parquet files bigger than memory.

The streaming counterpart of ``schema.transform(df)`` + :class:`~recsys_mt.data.BatchLoader`:
an epoch is planned from the Parquet footers (files, row groups, row counts), split into
contiguous row spans per rank and per worker, read in chunks of whole row groups, shuffled
inside each chunk, encoded with :meth:`Schema.transform <recsys_mt.data.Schema.transform>` and
cut into batches. See the "Streaming from Parquet" docs page.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .parquet_epoch import (
    Piece,
    check_int,
    check_rank,
    epoch_order,
    plan_chunks,
    resume_point,
    worker_batch_counts,
    worker_span,
)
from .parquet_plan import (
    ParquetReadError,
    check_columns,
    import_pyarrow,
    list_files,
    needed_columns,
    read_metadata,
    read_schema,
    resolve_labels,
    unsupported_features,
)
from .parquet_read import MISSING_GROUP as MISSING_GROUP  # re-exported
from .parquet_read import _group_codes, _Reader, arrow_frame
from .vectors import empty_vector_tensors
from .vocab import OOVWarning, SchemaError

__all__ = ["ParquetReadError", "ParquetSource"]

Batch = dict[str, Tensor]


def _rows(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0])


class ParquetSource:
    """Batches of a fitted :class:`~recsys_mt.data.Schema` streamed from Parquet files.

    Nothing here holds the data set: the constructor reads only the footers and checks every
    file against the schema; an epoch reads chunks of whole row groups of about
    ``shuffle_buffer`` rows, one chunk at a time per worker. Epoch ``e`` is a function of
    ``(seed, e, rank, world_size, num_workers)`` alone:

    - row groups are permuted by a generator seeded with ``(seed, e)`` (file order without
      ``shuffle``) into one virtual sequence of ``len(self)`` rows;
    - rank ``r`` reads the ``r``-th of ``world_size`` contiguous spans of it (sizes differ by
      at most one row), each worker the ``w``-th contiguous sub-span of its rank's span: every
      row belongs to exactly one worker of one rank;
    - a worker permutes each chunk's rows (generator seeded with ``(seed, e, rank, w, chunk)``),
      encodes the chunk and cuts it into batches, carrying the remainder into the next chunk,
      so only its last batch is short; workers' batches are interleaved round-robin, as a
      ``torch.utils.data.DataLoader`` yields them;
    - a rank then yields empty batches (0 rows, same keys, dtypes and trailing shapes) up to
      :meth:`num_batches`, the same for every rank: distributed ranks take equal step counts.

    Batches are ``dict[str, Tensor]`` with the keys, dtypes and trailing shapes of the tensors of
    ``schema.transform`` (``"sparse"``, ``"dense"``, ``"seq/<name>"``, ``"vec/<name>"``, ...; see
    :class:`~recsys_mt.data.TensorFrame`; ``"labels"`` when read), plus ``"raw/<column>"``
    ``[B]`` per pass-through column (float64 for floating point columns, else int64).
    ``"group"`` holds a stable 64-bit hash of the group value (``-1`` when missing), not
    ``Schema.transform``'s per-frame codes, so a group has one code across chunks and ranks.

    Args:
        path: a Parquet file, a directory (searched recursively for ``*.parquet``, sorted by
            path) or a list of files and directories (kept in order).
        schema: a fitted schema; its feature (and label) columns must be in every file.
            :class:`~recsys_mt.data.Text` and :class:`~recsys_mt.data.FunnelStats` features
            raise ``NotImplementedError``.
        batch_size: rows per batch (per rank).
        shuffle: permute row groups per epoch and rows inside each chunk.
        seed: base seed (an int >= 0).
        shuffle_buffer: rows per chunk, the span of the in-chunk shuffle and the memory bound.
        num_workers: ``DataLoader`` worker processes (0: read in the calling process, in the
            same order as one worker).
        labels: ``"auto"`` reads the labels when every file holds every label column (and
            none when no file holds any), ``True`` requires them, ``False`` skips them.
        columns: extra numeric columns passed through unencoded as ``"raw/<column>"`` (e.g. a
            row id, to audit which rows were seen).
        prefetch_factor: batches each worker prepares ahead (with ``num_workers > 0``).

    Raises:
        ValueError: a file lacks a needed column or holds it with an Arrow type that cannot
            encode the feature (the message names the file and the column).
        ParquetReadError: a file cannot be opened (at construction) or a row group cannot be
            read (while iterating); the message names the file and the row group.
        ImportError: pyarrow is not installed (``pip install recsys-mt[parquet]``).

    Example:
        >>> src = ParquetSource("data/train/", schema, batch_size=2048)   # doctest: +SKIP
        >>> src.num_batches(rank=0, world_size=1)                           # doctest: +SKIP
        >>> for batch in src.batches(epoch=0):                               # doctest: +SKIP
        ...     ...
    """

    def __init__(
        self,
        path: str | os.PathLike | Iterable[str | os.PathLike],
        schema: Any,
        batch_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 65536,
        num_workers: int = 0,
        labels: bool | str = "auto",
        columns: Sequence[str] | None = None,
        prefetch_factor: int = 2,
    ):
        pa, _ = import_pyarrow()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.prefetch_factor = check_int("prefetch_factor", prefetch_factor, 1)
        self.shuffle = bool(shuffle)
        if not getattr(schema, "is_fitted", False):
            raise RuntimeError("ParquetSource needs a fitted Schema: call schema.fit(df) first")
        unsupported_features(schema)
        self.schema = schema
        self.columns = [columns] if isinstance(columns, str) else list(columns or [])
        self.files = list_files(path)
        self.row_groups, schemas = read_metadata(self.files)
        self.labels = resolve_labels(schema, labels, self.files, schemas)
        needs = needed_columns(schema, self.labels, self.columns)
        for file, arrow_schema in zip(self.files, schemas):
            check_columns(file, arrow_schema, needs)
        self._arrow_schema = read_schema(self.files, schemas, needs)
        self._rows = sum(g.rows for g in self.row_groups)
        if self._rows == 0:
            raise ValueError(f"the Parquet files hold no rows: {self.files}")
        self._raw_dtypes = {
            c: torch.float64
            if pa.types.is_floating(self._arrow_schema.field(c).type)
            else torch.int64
            for c in self.columns
        }

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Total rows of all files (from the footers)."""
        return self._rows

    def __repr__(self) -> str:
        return (
            f"ParquetSource(files={len(self.files)}, row_groups={len(self.row_groups)}, "
            f"rows={self._rows}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"num_workers={self.num_workers})"
        )

    @property
    def _workers(self) -> int:
        return max(self.num_workers, 1)

    def _counts(self, rank: int, world_size: int) -> list[int]:
        return worker_batch_counts(self._rows, rank, world_size, self._workers, self.batch_size)

    def num_batches(self, rank: int = 0, world_size: int = 1) -> int:
        """Batches per rank per epoch, the same for every rank: the largest real batch count of
        any rank (rank 0's, whose span is the longest); shorter ranks pad with empty batches."""
        check_rank(rank, world_size)
        return sum(self._counts(0, world_size))

    def state(self, epoch: int, batches_done: int, world_size: int = 1) -> dict[str, int]:
        """The resume position after ``batches_done`` batches of ``epoch``: ``{"epoch",
        "start_batch"}``, to pass to :meth:`batches` (the next epoch's start once the epoch is
        complete). The position is all the state there is: order is a function of the seed."""
        check_int("epoch", epoch, 0)
        total = self.num_batches(0, world_size)
        if not 0 <= batches_done <= total:
            raise ValueError(f"batches_done must be in [0, {total}], got {batches_done!r}")
        if batches_done == total:
            return {"epoch": epoch + 1, "start_batch": 0}
        return {"epoch": epoch, "start_batch": int(batches_done)}

    # ------------------------------------------------------------------ iteration
    def batches(
        self, epoch: int = 0, rank: int = 0, world_size: int = 1, start_batch: int = 0
    ) -> Iterator[Batch]:
        """This rank's batches of ``epoch`` from position ``start_batch`` on.

        Yields exactly :meth:`num_batches` ``- start_batch`` batches: the real ones, then empty
        ones. A resumed iteration yields the same batches as the tail of an uninterrupted one;
        chunks wholly before the resume point are not read.
        """
        check_int("epoch", epoch, 0)
        check_rank(rank, world_size)
        total = self.num_batches(rank, world_size)
        if not 0 <= check_int("start_batch", start_batch, 0) <= total:
            raise ValueError(f"start_batch must be in [0, {total}], got {start_batch!r}")
        counts = self._counts(rank, world_size)
        skips, first = resume_point(counts, int(start_batch))
        real = sum(counts) - sum(skips)
        pad = total - max(int(start_batch), sum(counts))
        return self._iterate(int(epoch), rank, world_size, skips, first, real, pad)

    def _iterate(
        self,
        epoch: int,
        rank: int,
        world_size: int,
        skips: list[int],
        first: int,
        real: int,
        pad: int,
    ) -> Iterator[Batch]:
        if real and self.num_workers == 0:
            yield from self._worker_batches(epoch, rank, world_size, 0, skips[0])
        elif real:
            stream = _WorkerStream(self, epoch, rank, world_size, skips, first)
            yield from DataLoader(
                stream,
                batch_size=None,
                num_workers=self.num_workers,
                prefetch_factor=self.prefetch_factor,
                persistent_workers=False,
            )
        for _ in range(pad):
            yield self.empty_batch()

    def empty_batch(self) -> Batch:
        """A batch of 0 rows with the keys, dtypes and trailing shapes of the real ones."""
        s = self.schema
        out: Batch = empty_vector_tensors(s.vectors)
        if s.sparse:
            out["sparse"] = torch.zeros(0, len(s.sparse), dtype=torch.int64)
        if s.dense_columns:
            out["dense"] = torch.zeros(0, len(s.dense_columns), dtype=torch.float32)
        for f in s.sequences:
            out[f"seq/{f.name}"] = torch.zeros(0, f.max_len, dtype=torch.int64)
        if self.labels:
            out["labels"] = torch.zeros(0, len(s.tasks), dtype=torch.float32)
        if s.group is not None:
            out["group"] = torch.zeros(0, dtype=torch.int64)
        for c, dtype in self._raw_dtypes.items():
            out[f"raw/{c}"] = torch.zeros(0, dtype=dtype)
        return out

    def _worker_batches(
        self, epoch: int, rank: int, world_size: int, worker: int, skip: int
    ) -> Iterator[Batch]:
        """One worker's batches of the epoch, without its first ``skip`` batches."""
        start, stop = worker_span(self._rows, rank, world_size, worker, self._workers)
        groups = epoch_order(self.row_groups, self.shuffle, self.seed, epoch)
        chunks = plan_chunks(groups, start, stop, self.shuffle_buffer)
        skip_rows, offset = skip * self.batch_size, 0
        carry: Batch | None = None
        reader = _Reader(self.files, self._arrow_schema)
        warned: set[type] = set()
        try:
            for c, pieces in enumerate(chunks):
                n = sum(p.rows for p in pieces)
                first, offset = max(skip_rows - offset, 0), offset + n
                if first >= n:
                    continue
                table = self._read_chunk(reader, pieces)
                if self.shuffle:
                    rng = np.random.default_rng([self.seed, epoch, rank, worker, c])
                    table = table.take(rng.permutation(n)[first:])
                elif first:
                    table = table.slice(first)
                batch = self._encode(table, pieces, warned, reader)
                del table
                carry = yield from self._cut(carry, batch)
        finally:
            reader.close()
        if carry is not None:
            yield carry

    def _read_chunk(self, reader: _Reader, pieces: list[Piece]) -> Any:
        """The rows of ``pieces`` as one Arrow table, in order."""
        pa, _ = import_pyarrow()
        tables = [reader.read(p.group).slice(p.start, p.rows) for p in pieces]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _cut(self, carry: Batch | None, chunk: Batch) -> Iterator[Batch]:
        """Yield full batches of ``carry`` + ``chunk``; return the short remainder (or None)."""
        n, pos, size = _rows(chunk), 0, self.batch_size
        if carry is not None:
            pos = min(size - _rows(carry), n)
            carry = {k: torch.cat([carry[k], chunk[k][:pos]]) for k in chunk}
            if _rows(carry) < size:
                return carry
            yield carry
        while n - pos >= size:
            yield {k: v[pos : pos + size] for k, v in chunk.items()}
            pos += size
        return {k: v[pos:] for k, v in chunk.items()} if pos < n else None

    def _encode(self, table: Any, pieces: list[Piece], warned: set[type], reader: _Reader) -> Batch:
        """Encode a chunk with ``schema.transform``; ``"group"`` and ``"raw/*"`` added here.
        A :class:`SchemaError` names the row group and the row in it (see :meth:`_locate`)."""
        for c in self.columns:
            if self._raw_dtypes[c] == torch.int64 and table.column(c).null_count:
                raise SchemaError(
                    f"pass-through column {c!r} holds nulls in {_where(pieces, self)}"
                )
        df = arrow_frame(table, [f.column for f in self.schema.sequences])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                frame = self.schema.transform(df, labels=self.labels)
            except SchemaError as e:
                raise self._locate(reader, pieces, e) from e
        for w in caught:  # an OOV warning once per worker and epoch, not once per chunk
            if not issubclass(w.category, OOVWarning) or OOVWarning not in warned:
                warned.add(w.category)
                warnings.warn(w.message, w.category, stacklevel=2)
        out = dict(frame.tensors)
        if self.schema.group is not None:
            out["group"] = torch.from_numpy(_group_codes(df[self.schema.group]))
        for c, dtype in self._raw_dtypes.items():
            values = df[c].to_numpy(dtype=np.float64 if dtype == torch.float64 else np.int64)
            out[f"raw/{c}"] = torch.from_numpy(values)
        return out

    def _locate(self, reader: _Reader, pieces: list[Piece], error: SchemaError) -> SchemaError:
        """``error`` of a chunk, named by file and row group with rows counted from the row
        group's first row, in file order: the chunk was shuffled, cut at a resume point or
        starts inside a row group, so ``error``'s rows count positions in what was encoded.

        Each piece's row group is encoded again from its first row to the piece's last, until
        one fails; encoding is row by row, so one does. Should none (an error of the chunk as a
        whole), ``error`` is named with the chunk. The caller drops the retries' warnings."""
        seqs = [f.column for f in self.schema.sequences]
        for p in pieces:
            table = reader.read(p.group).slice(0, p.start + p.rows)
            try:
                self.schema.transform(arrow_frame(table, seqs), labels=self.labels)
            except SchemaError as e:
                return SchemaError(f"{self.files[p.group.file]}: row group {p.group.index}: {e}")
        return SchemaError(f"{_where(pieces, self)}: {error}")


# ----------------------------------------------------------------------------- helpers
class _WorkerStream(IterableDataset):
    """One epoch of one rank. DataLoader worker ``i`` yields the batches of the sub-span of
    worker ``(first + i) % num_workers``: the DataLoader's round-robin starts at its worker 0,
    and a resumed epoch must go on with worker ``first``."""

    def __init__(
        self,
        source: ParquetSource,
        epoch: int,
        rank: int,
        world_size: int,
        skips: list[int],
        first: int,
    ):
        super().__init__()
        self.source, self.epoch, self.rank, self.world_size = source, epoch, rank, world_size
        self.skips, self.first = skips, first

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        i = 0 if info is None else info.id
        w = (self.first + i) % len(self.skips)
        batches = self.source._worker_batches(
            self.epoch, self.rank, self.world_size, w, self.skips[w]
        )
        for batch in batches:  # compact copies: a view would ship its whole chunk's storage
            yield {k: v.clone() for k, v in batch.items()}


def _where(pieces: list[Piece], source: ParquetSource) -> str:
    parts = [f"{source.files[p.group.file]} row group {p.group.index}" for p in pieces]
    return "a chunk of " + ", ".join(parts)
