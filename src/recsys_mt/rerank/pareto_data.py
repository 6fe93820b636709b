"""Validation-set inputs of :func:`~recsys_mt.rerank.pareto.pareto_search`.

:class:`ParetoInputs` holds the per-user candidate tensors (``B`` users, ``N`` candidate slots);
:func:`pareto_inputs_from_frame` builds them from a long DataFrame with one row per
(user, candidate) pair, padding users with fewer candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = ["ParetoInputs", "pareto_inputs_from_frame"]


def _tensor(value: Any, name: str) -> Tensor:
    try:
        return torch.as_tensor(np.asarray(value) if isinstance(value, pd.Series) else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}: {err}") from None


def _tensor_dict(values: Any, name: str, shape: tuple[int, ...] | None) -> dict[str, Tensor]:
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"{name} must be a non-empty mapping of name -> [B, N] tensor")
    out: dict[str, Tensor] = {}
    for key, value in values.items():
        t = _tensor(value, f"{name}[{key!r}]")
        if t.dtype.is_complex:
            raise TypeError(f"{name}[{key!r}] must be real, got dtype {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{name}[{key!r}] must have shape [B, N], got {tuple(t.shape)}")
        shape = shape or tuple(t.shape)
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{name}[{key!r}] has shape {tuple(t.shape)}, expected [B, N] = {list(shape)}"
            )
        out[str(key)] = t.float() if t.dtype == torch.bool else t
    return out


@dataclass
class ParetoInputs:
    """Per-user candidates of a validation set, all aligned on ``[B, N]``.

    Attributes:
        predictions: ``{name: [B, N]}`` model predictions and value columns (``ctr``, ``cvr``,
            ``ctcvr``, ``price``, ...): the objectives a fusion can weigh.
        labels: ``{name: [B, N]}`` observed outcomes (``click``, ``purchase``, ...).
        mask: ``[B, N]`` bool, True = real candidate (False = padding).
        item_vectors: ``[B, N, d]`` float or None (for MMR / DPP and ``ild@K``).
        categories: ``[B, N]`` long category ids, ``-1`` at padding, or None.
        users: the ``B`` user keys (row order) when built from a frame.
        items: ``[B, N]`` object array of item keys (None at padding) when built from a frame.
    """

    predictions: dict[str, Tensor]
    labels: dict[str, Tensor]
    mask: Tensor | None = None
    item_vectors: Tensor | None = None
    categories: Tensor | None = None
    users: list | None = None
    items: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.predictions = _tensor_dict(self.predictions, "predictions", None)
        shape = tuple(next(iter(self.predictions.values())).shape)
        b, n = shape
        self.labels = _tensor_dict(self.labels, "labels", shape)
        if b == 0 or n == 0:
            raise ValueError(f"predictions: no candidates (shape [B, N] = {list(shape)})")
        if self.mask is None:
            self.mask = torch.ones(shape, dtype=torch.bool)
        self.mask = _tensor(self.mask, "mask")
        if tuple(self.mask.shape) != shape or self.mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape [B, N] = {list(shape)}, got "
                f"{self.mask.dtype} {tuple(self.mask.shape)}"
            )
        if not bool(self.mask.any()):
            raise ValueError("mask: every candidate is masked out (no candidates to rank)")
        if self.item_vectors is not None:
            v = _tensor(self.item_vectors, "item_vectors")
            if v.dim() != 3 or tuple(v.shape[:2]) != shape or not v.dtype.is_floating_point:
                raise ValueError(
                    f"item_vectors must be a float tensor [B, N, d] with [B, N] = {list(shape)}, "
                    f"got {v.dtype} {tuple(v.shape)}"
                )
            self.item_vectors = v
        if self.categories is not None:
            c = _tensor(self.categories, "categories")
            if tuple(c.shape) != shape or c.dtype.is_floating_point or c.dtype == torch.bool:
                raise ValueError(
                    f"categories must be an integer tensor [B, N] = {list(shape)}, got "
                    f"{c.dtype} {tuple(c.shape)}"
                )
            self.categories = c.long()

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, N)``."""
        return tuple(self.mask.shape)

    def kwargs(self) -> dict[str, Any]:
        """The re-ranker side inputs that are present (``item_vectors``, ``categories``)."""
        out = {"item_vectors": self.item_vectors, "categories": self.categories}
        return {key: value for key, value in out.items() if value is not None}


def _plain(value: Any) -> Any:
    """numpy scalars as plain Python values (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _pad(values: np.ndarray, row: np.ndarray, col: np.ndarray, shape, fill, dtype) -> Tensor:
    out = np.full(shape, fill, dtype=dtype)
    out[row, col] = values
    return torch.from_numpy(out)


def pareto_inputs_from_frame(
    frame: pd.DataFrame,
    *,
    predictions: Sequence[str],
    labels: Sequence[str],
    user: str = "user_id",
    item: str = "item_id",
    category: str | None = None,
    vectors: str | np.ndarray | Tensor | None = None,
) -> ParetoInputs:
    """Arrange a long frame (one row per user and candidate) as padded ``[B, N]`` tensors.

    Users keep their order of first appearance and their candidates their row order; ``N`` is
    the largest candidate count, shorter rows are padded (``mask`` False, values 0, category -1).

    Args:
        frame: one row per (user, candidate item) with prediction and label columns.
        predictions: columns of predictions / values (e.g. ``["ctr", "cvr", "ctcvr",
            "price"]``).
        labels: columns of observed outcomes (e.g. ``["click", "purchase"]``).
        user: user key column.
        item: item key column.
        category: optional category column (factorised into ids ``0..C-1``).
        vectors: optional item vectors: a column whose cells are ``[d]`` arrays, or an
            ``[M, d]`` array indexed by integer item id.

    Returns:
        :class:`ParetoInputs` with ``users`` and ``items`` filled in.

    Raises:
        KeyError: a column named by an argument is missing (the message names the argument).
        ValueError: an empty frame, a (user, item) pair listed twice, NaN predictions or
            labels.
    """
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise ValueError("frame must be a non-empty DataFrame, one row per (user, candidate)")
    for arg, cols in (
        ("predictions", list(predictions)),
        ("labels", list(labels)),
        ("user", [user]),
        ("item", [item]),
        ("category", [] if category is None else [category]),
        ("vectors", [vectors] if isinstance(vectors, str) else []),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise KeyError(f"{arg}: column(s) {missing} not in frame; it has {list(frame.columns)}")
    dup = frame.duplicated([user, item])
    if dup.any():
        first = [_plain(v) for v in frame.loc[dup, [user, item]].iloc[0]]
        raise ValueError(
            f"frame lists (user, item) = {first} more than once; aggregate first, e.g. "
            f"frame.groupby([{user!r}, {item!r}], as_index=False, sort=False).max()"
        )
    codes, keys = pd.factorize(frame[user], sort=False)
    col = frame.groupby(codes, sort=False).cumcount().to_numpy()
    shape = (len(keys), int(col.max()) + 1)

    def pad_columns(names: Sequence[str], arg: str) -> dict[str, Tensor]:
        out = {}
        for name in names:
            values = frame[name].to_numpy(dtype=np.float64)
            if np.isnan(values).any():
                raise ValueError(f"{arg}: column {name!r} has NaN values")
            out[name] = _pad(values, codes, col, shape, 0.0, np.float32)
        return out

    cats = None
    if category is not None:
        ids = pd.factorize(frame[category], sort=True)[0].astype(np.int64)
        cats = _pad(ids, codes, col, shape, -1, np.int64)
    vecs = None
    if vectors is not None:
        if isinstance(vectors, str):
            rows = np.stack([np.asarray(v, dtype=np.float32) for v in frame[vectors]])
        else:
            rows = np.asarray(vectors, dtype=np.float32)[frame[item].to_numpy(np.int64)]
        vecs = torch.zeros(*shape, rows.shape[1])
        vecs[torch.tensor(codes), torch.tensor(col)] = torch.tensor(rows)
    items = np.full(shape, None, dtype=object)
    items[codes, col] = [_plain(v) for v in frame[item]]
    return ParetoInputs(
        predictions=pad_columns(predictions, "predictions"),
        labels=pad_columns(labels, "labels"),
        mask=_pad(np.ones(len(frame), bool), codes, col, shape, False, bool),
        item_vectors=vecs,
        categories=cats,
        users=list(keys),
        items=items,
    )
