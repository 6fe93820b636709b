"""Encoding of numeric columns: :class:`Dense` features and task labels (float32 tensors)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..tasks.task import Task
from .features import Dense
from .vocab import SchemaError

F32_MAX = float(np.finfo(np.float32).max)


def _numbers(col: pd.Series, what: str) -> np.ndarray:
    """float64 values of a numeric / bool column (NaN for missing); refuses inf."""
    dtype = col.dtype
    numeric = pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    if not numeric or pd.api.types.is_complex_dtype(dtype):
        raise SchemaError(f"{what} has dtype {dtype}; expected real numbers")
    x = col.to_numpy(dtype=np.float64, na_value=np.nan)
    check_no_inf(x, what)
    return x


def check_no_inf(x: np.ndarray, what: str) -> None:
    """Refuse float64 values holding inf, naming the first row."""
    if np.isinf(x).any():
        raise SchemaError(f"{what} holds inf at row {int(np.isinf(x).argmax())}")


def _check_float32(x: np.ndarray, what: str, stage: str) -> None:
    big = np.abs(np.nan_to_num(x)) > F32_MAX
    if big.any():
        r = int(big.argmax())
        raise SchemaError(
            f"{what} holds {x[r]:.6g} at row {r}{stage}, beyond the float32 range "
            f"(±{F32_MAX:.4g}) of the encoded tensor ({int(big.sum())} rows); rescale the column "
            "or use transform='log1p'"
        )


def dense_values(df: pd.DataFrame, f: Dense, stats: dict[str, float] | None) -> np.ndarray:
    """float64 ``[N]`` encoding of a :class:`Dense` feature; ``stats`` ``None`` returns the
    values statistics are fit on (NaN kept unless ``nan="zero"``)."""
    what = f"dense column {f.column!r}"
    return dense_array(_numbers(df[f.column], what), f, stats)


def dense_array(x: np.ndarray, f: Dense, stats: dict[str, float] | None) -> np.ndarray:
    """:func:`dense_values` of the column's float64 values ``x`` (NaN for missing, no inf)."""
    what = f"dense column {f.column!r}"
    nan = np.isnan(x)
    if nan.any() and f.nan == "error":
        raise SchemaError(
            f"{what} holds NaN at row {int(nan.argmax())} "
            f"({int(nan.sum())} rows); set Dense({f.name!r}, nan='mean' or 'zero') to fill"
        )
    if f.nan == "zero":
        x = np.where(nan, 0.0, x)
    if f.transform == "log1p":
        bad = ~np.isnan(x) & (x <= -1)
        if bad.any():
            raise SchemaError(
                f"{what} needs values > -1 for log1p; row {int(bad.argmax())} holds "
                f"{x[bad.argmax()]}"
            )
        x = np.log1p(x)
    _check_float32(x, what, "")
    if stats is None:
        return x
    x = (x - stats["mean"]) / stats["std"]
    _check_float32(x, what, " after standardising with the training mean and std")
    # 'mean' policy: the training mean of the encoded values (0 after standardising; the raw
    # mean with transform="none"; schemas saved before "fill" existed used 0)
    return np.where(np.isnan(x), stats.get("fill", 0.0), x)


def dense_stats(x: np.ndarray, f: Dense) -> dict[str, float]:
    """``{"mean", "std", "fill"}`` of the values :func:`dense_values` returns without stats."""
    seen = (~np.isnan(x)).any()
    mean = float(np.nanmean(x)) if seen else None
    std = float(np.nanstd(x)) if seen and f.transform != "none" else None
    return dense_stats_from(f, mean, std)


def dense_stats_from(f: Dense, mean: float | None, std: float | None) -> dict[str, float]:
    """:func:`dense_stats` from the mean and population std (ddof 0) of the non-NaN fit values
    (``None`` when there are none; ``std`` is unused with ``transform="none"``)."""
    if mean is None:
        return {"mean": 0.0, "std": 1.0, "fill": 0.0}
    if f.transform == "none":
        return {"mean": 0.0, "std": 1.0, "fill": mean}
    return {"mean": mean, "std": std if std > 1e-12 else 1.0, "fill": 0.0}


def encode_labels(tasks: list[Task], df: pd.DataFrame) -> np.ndarray:
    """float32 ``[N, T]`` labels (tasks ordered parents first); a child's NaN label is 0 where
    its parent is 0. Raises :class:`SchemaError` naming the column and row."""
    out = np.zeros((len(df), len(tasks)), dtype=np.float32)
    by_name = {t.name: i for i, t in enumerate(tasks)}
    for j, t in enumerate(tasks):
        what = f"label column {t.label!r} (task {t.name!r})"
        y = _numbers(df[t.label], what)
        nan = np.isnan(y)
        if t.given is not None:
            observed = out[:, by_name[t.given]] == 1
            if (nan & observed).any():
                r = int((nan & observed).argmax())
                raise SchemaError(
                    f"{what} is NaN at row {r} where its parent task {t.given!r} is 1"
                )
            y = np.where(nan, 0.0, y)
        elif nan.any():
            raise SchemaError(
                f"{what} holds NaN at row {int(nan.argmax())} ({int(nan.sum())} rows)"
            )
        if t.binary:
            bad = (y != 0) & (y != 1)
            if bad.any():
                vals = sorted(set(np.unique(y[bad]).tolist()))[:5]
                raise SchemaError(
                    f"label column {t.label!r} of binary task {t.name!r} must hold 0/1; found "
                    f"{vals} (e.g. row {int(bad.argmax())})"
                )
            if t.given is not None:
                leak = (y == 1) & (out[:, by_name[t.given]] == 0)
                if leak.any():
                    raise SchemaError(
                        f"label {t.label!r} (task {t.name!r}) is 1 at row {int(leak.argmax())} "
                        f"where its parent task {t.given!r} is 0 ({int(leak.sum())} rows); a "
                        "funnel label can only be 1 after its parent"
                    )
        else:
            _check_float32(y, what, "")
        out[:, j] = y
    return out
