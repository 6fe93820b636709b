"""Pareto search over objective fusion (and a re-ranker's trade-off) on a validation set.

Every trial of :func:`pareto_search` fuses the per-task predictions ``{name: [B, N]}`` with a
:class:`~recsys_mt.rerank.WeightedProduct` or :class:`~recsys_mt.rerank.WeightedSum` whose
weights optuna proposes, optionally re-ranks with MMR / DPP / CategoryCoverage at a proposed
trade-off ``lambda``, and scores the resulting lists ``[B, k]`` with several list-level
objectives (see :mod:`.pareto_objectives`).  The :class:`ParetoResult` holds every trial, the
non-dominated ones, a plot and :meth:`ParetoResult.select`, which picks the trial to deploy
under explicit constraints.  See ``docs/pareto.md``.

optuna is imported only when a search runs (``pip install recsys-mt[tune]``), matplotlib only
when plotting (``pip install recsys-mt[plot]``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .pareto_choice import FUSIONS, RERANKERS, ParetoChoice, rank_candidates, reranker_class
from .pareto_data import ParetoInputs
from .pareto_front import non_dominated, select_trial
from .pareto_objectives import Objective, ObjectiveContext, resolve_objectives

__all__ = ["pareto_search", "ParetoResult"]

LAMBDA = "lambda"


def _import_optuna():
    try:
        import optuna
    except ImportError as err:
        raise ImportError(
            "pareto_search needs optuna: pip install 'recsys-mt[tune]' (or pip install optuna)"
        ) from err
    return optuna


def _check_range(value: Any, what: str) -> tuple[float, float]:
    """``(lo, hi)`` of a search range, or ``(v, v)`` for a fixed number."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        lo = hi = float(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = (float(v) for v in value)
    else:
        raise TypeError(f"{what} must be a number or a (low, high) pair, got {value!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{what} must be finite with low <= high, got {value!r}")
    return lo, hi


class ParetoResult:
    """Outcome of :func:`pareto_search`.

    Attributes:
        trials: one row per trial: ``trial``, the searched parameters (``w.<name>`` per fusion
            weight / exponent, ``lambda`` for the re-ranker), one column per objective and
            ``front`` (True for non-dominated trials).
        objectives: ``{name: "maximize" | "minimize"}`` in search order.
        params: the parameter columns of :attr:`trials`.
        k: the list length evaluated.
        study: the optuna study.
    """

    def __init__(self, trials, objectives, params, k, study, make_choice) -> None:
        self.trials: pd.DataFrame = trials
        self.objectives: dict[str, str] = objectives
        self.params: list[str] = params
        self.k = k
        self.study = study
        self._make_choice = make_choice

    def __repr__(self) -> str:
        return (
            f"ParetoResult({len(self.trials)} trials, {int(self.trials.front.sum())} on the "
            f"front, objectives={list(self.objectives)})"
        )

    @property
    def front(self) -> pd.DataFrame:
        """The non-dominated trials, best first in the first objective."""
        first, direction = next(iter(self.objectives.items()))
        front = self.trials[self.trials.front]
        return front.sort_values(first, ascending=direction == "minimize", kind="stable")

    def choice(self, trial: int) -> ParetoChoice:
        """The :class:`ParetoChoice` of trial number ``trial``."""
        rows = self.trials[self.trials.trial == trial]
        if rows.empty:
            raise KeyError(f"no trial {trial}; trials are 0..{len(self.trials) - 1}")
        return self._make_choice(rows.iloc[0])

    def select(
        self,
        maximize: str | None = None,
        *,
        minimize: str | None = None,
        constraints: Mapping[str, Any] | None = None,
    ) -> ParetoChoice:
        """The best trial for one objective among those meeting ``constraints``.

        Args:
            maximize: objective to maximise (or give ``minimize``; exactly one of them).
            minimize: objective to minimise.
            constraints: ``{objective: spec}``; a spec is ``">= 0.3"`` (absolute),
                ``">= 0.99 * max"``, ``"<= 1.05 * min"``, ``">= 0.95 * best"`` (relative to the
                best / largest / smallest value ``v`` over all trials: ``f * v`` means
                ``v + (f - 1) * |v|``, so ``">= 0.99 * max"`` is "within 1 % of the largest"
                for negative values too), or a bare number (``>=`` for maximised, ``<=`` for
                minimised objectives).

        Returns:
            the chosen :class:`ParetoChoice`; ties in the target go to a front trial, then to
            the earliest.

        Raises:
            KeyError: an unknown objective name.
            ValueError: no trial satisfies the constraints (the message gives each threshold
                and how many trials pass it), or a malformed constraint.
        """
        if (maximize is None) == (minimize is None):
            raise ValueError("pass exactly one of maximize= or minimize=")
        target = maximize if maximize is not None else minimize
        direction = "maximize" if maximize is not None else "minimize"
        pos = select_trial(
            self.trials,
            self.objectives,
            target,
            direction,
            constraints,
            self.trials.front.to_numpy(),
        )
        return self._make_choice(self.trials.iloc[pos])

    def plot(self, x: str, y: str, *, ax: Any = None, path: str | os.PathLike | None = None) -> Any:
        """Scatter all trials on objectives ``x`` vs ``y`` with the front highlighted.

        Args:
            x: objective on the horizontal axis.
            y: objective on the vertical axis.
            ax: a matplotlib ``Axes`` to draw on (default: a new figure).
            path: save the figure there (PNG, SVG, ... by extension).

        Returns:
            the matplotlib ``Axes``.
        """
        for name in (x, y):
            if name not in self.objectives:
                raise KeyError(f"{name!r} is not an objective; objectives: {list(self.objectives)}")
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError("plotting needs matplotlib: pip install 'recsys-mt[plot]'") from err
        if ax is None:
            ax = Figure(figsize=(6, 4.5), layout="constrained").subplots()
        trials = self.trials
        ax.scatter(trials[x], trials[y], s=14, c="0.7", label="trials")
        front2d = trials[non_dominated(trials[[x, y]], [self.objectives[x], self.objectives[y]])]
        front = trials[trials.front]
        ax.scatter(front[x], front[y], s=30, c="C0", label="Pareto front (all objectives)")
        line = front2d.sort_values(x)
        ax.plot(line[x], line[y], c="C3", lw=1.2, label=f"front of {x} vs {y}")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.legend(fontsize="small")
        if path is not None:
            ax.figure.savefig(path, dpi=120)
        return ax


def pareto_search(
    predictions: Mapping[str, Any] | ParetoInputs,
    labels: Mapping[str, Any] | None = None,
    *,
    weights: Mapping[str, Any],
    objectives: list,
    fusion: str = "product",
    mask: Any = None,
    item_vectors: Any = None,
    categories: Any = None,
    reranker: Any = None,
    reranker_range: Any = (0.0, 1.0),
    reranker_kwargs: Mapping[str, Any] | None = None,
    k: int = 10,
    price: str = "price",
    n_trials: int = 100,
    seed: int = 0,
    sampler: Any = None,
    corners: bool = True,
) -> ParetoResult:
    """Search fusion weights (and a re-ranker's trade-off) for the Pareto front of objectives.

    Args:
        predictions: ``{name: [B, N]}`` per-task predictions on validation candidates plus value
            columns such as ``price`` (or a :class:`ParetoInputs`, then ``labels``, ``mask``,
            ``item_vectors`` and ``categories`` come from it).
        labels: ``{name: [B, N]}`` outcomes, e.g. ``{"click": ..., "purchase": ...}``.
        weights: ``{prediction name: (low, high)}`` ranges to search (exponents for
            ``"product"``, weights for ``"sum"``); a number fixes that weight.
        objectives: list-level objectives: built-in names (``"ndcg@10:click"``, ``"gmv@10"``,
            ``"ild@10"``, ``"coverage@10"``, ... see :mod:`.pareto_objectives`) and
            :class:`Objective` s / ``(name, fn[, direction])`` tuples with
            ``fn(ranked [B, k], context) -> float``.
        fusion: ``"product"`` (:class:`WeightedProduct`) or ``"sum"`` (:class:`WeightedSum`).
        mask: ``[B, N]`` bool, True = real candidate (default: all).
        item_vectors: ``[B, N, d]`` for MMR / DPP and ``ild@K``.
        categories: ``[B, N]`` integer ids for CategoryCoverage and ``coverage@K``.
        reranker: None (plain top-k), ``"mmr"``, ``"dpp"``, ``"coverage"`` or the class.
        reranker_range: ``(low, high)`` of the trade-off searched (MMR / CategoryCoverage
            ``lambda_``, DPP ``theta``), or a number to fix it.
        reranker_kwargs: other JSON-able constructor arguments (e.g. ``{"mode": "calibrated"}``).
        k: list length.
        price: name of the price column in ``predictions`` (for ``gmv@K`` / ``revenue@K``).
        n_trials: number of trials, including the corner trials.
        seed: seed of the default sampler; the search is deterministic for a given seed.
        sampler: an optuna sampler (default ``NSGAIISampler(seed=seed)`` with a population of
            ``min(50, max(8, n_trials // 4))``).
        corners: first evaluate each searched weight alone at its high end (others low, the
            re-ranker at its pure-relevance end) and, with a re-ranker, all weights mid-range at
            the re-ranker's other end, so that the extremes of the front are reached.

    Returns:
        a :class:`ParetoResult`.

    Raises:
        ImportError: optuna is not installed.
        ValueError: bad input, named in the message: an unknown objective, weights that are not
            predictions, shapes that disagree, no candidates, a missing input a re-ranker or an
            objective needs, bad ranges.
        TypeError: an argument of the wrong kind (e.g. a weight range that is not a pair).
    """
    optuna = _import_optuna()
    if isinstance(predictions, ParetoInputs):
        given = {"labels": labels, "mask": mask, "item_vectors": item_vectors}
        given["categories"] = categories
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise ValueError(f"{extra} come from the ParetoInputs; do not pass them again")
        inputs = predictions
    else:
        if labels is None:
            raise ValueError("labels: required, e.g. {'click': [B, N], 'purchase': [B, N]}")
        inputs = ParetoInputs(predictions, labels, mask, item_vectors, categories)
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {sorted(FUSIONS)}, got {fusion!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, (int, np.integer)) or n_trials < 1:
        raise ValueError(f"n_trials must be an int >= 1, got {n_trials!r}")
    k = int(k)
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("weights must be a non-empty mapping {prediction name: (low, high)}")
    unknown = [name for name in weights if name not in inputs.predictions]
    if unknown:
        raise ValueError(
            f"weights: {unknown} are not predictions; predictions has {sorted(inputs.predictions)}"
        )
    ranges = {str(n): _check_range(v, f"weights[{n!r}]") for n, v in weights.items()}
    space = {f"w.{n}": r for n, r in ranges.items()}
    rr_name, rr_cls, rr_kwargs = None, None, dict(reranker_kwargs or {})
    if reranker is not None:
        rr_name, rr_cls = reranker_class(reranker)
        space[LAMBDA] = _check_range(reranker_range, "reranker_range")
        try:
            json.dumps(rr_kwargs)
        except TypeError as err:
            raise TypeError(f"reranker_kwargs must be JSON-able: {err}") from None
        if rr_name in ("mmr", "dpp") and inputs.item_vectors is None:
            raise ValueError(f"reranker={rr_name!r} needs item_vectors [B, N, d]")
        if rr_name == "coverage" and inputs.categories is None:
            raise ValueError("reranker='coverage' needs categories [B, N]")
        for value in space[LAMBDA]:
            rr_cls(value, **rr_kwargs)  # constructor errors now, not mid-search
    data = {
        "predictions": inputs.predictions,
        "labels": inputs.labels,
        "mask": inputs.mask,
        "item_vectors": inputs.item_vectors,
        "categories": inputs.categories,
        "price": price,
    }
    objs: list[Objective] = resolve_objectives(objectives, data, k)
    clash = [o.name for o in objs if o.name in space or o.name in ("trial", "front")]
    if clash:
        raise ValueError(f"objectives: names {clash} clash with result columns")

    def make_choice(params: Mapping[str, Any], trial=None, values=None) -> ParetoChoice:
        fused = FUSIONS[fusion]({n: float(params[f"w.{n}"]) for n in ranges})
        rr = (
            None
            if rr_cls is None
            else {"type": rr_name, "lambda": float(params[LAMBDA]), "kwargs": rr_kwargs}
        )
        return ParetoChoice(fused.to_config(), rr, k, trial, dict(values or {}))

    def evaluate(params: Mapping[str, float]) -> list[float]:
        choice = make_choice(params)
        scores, ranked = rank_candidates(choice.fusion, choice.reranker, inputs, k)
        ctx = ObjectiveContext(
            inputs.predictions, inputs.labels, inputs.mask, scores,
            inputs.item_vectors, inputs.categories, k, price,
        )  # fmt: skip
        return [obj(ranked, ctx) for obj in objs]

    evaluate({name: (lo + hi) / 2 for name, (lo, hi) in space.items()})  # input errors first
    names = [o.name for o in objs]
    records: list[dict[str, Any]] = []

    def objective(trial) -> tuple[float, ...]:
        params = {
            name: trial.suggest_float(name, lo, hi) if lo < hi else lo
            for name, (lo, hi) in space.items()
        }
        values = evaluate(params)
        records.append({"trial": trial.number, **params, **dict(zip(names, values))})
        return tuple(values)

    if sampler is None:
        population = min(50, max(8, n_trials // 4))
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(directions=[o.direction for o in objs], sampler=sampler)
        if corners:
            for params in _corners(space, rr_name)[:n_trials]:
                study.enqueue_trial({n: v for n, v in params.items() if space[n][0] < space[n][1]})
        study.optimize(objective, n_trials=n_trials)
    finally:
        optuna.logging.set_verbosity(verbosity)

    trials = pd.DataFrame(records).sort_values("trial", kind="stable").reset_index(drop=True)
    trials["front"] = non_dominated(trials[names], [o.direction for o in objs])
    return ParetoResult(
        trials,
        {o.name: o.direction for o in objs},
        list(space),
        k,
        study,
        lambda row: make_choice(row, int(row["trial"]), {n: float(row[n]) for n in names}),
    )


def _corners(space: Mapping[str, tuple[float, float]], reranker: str | None) -> list[dict]:
    """The corner trials of ``corners=True`` (see :func:`pareto_search`)."""
    weights = [name for name in space if name != LAMBDA and space[name][0] < space[name][1]]
    relevance_end = None
    if reranker is not None:
        lo, hi = space[LAMBDA]
        end = RERANKERS[reranker][1] if reranker in RERANKERS else hi
        relevance_end = min(max(end, lo), hi)
    out = []
    for name in weights:
        point = {n: space[n][1] if n == name else space[n][0] for n in space if n != LAMBDA}
        if relevance_end is not None:
            point[LAMBDA] = relevance_end
        out.append(point)
    if relevance_end is not None:
        lo, hi = space[LAMBDA]
        point = {n: sum(space[n]) / 2 for n in space if n != LAMBDA}
        point[LAMBDA] = hi if relevance_end == lo else lo
        out.append(point)
    return out
