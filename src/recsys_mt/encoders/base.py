"""Encoder and fusion protocols.

An encoder is an ``nn.Module`` that maps a batch (``dict[str, Tensor]`` from a
:class:`~recsys_mt.data.TensorFrame`) to one vector per row, ``[B, out_dim]``.
:class:`~recsys_mt.model.MultiTaskModel` calls ``build(schema)`` once before use, so an encoder
can be declared without knowing vocabulary sizes (``IDEmbedding()``) and size itself from the
fitted schema. To write your own::

    @rm.register("encoder", "price_bucket")
    class PriceBucket(rm.Encoder):
        def __init__(self, buckets: int = 10, dim: int = 8):
            super().__init__()
            self.buckets, self.dim = buckets, dim

        def build(self, schema):
            self.col = schema.dense.index(schema.feature("price"))
            self.table = nn.Embedding(self.buckets, self.dim)
            self.out_dim = self.dim

        def forward(self, batch):                       # -> [B, dim]
            x = batch["dense"][:, self.col]
            b = ((x.clamp(-3, 3) + 3) / 6 * (self.buckets - 1)).round().long()
            return self.table(b)

        def to_config(self):
            return {"buckets": self.buckets, "dim": self.dim}

``register`` and ``to_config`` are only needed for ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    """Base class of encoders: ``forward(batch) -> [B, out_dim]``."""

    out_dim: int = 0

    def build(self, schema: Any) -> None:
        """Create parameters from a fitted schema; sets ``out_dim``."""

    def forward(self, batch: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        return {}

    def param_groups(self, sparse: bool) -> list[dict[str, Any]] | None:
        """Optional: custom optimizer groups for this encoder's parameters (``None`` = default)."""
        return None


class Fusion(nn.Module):
    """Base class of fusion modules: a list of ``[B, d_i]`` → ``[B, out_dim]``."""

    out_dim: int = 0

    def build(self, in_dims: list[int]) -> None:
        """Create parameters for inputs of the given widths; sets ``out_dim``."""

    def forward(self, parts: list[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        return {}


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of ``x [B, L, d]`` where ``mask [B, L]`` is True; zeros for empty rows."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def _init_linear_(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    bound = 1.0 / fan_in**0.5
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)
