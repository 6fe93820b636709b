"""Dense (numeric) feature encoder."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..registry import register
from .base import Encoder


@register("encoder", "dense")
class DenseEncoder(Encoder):
    """The schema's dense columns, ``batch["dense"] [B, D]``, optionally projected.

    ``D = len(schema.dense_columns)``: the :class:`~recsys_mt.data.Dense` features, then the
    :class:`~recsys_mt.data.FunnelStats` outputs.

    Args:
        dim: ``None`` passes the (already standardised) values through, ``out_dim = D``;
            an int adds ``Linear(D, dim)``.
    """

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def build(self, schema: Any) -> None:
        n = len(schema.dense_columns)
        if n == 0:
            raise ValueError("DenseEncoder: the schema has no Dense or FunnelStats features")
        self.proj = nn.Linear(n, self.dim) if self.dim else None
        self.out_dim = self.dim or n

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        x = batch["dense"]
        return self.proj(x) if self.proj is not None else x

    def to_config(self) -> dict[str, Any]:
        return {"dim": self.dim}
