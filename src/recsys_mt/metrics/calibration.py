"""Calibration metrics: expected calibration error and reliability curves.

Probabilities are grouped into bins; a bin's calibration gap is the difference between its
observed positive rate and its mean predicted probability. Bins are right-closed,
``(e_{k-1}, e_k]`` with the first bin ``[e_0, e_1]``, as in ``sklearn.calibration`` and Guo et
al. (ICML 2017); with ``strategy="uniform"`` the edges split ``[0, 1]`` evenly, with
``strategy="quantile"`` they are the linearly interpolated quantiles of ``y_prob`` (equal-count
bins up to ties).

Both functions accept numpy arrays, Python sequences or torch tensors (any device).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from .classification import _out, _prepare_binary

__all__ = ["ece", "reliability_curve"]

STRATEGIES = ("uniform", "quantile")


def _prepare(
    y_true: Any, y_prob: Any, n_bins: int, strategy: str
) -> tuple[torch.Tensor, torch.Tensor, bool, int]:
    """Validated ``(y, p, as_numpy, n_bins)``; ``n_bins`` may be a numpy / torch integer."""
    if isinstance(n_bins, bool) or not hasattr(n_bins, "__index__"):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    try:
        n_bins = operator.index(n_bins)  # int, numpy / torch integer scalars
    except TypeError:  # e.g. a floating torch scalar, which has __index__ but refuses it
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}") from None
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    as_numpy = not isinstance(y_prob, torch.Tensor)
    y, p, _ = _prepare_binary(y_true, y_prob, score_name="y_prob")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(
            f"y_prob must be probabilities in [0, 1], got values in [{float(p.min())}, "
            f"{float(p.max())}]"
        )
    return y, p, as_numpy, n_bins


def _bin_edges(p: torch.Tensor, n_bins: int, strategy: str) -> torch.Tensor:
    """``n_bins + 1`` bin edges (non-decreasing) for probabilities ``p [N]``."""
    q = torch.linspace(0, 1, n_bins + 1, dtype=p.dtype, device=p.device)
    if strategy == "uniform":
        return q
    s = torch.sort(p).values
    pos = q * (s.numel() - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _binned(
    y: torch.Tensor, p: torch.Tensor, n_bins: int, strategy: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin ``(sum of p, sum of y, count)``, each ``[n_bins]``."""
    edges = _bin_edges(p, n_bins, strategy)
    ids = torch.searchsorted(edges[1:-1].contiguous(), p.contiguous(), right=False)
    zeros = torch.zeros(n_bins, dtype=p.dtype, device=p.device)
    sum_p = zeros.index_add(0, ids, p)
    sum_y = zeros.index_add(0, ids, y)
    count = zeros.index_add(0, ids, torch.ones_like(p))
    return sum_p, sum_y, count


def ece(y_true: Any, y_prob: Any, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Expected calibration error ``Σ_b (n_b / N) · |mean(y)_b − mean(p)_b|``.

    0 means every bin's observed positive rate equals its mean predicted probability. Empty bins
    contribute nothing.

    Args:
        y_true: ``[N]`` binary labels in {0, 1}.
        y_prob: ``[N]`` predicted probabilities of the positive class, in ``[0, 1]``.
        n_bins: number of bins, a positive int (numpy / torch integer scalars are accepted).
        strategy: ``"uniform"`` (equal-width bins on ``[0, 1]``) or ``"quantile"``
            (equal-count bins).

    Raises:
        ValueError: length mismatch, empty input, NaN, labels not in {0, 1}, probabilities
            outside ``[0, 1]``, or a bad ``n_bins`` / ``strategy``.

    Example:
        >>> # bins (0, 0.5] and (0.5, 1]: |0.5 - 0.3| * 2/4 + |1.0 - 0.8| * 2/4
        >>> round(ece([0, 1, 1, 1], [0.2, 0.4, 0.7, 0.9], n_bins=2), 6)
        0.2
    """
    y, p, _, n_bins = _prepare(y_true, y_prob, n_bins, strategy)
    sum_p, sum_y, _ = _binned(y, p, n_bins, strategy)
    return float((sum_y - sum_p).abs().sum() / y.numel())


def reliability_curve(
    y_true: Any, y_prob: Any, n_bins: int = 15, strategy: str = "uniform"
) -> tuple[Any, Any, Any]:
    """Reliability diagram data: per non-empty bin, the mean prediction and the positive rate.

    Args:
        y_true: ``[N]`` binary labels in {0, 1}.
        y_prob: ``[N]`` predicted probabilities in ``[0, 1]``.
        n_bins: number of bins.
        strategy: ``"uniform"`` or ``"quantile"`` (see :func:`ece`).

    Returns:
        ``(mean_pred [K], frac_pos [K], counts [K])`` for the ``K <= n_bins`` non-empty bins in
        increasing order: float64 mean predicted probability, float64 observed positive rate
        and int64 row count. numpy arrays, or tensors when ``y_prob`` is a tensor.
        ``(mean_pred, frac_pos)`` equals ``sklearn.calibration.calibration_curve``'s
        ``(prob_pred, prob_true)``.

    Raises:
        ValueError: as :func:`ece`.

    Example:
        >>> mean_pred, frac_pos, counts = reliability_curve(
        ...     [0, 1, 1, 1], [0.2, 0.4, 0.7, 0.9], n_bins=2
        ... )
        >>> mean_pred.round(6).tolist(), frac_pos.tolist(), counts.tolist()
        ([0.3, 0.8], [0.5, 1.0], [2, 2])
    """
    y, p, as_numpy, n_bins = _prepare(y_true, y_prob, n_bins, strategy)
    sum_p, sum_y, count = _binned(y, p, n_bins, strategy)
    keep = count > 0
    n = count[keep]
    return (
        _out(sum_p[keep] / n, as_numpy),
        _out(sum_y[keep] / n, as_numpy),
        _out(n.to(torch.int64), as_numpy),
    )
