"""Pointwise classification / regression metrics: AUC, GAUC, log-loss, calibration, MSE.

All functions accept numpy arrays, Python sequences or torch tensors (on any device) and return
Python floats. Computation is done in torch (float64 where the device supports it), fully
vectorised: AUC and GAUC are computed from tie-aware rank statistics with segment sums, never
with a Python loop over samples or groups.

The private helpers at the top (``_to_tensor`` ...) are shared by the other metric modules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["auc", "calibration_ratio", "gauc", "logloss", "mse", "rmse"]


# --------------------------------------------------------------------------- shared helpers


Result = float | torch.Tensor | np.ndarray


def _device_of(*xs: Any) -> torch.device:
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def _is_numpy_like(x: Any) -> bool:
    """True if ``x`` is not a torch tensor (numpy array, list, scalar ...)."""
    return not isinstance(x, torch.Tensor)


def _to_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    """Convert numpy arrays / sequences / tensors to a tensor (no copy when already a tensor)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype.kind in "USO":
            raise TypeError(f"expected a numeric array, got dtype {arr.dtype}")
        if not arr.flags.writeable:  # read-only views (pandas' to_numpy) cannot be shared
            arr = arr.copy()
        t = torch.as_tensor(arr)
    if device is not None and t.device != device:
        t = t.to(device)
    return t


def _float_dtype(device: torch.device) -> torch.dtype:
    """float64 everywhere except on backends without float64 support (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _as_float(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = _to_tensor(x, device)
    return t.to(_float_dtype(t.device))


def _out(t: torch.Tensor, as_numpy: bool) -> torch.Tensor | np.ndarray:
    """Return ``t`` as numpy if the caller passed numpy, else as a tensor."""
    return t.detach().cpu().numpy() if as_numpy else t


def _reduce(
    values: torch.Tensor,
    valid: torch.Tensor | None,
    reduction: str,
    as_numpy: bool,
) -> float | torch.Tensor | np.ndarray:
    """Reduce per-row ``values [B]``; rows with ``valid == False`` are excluded from the mean.

    ``reduction="mean"`` returns a float (NaN if no row is valid), ``"none"`` the per-row values.
    """
    if reduction == "none":
        return _out(values, as_numpy)
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if valid is None:
        return float(values.mean()) if values.numel() else float("nan")
    n = valid.sum()
    if int(n) == 0:
        return float("nan")
    return float((values * valid).sum() / n)


def _check_no_nan(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")


def _prepare_binary(
    y_true: Any, y_score: Any, sample_weight: Any = None, score_name: str = "y_score"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate and flatten ``(y_true, y_score[, sample_weight])`` to float tensors ``[N]``."""
    s = _as_float(y_score).reshape(-1)
    y = _as_float(y_true, s.device).reshape(-1)
    if y.numel() != s.numel():
        raise ValueError(
            f"y_true and {score_name} must have the same length, got {y.numel()} and {s.numel()}"
        )
    if y.numel() == 0:
        raise ValueError("empty input")
    _check_no_nan(s, score_name)
    _check_no_nan(y, "y_true")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("y_true must contain only binary labels in {0, 1}")
    w = None
    if sample_weight is not None:
        w = _as_float(sample_weight, s.device).reshape(-1)
        if w.numel() != s.numel():
            raise ValueError(
                f"sample_weight must have the same length as y_true, got {w.numel()} "
                f"and {s.numel()}"
            )
        _check_no_nan(w, "sample_weight")
        bad = ~(torch.isfinite(w) & (w >= 0))
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"sample_weight must be finite and non-negative, got {float(w[i])} at index {i}"
            )
    return y, s, w


def _check_eps(eps: Any) -> float:
    """``eps`` of the log-loss as a float in ``(0, 0.5)``; ``ValueError`` naming it otherwise.

    ``eps = 0`` would let a clipped probability reach 0 or 1, whose log is ``-inf`` and whose
    product with a zero label is NaN.
    """
    if isinstance(eps, (bool, str, bytes)) or not hasattr(eps, "__float__"):
        raise ValueError(f"eps must be a number in (0, 0.5), got {eps!r}")
    value = float(eps)
    if not 0.0 < value < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    return value


def _segment_auc(
    y: torch.Tensor, s: torch.Tensor, g: torch.Tensor | None, n_groups: int, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group tie-aware AUC numerator, positive weight and negative weight, each ``[G]``.

    Sorts by (group, score) and computes, for every block of tied scores within a group, the
    (weighted) number of negatives strictly below it and inside it. Pairs (pos, neg) count 1 if
    the positive scores higher and 1/2 if tied, so ``AUC_g = numer_g / (pos_g * neg_g)``.
    """
    order = torch.argsort(s, stable=True)
    if g is not None:
        order = order[torch.argsort(g[order], stable=True)]
    ss, ys = s[order], y[order]
    ws = torch.ones_like(ys) if w is None else w[order]
    gs = torch.zeros_like(order) if g is None else g[order]

    # Start of a new tie block: first element, new group, or new score value.
    start = torch.ones_like(ss, dtype=torch.bool)
    start[1:] = (ss[1:] != ss[:-1]) | (gs[1:] != gs[:-1])
    tie_id = torch.cumsum(start.to(torch.long), 0) - 1
    n_ties = int(tie_id[-1]) + 1
    tie_group = gs[start]

    pos_w = ws * ys
    neg_w = ws * (1 - ys)
    zeros_t = torch.zeros(n_ties, dtype=ss.dtype, device=ss.device)
    pos_t = zeros_t.index_add(0, tie_id, pos_w)
    neg_t = zeros_t.index_add(0, tie_id, neg_w)

    zeros_g = torch.zeros(n_groups, dtype=ss.dtype, device=ss.device)
    pos_g = zeros_g.index_add(0, tie_group, pos_t)
    neg_g = zeros_g.index_add(0, tie_group, neg_t)

    # Negatives strictly below each tie block inside its group: exclusive cumsum minus the
    # exclusive cumsum at the group's start.
    neg_below = torch.cumsum(neg_t, 0) - neg_t
    group_offset = torch.cumsum(neg_g, 0) - neg_g
    neg_below = neg_below - group_offset[tie_group]

    numer_t = pos_t * (neg_below + 0.5 * neg_t)
    numer_g = zeros_g.index_add(0, tie_group, numer_t)
    return numer_g, pos_g, neg_g


# --------------------------------------------------------------------------- public API


def auc(y_true: Any, y_score: Any, sample_weight: Any = None) -> float:
    """ROC AUC from the tie-aware (Mann-Whitney) rank statistic.

    Tied scores count 1/2 per (positive, negative) pair, which equals average-rank handling and
    matches ``sklearn.metrics.roc_auc_score`` (also with ``sample_weight``).

    Args:
        y_true: ``[N]`` binary labels in {0, 1}.
        y_score: ``[N]`` scores (any monotone scale: logits or probabilities).
        sample_weight: optional ``[N]`` finite non-negative weights.

    Raises:
        ValueError: length mismatch, NaN, non-binary labels, negative or non-finite weights, or
            only one class present.

    Example:
        >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    y, s, w = _prepare_binary(y_true, y_score, sample_weight)
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == y.numel():
        raise ValueError(
            "AUC is undefined when only one class is present in y_true "
            f"(got {n_pos} positives out of {y.numel()})"
        )
    numer, pos, neg = _segment_auc(y, s, None, 1, w)
    if float(pos[0]) <= 0 or float(neg[0]) <= 0:
        raise ValueError("AUC is undefined: total positive or negative sample weight is zero")
    return float(numer[0] / (pos[0] * neg[0]))


def gauc(y_true: Any, y_score: Any, groups: Any, weight: str = "impressions") -> float:
    """Group AUC (e.g. per-user AUC), averaged over groups.

    AUC is computed inside each group (ties count 1/2, as in :func:`auc`) and averaged with
    weight = number of rows of the group (``weight="impressions"``) or uniformly
    (``weight="uniform"``). Groups whose labels are all 0 or all 1 have no defined AUC and are
    skipped (they contribute neither to the numerator nor to the weights). Vectorised over
    groups: one sort by (group, score) plus segment sums.

    Args:
        y_true: ``[N]`` binary labels in {0, 1}.
        y_score: ``[N]`` scores.
        groups: ``[N]`` group ids (any integers; numpy string/object ids are also accepted).
        weight: ``"impressions"`` or ``"uniform"``.

    Raises:
        ValueError: bad input (see :func:`auc`) or no group containing both classes.

    Example:
        >>> gauc([0, 1, 0, 1, 1], [0.1, 0.9, 0.8, 0.2, 0.5], groups=[7, 7, 3, 3, 3])
        0.4
    """
    if weight not in ("impressions", "uniform"):
        raise ValueError(f"weight must be 'impressions' or 'uniform', got {weight!r}")
    y, s, _ = _prepare_binary(y_true, y_score)
    if isinstance(groups, torch.Tensor):
        g_raw = groups.detach().reshape(-1).to(s.device)
        _check_no_nan(g_raw, "groups")
        _, g = torch.unique(g_raw, return_inverse=True)
    else:
        g_np = np.asarray(groups).reshape(-1)
        _, g_inv = np.unique(g_np, return_inverse=True)
        g = torch.as_tensor(g_inv.reshape(-1), dtype=torch.long, device=s.device)
    if g.numel() != y.numel():
        raise ValueError(
            f"groups must have the same length as y_true, got {g.numel()} and {y.numel()}"
        )
    n_groups = int(g.max()) + 1
    numer, pos, neg = _segment_auc(y, s, g, n_groups, None)
    valid = (pos > 0) & (neg > 0)
    if not bool(valid.any()):
        raise ValueError("GAUC is undefined: no group contains both positive and negative labels")
    group_auc = torch.where(valid, numer / (pos * neg).clamp_min(1), torch.zeros_like(numer))
    wg = (pos + neg) * valid if weight == "impressions" else valid.to(numer.dtype)
    return float((group_auc * wg).sum() / wg.sum())


def logloss(y_true: Any, y_prob: Any, eps: float = 1e-7, sample_weight: Any = None) -> float:
    """Binary cross-entropy (natural log), probabilities clipped to ``[eps, 1 - eps]``.

    Equals ``sklearn.metrics.log_loss(y_true, np.clip(y_prob, eps, 1 - eps))``.

    Args:
        y_true: ``[N]`` labels in {0, 1}.
        y_prob: ``[N]`` predicted probabilities of the positive class.
        eps: clipping constant in ``(0, 0.5)``.
        sample_weight: optional ``[N]`` finite non-negative weights with a positive sum
            (weighted mean).

    Raises:
        ValueError: bad input (see :func:`auc`), ``eps`` outside ``(0, 0.5)``, a negative or
            non-finite ``sample_weight``, or weights summing to 0.

    Example:
        >>> round(logloss([0, 1], [0.5, 0.5]), 6)
        0.693147
    """
    eps = _check_eps(eps)
    y, p, w = _prepare_binary(y_true, y_prob, sample_weight, score_name="y_prob")
    p = p.clamp(eps, 1 - eps)
    losses = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    if w is None:
        return float(losses.mean())
    total = w.sum()
    if not float(total) > 0:
        raise ValueError("sample_weight must have a positive sum, got all zeros")
    return float((losses * w).sum() / total)


def calibration_ratio(y_true: Any, y_prob: Any) -> float:
    """Mean predicted probability divided by the observed positive rate (1.0 = calibrated).

    Args:
        y_true: ``[N]`` labels in {0, 1}.
        y_prob: ``[N]`` predicted probabilities.

    Raises:
        ValueError: if ``y_true`` has no positive (ratio undefined), or bad input.

    Example:
        >>> calibration_ratio([0, 1, 0, 0], [0.5, 0.5, 0.25, 0.25])
        1.5
    """
    y, p, _ = _prepare_binary(y_true, y_prob, score_name="y_prob")
    if float(y.sum()) == 0:
        raise ValueError("calibration_ratio is undefined: y_true contains no positives")
    return float(p.mean() / y.mean())


def _prepare_regression(y_true: Any, y_pred: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = _as_float(y_pred).reshape(-1)
    y = _as_float(y_true, p.device).reshape(-1)
    if y.numel() != p.numel():
        raise ValueError(
            f"y_true and y_pred must have the same length, got {y.numel()} and {p.numel()}"
        )
    if y.numel() == 0:
        raise ValueError("empty input")
    _check_no_nan(y, "y_true")
    _check_no_nan(p, "y_pred")
    return y, p


def mse(y_true: Any, y_pred: Any) -> float:
    """Mean squared error over ``[N]`` targets and predictions.

    Example:
        >>> mse([1.0, 2.0], [1.0, 4.0])
        2.0
    """
    y, p = _prepare_regression(y_true, y_pred)
    return float(((y - p) ** 2).mean())


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error over ``[N]`` targets and predictions.

    Example:
        >>> rmse([1.0, 1.0], [4.0, -2.0])
        3.0
    """
    return mse(y_true, y_pred) ** 0.5
