"""Encoding of :class:`~recsys_mt.data.Vector` features: one fixed-length float vector per row.

A column is converted as a whole: when its cells are equal-length lists, tuples or 1-d arrays of
numbers, one ``np.asarray`` call stacks them into ``[N, dim]``. Only when that fails are the
cells inspected, each check vectorised over the column (types, then ``map(len)``, then element
types), to name the first bad row. Rows are positions in the frame (0 = first row).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .columns import F32_MAX
from .features import Vector
from .vocab import SchemaError, _short

VectorStats = dict[str, list[float]]
"""``{"mean": [dim], "std": [dim]}`` of a ``normalize="standard"`` vector feature."""

_REAL = ("floating", "integer", "mixed-integer-float", "boolean", "empty")
"""``infer_dtype`` (missing values skipped) of cells whose elements are all numbers; other
cells (``"mixed"``: numbers and bools, or a string among numbers) are checked element-wise."""


def _what(f: Vector) -> str:
    return f"vector column {f.column!r} (Vector({f.name!r}, dim={f.dim}))"


def _cells(col: pd.Series, f: Vector) -> tuple[pd.Series, np.ndarray]:
    """The cells as an ``object`` column (pyarrow-backed list columns converted) and bool
    ``[N]``, the cells that are None / NaN. A column of another dtype is accepted only when
    every cell is missing."""
    if isinstance(col.dtype, pd.ArrowDtype):
        col = pd.Series(col.to_numpy(dtype=object), dtype=object)
    missing = col.isna().to_numpy()
    if col.dtype != object and not missing.all():
        raise SchemaError(
            f"{_what(f)} has dtype {col.dtype}; each cell must be a list, tuple or 1-d array "
            f"of {f.dim} numbers (or None / NaN for a missing vector)"
        )
    return col, missing


def _diagnose(cells: pd.Series, f: Vector, rows: np.ndarray) -> None:
    """Raise :class:`SchemaError` naming the first cell that is not a flat sequence of ``dim``
    real numbers (returns when every cell is one)."""
    flat = cells.map(
        lambda v: isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 1)
    ).to_numpy(dtype=bool)
    if not flat.all():
        i = int(np.argmin(flat))
        v = cells.iat[i]
        raise SchemaError(
            f"{_what(f)} holds {type(v).__name__} {_short(v)} at row {rows[i]}; each cell must "
            f"be a list, tuple or 1-d array of {f.dim} numbers (or None / NaN for a missing "
            "vector)"
        )
    lengths = cells.map(len).to_numpy(dtype=np.int64)
    wrong = lengths != f.dim
    if wrong.any():
        i = int(np.argmax(wrong))
        raise SchemaError(
            f"{_what(f)} holds a vector of length {lengths[i]} at row {rows[i]}, expected "
            f"length {f.dim} ({int(wrong.sum())} rows have a wrong length)"
        )
    kinds = cells.map(lambda v: pd.api.types.infer_dtype(v, skipna=True))
    for i in np.flatnonzero(~kinds.isin(_REAL).to_numpy()):
        v = cells.iat[i]
        j = next((j for j, x in enumerate(v) if not _is_real(x)), None)
        if j is not None:
            raise SchemaError(
                f"{_what(f)} holds {type(v[j]).__name__} {_short(v[j])} at row {rows[i]}, "
                f"position {j}; vector elements must be real numbers (not strings or lists)"
            )


def _is_real(x: Any) -> bool:
    """A real number, a bool (read as 0 / 1) or a missing value (read as NaN)."""
    if isinstance(x, (bool, int, float, np.bool_, np.integer, np.floating)):
        return True
    return pd.api.types.is_scalar(x) and not isinstance(x, str) and bool(pd.isna(x))


def _matrix(cells: pd.Series, f: Vector, rows: np.ndarray) -> np.ndarray:
    """float64 ``[M, dim]`` of non-missing cells (NaN where an element is missing)."""
    values = cells.to_numpy(dtype=object).tolist()
    try:
        x = np.asarray(values)  # the fast path: one stacking call for the whole column
    except (ValueError, TypeError):
        x = None
    if x is not None and x.ndim == 2 and x.shape[1] == f.dim and x.dtype.kind in "fiub":
        return x.astype(np.float64, copy=False)  # a new array: callers may write to it
    _diagnose(cells, f, rows)
    obj = np.empty((len(values), f.dim), dtype=object)  # numbers mixed with None / pd.NA
    obj[:] = values
    obj[pd.isna(obj)] = np.nan
    return obj.astype(np.float64)


def vector_values(col: pd.Series, f: Vector) -> tuple[np.ndarray, np.ndarray]:
    """Validated raw vectors of one column.

    Returns:
        ``(x, present)``: float64 ``[N, dim]`` (zeros where not present) and bool ``[N]``,
        False for missing cells and vectors holding NaN (only with ``nan="zero"``; with
        ``nan="error"`` they raise). Raises :class:`SchemaError` naming the column and row.
    """
    what = _what(f)
    col, missing = _cells(col, f)
    rows = np.flatnonzero(~missing)
    if len(rows) == len(col):
        x = _matrix(col, f, rows)
    else:
        x = np.zeros((len(col), f.dim))
        if len(rows):
            x[rows] = _matrix(col.iloc[rows], f, rows)
    _refuse(np.isinf(x), x, f, "; inf is not allowed")
    nan = np.isnan(x)
    bad = nan.any(axis=1)
    if f.nan == "error" and (missing.any() or bad.any()):
        r = int(np.argmax(missing | bad))
        held = "a missing vector" if missing[r] else f"NaN at position {int(nan[r].argmax())}"
        raise SchemaError(
            f"{what} holds {held} at row {r} ({int((missing | bad).sum())} rows); set "
            f"Vector({f.name!r}, ..., nan='zero') to encode such rows as zeros"
        )
    x[bad] = 0.0
    _refuse(np.abs(x) > F32_MAX, x, f, f", beyond the float32 range (±{F32_MAX:.4g})")
    return x, ~(missing | bad)


def _refuse(mask: np.ndarray, x: np.ndarray, f: Vector, why: str) -> None:
    """Raise :class:`SchemaError` naming the value, row and position of the first True of
    ``mask [N, dim]`` (returns when there is none)."""
    if mask.any():
        r, j = np.argwhere(mask)[0]
        raise SchemaError(f"{_what(f)} holds {x[r, j]:.6g} at row {r}, position {j}{why}")


def fit_vector_stats(df: pd.DataFrame, vectors: list[Vector]) -> dict[str, VectorStats]:
    """Validate every vector column of ``df``; returns the per-dimension training mean and std
    of the ``normalize="standard"`` features (over the rows holding a vector; a std below
    1e-12, or no such row, gives 1)."""
    stats = {}
    for f in vectors:
        x, present = vector_values(df[f.column], f)
        if f.normalize != "standard":
            continue
        seen = x[present]
        if len(seen):
            stats[f.name] = vector_stats_from(f, seen.mean(axis=0), seen.std(axis=0))
        else:
            stats[f.name] = vector_stats_from(f, None, None)
    return stats


def vector_stats_from(f: Vector, mean: np.ndarray | None, std: np.ndarray | None) -> VectorStats:
    """Saved statistics from per-dimension ``mean`` / population ``std`` ``[dim]`` (``None``:
    no row held a vector → zeros / ones); a std below 1e-12 becomes 1."""
    if mean is None or std is None:
        return {"mean": [0.0] * f.dim, "std": [1.0] * f.dim}
    std = np.where(std > 1e-12, std, 1.0)
    return {"mean": np.asarray(mean, dtype=np.float64).tolist(), "std": std.tolist()}


def vector_tensors(df: pd.DataFrame, f: Vector, stats: VectorStats | None) -> dict[str, Any]:
    """The frame tensors of one vector feature: ``"vec/<name>"`` float32 ``[N, dim]``
    (normalised; zeros where not present) and, with ``nan="zero"``,
    ``"vec_present/<name>"`` float32 ``[N]`` (1 where the row holds a vector)."""
    x, present = vector_values(df[f.column], f)
    if f.normalize == "l2":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    elif f.normalize == "standard":
        if stats is None:
            raise RuntimeError(f"Vector({f.name!r}) has no fitted statistics: fit the schema")
        x = (x - np.asarray(stats["mean"])) / np.asarray(stats["std"])
        x[~present] = 0.0
        why = f" after standardising, beyond the float32 range (±{F32_MAX:.4g})"
        _refuse(np.abs(x) > F32_MAX, x, f, why)
    out = {f"vec/{f.name}": torch.from_numpy(x.astype(np.float32))}
    if f.nan == "zero":
        out[f"vec_present/{f.name}"] = torch.from_numpy(present.astype(np.float32))
    return out


def empty_vector_tensors(vectors: list[Vector]) -> dict[str, torch.Tensor]:
    """Zero-row tensors with the keys, dtypes and trailing shapes of :func:`vector_tensors`."""
    out = {}
    for f in vectors:
        out[f"vec/{f.name}"] = torch.zeros(0, f.dim, dtype=torch.float32)
        if f.nan == "zero":
            out[f"vec_present/{f.name}"] = torch.zeros(0, dtype=torch.float32)
    return out


def arrow_vector_problem(t: Any, dim: int, pa: Any) -> str | None:
    """Why a Parquet column of Arrow type ``t`` cannot hold vectors of ``dim`` numbers
    (``None`` when it can: a list, large_list or fixed_size_list of ``dim`` numbers)."""
    want = f"needs a list or fixed_size_list of {dim} numbers (float, int or bool) per row"
    nested = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    if not nested:
        return want
    v = t.value_type
    number = pa.types.is_floating(v) or pa.types.is_integer(v) or pa.types.is_boolean(v)
    if not (number or pa.types.is_null(v)):
        return want
    if pa.types.is_fixed_size_list(t) and t.list_size != dim:
        return f"holds lists of {t.list_size} values; the feature has dim={dim}"
    return None
