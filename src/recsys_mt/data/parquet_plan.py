"""Planning a :class:`~recsys_mt.data.parquet.ParquetSource` epoch from Parquet metadata alone.

Listing the files, their row groups and row counts, and checking that every file holds the
columns the schema needs with usable Arrow types. The arithmetic of an epoch (the order of the
row groups, the row spans of ranks and workers, the chunks a worker reads, resume points) is in
:mod:`.parquet_epoch`, re-exported here. No data pages are read here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .features import Dense, FunnelStats, Sparse, Text, Vector
from .features import Sequence as SequenceFeature
from .parquet_epoch import (
    Piece,
    RowGroup,
    check_int,
    check_rank,
    epoch_order,
    plan_chunks,
    resume_point,
    split,
    worker_batch_counts,
    worker_span,
)
from .vectors import arrow_vector_problem

__all__ = [
    "INSTALL_HINT",
    "Need",
    "ParquetReadError",
    "Piece",
    "RowGroup",
    "check_columns",
    "check_int",
    "check_rank",
    "epoch_order",
    "import_pyarrow",
    "list_files",
    "needed_columns",
    "plan_chunks",
    "read_metadata",
    "read_schema",
    "resolve_labels",
    "resume_point",
    "split",
    "type_problem",
    "unsupported_features",
    "worker_batch_counts",
    "worker_span",
]

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
    if pa.types.is_dictionary(t):  # a pandas categorical: ids of its categories' kind
        return _id_family(t.value_type, pa)
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
    types = [t.value_type if pa.types.is_dictionary(t) else t for t in types]
    types = [t for t in types if not pa.types.is_null(t)] or types  # all-null: no say
    if len(set(types)) == 1:
        return types[0]
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
