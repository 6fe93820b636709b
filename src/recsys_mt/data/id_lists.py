"""The cells of a :class:`~recsys_mt.data.Sequence` column flattened into one column of ids.

Ids stay exact: int ids come out as int64 (nullable ``Int64`` when an element is missing), never
through float64, where ids above 2^53 would merge (2^60 + 1 and 2^60 + 2 both read as 2^60).
Lists, tuples and arrays per cell are read with numpy; Arrow list columns
(``pd.ArrowDtype``, e.g. a Parquet ``list<int64>`` with nulls) are flattened by pyarrow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from .vocab import SchemaError, _check_scalars, _exact_ints, _object_ids, _short

__all__ = ["_flatten_lists"]


def _flatten_lists(col: pd.Series, name: str) -> tuple[np.ndarray, pd.Series]:
    """Per-row lengths ``[N]`` and the concatenated values of a list column.

    A cell is a flat list / tuple / 1-d array of scalar ids, or a missing value (NaN / None)
    for an empty list; an element may be missing too (None / NaN / NA: padding id 0). Number
    ids come out as int64 (``Int64`` when an element is missing), strings as str objects.
    Anything else raises :class:`SchemaError` naming the column and row.
    """
    what = f"sequence column {name!r}"
    if isinstance(col.dtype, pd.ArrowDtype):
        flat = _arrow_lists(col, what)
        if flat is not None:
            return flat
    lengths = np.zeros(len(col), dtype=np.int64)
    parts, rows = [], []
    for i, cell in enumerate(col.to_numpy(dtype=object)):
        if pd.api.types.is_scalar(cell) and pd.isna(cell):
            continue
        arr = _cell_array(cell, what, i)
        lengths[i] = arr.size
        if arr.size:
            parts.append(arr)
            rows.append(i)
    if not parts:
        return lengths, pd.Series(np.zeros(0, dtype=np.int64))
    kinds = {p.dtype.kind for p in parts}
    if kinds <= set("bi") or kinds == {"U"}:  # one array holds them all exactly
        return lengths, pd.Series(np.concatenate(parts))
    if kinds in ({"f"}, {"u"}):
        flat = np.concatenate(parts)
        return lengths, _int_series(*_exact_ints(flat, what, _flat_place(lengths)))
    return lengths, _mixed_parts(parts, rows, what)


def _mixed_parts(parts: list[np.ndarray], rows: list[int], what: str) -> pd.Series:
    """The flat ids of cells of different dtypes (int and float, objects, uints): numbers as
    exact int64 ids, or strings; no id goes through float. Object cells (a missing element, or
    ints beside floats) are read together."""
    objects = [k for k, p in enumerate(parts) if p.dtype.kind == "O"]
    sizes = np.array([parts[k].size for k in objects], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    obj = np.concatenate([parts[k] for k in objects]) if objects else np.zeros(0, dtype=object)

    def at(i: int) -> str:
        j = int(np.searchsorted(starts, i, side="right")) - 1
        return f"row {rows[objects[j]]}, position {i - int(starts[j])}"

    obj_ids = _object_ids(obj, what, at) if objects else None
    obj_missing = np.asarray(pd.isna(obj), dtype=bool) if obj_ids is None else obj_ids[1]
    first: dict[str, int] = {}
    j = 0
    for p, row in zip(parts, rows):
        if p.dtype.kind == "U":
            family = "str"
        elif p.dtype.kind != "O" or obj_ids is not None:
            family = "number"
        else:
            family = "missing" if obj_missing[starts[j] : starts[j] + p.size].all() else "str"
        j += p.dtype.kind == "O"
        first.setdefault(family, row)
        if "number" in first and "str" in first:
            raise SchemaError(
                f"{what} mixes numeric ids (row {first['number']}) and str ids (row "
                f"{first['str']}); as str they would merge 1 and '1': use one type"
            )
    if "str" in first:
        flat = np.concatenate([p.astype(object) for p in parts])
        return pd.Series(flat, dtype=object).infer_objects()
    ids, missing = [], np.zeros(sum(p.size for p in parts), dtype=bool)
    j = offset = 0
    for p, row in zip(parts, rows):
        if p.dtype.kind in "bi":  # exact as they are, none missing
            ids.append(p)
        elif p.dtype.kind != "O":
            got, missing[offset : offset + p.size] = _exact_ints(
                p, what, lambda i, row=row: f"row {row}, position {i}"
            )
            ids.append(got)
        else:
            cut = slice(int(starts[j]), int(starts[j]) + p.size)
            j += 1
            ids.append(obj_ids[0][cut] if obj_ids is not None else np.zeros(p.size, np.int64))
            missing[offset : offset + p.size] = obj_missing[cut]
        offset += p.size
    return _int_series(np.concatenate(ids).astype(np.int64, copy=False), missing)


def _int_series(ids: np.ndarray, missing: np.ndarray) -> pd.Series:
    """int64 ids as a Series: nullable ``Int64`` when some are missing."""
    if missing.any():
        return pd.Series(pd.arrays.IntegerArray(ids, missing))
    return pd.Series(ids)


def _flat_place(lengths: np.ndarray) -> Callable[[int], str]:
    """``at(i)``: the row and position of the ``i``-th flattened element."""
    ends = np.cumsum(lengths)

    def at(i: int) -> str:
        row = int(np.searchsorted(ends, i, side="right"))
        return f"row {row}, position {i - int(ends[row] - lengths[row])}"

    return at


def _arrow_lists(col: pd.Series, what: str) -> tuple[np.ndarray, pd.Series] | None:
    """:func:`_flatten_lists` of an Arrow list column of numbers or strings, by pyarrow (its
    numpy cells would hold float64 as soon as one element is null); ``None`` for other types."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.dtype.pyarrow_dtype
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return None
    v = t.value_type
    text = pa.types.is_string(v) or pa.types.is_large_string(v)
    number = pa.types.is_integer(v) or pa.types.is_floating(v) or pa.types.is_boolean(v)
    if not (text or number or pa.types.is_null(v)):
        return None  # nested lists, bytes, ...: read cell by cell, refused naming the row
    arr = pa.array(col.array)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(arr)
    if text:
        return lengths, pd.Series(flat.to_numpy(zero_copy_only=False), dtype=object)
    missing = flat.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_null(v):
        return lengths, _int_series(np.zeros(len(flat), dtype=np.int64), missing)
    filled = flat.fill_null(pa.scalar(False if pa.types.is_boolean(v) else 0, type=v))
    ids, nan = _exact_ints(filled.to_numpy(zero_copy_only=False), what, _flat_place(lengths))
    return lengths, _int_series(ids, missing | nan)


def _cell_array(cell: Any, what: str, row: int) -> np.ndarray:
    """One sequence cell as a 1-d array of scalars, or a :class:`SchemaError`."""
    if isinstance(cell, np.ndarray):
        arr = cell
    elif isinstance(cell, (list, tuple)):
        try:
            arr = np.asarray(cell)
        except (ValueError, TypeError):
            arr = np.asarray(cell, dtype=object)  # ragged nested lists: named below
        if arr.dtype.kind == "U" and not all(isinstance(v, str) for v in cell):
            raise SchemaError(
                f"{what} mixes numeric and str ids at row {row} ({_short(cell)}); use one type"
            )
        if arr.dtype.kind == "f" and any(isinstance(v, (int, np.integer)) for v in cell):
            arr = np.asarray(cell, dtype=object)  # ints beside floats: keep the ints exact
    else:
        raise SchemaError(
            f"{what} must hold lists / arrays of ids (or NaN / None for an empty list); row "
            f"{row} holds {type(cell).__name__} {_short(cell)}"
        )
    if arr.ndim != 1:
        raise SchemaError(
            f"{what} holds a nested list ({_short(cell)}) at row {row}; a cell must be a flat "
            "list of ids"
        )
    if arr.dtype.kind == "O":
        _check_scalars(arr, what, row)
    elif arr.dtype.kind == "S":
        raise SchemaError(
            f"{what} holds bytes ids ({_short(cell)} at row {row}); decode them to str first"
        )
    elif arr.dtype.kind not in "biufU":
        raise SchemaError(f"{what} holds {arr.dtype} values at row {row}; ids must be int or str")
    return arr
