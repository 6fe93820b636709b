"""Fusion of encoder outputs."""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import register
from .base import Fusion


@register("fusion", "concat")
class ConcatFusion(Fusion):
    """Concatenate encoder outputs: ``[B, d_1], …, [B, d_n]`` → ``[B, Σ d_i]``."""

    def build(self, in_dims: list[int]) -> None:
        self.out_dim = int(sum(in_dims))

    def forward(self, parts: list[Tensor]) -> Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
