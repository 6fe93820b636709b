"""Encoder of precomputed vector features (image / text embeddings computed offline)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..registry import register
from .base import Encoder


@register("encoder", "vector")
class VectorEncoder(Encoder):
    """The schema's :class:`~recsys_mt.data.Vector` features, concatenated, optionally projected.

    Reads ``batch["vec/<name>"]`` (float32 ``[B, dim]``, already normalised by the schema) and,
    for ``nan="zero"`` vectors, the presence flag ``batch["vec_present/<name>"]`` (``[B]``) as
    one extra input column, so the model can tell a missing vector from a zero one.

    Args:
        features: names of the Vector features to encode (default: all of them, in schema
            order); give several encoders disjoint lists to project vectors separately.
        proj_dim: ``None`` passes the inputs through, ``out_dim = Σ (dim + flag)``; an int adds
            ``Linear(Σ (dim + flag), proj_dim)``, ``out_dim = proj_dim``.

    Output: float32 ``[B, out_dim]``.
    """

    def __init__(self, features: list[str] | None = None, proj_dim: int | None = None):
        super().__init__()
        if proj_dim is not None and (
            not isinstance(proj_dim, int) or isinstance(proj_dim, bool) or proj_dim < 1
        ):
            raise ValueError(
                f"VectorEncoder: proj_dim must be None or an int >= 1, got {proj_dim!r}"
            )
        if features is not None:
            features = [features] if isinstance(features, str) else list(features)
            if not features or not all(isinstance(n, str) for n in features):
                raise ValueError("VectorEncoder: features must be a non-empty list of names")
            if len(set(features)) != len(features):
                raise ValueError(f"VectorEncoder: features lists a name twice: {features}")
        self.features = features
        self.proj_dim = proj_dim

    def build(self, schema: Any) -> None:
        by_name = {f.name: f for f in schema.vectors}
        if not by_name:
            raise ValueError("VectorEncoder: the schema has no Vector features")
        names = self.features if self.features is not None else list(by_name)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(
                f"VectorEncoder: {unknown} are not Vector features of the schema "
                f"(Vector features: {list(by_name)})"
            )
        self._flagged = [by_name[n].nan == "zero" for n in names]
        self._names = names
        width = sum(by_name[n].dim + flag for n, flag in zip(names, self._flagged))
        self.proj = nn.Linear(width, self.proj_dim) if self.proj_dim else None
        self.out_dim = self.proj_dim or width

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        parts = []
        for name, flagged in zip(self._names, self._flagged):
            parts.append(batch[f"vec/{name}"])
            if flagged:
                parts.append(batch[f"vec_present/{name}"].unsqueeze(1).to(parts[-1].dtype))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return self.proj(x) if self.proj is not None else x

    def to_config(self) -> dict[str, Any]:
        return {"features": self.features, "proj_dim": self.proj_dim}
