"""Plots of evaluation metrics (needs matplotlib: ``pip install recsys-mt[plot]``).

matplotlib is imported when a plot is drawn, never when this module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .calibration import ece, reliability_curve

__all__ = ["plot_reliability"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "plotting needs matplotlib, which is not installed: pip install recsys-mt[plot]"
        ) from err
    return plt


def plot_reliability(
    y_true: Any,
    y_prob_by_name: Mapping[str, Any],
    n_bins: int = 15,
    ax: Any = None,
    strategy: str = "uniform",
) -> Any:
    """Reliability diagram: observed positive rate against mean prediction, one line per model.

    Each curve is :func:`~recsys_mt.metrics.reliability_curve` of one set of probabilities; its
    legend entry shows the :func:`~recsys_mt.metrics.ece`. The diagonal is perfect calibration.
    Both axes span ``[0, max]`` of the plotted values, so small rates (CTCVR) stay readable.

    Args:
        y_true: ``[N]`` binary labels shared by every curve, or a mapping with the same keys as
            ``y_prob_by_name`` (e.g. click labels for ``ctr``, click·purchase for ``ctcvr``).
        y_prob_by_name: ``{name: [N] probabilities}``, e.g. ``{"uncalibrated": p0,
            "temperature": p1}``.
        n_bins: number of bins.
        ax: a matplotlib ``Axes`` to draw on (default: a new figure).
        strategy: ``"uniform"`` or ``"quantile"`` bins.

    Returns:
        the matplotlib ``Axes``.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: an empty mapping, or bad input (see :func:`~recsys_mt.metrics.ece`).

    Example:
        >>> ax = plot_reliability(y, {"raw": p_raw, "calibrated": p_cal})  # doctest: +SKIP
        >>> ax.figure.savefig("reliability.png")                           # doctest: +SKIP
    """
    if not isinstance(y_prob_by_name, Mapping) or not y_prob_by_name:
        raise ValueError("y_prob_by_name must be a non-empty mapping {name: probabilities}")
    if isinstance(y_true, Mapping):
        missing = [k for k in y_prob_by_name if k not in y_true]
        if missing:
            raise ValueError(f"y_true has no labels for {missing}")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    hi = 0.0
    for name, prob in y_prob_by_name.items():
        y = y_true[name] if isinstance(y_true, Mapping) else y_true
        mean_pred, frac_pos, _ = reliability_curve(y, prob, n_bins=n_bins, strategy=strategy)
        err = ece(y, prob, n_bins=n_bins, strategy=strategy)
        x, f = np.asarray(_cpu(mean_pred)), np.asarray(_cpu(frac_pos))
        hi = max(hi, float(x.max()), float(f.max()))
        ax.plot(
            x,
            f,
            marker="o",
            markersize=3,
            label=f"{name} (ECE {err:.4f})",
        )
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    hi = min(1.0, max(hi, 1e-3) * 1.05)  # zoom on small rates (CTCVR is often < 0.05)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_title("Reliability diagram")
    ax.legend(loc="best")
    return ax


def _cpu(x: Any) -> Any:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x
