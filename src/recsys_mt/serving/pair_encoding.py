"""Encode (user, candidate) pairs by gathering rows of a once-encoded catalog and users frame.

``Schema.transform`` encodes every row from that row's cells alone, so the frame of all pairs
equals, tensor slice by tensor slice, rows gathered from the encoded users (``[B]`` rows) and
the encoded catalog (``[M]`` rows, encoded once): each slice comes from the side that owns its
input columns (catalog columns override same-named user columns, as in the pair frame).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.features import OOV_ID, PAD_ID, Dense, Sequence, Sparse
from ..data.frame import TensorFrame
from ..data.frame_layout import encode_rows, encoded_parts
from ..data.group_support import supported_features
from ..data.vocab import warn_oov
from .user_encoding import UserRowEncoder


class PairEncoder:
    """Builds the encoded ``[P]`` frame of P (user, catalog row) pairs without a pair DataFrame.

    The catalog side is encoded once, at construction (or, when that needs a user row, on
    first use under a lock; then only read, so one encoder serves concurrent calls); the users
    side once per call, by a :class:`~recsys_mt.serving.user_encoding.UserRowEncoder` when the
    rows allow it, else by ``Schema.transform``. :meth:`encode` returns
    ``None`` whenever it cannot give exactly the pair frame's tensors (see :attr:`reason`, or
    a call whose users frame ``Schema.transform`` refuses), and the caller then encodes the pair
    frame itself, which also raises the usual errors.

    Not used (``reason`` set) for schemas with :class:`~recsys_mt.data.Text` features, models
    with an encoder that has a ``prepare`` method (text towers tokenise a frame's distinct texts
    as a whole), a :class:`~recsys_mt.data.FunnelStats` entity crossing user and catalog columns,
    or a schema without features.

    Args:
        model: the model whose ``schema`` and ``encoders`` decide what can be gathered.
        catalog: the catalog, one row per item, index ``0 .. M-1``.
        fast_users: encode common user rows with plain numpy calls (the same tensors).
        warn: emit the schema's :class:`~recsys_mt.data.OOVWarning` per call (``False``: the
            shares stay in ``meta["oov_rates"]`` only).
    """

    def __init__(
        self, model: Any, catalog: pd.DataFrame, fast_users: bool = True, warn: bool = True
    ):
        self.schema = model.schema
        self.warn = warn
        self._group_filtered = [f.name for f in supported_features(self.schema)]
        self.catalog = catalog
        self.reason = self._unsupported(model)
        owned = set(catalog.columns)
        parts = [p for p in encoded_parts(self.schema) if p.key != "group"]
        self._item_parts = [p for p in parts if set(p.inputs) <= owned]
        self._user_parts = [p for p in parts if not set(p.inputs) & owned]
        mixed = [p.feature for p in parts if p not in self._item_parts + self._user_parts]
        if self.reason is None and mixed:
            self.reason = f"features {mixed} read both user and catalog columns"
        needed = [c for f in self.schema.features for c in f.input_columns]
        if self.schema.group is not None:
            needed.append(self.schema.group)
        needed = list(dict.fromkeys(needed))
        self._item_cols = [c for c in needed if c in owned]
        self._user_cols = [c for c in needed if c not in owned]
        # catalog row 0 stands in for the catalog columns of the users side (slices dropped)
        if self.reason is None and catalog.columns.duplicated().any():
            self.reason = "the catalog has repeated column names"
        self._fill = {} if self.reason else {c: catalog[c].array[:1] for c in self._item_cols}
        self._lock = threading.Lock()
        self._items: dict[str, Tensor] | None = None
        self._item_oov: dict[str, tuple[int, float]] = {}
        self._widths: dict[str, tuple[int, torch.dtype]] = {}
        self._fast = (
            UserRowEncoder(self.schema, self._user_parts, self._user_cols) if fast_users else None
        )
        self._meta = {
            "sparse": [f.name for f in self.schema.sparse],
            "dense": self.schema.dense_columns,
            "tasks": self.schema.task_names,
            "texts": {},
        }
        if self.reason is None:
            self._catalog_tensors(None)  # with filler user columns, when they allow it

    def _unsupported(self, model: Any) -> str | None:
        if not self.schema.features:
            return "the schema has no features"
        if self.schema.texts:
            return "the schema has Text features"
        if any(callable(getattr(e, "prepare", None)) for e in model.encoders):
            return "an encoder prepares whole frames (a text tower)"
        return None

    def encode(self, users: pd.DataFrame, rows_u: Tensor, rows_c: Tensor) -> TensorFrame | None:
        """The encoded frame of pairs ``(users row rows_u[p], catalog row rows_c[p])``.

        Args:
            users: ``B`` user rows (``rows_u`` are positions in it).
            rows_u: int64 ``[P]`` user rows.
            rows_c: int64 ``[P]`` catalog rows.

        Returns:
            The frame ``schema.transform(pairs, labels=False)`` would give (tensors equal;
            ``meta["oov_rates"]`` of sequence features count the owning side's rows, see
            :meth:`_oov_rates`), or ``None`` when the pair frame must be encoded instead.
        """
        if self.reason is not None or any(c not in users.columns for c in self._user_cols):
            return None
        fast = self._fast.encode(users) if self._fast is not None else None
        if fast is not None:
            user_side, seq_oov = fast
        else:
            try:
                side = {c: users[c].array for c in self._user_cols}
                zeros = np.zeros(len(users), dtype=np.intp)
                side.update({c: v.take(zeros) for c, v in self._fill.items()})
                user_frame = encode_rows(self.schema, pd.DataFrame(side, copy=False))
            except Exception:  # the pair frame raises the same problem, with its usual message
                return None
            user_side = _owned(user_frame, self._user_parts)
            seq_oov = {
                f.name: (
                    user_frame.meta["oov_counts"][f.name],
                    user_frame.meta["oov_rates"][f.name],
                )
                for f in self.schema.sequences
            }
        items = self._catalog_tensors(users)
        if items is None:
            return None
        tensors = self._assemble(user_side, items, rows_u, rows_c)
        meta = {k: (list(v) if isinstance(v, list) else dict(v)) for k, v in self._meta.items()}
        meta["oov_counts"], meta["oov_rates"] = self._oov_stats(seq_oov, tensors)
        limit = self.schema.oov_warn_rate if self.warn else None
        warn_oov(meta["oov_rates"], limit, self._group_filtered)
        return TensorFrame(tensors, meta)

    def _catalog_tensors(self, users: pd.DataFrame | None) -> dict[str, Tensor] | None:
        """The catalog-owned slices ``{key: [M, ...]}``, encoded once (filler values stand in
        for the user columns, whose slices are dropped: empty lists for sequence columns, else
        users row 0, or zeros before any call); ``None`` if the catalog cannot be encoded as a
        whole (then every call encodes pairs, and only rows a call uses are checked). Without
        ``users`` a failure leaves the encoding to the first call."""
        if self._items is not None:  # built once, then only read
            return self._items
        with self._lock:
            if self._items is None and self.reason is None:
                try:
                    fill = self._user_filler(users)
                    if fill is None:
                        return None
                    side = pd.concat(
                        [
                            self.catalog[self._item_cols],
                            pd.DataFrame(fill, index=self.catalog.index),
                        ],
                        axis=1,
                    )
                    frame = encode_rows(self.schema, side)
                except Exception:
                    if users is not None:
                        self.reason = "the catalog as a whole does not encode"
                    return None
                self._widths = {
                    key: (frame[key].shape[1], frame[key].dtype)
                    for key in ("sparse", "dense")
                    if key in frame
                }
                seqs = {p.feature for p in self._item_parts if p.key.startswith("seq/")}
                self._item_oov = {
                    name: (frame.meta["oov_counts"][name], frame.meta["oov_rates"][name])
                    for name in seqs
                }
                self._items = _owned(frame, self._item_parts)
            return self._items

    def _user_filler(self, users: pd.DataFrame | None) -> dict[str, Any] | None:
        """``{user column: M values}`` that encode without error, or ``None`` when only a
        user row can provide them (``users`` is ``None``)."""
        m = len(self.catalog)
        readers: dict[str, list] = {}
        for f in self.schema.features:
            for c in f.input_columns:
                readers.setdefault(c, []).append(f)
        fill: dict[str, Any] = {}
        for c in self._user_cols:
            kinds = {type(f) for f in readers.get(c, [])}
            if kinds == {Sequence}:  # an empty list fits every vocabulary
                fill[c] = pd.Series([None] * m, dtype=object, index=self.catalog.index)
            elif users is not None:
                fill[c] = users[c].array.take(np.zeros(m, dtype=np.intp))
            elif (
                kinds
                and kinds <= {Sparse, Dense}
                and all(
                    self.schema.vocabularies_[f.name].kind == "int"
                    for f in readers[c]
                    if isinstance(f, Sparse)
                )
            ):
                fill[c] = np.zeros(m, dtype=np.int64)
            else:
                return None
        return fill

    def _assemble(
        self,
        users: dict[str, Tensor],
        items: dict[str, Tensor],
        rows_u: Tensor,
        rows_c: Tensor,
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, (width, dtype) in self._widths.items():
            block = torch.empty(len(rows_u), width, dtype=dtype)
            for side, parts, rows in (
                (users, self._user_parts, rows_u),
                (items, self._item_parts, rows_c),
            ):
                cols = [p.index for p in parts if p.key == key]
                if cols:
                    block[:, cols] = side[key].index_select(0, rows)
            out[key] = block
        for side, parts, rows in (
            (users, self._user_parts, rows_u),
            (items, self._item_parts, rows_c),
        ):
            for p in parts:
                if p.index is None:
                    out[p.key] = side[p.key].index_select(0, rows)
        return out

    def _oov_stats(
        self, user_seq_oov: dict[str, tuple], tensors: dict[str, Tensor]
    ) -> tuple[dict[str, int], dict[str, float]]:
        """``(oov_counts, oov_rates)``: per sparse feature over the pairs, as the pair frame
        counts them; per sequence feature over the owning side's rows (each user once, or the
        whole catalog), since the encoded ``[P, max_len]`` ids drop what ``max_len`` cut."""
        counts: dict[str, int] = {}
        rates: dict[str, float] = {}
        for j, f in enumerate(self.schema.sparse):
            ids = tensors["sparse"][:, j]
            seen = int((ids != PAD_ID).sum())
            counts[f.name] = int((ids == OOV_ID).sum())
            rates[f.name] = counts[f.name] / seen if seen else 0.0
        for f in self.schema.sequences:
            if f.name in self._item_oov:
                counts[f.name], rates[f.name] = self._item_oov[f.name]
            else:
                counts[f.name], rates[f.name] = user_seq_oov[f.name]
        return counts, rates


def _owned(frame: TensorFrame, parts: list) -> dict[str, Tensor]:
    """``{key: tensor}`` of the parts: the owned columns of ``"sparse"`` / ``"dense"`` (in the
    parts' order) and whole per-feature tensors."""
    out: dict[str, Tensor] = {}
    for key in ("sparse", "dense"):
        cols = [p.index for p in parts if p.key == key]
        if cols:
            out[key] = frame[key][:, cols].contiguous()
    for p in parts:
        if p.index is None:
            out[p.key] = frame[p.key]
    return out
