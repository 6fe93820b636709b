"""List-level objectives for :func:`~recsys_mt.rerank.pareto.pareto_search`.

An objective scores the ranked lists ``ranked [B, k]`` (positions into the ``N`` candidates,
``-1`` = padding) of one trial with a single float.  Built-ins are named by strings:

* ``"ndcg@K:LABEL"``: NDCG@K against ``labels[LABEL]`` (:func:`~recsys_mt.metrics.list_ndcg`;
  users without a positive label among their valid candidates are left out of the mean);
* ``"recall@K:LABEL"``: Recall@K against ``labels[LABEL]``
  (:func:`~recsys_mt.metrics.list_recall`);
* ``"gmv@K"`` or ``"gmv@K:PRED"``: expected GMV per user, ``mean_b sum_{top K} p_i * price_i``
  with ``p`` the prediction ``PRED`` (default ``"ctcvr"``, p(click and purchase) per
  impression) and ``price_i`` the price column of the predictions;
* ``"revenue@K"`` or ``"revenue@K:LABEL"``: realised GMV per user,
  ``mean_b sum_{top K} y_i * price_i`` with ``y`` the label ``LABEL`` (default ``"purchase"``);
* ``"ild@K"``: intra-list diversity (mean pairwise cosine distance) of the top K, needs
  ``item_vectors`` (:func:`~recsys_mt.metrics.intra_list_diversity`);
* ``"coverage@K"``: category coverage of the top K, distinct categories / ``min(list length,
  C)`` with ``C`` the number of categories in ``categories`` (1.0 = as diverse as the list
  length allows), needs ``categories`` (:func:`~recsys_mt.metrics.category_coverage`).
  Uncategorised candidates (negative ids, e.g. ``-1`` for a missing category) count in the list
  length but cover no category.

The means run over users with at least one valid candidate.  All built-ins are maximised.
Any other objective is an :class:`Objective` (or a ``(name, fn)`` / ``(name, fn, direction)``
tuple) wrapping ``fn(ranked [B, k], context) -> float``; ``context`` is an
:class:`ObjectiveContext`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..metrics import category_coverage, intra_list_diversity, list_ndcg, list_recall
from .base import gather_selected

__all__ = ["Objective", "ObjectiveContext", "resolve_objectives", "BUILTIN_OBJECTIVES"]

#: Patterns of the built-in objective names (``K`` is the cut-off).
BUILTIN_OBJECTIVES = (
    "ndcg@K:LABEL",
    "recall@K:LABEL",
    "gmv@K[:PREDICTION]",
    "revenue@K[:LABEL]",
    "ild@K",
    "coverage@K",
)

_PATTERN = re.compile(r"^(ndcg|recall|gmv|revenue|ild|coverage)@(\d+)(?::(.+))?$")
DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class ObjectiveContext:
    """Everything an objective may read for one trial (all ``[B, N]`` unless noted).

    Attributes:
        predictions: ``{name: [B, N]}`` per-task predictions (and value columns such as price).
        labels: ``{name: [B, N]}`` observed outcomes (clicks, purchases, ...).
        mask: ``[B, N]`` bool, True = valid candidate.
        scores: ``[B, N]`` fused scores of the trial (``-inf`` at invalid candidates).
        item_vectors: ``[B, N, d]`` or None.
        categories: ``[B, N]`` long (negative = uncategorised) or None.
        k: list length of the trial's rankings.
        price: name of the price column in ``predictions``.
    """

    predictions: Mapping[str, Tensor]
    labels: Mapping[str, Tensor]
    mask: Tensor
    scores: Tensor
    item_vectors: Tensor | None
    categories: Tensor | None
    k: int
    price: str = "price"

    def gather(self, values: Tensor, ranked: Tensor, fill: float = 0.0) -> Tensor:
        """``values [B, N, ...]`` at the ranked positions ``[B, k]`` (``fill`` at padding)."""
        return gather_selected(values, ranked, fill=fill)


@dataclass(frozen=True)
class Objective:
    """A named list-level objective ``fn(ranked [B, k], context) -> float`` and its direction.

    Args:
        name: column name in the result tables.
        fn: the scoring function (see :class:`ObjectiveContext`).
        direction: ``"maximize"`` (default) or ``"minimize"``.
    """

    name: str
    fn: Callable[[Tensor, ObjectiveContext], float]
    direction: str = "maximize"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"objective name must be a non-empty string, got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"objective {self.name!r}: fn must be callable, got {self.fn!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"objective {self.name!r}: direction must be one of {DIRECTIONS}, "
                f"got {self.direction!r}"
            )

    def __call__(self, ranked: Tensor, context: ObjectiveContext) -> float:
        value = self.fn(ranked, context)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"objective {self.name!r} returned {value!r}, not a number") from None
        if math.isnan(value):
            raise ValueError(f"objective {self.name!r} returned NaN")
        return value


def _top(ranked: Tensor, k: int) -> Tensor:
    return ranked[:, :k]


def _per_user_sum(values: Tensor, ranked: Tensor, ctx: ObjectiveContext) -> float:
    """Mean over users with a valid candidate of ``sum_{ranked} values``."""
    picked = ctx.gather(values.to(torch.float64), ranked, fill=0.0).sum(dim=1)
    has = ctx.mask.any(dim=1)
    return float(picked[has].mean())


def _builtin(name: str, kind: str, k: int, arg: str | None, data: dict[str, Any]) -> Objective:
    """Check that ``data`` holds what the built-in ``kind`` needs and return its objective."""
    labels, preds, price = data["labels"], data["predictions"], data["price"]
    mask = data["mask"]
    if kind in ("ndcg", "recall"):
        if arg is None:
            raise ValueError(f"objectives: {name!r} needs a label, e.g. '{kind}@{k}:click'")
        if arg not in labels:
            raise ValueError(
                f"objectives: {name!r} names label {arg!r}, not among labels {sorted(labels)}"
            )
        if not bool(((labels[arg] > 0) & mask).any()):
            raise ValueError(
                f"objectives: {name!r}: labels[{arg!r}] has no positive value at a valid "
                "candidate, so the metric is undefined"
            )
        metric = list_ndcg if kind == "ndcg" else list_recall
        return Objective(name, lambda r, c: metric(_top(r, k), c.labels[arg], k=k, mask=c.mask))
    if kind in ("gmv", "revenue"):
        source, table, what = (
            (arg or "ctcvr", preds, "predictions")
            if kind == "gmv"
            else (arg or "purchase", labels, "labels")
        )
        if source not in table:
            raise ValueError(
                f"objectives: {name!r} needs {what}[{source!r}]; {what} has {sorted(table)}"
            )
        if price not in preds:
            raise ValueError(
                f"objectives: {name!r} needs the price column predictions[{price!r}] "
                f"(argument price=); predictions has {sorted(preds)}"
            )

        def gmv(r: Tensor, c: ObjectiveContext) -> float:
            values = (c.predictions if kind == "gmv" else c.labels)[source]
            return _per_user_sum(values.double() * c.predictions[c.price].double(), _top(r, k), c)

        return Objective(name, gmv)
    if arg is not None:
        raise ValueError(f"objectives: {name!r}: '{kind}@K' takes no ':' argument")
    if kind == "ild":
        if data["item_vectors"] is None:
            raise ValueError(f"objectives: {name!r} needs item_vectors [B, N, d]")
        return Objective(name, lambda r, c: intra_list_diversity(_top(r, k), c.item_vectors))
    if data["categories"] is None:
        raise ValueError(f"objectives: {name!r} needs categories [B, N]")

    n_categories = int(data["categories"].max()) + 1  # ids are 0..C-1, negative = uncategorised

    def coverage(r: Tensor, c: ObjectiveContext) -> float:
        top = _top(r, k)
        cats = c.gather(c.categories, top, fill=-1)
        return category_coverage(cats, num_categories=max(n_categories, 1), mask=top >= 0)

    return Objective(name, coverage)


def resolve_objectives(objectives: Any, data: dict[str, Any], k: int) -> list[Objective]:
    """Turn the ``objectives`` argument into checked :class:`Objective` s.

    Args:
        objectives: a non-empty list of built-in names (see the module doc), :class:`Objective`
            instances and ``(name, fn)`` / ``(name, fn, direction)`` tuples.
        data: ``{"predictions", "labels", "mask", "item_vectors", "categories", "price"}``.
        k: the search's list length; every ``@K`` must satisfy ``1 <= K <= k``.

    Raises:
        ValueError: naming ``objectives``: an unknown name, a missing label or input,
            ``K > k``, a duplicate name.
        TypeError: an entry that is neither a name, an Objective nor a tuple.
    """
    if isinstance(objectives, (str, Objective)) or not objectives:
        raise ValueError("objectives must be a non-empty list of objectives")
    out: list[Objective] = []
    for spec in objectives:
        if isinstance(spec, Objective):
            obj = spec
        elif isinstance(spec, tuple) and len(spec) in (2, 3):
            obj = Objective(*spec)
        elif isinstance(spec, str):
            match = _PATTERN.match(spec)
            if match is None:
                raise ValueError(
                    f"objectives: unknown objective {spec!r}; built-ins are "
                    f"{list(BUILTIN_OBJECTIVES)}, or pass Objective(name, fn, direction)"
                )
            kind, cut, arg = match.group(1), int(match.group(2)), match.group(3)
            if not 1 <= cut <= k:
                raise ValueError(f"objectives: {spec!r} has cut-off {cut}; need 1 <= K <= k={k}")
            obj = _builtin(spec, kind, cut, arg, data)
        else:
            raise TypeError(
                f"objectives: expected a name, an Objective or a (name, fn[, direction]) tuple, "
                f"got {spec!r}"
            )
        if any(o.name == obj.name for o in out):
            raise ValueError(f"objectives: {obj.name!r} is listed twice")
        out.append(obj)
    return out
