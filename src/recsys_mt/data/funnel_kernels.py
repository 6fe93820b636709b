"""Vectorised numpy core of the funnel statistics (:mod:`recsys_mt.data.funnel_stats`): entity
values and grouping, per-entity label sums (full, out-of-fold, time-ordered), the smoothed logit
outputs, and the fit-frame fingerprint hashes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .features import FunnelStats
from .vocab import SchemaError, _canonical, _id_kind


def _entity_values(
    df: pd.DataFrame, spec: FunnelStats, kinds: list[str] | None = None
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Canonical values of each entity column, the ``[N]`` missing mask (any column missing),
    and the id kinds; with ``kinds`` (from fit) a column of another kind raises."""
    values, found = [], []
    missing = np.zeros(len(df), dtype=bool)
    for j, col in enumerate(spec.entity_columns):
        what = f"entity column {col!r} of FunnelStats({spec.name!r})"
        kind = _id_kind(df[col], what)
        if kinds is not None and kind != kinds[j]:
            if not df[col].isna().all():
                raise SchemaError(
                    f"{what} holds {kind} ids but was fit on {kinds[j]} ids (dtype now "
                    f"{df[col].dtype}); cast the column"
                )
            kind = kinds[j]
        v, m = _canonical(df[col], kind)
        values.append(v)
        missing |= m
        found.append(kind)
    return values, missing, found


def _group(values: list[np.ndarray], missing: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Codes ``[N]`` of the distinct entity values (first-appearance order, -1 where missing)
    and the key values ``[G]`` of each entity column in code order."""
    ok = ~missing
    sub = [v[ok] for v in values]
    codes_ok = np.zeros(int(ok.sum()), dtype=np.int64)
    for v in sub:  # combine column codes; stays < N² so int64 never overflows
        c, uniques = pd.factorize(v)
        codes_ok, _ = pd.factorize(codes_ok * len(uniques) + c)
    first = np.unique(codes_ok, return_index=True)[1]
    codes = np.full(len(missing), -1, dtype=np.int64)
    codes[ok] = codes_ok
    return codes, [v[first] for v in sub]


def _sum_by(codes: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """``[size, K]`` sums of ``weights [N, K]`` per code (rows with code -1 are skipped)."""
    ok = codes >= 0
    cols = [
        np.bincount(codes[ok], weights=weights[ok, k], minlength=size)
        for k in range(weights.shape[1])
    ]
    return np.stack(cols, axis=1).reshape(size, weights.shape[1])


def _out_of_fold(codes: np.ndarray, weights: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """``[N, K]``: per row, the sums over its entity's rows in the *other* folds."""
    n = len(codes)
    fold = np.empty(n, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    size = int(codes.max()) + 1 if n else 0
    ok = codes >= 0
    cell = np.where(ok, codes * folds + fold, -1)
    total = _sum_by(codes, weights, size)
    own_fold = _sum_by(cell, weights, size * folds)
    out = np.zeros_like(weights)
    out[ok] = total[codes[ok]] - own_fold[cell[ok]]
    return out


def _time_ordered(codes: np.ndarray, weights: np.ndarray, time_rank: np.ndarray) -> np.ndarray:
    """``[N, K]``: per row, the sums over its entity's rows with a strictly smaller time rank
    (ties excluded). Sort by (entity, time), sum per cell, exclusive cumsum within each entity."""
    out = np.zeros_like(weights)
    ok = codes >= 0
    if not ok.any():
        return out
    n_times = int(time_rank.max()) + 1
    cells, inv = np.unique(codes[ok] * n_times + time_rank[ok], return_inverse=True)
    inv = inv.reshape(-1)
    entity = cells // n_times
    new_entity = np.r_[True, entity[1:] != entity[:-1]]
    start = np.flatnonzero(new_entity)[np.cumsum(new_entity) - 1]  # first cell of the entity
    for k in range(weights.shape[1]):
        per_cell = np.bincount(inv, weights=weights[ok, k], minlength=len(cells))
        before = np.cumsum(per_cell) - per_cell  # all earlier cells, any entity
        out[ok, k] = (before - before[start])[inv]
    return out


def _time_rank(df: pd.DataFrame, spec: FunnelStats) -> np.ndarray:
    col = df[spec.time_column]
    what = f"time column {spec.time_column!r} of FunnelStats({spec.name!r})"
    dtype = col.dtype
    ordered = (
        pd.api.types.is_datetime64_any_dtype(dtype)  # tz-aware too
        or pd.api.types.is_timedelta64_dtype(dtype)
        or (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype))
    )
    if not ordered or isinstance(dtype, pd.CategoricalDtype):
        held = pd.api.types.infer_dtype(col, skipna=True)
        raise SchemaError(
            f"{what} has dtype {dtype} ({held} values); time values must be datetime64 or "
            "numeric, which order by time (strings order alphabetically: '10/1/2020' before "
            "'9/1/2020'); convert the column, e.g. with pd.to_datetime(df[col], format=...)"
        )
    nan = col.isna().to_numpy()
    if nan.any():
        raise SchemaError(f"{what} is missing at row {int(nan.argmax())} ({int(nan.sum())} rows)")
    try:
        rank, _ = pd.factorize(col, sort=True)
    except TypeError as e:
        raise SchemaError(f"{what} holds values that cannot be ordered: {e}") from None
    return rank.astype(np.int64)


def _raw(num: np.ndarray, den: np.ndarray, prior: np.ndarray, m: float, counts: bool):
    """``[N, C]``: logit of the smoothed rate (and ``log1p(den)``) per task, interleaved."""
    rate = (num + m * prior) / (den + m)
    logit = np.log(rate) - np.log1p(-rate)
    if not counts:
        return logit
    out = np.empty((len(num), 2 * num.shape[1]))
    out[:, 0::2] = logit
    out[:, 1::2] = np.log1p(den)
    return out


def _entity_hash(values: list[np.ndarray]) -> int:
    return sum(int(pd.util.hash_array(v).sum()) * (j + 1) for j, v in enumerate(values)) % 2**64


def _label_hash(df: pd.DataFrame, label_columns: list[str]) -> int:
    return int(pd.util.hash_pandas_object(df[label_columns], index=False).to_numpy().sum())
