"""Funnel-aware evaluation: each task scored on the rows where it is observed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from .. import metrics as M

NAN = float("nan")


def _safe(fn: Callable[..., float], *args: Any) -> float:
    """``fn(*args)`` as a float, NaN where the metric is undefined (one class, no positive)."""
    try:
        return float(fn(*args))
    except ValueError:
        return NAN


def evaluate_funnel(
    tasks: list,
    parents: list[int | None],
    cond: Tensor,
    joint: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
) -> pd.DataFrame:
    """Tidy funnel metrics ``[task, metric, value, rows]`` (see :meth:`MultiTaskModel.evaluate`).

    A root task is scored on all rows; a child task's conditional probability on the rows where
    its parent's joint label is 1, and its joint probability (``ctcvr``) on all rows against the
    joint label. Binary tasks get ``auc``, ``gauc`` (with ``groups``), ``logloss``, ``ece`` and
    ``calibration``; joint columns ``auc``, ``logloss`` and ``ece``; regression tasks ``mse`` and
    ``rmse``. Undefined metrics are NaN.

    Args:
        tasks: the schema's tasks, in order.
        parents: parent index per task (``None`` for roots), parents first.
        cond: ``[N, T]`` conditional probabilities (predicted values for regression tasks).
        joint: ``[N, T]`` joint probabilities.
        labels: ``[N, T]`` labels.
        groups: optional ``[N]`` group ids (e.g. users) for GAUC.
    """
    y = labels.float().cpu().numpy()
    p = cond.cpu().numpy().astype(np.float64)
    q = joint.cpu().numpy().astype(np.float64)
    g = groups.cpu().numpy() if groups is not None else None
    joint_y = np.zeros_like(y)
    rows = []
    for j, t in enumerate(tasks):
        par = parents[j]
        joint_y[:, j] = y[:, j] if par is None else y[:, j] * joint_y[:, par]
        sel = np.ones(len(y), dtype=bool) if par is None else joint_y[:, par] == 1
        n = int(sel.sum())
        if not t.binary:
            mse = float(np.mean((p[sel, j] - y[sel, j]) ** 2)) if n else NAN
            rows += [(t.name, "mse", mse, n), (t.name, "rmse", mse**0.5, n)]
            continue
        ys, ps = y[sel, j], p[sel, j]
        rows.append((t.name, "auc", _safe(M.auc, ys, ps) if n else NAN, n))
        if g is not None:
            rows.append((t.name, "gauc", _safe(M.gauc, ys, ps, g[sel]) if n else NAN, n))
        rows.append((t.name, "logloss", _safe(M.logloss, ys, ps) if n else NAN, n))
        rows.append((t.name, "ece", _safe(M.ece, ys, ps) if n else NAN, n))
        rows.append((t.name, "calibration", _safe(M.calibration_ratio, ys, ps) if n else NAN, n))
        if par is not None:
            yj, qj = joint_y[:, j], q[:, j]
            rows.append((t.joint, "auc", _safe(M.auc, yj, qj), len(y)))
            rows.append((t.joint, "logloss", _safe(M.logloss, yj, qj), len(y)))
            rows.append((t.joint, "ece", _safe(M.ece, yj, qj), len(y)))
    return pd.DataFrame(rows, columns=["task", "metric", "value", "rows"])
