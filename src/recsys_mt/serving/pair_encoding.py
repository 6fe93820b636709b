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

from ..data.features import OOV_ID, PAD_ID
from ..data.frame import TensorFrame
from ..data.frame_layout import encode_rows, encoded_parts
from ..data.vocab import warn_oov


class PairEncoder:
    """Builds the encoded ``[P]`` frame of P (user, catalog row) pairs without a pair DataFrame.

    The catalog side is encoded once, on first use, under a lock (then only read, so one
    encoder serves concurrent calls); the users side once per call. :meth:`encode` returns
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
    """

    def __init__(self, model: Any, catalog: pd.DataFrame):
        self.schema = model.schema
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
        try:
            side = {c: users[c].array for c in self._user_cols}
            zeros = np.zeros(len(users), dtype=np.intp)
            side.update({c: v.take(zeros) for c, v in self._fill.items()})
            user_frame = encode_rows(self.schema, pd.DataFrame(side, copy=False))
        except Exception:  # the pair frame raises the same problem, with its usual message
            return None
        items = self._catalog_tensors(users)
        if items is None:
            return None
        tensors = self._assemble(user_frame, items, rows_u, rows_c)
        meta = dict(user_frame.meta)
        meta["oov_counts"], meta["oov_rates"] = self._oov_stats(user_frame, tensors)
        warn_oov(meta["oov_rates"], self.schema.oov_warn_rate)
        return TensorFrame(tensors, meta)

    def _catalog_tensors(self, users: pd.DataFrame) -> dict[str, Tensor] | None:
        """The catalog-owned slices ``{key: [M, ...]}``, encoded on first use (users row 0 fills
        the user columns, whose slices are dropped); ``None`` if the catalog cannot be encoded
        as a whole (then every call encodes pairs, and only rows a call uses are checked)."""
        if self._items is not None:  # built once, then only read
            return self._items
        with self._lock:
            if self._items is None and self.reason is None:
                fill = users.iloc[[0] * len(self.catalog)][self._user_cols]
                side = pd.concat(
                    [self.catalog[self._item_cols], fill.reset_index(drop=True)], axis=1
                )
                try:
                    frame = encode_rows(self.schema, side)
                except Exception:
                    self.reason = "the catalog as a whole does not encode"
                    return None
                self._items = _owned(frame, self._item_parts)
                seqs = {p.feature for p in self._item_parts if p.key.startswith("seq/")}
                self._item_oov = {
                    name: (frame.meta["oov_counts"][name], frame.meta["oov_rates"][name])
                    for name in seqs
                }
            return self._items

    def _assemble(
        self, user_frame: TensorFrame, items: dict[str, Tensor], rows_u: Tensor, rows_c: Tensor
    ) -> dict[str, Tensor]:
        users = _owned(user_frame, self._user_parts)
        out: dict[str, Tensor] = {}
        for key in ("sparse", "dense"):
            if key not in user_frame:
                continue
            full = user_frame[key]
            block = torch.empty(len(rows_u), full.shape[1], dtype=full.dtype)
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
        self, user_frame: TensorFrame, tensors: dict[str, Tensor]
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
                counts[f.name] = user_frame.meta["oov_counts"][f.name]
                rates[f.name] = user_frame.meta["oov_rates"][f.name]
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
