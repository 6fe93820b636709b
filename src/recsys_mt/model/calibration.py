"""Post-hoc calibration of conditional logits: temperature scaling and Platt scaling.

Every binary task gets a monotone map of its conditional logit ``z -> a * z + b`` with ``a > 0``
(so rankings never change), fitted by minimising the log loss of ``σ(a z + b)`` on the task's
observed rows: all rows for a root task, the rows where the parent's joint label is 1 for a child
task (CVR on clicked rows). ``"temperature"`` fits ``a = 1 / T`` with ``b = 0``; ``"platt"`` fits
both. Joint probabilities are then products of the calibrated conditionals.

The fit is a damped Newton method in float64 on cached logits (the log loss is convex in
``(a, b)``), with ``a`` kept in ``[SLOPE_MIN, SLOPE_MAX]``. Parameters are stored as a ``[T, 2]``
table of ``(a, b)`` rows; the identity row ``(1, 0)`` leaves a task untouched (regression tasks,
tasks without enough observed rows, ``method="none"``).

Only torch is used; the functions are pure (no model, no state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("temperature", "platt", "none")
SLOPE_MIN = 1e-6
SLOPE_MAX = 1e6


def identity_calibration(num_tasks: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The identity table ``[T, 2]``: every row is ``(a, b) = (1, 0)``."""
    out = torch.zeros(num_tasks, 2, dtype=dtype)
    out[:, 0] = 1.0
    return out


def observed_rows(labels: Tensor, parents: list[int | None]) -> Tensor:
    """Rows each task is observed on, ``[N, T]`` bool.

    A root task is observed on every row; a child task on the rows where its parent's joint
    label (the product of the labels up the chain) is 1.

    Args:
        labels: ``[N, T]`` labels in schema task order.
        parents: parent index per task (``None`` for roots), parents first.
    """
    y = labels.detach().to(torch.float64)
    joint = []
    for t, p in enumerate(parents):
        joint.append(y[:, t] if p is None else y[:, t] * joint[p])
    cols = [
        torch.ones(y.shape[0], dtype=torch.bool, device=y.device) if p is None else joint[p] == 1
        for p in parents
    ]
    return torch.stack(cols, dim=1) if cols else torch.zeros_like(y, dtype=torch.bool)


def logistic_losses(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """Per-row log loss ``[n]`` of ``σ(x @ w)`` against ``y`` (``x [n, k]``, ``w [k]``)."""
    u = x @ w
    return F.softplus(u) - y * u


def logistic_loss(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """Mean log loss of ``σ(x @ w)`` against ``y`` (``x [n, k]``, ``w [k]``)."""
    return logistic_losses(x, y, w).mean()


def fit_logistic(x: Tensor, y: Tensor, max_iter: int = 50, tol: float = 1e-10) -> Tensor:
    """Coefficients ``w`` minimising the mean log loss of ``σ(x @ w)``; ``w[0]`` (the model
    logit's slope) is projected onto ``[SLOPE_MIN, SLOPE_MAX]`` after every step, so the model's
    order is never reversed. Damped Newton steps in float64 with a backtracking (Armijo) line
    search, starting from ``w = (1, 0, …)``.

    Args:
        x: ``[n, k]`` inputs, the model logit first (a column of ones fits an intercept).
        y: ``[n]`` binary labels in {0, 1}.
        max_iter: maximum number of Newton steps.
        tol: stop when the largest gradient entry is below this.

    Returns:
        ``[k]`` float64 coefficients.
    """
    x = x.detach().to(torch.float64)
    y = y.detach().reshape(-1).to(device=x.device, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    w[0] = 1.0
    loss = logistic_loss(x, y, w)
    ridge = torch.eye(x.shape[1], dtype=torch.float64, device=x.device) * 1e-12
    for _ in range(max_iter):
        p = torch.sigmoid(x @ w)
        g = x.T @ (p - y) / len(y)
        if float(g.abs().max()) < tol:
            break
        h = (x * (p * (1 - p))[:, None]).T @ x / len(y) + ridge
        step = -torch.linalg.solve(h, g)
        t, accepted = 1.0, False
        while t > 1e-10:
            new_w = w + t * step
            new_w[0] = new_w[0].clamp(SLOPE_MIN, SLOPE_MAX)
            new = logistic_loss(x, y, new_w)
            if bool(new <= loss + 1e-4 * (new_w - w) @ g):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        converged = bool((new_w - w).abs().max() < 1e-12)
        w, loss = new_w, new
        if converged:
            break
    return w


def fit_scaling(
    z: Tensor, y: Tensor, fit_bias: bool, max_iter: int = 50, tol: float = 1e-10
) -> tuple[float, float]:
    """Fit ``(a, b)`` minimising the mean log loss of ``σ(a z + b)`` against ``y``
    (:func:`fit_logistic` on ``[z, 1]``). With ``fit_bias=False`` (temperature scaling) ``b``
    stays 0.

    Args:
        z: ``[n]`` logits.
        y: ``[n]`` binary labels in {0, 1}.
        fit_bias: fit ``b`` too (Platt scaling).
        max_iter: maximum number of Newton steps.
        tol: stop when the largest gradient entry is below this.

    Returns:
        ``(a, b)`` as Python floats.
    """
    z = z.detach().reshape(-1, 1).to(torch.float64)
    x = torch.cat([z, torch.ones_like(z)], 1) if fit_bias else z
    w = fit_logistic(x, y, max_iter, tol)
    return float(w[0]), float(w[1]) if fit_bias else 0.0


def fit_calibration(
    logits: Tensor,
    labels: Tensor,
    parents: list[int | None],
    binary: list[bool],
    method: str = "temperature",
    min_rows: int = 50,
    max_iter: int = 50,
) -> tuple[Tensor, dict[int, str]]:
    """Fit one ``(a, b)`` row per task on its observed rows.

    Args:
        logits: ``[N, T]`` uncalibrated conditional logits (raw values for regression tasks).
        labels: ``[N, T]`` labels in {0, 1} for binary tasks.
        parents: parent index per task (``None`` for roots), parents first.
        binary: ``True`` for binary tasks; regression tasks keep the identity.
        method: ``"temperature"`` (``a = 1 / T``, ``b = 0``), ``"platt"`` (``a`` and ``b``) or
            ``"none"`` (identity everywhere).
        min_rows: a binary task with fewer observed rows, or with one class only, keeps the
            identity and is reported in the returned dict.
        max_iter: Newton steps per task.

    Returns:
        ``(params, skipped)``: ``params`` is ``[T, 2]`` float64 with rows ``(a, b)``;
        ``skipped`` maps the index of each binary task left at the identity to the reason.

    Example:
        >>> z = torch.tensor([[-3.0], [-1.0], [1.0], [3.0]]).repeat(20, 1)
        >>> y = torch.tensor([[0.0], [1.0], [0.0], [1.0]]).repeat(20, 1)
        >>> params, skipped = fit_calibration(z, y, [None], [True], min_rows=10)
        >>> bool(0 < params[0, 0] < 1), skipped
        (True, {})
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if logits.ndim != 2 or logits.shape != labels.shape:
        raise ValueError(
            f"logits and labels must both be [N, T], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    num_tasks = logits.shape[1]
    if len(parents) != num_tasks or len(binary) != num_tasks:
        raise ValueError(f"parents and binary need {num_tasks} entries (one per task)")
    params = identity_calibration(num_tasks, torch.float64)
    skipped: dict[int, str] = {}
    if method == "none":
        return params, skipped
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf")
    rows = observed_rows(labels, parents)
    for t in range(num_tasks):
        if not binary[t]:
            continue
        sel = rows[:, t]
        z, y = logits[sel, t], labels[sel, t].to(torch.float64)
        n, n_pos = int(sel.sum()), int((y == 1).sum())
        if n < min_rows:
            skipped[t] = f"{n} observed rows < min_rows={min_rows}"
        elif n_pos in (0, n):
            skipped[t] = f"one class only ({n_pos} positives of {n} rows)"
        else:
            params[t] = torch.tensor(
                fit_scaling(z, y, method == "platt", max_iter), dtype=params.dtype
            )
    return params, skipped


def apply_calibration(logits: Tensor, params: Tensor) -> Tensor:
    """Calibrated logits ``a_t * z + b_t`` per column; identity columns are returned unchanged.

    Args:
        logits: ``[N, T]`` conditional logits.
        params: ``[T, 2]`` rows ``(a, b)`` (see :func:`fit_calibration`).

    Returns:
        ``[N, T]`` in the dtype of ``logits``.
    """
    if params.ndim != 2 or params.shape != (logits.shape[-1], 2):
        raise ValueError(
            f"params must be [T, 2] with T = {logits.shape[-1]}, got {tuple(params.shape)}"
        )
    params = params.to(device=logits.device, dtype=logits.dtype)
    a, b = params[:, 0], params[:, 1]
    identity = (a == 1) & (b == 0)
    if bool(identity.all()):
        return logits
    return torch.where(identity, logits, logits * a + b)
