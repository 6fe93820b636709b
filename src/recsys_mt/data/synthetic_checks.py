"""Argument checks of the synthetic funnel (:mod:`recsys_mt.data.synthetic`): integers, finite
reals, rates and split fractions, each raising ``ValueError`` with the argument's name. Only numpy
is used.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def _check_fractions(fractions: Any) -> np.ndarray:
    try:
        fr = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be a sequence of numbers, got {fractions!r}") from None
    if fr.ndim != 1 or fr.size < 1:
        raise ValueError(f"fractions must be a non-empty 1-d sequence, got {fractions!r}")
    if not np.all(np.isfinite(fr)) or np.any(fr <= 0):
        raise ValueError(f"fractions must be positive, got {fractions!r}")
    if abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got sum {fr.sum():.6g}")
    return fr


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_rate(name: str, value: Any) -> float:
    value = _check_float(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def _check_unit(name: str, value: Any) -> float:
    value = _check_float(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value
