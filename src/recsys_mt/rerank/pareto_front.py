"""Non-domination and constrained selection over a table of trials (numpy / pandas only)."""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["non_dominated", "parse_constraint", "select_trial"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONSTRAINT = re.compile(
    rf"^\s*(>=|<=|>|<)\s*(?:({_NUMBER})\s*(\*?)\s*)?(max|min|best)?\s*$", re.IGNORECASE
)


def non_dominated(values: Any, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values``.

    Row ``i`` is dominated when some row ``j`` is at least as good in every objective and
    strictly better in one.  Rows with equal values do not dominate each other (both stay).
    NaN counts as the worst value.

    Args:
        values: ``[T, M]`` objective values (T trials, M objectives).
        directions: ``M`` entries ``"maximize"`` / ``"minimize"``.

    Returns:
        ``[T]`` bool numpy array, True on the Pareto front.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(directions):
        raise ValueError(f"values must be [T, {len(directions)}], got shape {v.shape}")
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    v = np.where(np.isnan(v), -np.inf, v * sign)  # everything maximised from here on
    front = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        geq = (v >= v[i]).all(axis=1)
        gt = (v > v[i]).any(axis=1)
        front[i] = not bool((geq & gt).any())
    return front


def parse_constraint(spec: Any, column: pd.Series, direction: str) -> tuple[str, float]:
    """``(operator, threshold)`` of one constraint of :meth:`ParetoResult.select`.

    Forms (an operator ``>=``, ``<=``, ``>`` or ``<`` first): ``">= 0.3"`` (absolute),
    ``">= 0.99 * max"``, ``"<= 1.05 * min"``, ``">= 0.95 * best"``, ``">= max"`` (relative to
    the column's largest / smallest value over all trials; ``best`` is ``max`` for maximised
    and ``min`` for minimised objectives).  A bare number means ``>=`` for a maximised
    objective and ``<=`` for a minimised one.

    A fraction ``f`` of a reference value ``v`` is relative to its magnitude: the threshold is
    ``v + (f - 1) * |v|``, which is ``f * v`` for ``v >= 0``.  So ``">= 0.99 * max"`` keeps the
    trials within 1 % of the largest value also when it is negative (``max = -16.03`` gives
    ``-16.19``, where ``0.99 * max = -15.87`` would lie above every trial), and
    ``"<= 1.05 * min"`` keeps those at most 5 % above the smallest.
    """
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        return (">=" if direction == "maximize" else "<="), float(spec)
    match = _CONSTRAINT.match(spec) if isinstance(spec, str) else None
    if match is None or (match.group(2) is None and match.group(4) is None):
        raise ValueError(
            f"constraint {spec!r} for {column.name!r} not understood; use e.g. '>= 0.3', "
            "'>= 0.99 * max', '<= 1.05 * min' or a number"
        )
    op, number, star, ref = match.groups()
    if ref is None:
        return op, float(number)
    if number is not None and not star:
        raise ValueError(f"constraint {spec!r}: write the fraction as '0.99 * {ref}'")
    ref = ref.lower()
    if ref == "best":
        ref = "max" if direction == "maximize" else "min"
    base = float(column.max() if ref == "max" else column.min())
    fraction = 1.0 if number is None else float(number)
    return op, base + (fraction - 1.0) * abs(base)


def select_trial(
    trials: pd.DataFrame,
    directions: Mapping[str, str],
    target: str,
    target_direction: str,
    constraints: Mapping[str, Any] | None,
    front: np.ndarray,
) -> int:
    """Row position of the best feasible trial for ``target``.

    Among the trials satisfying every constraint, the one with the best ``target``; ties go to
    a front trial, then to the earliest.

    Raises:
        KeyError: a constraint or the target names an unknown objective.
        ValueError: no trial satisfies the constraints (the message lists each constraint's
            threshold and how many trials pass it).
    """
    for name in [target, *(constraints or {})]:
        if name not in directions:
            raise KeyError(f"{name!r} is not an objective; objectives: {list(directions)}")
    feasible = np.ones(len(trials), dtype=bool)
    report = []
    for name, spec in (constraints or {}).items():
        col = trials[name]
        op, threshold = parse_constraint(spec, col, directions[name])
        ok = _OPS[op](col.to_numpy(np.float64), threshold)
        feasible &= ok
        report.append(f"{name} {op} {threshold:.6g} ({int(ok.sum())} of {len(trials)} trials)")
    if not feasible.any():
        raise ValueError(
            "no trial satisfies all constraints: " + "; ".join(report) + ". Relax them."
        )
    value = trials[target].to_numpy(np.float64)
    value = value if target_direction == "maximize" else -value
    key = np.where(feasible & ~np.isnan(value), value, -np.inf)
    best = key.max()
    ties = np.flatnonzero(feasible & (key == best))
    on_front = ties[front[ties]]
    return int(on_front[0] if len(on_front) else ties[0])
