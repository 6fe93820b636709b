"""Small helpers of :class:`~recsys_mt.serving.Recommender`: candidate id arrays, repeated
candidates, numeric catalog columns, task depth and user chunks for streamed recommendation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "as_id_array",
    "category_codes",
    "first_occurrences",
    "float_tensor",
    "task_depth",
    "user_chunks",
]


def as_id_array(items: list) -> Any:
    """``items`` as an int64 array when they are all integers (a fast index lookup), else
    unchanged: no float is truncated and no number is turned into a string."""
    try:
        values = np.asarray(items)
    except (OverflowError, ValueError, TypeError):
        return items
    return values if values.dtype.kind in "iu" and values.ndim == 1 else items


def category_codes(column: pd.Series) -> tuple[Tensor, pd.Index, np.ndarray]:
    """``(codes [M] int64, index, values [M])`` of a catalog's category column.

    ``codes`` are what category-aware re-rankers read and what the columns of a
    ``user_category_pref [B, C]`` follow: ``index[c]`` is the category of column ``c``.
    Non-negative integer categories (also as floats with missing values) are their own codes,
    so column ``7`` is category ``7``; other values (strings) are numbered in sorted order.
    A missing category is code ``-1`` (uncategorised). ``values`` are the categories for the
    output column: whole floats become ints, missing ones ``None``.
    """
    missing = column.isna().to_numpy()
    present = column[~missing]
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and len(present) and bool((present >= 0).all() and (present % 1 == 0).all()):
        ints = np.where(missing, -1, column.fillna(-1).to_numpy(np.float64)).astype(np.int64)
        values = np.array([None if m else int(v) for m, v in zip(missing, ints)], dtype=object)
        if not missing.any():
            values = ints
        return torch.from_numpy(ints), pd.RangeIndex(int(ints.max()) + 1), values
    codes, uniques = pd.factorize(column, sort=True)  # missing -> -1
    values = column.to_numpy(dtype=object)
    values[missing] = None
    return torch.from_numpy(codes.astype(np.int64)), pd.Index(uniques), values


def float_tensor(column: pd.Series) -> Tensor | None:
    """float32 values of a numeric catalog column (``None`` when they do not convert)."""
    try:
        return torch.from_numpy(np.array(column.to_numpy(np.float32)))  # a writable copy
    except (TypeError, ValueError):
        return None


def task_depth(tasks, name: str) -> int:
    by = {t.name: t for t in tasks}
    d = 0
    while by[name].given is not None:
        name = by[name].given
        d += 1
    return d


def first_occurrences(pos: Tensor, mask: Tensor) -> Tensor:
    """``mask [B, N]`` with every repeat of a catalog position in a row masked out (the first
    occurrence stays), so an item listed twice among a user's candidates is ranked once."""
    keyed = pos.masked_fill(~mask, -1)
    ordered, order = keyed.sort(dim=1, stable=True)  # equal positions keep their list order
    repeat = torch.zeros_like(mask)
    repeat[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    return mask & ~torch.zeros_like(mask).scatter_(1, order, repeat)


def user_chunks(users: Any, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """DataFrames of at most ``chunk_rows`` users from a frame, an iterable of frames or
    Parquet files."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    if isinstance(users, pd.DataFrame):
        for start in range(0, len(users), chunk_rows):
            yield users.iloc[start : start + chunk_rows]
        return
    if isinstance(users, (str, os.PathLike)):
        import pyarrow.dataset as ds

        for batch in ds.dataset(os.fspath(users), format="parquet").to_batches(
            batch_size=chunk_rows
        ):
            yield batch.to_pandas()
        return
    for i, frame in enumerate(users):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"user chunk {i} is a {type(frame).__name__}, not a DataFrame")
        yield from user_chunks(frame, chunk_rows)
