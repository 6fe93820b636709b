"""Columnar tensors: a whole data set as a few contiguous tensors; a batch is an index slice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


class TensorFrame:
    """A data set held as column tensors with a common first dimension ``N``.

    Keys written by :meth:`Schema.transform <recsys_mt.data.Schema.transform>`:

    - ``"sparse"``: int64 ``[N, S]`` ids of the sparse features, in ``meta["sparse"]`` order;
    - ``"dense"``: float32 ``[N, D]`` transformed numeric features, then funnel statistics
      (``meta["dense"]`` = ``schema.dense_columns`` order);
    - ``"seq/<name>"``: int64 ``[N, L]`` id sequences, left-aligned, 0-padded;
    - ``"text/<name>"``: int64 ``[N]`` index into ``meta["texts"][name]`` (distinct strings);
    - ``"vec/<name>"``: float32 ``[N, dim]`` precomputed vectors (normalised as the spec says)
      and, for ``nan="zero"`` vectors, ``"vec_present/<name>"``: float32 ``[N]``, 1 where the
      row held a vector, 0 where it was encoded as zeros;
    - ``"labels"``: float32 ``[N, T]`` labels in ``meta["tasks"]`` order;
    - ``"group"``: int64 ``[N]`` group (user) codes for GAUC.

    Other code may add keys (a text tower adds token tensors). ``meta`` holds non-tensor data:
    the column orders above, ``meta["texts"]`` and, from ``Schema.transform``,
    ``meta["oov_counts"]`` / ``meta["oov_rates"]``: per sparse and sequence feature, how many
    non-missing values (and which share of them) were out of vocabulary. :meth:`subset` shares
    ``meta``, so these describe the whole encoded frame.
    """

    def __init__(self, tensors: dict[str, Tensor], meta: dict[str, Any] | None = None):
        if not tensors:
            raise ValueError("a TensorFrame needs at least one tensor")
        lengths = {k: int(v.shape[0]) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors must have the same first dimension, got {lengths}")
        self.tensors = dict(tensors)
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def __setitem__(self, key: str, value: Tensor) -> None:
        if value.shape[0] != len(self):
            raise ValueError(f"tensor {key!r} has {value.shape[0]} rows, frame has {len(self)}")
        self.tensors[key] = value

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __repr__(self) -> str:
        cols = ", ".join(
            f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
            for k, v in self.tensors.items()
        )
        return f"TensorFrame(n={len(self)}, {cols})"

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def column(self, name: str) -> Tensor:
        """One feature by name: ``[N]`` for sparse / dense / text features and labels by task
        name, ``[N, L]`` for sequences, ``[N, dim]`` for vectors."""
        for group in ("sparse", "dense"):
            names = self.meta.get(group, [])
            if name in names:
                return self.tensors[group][:, names.index(name)]
        if name in self.meta.get("tasks", []):
            return self.tensors["labels"][:, self.meta["tasks"].index(name)]
        for prefix in ("seq/", "text/", "vec/"):
            if prefix + name in self.tensors:
                return self.tensors[prefix + name]
        raise KeyError(f"no feature or task named {name!r} in this frame")

    def take(self, index: Tensor | slice) -> dict[str, Tensor]:
        """A batch: ``{key: tensor[index]}``. ``index`` is a slice or an int64 ``[B]`` tensor."""
        if isinstance(index, slice):
            return {k: v[index] for k, v in self.tensors.items()}
        return {k: v.index_select(0, index) for k, v in self.tensors.items()}

    def subset(self, index: Tensor | slice) -> TensorFrame:
        """A new frame holding the selected rows (meta is shared)."""
        return TensorFrame(self.take(index), self.meta)

    def to(self, device: torch.device | str) -> TensorFrame:
        """A copy with every tensor on ``device`` (no copy when already there)."""
        return TensorFrame({k: v.to(device) for k, v in self.tensors.items()}, self.meta)

    def batches(self, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """Sequential, unshuffled batches (contiguous slices, no copies)."""
        for start in range(0, len(self), batch_size):
            yield self.take(slice(start, start + batch_size))
