"""Planning a :class:`~recsys_mt.data.parquet.ParquetSource` epoch from Parquet metadata alone.

Listing the files, their row groups and row counts, checking that every file holds the columns
the schema needs with usable Arrow types, and the arithmetic of an epoch: the order of the row
groups, the contiguous row spans of ranks and workers, the chunks a worker reads, and how many
batches each worker yields before a resume point. No data pages are read here.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .features import Dense, FunnelStats, Sparse, Text, Vector
from .features import Sequence as SequenceFeature
from .vectors import arrow_vector_problem

INSTALL_HINT = "pip install recsys-mt[parquet]"


def import_pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or an ``ImportError`` saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            f"ParquetSource reads Parquet with pyarrow, which is not installed: {INSTALL_HINT}"
        ) from e
    return pa, pq


class ParquetReadError(OSError):
    """A Parquet file or row group cannot be read (corrupt, truncated or changed since the
    source was planned); the message names the file and, at read time, the row group."""


@dataclass(frozen=True)
class RowGroup:
    """One row group: ``file`` indexes the source's file list, ``index`` is the row group's
    number inside that file."""

    file: int
    index: int
    rows: int


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one row group."""

    group: RowGroup
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Need:
    """A column the source reads and what it must hold.

    ``kind``: ``"ids"`` (a Sparse feature; ``ids`` is the vocabulary's ``"int"`` / ``"str"``),
    ``"list"`` (a Sequence feature's list of ids), ``"vector"`` (a Vector feature's list of
    ``dim`` numbers), ``"number"`` (a Dense feature or a label), ``"scalar"`` (the group column)
    or ``"raw"`` (a pass-through column).
    """

    column: str
    role: str
    kind: str
    ids: str | None = None
    dim: int | None = None


# ----------------------------------------------------------------------------- files
def list_files(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Parquet files of a file, a directory (searched recursively for ``*.parquet``, sorted by
    relative path) or a list of those (kept in the given order)."""
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise ValueError("ParquetSource needs at least one Parquet file or directory")
    files: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                (p for p in path.rglob("*.parquet") if p.is_file()),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not found:
                raise ValueError(f"no *.parquet file under the directory {str(item)!r}")
            files.extend(str(p) for p in found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"no such Parquet file or directory: {str(item)!r}")
    twice = sorted({f for f in files if files.count(f) > 1})
    if twice:
        raise ValueError(f"Parquet file(s) listed more than once: {twice}")
    return files


def read_metadata(files: Sequence[str]) -> tuple[list[RowGroup], list[Any]]:
    """Row groups (row counts from the footers) and the Arrow schema of every file."""
    _, pq = import_pyarrow()
    groups: list[RowGroup] = []
    schemas = []
    for i, path in enumerate(files):
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # any failure: re-raised naming the file
            raise ParquetReadError(f"{path}: not a readable Parquet file: {e}") from e
        try:
            meta = pf.metadata
            schemas.append(pf.schema_arrow)
            groups.extend(
                RowGroup(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
            )
        finally:
            pf.close()
    return groups, schemas


# ----------------------------------------------------------------------------- columns
def unsupported_features(schema: Any) -> None:
    """``NotImplementedError`` for features whose chunk-wise encoding differs from a frame's."""
    for f in schema.features:
        if isinstance(f, Text):
            raise NotImplementedError(
                f"ParquetSource does not stream Text features yet (Text({f.name!r})): their "
                "tensors index a per-frame table of distinct texts, which differs per chunk"
            )
        if isinstance(f, FunnelStats):
            raise NotImplementedError(
                f"ParquetSource does not stream FunnelStats features yet (FunnelStats({f.name!r}"
                ")): it encodes rows with Schema.transform, whose full training tables let the "
                "rows they were fit on see their own labels, and the check that warns about it "
                "needs the whole frame; encode such data in memory with Schema.fit_transform"
            )


def needed_columns(schema: Any, labels: bool, raw: Sequence[str]) -> list[Need]:
    """What the source reads: feature columns, the group column, labels and pass-throughs."""
    needs: list[Need] = []
    for f in schema.features:
        role = f"{type(f).__name__} feature {f.name!r}"
        if isinstance(f, Sparse):
            needs.append(Need(f.column, role, "ids", schema.vocabularies_[f.name].kind))
        elif isinstance(f, SequenceFeature):
            kind = schema.vocabularies_[f.vocab_from or f.name].kind
            needs.append(Need(f.column, role, "list", kind))
        elif isinstance(f, Dense):
            needs.append(Need(f.column, role, "number"))
        elif isinstance(f, Vector):
            needs.append(Need(f.column, role, "vector", dim=f.dim))
    if schema.group is not None:
        needs.append(Need(schema.group, "group column", "scalar"))
    if labels:
        needs += [Need(t.label, f"label of task {t.name!r}", "number") for t in schema.tasks]
    needs += [Need(c, "pass-through column", "raw") for c in raw]
    return needs


def resolve_labels(
    schema: Any, labels: bool | str, files: Sequence[str], schemas: Sequence[Any]
) -> bool:
    """Whether batches carry labels: ``True`` requires every label column in every file,
    ``"auto"`` takes them when all files hold all of them (and none when no file holds any)."""
    if labels not in (True, False, "auto"):
        raise ValueError(f"labels must be True, False or 'auto', got {labels!r}")
    columns = [t.label for t in schema.tasks]
    if labels is False or not columns:
        return False
    held = [[c for c in columns if c in s.names] for s in schemas]
    if labels == "auto" and not any(held):
        return False
    for path, have in zip(files, held):
        absent = [c for c in columns if c not in have]
        if absent:
            why = "labels=True" if labels is True else "labels='auto' found labels in other files"
            raise ValueError(
                f"{path}: missing label column(s) {absent} for tasks {schema.task_names} ({why})"
            )
    return True


def _id_family(t: Any, pa: Any) -> str | None:
    """How pandas reads a column of this Arrow type as ids: ``"int"``, ``"str"``, ``"null"``."""
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_dictionary(t):  # a pandas categorical: str ids, as in Schema.transform
        return "str"
    if pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t, pa):
        return "str"
    return None


def _is_string_view(t: Any, pa: Any) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(t))


def _is_list(t: Any, pa: Any) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_number(t: Any, pa: Any) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def type_problem(need: Need, t: Any, pa: Any) -> str | None:
    """Why a column of Arrow type ``t`` cannot hold ``need`` (``None`` when it can)."""
    if pa.types.is_null(t) and need.kind != "raw":
        return None  # all values missing: cast to the type the other files have
    if need.kind == "number" and not _is_number(t, pa):
        return "needs numbers (integer, floating point or boolean)"
    if need.kind == "raw" and not _is_number(t, pa):
        return "needs numbers to pass through (integer, floating point or boolean)"
    if need.kind == "ids" and _id_family(t, pa) not in (need.ids, "null"):
        return f"cannot hold the {need.ids} ids the schema was fit on"
    if need.kind == "list":
        if not _is_list(t, pa):
            return f"needs lists of {need.ids} ids"
        if _id_family(t.value_type, pa) not in (need.ids, "null"):
            return f"needs lists of {need.ids} ids, the ids the schema was fit on"
    if need.kind == "vector":
        return arrow_vector_problem(t, need.dim, pa)
    if need.kind == "scalar" and pa.types.is_nested(t):
        return "needs scalar group values (ints or strings), not nested values"
    return None


def check_columns(path: str, arrow_schema: Any, needs: Sequence[Need]) -> None:
    """``ValueError`` naming the file and the column when one is missing or of a wrong type."""
    pa, _ = import_pyarrow()
    names = arrow_schema.names
    missing = [n.column for n in needs if n.column not in names]
    if missing:
        roles = ", ".join(f"{n.column!r} ({n.role})" for n in needs if n.column in missing)
        raise ValueError(f"{path}: missing column(s) {roles}; the file has {names}")
    for need in needs:
        t = arrow_schema.field(need.column).type
        problem = type_problem(need, t, pa)
        if problem:
            raise ValueError(
                f"{path}: column {need.column!r} ({need.role}) has Arrow type {t}, which {problem}"
            )


def _widen(types: list[Any], pa: Any) -> Any | None:
    """One Arrow type all ``types`` cast to losslessly enough for encoding, or ``None``."""
    if all(pa.types.is_integer(t) or pa.types.is_boolean(t) for t in types):
        return pa.int64()
    if all(_is_number(t, pa) for t in types):
        return pa.float64()
    if all(_id_family(t, pa) == "str" for t in types):
        return pa.large_string()
    if all(_is_list(t, pa) for t in types):
        value = _widen(list(dict.fromkeys(t.value_type for t in types)), pa)
        return None if value is None else pa.large_list(value)
    return None


def _fallback(need: Need, pa: Any) -> Any:
    """Type of a column that is all-null in every file."""
    ids = pa.int64() if need.ids == "int" else pa.large_string()
    vector = pa.large_list(pa.float64())
    return {"number": pa.float64(), "ids": ids, "list": pa.large_list(ids), "vector": vector}.get(
        need.kind, pa.null()
    )


def read_schema(files: Sequence[str], schemas: Sequence[Any], needs: Sequence[Need]) -> Any:
    """The Arrow schema every row group is cast to, so chunks mixing files concatenate: a
    column's common type across files (widened when files differ, e.g. int32 and int64)."""
    pa, _ = import_pyarrow()
    fields = []
    for column in dict.fromkeys(n.column for n in needs):
        need = next(n for n in needs if n.column == column)
        typed = [(p, s.field(column).type) for p, s in zip(files, schemas)]
        distinct = list(dict.fromkeys(t for _, t in typed if not pa.types.is_null(t)))
        if not distinct:
            target = _fallback(need, pa)
        elif len(distinct) == 1:
            target = distinct[0]
        else:
            target = _widen(distinct, pa)
            if target is None:
                a = next(p for p, t in typed if t == distinct[0])
                b = next(p for p, t in typed if t == distinct[1])
                raise ValueError(
                    f"column {column!r} ({need.role}) has Arrow type {distinct[0]} in {a} but "
                    f"{distinct[1]} in {b}; write the files with one type"
                )
        fields.append(pa.field(column, target))
    return pa.schema(fields)


# ----------------------------------------------------------------------------- epoch arithmetic
def check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_rank(rank: int, world_size: int) -> None:
    check_int("world_size", world_size, 1)
    if not isinstance(rank, numbers.Integral) or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank!r} is outside world_size {world_size}")


def split(n: int, parts: int, i: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``i`` of ``n`` items cut into ``parts`` contiguous spans whose
    sizes differ by at most one (the first ``n % parts`` spans are one longer)."""
    q, r = divmod(n, parts)
    start = i * q + min(i, r)
    return start, start + q + (1 if i < r else 0)


def worker_span(
    total: int, rank: int, world_size: int, worker: int, workers: int
) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the epoch's virtual sequence that one worker of one rank reads."""
    a, b = split(total, world_size, rank)
    s, e = split(b - a, workers, worker)
    return a + s, a + e


def worker_batch_counts(
    total: int, rank: int, world_size: int, workers: int, batch_size: int
) -> list[int]:
    """Real batches per worker of a rank: every batch is full but each worker's last one."""
    spans = [worker_span(total, rank, world_size, w, workers) for w in range(workers)]
    return [-(-(stop - start) // batch_size) for start, stop in spans]


def resume_point(counts: Sequence[int], start_batch: int) -> tuple[list[int], int]:
    """Where each worker stands at position ``start_batch`` of the round-robin interleaving
    (round ``t`` yields batch ``t`` of each worker that has one, in worker order).

    Returns:
        ``(skips, first)``: how many of its batches each worker yields before that position,
        and the worker the interleaving resumes with (the cycle goes on from there, passing
        over exhausted workers). Computed per block of rounds with the same active workers.
    """
    counts_arr = np.asarray(counts, dtype=np.int64)
    skips = np.zeros_like(counts_arr)
    left, done = int(start_batch), 0
    for level in sorted(set(counts_arr.tolist()) - {0}):
        active = np.flatnonzero(counts_arr > done)
        if (level - done) * len(active) <= left:
            skips[active] += level - done
            left -= (level - done) * len(active)
            done = level
            continue
        full, part = divmod(left, len(active))
        skips[active] += full
        skips[active[:part]] += 1
        return skips.tolist(), int(active[part])
    return skips.tolist(), 0


def epoch_order(groups: Sequence[RowGroup], shuffle: bool, seed: int, epoch: int) -> list[RowGroup]:
    """The epoch's row groups: permuted by a generator seeded with ``(seed, epoch)``."""
    if not shuffle:
        return list(groups)
    perm = np.random.default_rng([seed, epoch]).permutation(len(groups))
    return [groups[i] for i in perm]


def plan_chunks(
    groups: Sequence[RowGroup], start: int, stop: int, buffer: int
) -> list[list[Piece]]:
    """The chunks covering rows ``[start, stop)`` of the sequence ``groups``: whole pieces of
    row groups (sliced at the span's ends), at most ``buffer`` rows per chunk unless one piece
    alone is longer."""
    chunks: list[list[Piece]] = []
    chunk: list[Piece] = []
    size = offset = 0
    for g in groups:
        lo, hi = max(start - offset, 0), min(stop - offset, g.rows)
        offset += g.rows
        if lo >= hi:
            if offset >= stop:
                break
            continue
        piece = Piece(g, lo, hi)
        if chunk and size + piece.rows > buffer:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(piece)
        size += piece.rows
    if chunk:
        chunks.append(chunk)
    return chunks
