"""Encode the user-side columns of a few user rows without ``Schema.transform``'s frame work.

``Schema.transform`` pays a fixed cost per column (pandas Series, dtype inference, index
lookups) that dominates for the handful of user rows of one request. :class:`UserRowEncoder`
gives the same tensors for the common user columns (int ids, numbers, lists of int ids) with a
few numpy calls each, sharing the schema's own lookup, dense and padding functions, and gives
up (``None``) on anything else, so the caller encodes those rows the general way (which also
raises the usual errors).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.columns import check_no_inf, dense_array
from ..data.features import Dense, Sequence, Sparse
from ..data.vocab import oov_stats, pad_sequences

_INT64 = np.dtype(np.int64)
_FLOAT64 = np.dtype(np.float64)


class UserRowEncoder:
    """The user-side tensor slices of ``B`` user rows, equal to those ``Schema.transform`` gives.

    Serves schemas whose user-side parts are all :class:`~recsys_mt.data.Sparse` and
    :class:`~recsys_mt.data.Sequence` features with int ids and
    :class:`~recsys_mt.data.Dense` features (else :attr:`reason` says why not), and user
    frames whose id columns are int64, numbers float64 or int64, and sequence cells ``None``
    or flat int64 arrays / lists of ints; :meth:`encode` returns ``None`` for any other frame.

    Args:
        schema: the fitted schema.
        parts: the user-owned :class:`~recsys_mt.data.frame_layout.EncodedPart` s, in frame
            order.
        user_columns: the user-side input columns (with the schema's group column when it is
            one of them).
    """

    def __init__(self, schema: Any, parts: list, user_columns: list[str]):
        self.schema = schema
        self.reason: str | None = None
        self._sparse: list[tuple[Sparse, Any]] = []
        self._dense: list[Dense] = []
        self._seqs: list[tuple[Sequence, Any]] = []
        # a user-side group column is only checked (``pd.factorize`` takes any numbers)
        self._group = schema.group if schema.group in user_columns else None
        for p in parts:
            f = schema.feature(p.feature)
            if p.key == "sparse" and isinstance(f, Sparse):
                self._sparse.append((f, schema.vocabularies_[f.name]))
            elif p.key == "dense" and isinstance(f, Dense):
                self._dense.append(f)
            elif p.key.startswith("seq/") and isinstance(f, Sequence):
                self._seqs.append((f, schema.vocabularies_[f.vocab_from or f.name]))
            else:
                self.reason = f"user feature {f.name!r} is a {type(f).__name__}"
                break
        if self.reason is None:
            kinds = {v.kind for _, v in self._sparse + self._seqs}
            if kinds - {"int"}:
                self.reason = "a user-side id feature has str ids"

    def encode(self, users: pd.DataFrame) -> tuple[dict[str, Tensor], dict[str, tuple]] | None:
        """``({key: tensor}, {sequence: (oov_count, oov_rate)})`` of the user-owned parts (the
        ``"sparse"`` / ``"dense"`` columns in the parts' order, whole ``"seq/<name>"``
        tensors), or ``None`` when these rows need the general path."""
        if self.reason is not None or not users.columns.is_unique:
            return None
        try:
            return self._encode(users)
        except Exception:  # the general path raises the same problem, with its usual message
            return None

    def _encode(self, users: pd.DataFrame) -> tuple[dict[str, Tensor], dict[str, tuple]] | None:
        if self._group is not None:
            dtype = users[self._group].dtype
            if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
                return None
        out: dict[str, Tensor] = {}
        if self._sparse:
            cols = []
            for f, vocab in self._sparse:
                col = users[f.column]
                if not isinstance(col.dtype, np.dtype) or col.dtype != _INT64:
                    return None
                values = col.to_numpy()
                cols.append(vocab.lookup(values, np.zeros(len(values), dtype=bool)))
            out["sparse"] = torch.from_numpy(np.stack(cols, axis=1))
        if self._dense:
            cols = []
            for f in self._dense:
                col = users[f.column]
                if not isinstance(col.dtype, np.dtype) or col.dtype not in (_FLOAT64, _INT64):
                    return None
                x = col.to_numpy(dtype=np.float64, na_value=np.nan)
                check_no_inf(x, f"dense column {f.column!r}")
                cols.append(dense_array(x, f, self.schema.dense_stats_[f.name]))
            out["dense"] = torch.from_numpy(np.stack(cols, axis=1).astype(np.float32))
        oov: dict[str, tuple] = {}
        for f, vocab in self._seqs:
            flat = _int_lists(users[f.column])
            if flat is None:
                return None
            lengths, values = flat
            missing = np.zeros(len(values), dtype=bool)
            ids = vocab.lookup(values, missing) if len(values) else np.zeros(0, dtype=np.int64)
            oov[f.name] = oov_stats(ids, missing)
            out[f"seq/{f.name}"] = torch.from_numpy(pad_sequences(lengths, ids, f.max_len))
        return out, oov


def _int_lists(col: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lengths [B], concatenated int64 ids)`` of a column of ``None`` / flat int lists, or
    ``None`` for any other cell."""
    if col.dtype != object:
        return None
    lengths = np.zeros(len(col), dtype=np.int64)
    parts = []
    for i, cell in enumerate(col.to_numpy()):
        if cell is None:
            continue
        if isinstance(cell, np.ndarray):
            arr = cell
        elif isinstance(cell, (list, tuple)):
            if not all(type(v) is int for v in cell):
                return None
            arr = np.asarray(cell, dtype=np.int64) if cell else np.zeros(0, dtype=np.int64)
        else:
            return None
        if arr.ndim != 1:
            return None
        if arr.size == 0:  # an empty cell adds nothing, whatever its dtype (bytes aside)
            if arr.dtype.kind not in "biufUO":
                return None
            continue
        if arr.dtype != _INT64:
            return None
        lengths[i] = arr.size
        parts.append(arr)
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return lengths, values
