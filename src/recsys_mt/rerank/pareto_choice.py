"""A chosen fusion (+ re-ranker) from a Pareto search, its ranking, and its JSON form."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import registry
from .base import Reranker, relevance_order
from .coverage import CategoryCoverage
from .dpp import DPP
from .fusion import Fusion, WeightedProduct, WeightedSum
from .mmr import MMR
from .pareto_data import ParetoInputs

__all__ = ["ParetoChoice", "load_fusion", "rank_candidates", "FUSIONS", "RERANKERS"]

#: Fusion families searched by :func:`~recsys_mt.rerank.pareto.pareto_search`.
FUSIONS: dict[str, type[Fusion]] = {"product": WeightedProduct, "sum": WeightedSum}

#: Built-in re-ranker families: ``name -> (class, trade-off value of pure relevance)``.
RERANKERS: dict[str, tuple[type[Reranker], float]] = {
    "mmr": (MMR, 1.0),
    "dpp": (DPP, 1.0),
    "coverage": (CategoryCoverage, 0.0),
}

FORMAT = "recsys_mt.pareto_choice"


def reranker_class(name: Any) -> tuple[str, type[Reranker]]:
    """``(name, class)`` of a re-ranker family given by name or class.

    Built-ins are ``"mmr"``, ``"dpp"``, ``"coverage"`` (or the classes :class:`MMR`,
    :class:`DPP`, :class:`CategoryCoverage`); other names are looked up among the classes
    registered with ``@recsys_mt.register("reranker", name)``, whose first constructor argument
    must be the trade-off value.
    """
    for key, (cls, _) in RERANKERS.items():
        if name is cls or name == key:
            return key, cls
    found = registry.registered("reranker")
    for key, cls in found.items():
        if name is cls or name == key:
            return key, cls
    raise ValueError(
        f"reranker must be one of {sorted(RERANKERS)} (or a class registered with "
        f"@recsys_mt.register('reranker', name)), got {name!r}"
    )


def rank_candidates(
    fusion: Any, reranker: Reranker | None, inputs: ParetoInputs, k: int
) -> tuple[Tensor, Tensor]:
    """Fuse and rank like :meth:`~recsys_mt.serving.Recommender.recommend`.

    Args:
        fusion: callable of the ``{name: [B, N]}`` predictions -> ``[B, N]``.
        reranker: a re-ranker or None (plain top-k by fused score).
        inputs: the candidates.
        k: list length.

    Returns:
        ``(scores [B, N] float32 with -inf at padding, ranked [B, min(k, N)] long, -1 padded)``.
    """
    mask = inputs.mask
    scores = torch.as_tensor(fusion(inputs.predictions)).float()
    bad = mask & (torch.isnan(scores) | (scores == math.inf))
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"fusion {fusion!r} gives {float(scores[b, i])} for user row {b}, candidate {i}; "
            "check the predictions for NaN / inf values there"
        )
    scores = torch.where(mask, scores, torch.tensor(-math.inf))
    with torch.inference_mode():
        if reranker is None:
            ranked = relevance_order(scores, k, mask=mask)
        else:
            ranked = reranker(scores, k, mask=mask, **inputs.kwargs())
    return scores, ranked


@dataclass(frozen=True)
class ParetoChoice:
    """One configuration of a Pareto search: a fusion, an optional re-ranker and ``k``.

    Use it with a :class:`~recsys_mt.serving.Recommender`:
    ``rec.recommend(users, candidates, k=choice.k, **choice.kwargs())``.

    Attributes:
        fusion_config: :meth:`Fusion.to_config` of the fusion.
        reranker_config: ``{"type": name, "lambda": value, "kwargs": {...}}`` or None.
        k: list length the search evaluated.
        trial: the trial number it came from (None when built by hand).
        objectives: the trial's objective values on the validation set.
    """

    fusion_config: dict[str, Any]
    reranker_config: dict[str, Any] | None
    k: int
    trial: int | None = None
    objectives: dict[str, float] = field(default_factory=dict)

    @property
    def fusion(self) -> Fusion:
        """The fusion (a fresh object on every access)."""
        return Fusion.from_config(self.fusion_config)

    @property
    def reranker(self) -> Reranker | None:
        """The re-ranker or None (a fresh object on every access)."""
        if self.reranker_config is None:
            return None
        cfg = self.reranker_config
        _, cls = reranker_class(cfg["type"])
        return cls(cfg["lambda"], **cfg.get("kwargs", {}))

    def kwargs(self) -> dict[str, Any]:
        """``{"fusion": ..., "reranker": ...}`` for ``Recommender.recommend(**...)``."""
        return {"fusion": self.fusion, "reranker": self.reranker}

    def rank(self, inputs: ParetoInputs, k: int | None = None) -> Tensor:
        """Ranked candidate positions ``[B, min(k, N)]`` (``-1`` padded) of ``inputs``."""
        return rank_candidates(self.fusion, self.reranker, inputs, self.k if k is None else k)[1]

    def to_config(self) -> dict[str, Any]:
        """JSON-able dict, inverse of :meth:`from_config`."""
        return {
            "format": FORMAT,
            "version": 1,
            "k": self.k,
            "trial": self.trial,
            "fusion": dict(self.fusion_config),
            "reranker": None if self.reranker_config is None else dict(self.reranker_config),
            "objectives": dict(self.objectives),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ParetoChoice:
        """Rebuild from :meth:`to_config` output (checks that fusion and re-ranker build)."""
        if not isinstance(config, Mapping) or config.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} config: {str(config)[:200]}")
        choice = cls(
            fusion_config=dict(config["fusion"]),
            reranker_config=None if config.get("reranker") is None else dict(config["reranker"]),
            k=int(config["k"]),
            trial=config.get("trial"),
            objectives={str(n): float(v) for n, v in config.get("objectives", {}).items()},
        )
        choice.fusion, choice.reranker  # noqa: B018  (fail early on a bad config)
        return choice

    def to_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_config` as JSON to ``path``; read it back with :func:`load_fusion`."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_config(), fh, indent=2)
            fh.write("\n")


def load_fusion(path: str | os.PathLike) -> ParetoChoice:
    """Read a :class:`ParetoChoice` written by :meth:`ParetoChoice.to_json`."""
    with open(path, encoding="utf-8") as fh:
        return ParetoChoice.from_config(json.load(fh))
