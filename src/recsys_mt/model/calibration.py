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


def _loss(z: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    u = a * z + b
    return (F.softplus(u) - y * u).mean()


def fit_scaling(
    z: Tensor, y: Tensor, fit_bias: bool, max_iter: int = 50, tol: float = 1e-10
) -> tuple[float, float]:
    """Fit ``(a, b)`` minimising the mean log loss of ``σ(a z + b)`` against ``y``.

    Damped Newton steps in float64 with a backtracking (Armijo) line search; ``a`` is projected
    onto ``[SLOPE_MIN, SLOPE_MAX]`` after every step. With ``fit_bias=False`` (temperature
    scaling) ``b`` stays 0.

    Args:
        z: ``[n]`` logits.
        y: ``[n]`` binary labels in {0, 1}.
        fit_bias: fit ``b`` too (Platt scaling).
        max_iter: maximum number of Newton steps.
        tol: stop when the largest gradient entry is below this.

    Returns:
        ``(a, b)`` as Python floats.
    """
    z = z.detach().reshape(-1).to(torch.float64)
    y = y.detach().reshape(-1).to(torch.float64)
    a = torch.tensor(1.0, dtype=torch.float64, device=z.device)
    b = torch.zeros_like(a)
    loss = _loss(z, y, a, b)
    ridge = 1e-12
    for _ in range(max_iter):
        p = torch.sigmoid(a * z + b)
        r, w = p - y, p * (1 - p)
        if fit_bias:
            g = torch.stack([(r * z).mean(), r.mean()])
            h_ab = (w * z).mean()
            h = torch.stack(
                [
                    torch.stack([(w * z * z).mean() + ridge, h_ab]),
                    torch.stack([h_ab, w.mean() + ridge]),
                ]
            )
            step = -torch.linalg.solve(h, g)
        else:
            g = (r * z).mean().reshape(1)
            step = -g / ((w * z * z).mean() + ridge)
        if float(g.abs().max()) < tol:
            break
        t, accepted = 1.0, False
        while t > 1e-10:
            a_new = (a + t * step[0]).clamp(SLOPE_MIN, SLOPE_MAX)
            b_new = b + t * step[1] if fit_bias else b
            new = _loss(z, y, a_new, b_new)
            moved = (a_new - a) * g[0] + ((b_new - b) * g[1] if fit_bias else 0.0)
            if bool(new <= loss + 1e-4 * moved):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        converged = bool((a_new - a).abs() < 1e-12 and (b_new - b).abs() < 1e-12)
        a, b, loss = a_new, b_new, new
        if converged:
            break
    return float(a), float(b)


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
