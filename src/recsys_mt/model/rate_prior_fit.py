"""Choosing and fitting the rate prior of the calibration (pure functions, torch only).

The calibration of a binary task can take a second input besides the model's logit ``z``:
the smoothed historical rate of the task for the row's value of one sparse feature (the
item's purchase-given-click rate, the shop's click rate), counted on the training rows::

    rate_t(v) = (num_t(v) + m · prior_t) / (den_t(v) + m)
    calibrated logit = a · z + c · logit(rate_t(v)) + b          (a > 0)

``num_t(v)`` is the number of positives of task ``t`` among the training rows with value ``v``
on which ``t`` is observed (all rows for a root task, the rows whose parent's joint label is 1
for a child), ``den_t(v)`` the number of those rows; ``prior_t`` is the overall rate and ``m``
the smoothing strength. Ids the training rows never show get ``prior_t``, and so does the OOV
id: it pools the values too rare to get an id (``Schema(min_groups=…)``), whose rate — obscure
items' — would be the wrong guess for a new item.

For each task, :func:`fit_rate_prior` picks the smoothing of each candidate feature by the
validation log loss of the rate alone, then the feature whose stacked map has the lowest
two-fold cross-validated log loss on the validation rows (folds by group, so one user's rows
stay in one fold), and keeps it only when it beats the plain map ``a · z + b`` by at least
``min_gain`` nats and by at least ``min_z`` standard errors of that gain (from the rows' paired
held-out losses), so a few thousand validation rows do not pick a feature by chance. The chosen
map is then refitted on all observed validation rows.

Why it helps: a network trained to its best validation AUC expresses an item's own rate of a
deep funnel stage less sharply than the item's counted rate does (on MovieLens its per-movie
purchase logits have a slope of 0.74 against the counted rates for well-observed movies), while
the rest of what it learned still adds to it; stacking both on held-out rows takes the best of
the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.features import OOV_ID
from .calibration import fit_logistic, logistic_loss, logistic_losses, observed_rows

__all__ = ["PriorChoice", "SMOOTHING_GRID", "count_tables", "fit_rate_prior"]

#: Smoothing strengths ``m`` tried per feature and task.
SMOOTHING_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: Fewest validation rows per fold for a task to be considered at all.
MIN_FOLD_ROWS = 50


@dataclass
class PriorChoice:
    """The chosen map of one task: ``column`` (index into the sparse columns), the
    ``[vocab]`` table of smoothed rate logits, and the coefficients ``(a, c, b)``."""

    column: int
    table: Tensor
    a: float
    c: float
    b: float
    gain: float


def count_tables(
    sparse: Tensor, labels: Tensor, parents: list[int | None], binary: list[bool], sizes: list[int]
) -> list[list[tuple[Tensor, Tensor] | None]]:
    """Per sparse column ``s`` and task ``t``: ``(num [V_s], den [V_s])`` float64 counts over
    the rows on which ``t`` is observed (``None`` for regression tasks); the OOV id's counts
    are 0.

    Args:
        sparse: ``[N, S]`` encoded ids of the training rows.
        labels: ``[N, T]`` labels in task order.
        parents: parent index per task (``None`` for roots).
        binary: ``True`` for binary tasks.
        sizes: vocabulary size of each sparse column.
    """
    sparse = sparse.detach().cpu().long()
    y = labels.detach().cpu().to(torch.float64)
    rows = observed_rows(y, parents)
    out: list[list[tuple[Tensor, Tensor] | None]] = []
    for s, size in enumerate(sizes):
        ids = sparse[:, s].clamp(0, size - 1)
        per_task: list[tuple[Tensor, Tensor] | None] = []
        for t, is_binary in enumerate(binary):
            if not is_binary:
                per_task.append(None)
                continue
            sel = rows[:, t]
            den = torch.bincount(ids[sel], minlength=size).to(torch.float64)
            num = torch.bincount(ids[sel], weights=y[sel, t], minlength=size)
            if size > OOV_ID:  # the OOV id pools rare values: it gets the overall rate
                den[OOV_ID] = num[OOV_ID] = 0.0
            per_task.append((num, den))
        out.append(per_task)
    return out


def _smoothed_logit(num: Tensor, den: Tensor, m: float) -> Tensor:
    total = float(den.sum())
    prior = float(num.sum()) / total if total > 0 else 0.5
    prior = min(max(prior, 1e-6), 1 - 1e-6)
    rate = ((num + m * prior) / (den + m)).clamp(1e-6, 1 - 1e-6)
    return torch.log(rate) - torch.log1p(-rate)


def _has_candidates(tables: list[list[tuple[Tensor, Tensor] | None]], t: int) -> bool:
    """True when some column has counts for task ``t`` (a binary task with candidates)."""
    return any(per_task[t] is not None for per_task in tables)


def _cv_losses(x: Tensor, y: Tensor, fold: Tensor) -> Tensor:
    """``[n]`` two-fold cross-validated log loss of :func:`fit_logistic`, per row (each row
    scored by the map fitted on the other fold)."""
    out = torch.empty_like(y)
    for k in (0, 1):
        fit, held = fold != k, fold == k
        out[held] = logistic_losses(x[held], y[held], fit_logistic(x[fit], y[fit]))
    return out


def folds_of(n: int, group: Tensor | None) -> Tensor:
    """``[n]`` fold (0 or 1) per row: by group code when given, else a seeded permutation."""
    if group is not None:
        g = group.detach().cpu().long()
        return ((g * 2654435761) % 1000003) % 2
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return (perm % 2).long()


def fit_rate_prior(
    logits: Tensor,
    labels: Tensor,
    sparse: Tensor,
    tables: list[list[tuple[Tensor, Tensor] | None]],
    parents: list[int | None],
    group: Tensor | None = None,
    min_gain: float = 1e-3,
    min_z: float = 1.5,
) -> list[PriorChoice | None]:
    """Choose and fit the rate prior of every task on validation rows.

    Args:
        logits: ``[N, T]`` uncalibrated conditional logits of the validation rows.
        labels: ``[N, T]`` their labels.
        sparse: ``[N, S]`` their encoded ids.
        tables: :func:`count_tables` of the training rows (an entry set to ``None``: that
            column is not a candidate for that task).
        parents: parent index per task.
        group: ``[N]`` group codes (folds keep a group together), or ``None``.
        min_gain: least cross-validated log-loss improvement over the plain map, in nats.
        min_z: least ratio of that improvement to its standard error (of the mean of the
            rows' paired held-out loss differences): on a small validation frame a gain of
            ``min_gain`` can be noise.

    Returns:
        One :class:`PriorChoice` per task, or ``None`` where no feature gains enough (and for
        regression tasks and tasks with too few observed rows or one class).
    """
    z, y = logits.detach().cpu().to(torch.float64), labels.detach().cpu().to(torch.float64)
    sparse = sparse.detach().cpu().long()
    rows = observed_rows(y, parents)
    fold_all = folds_of(len(z), group)
    out: list[PriorChoice | None] = []
    for t in range(z.shape[1]):
        sel = rows[:, t]
        yt, zt, fold = y[sel, t], z[sel, t], fold_all[sel]
        n_pos = int((yt == 1).sum())
        small = min(int((fold == 0).sum()), int((fold == 1).sum())) < MIN_FOLD_ROWS
        if not _has_candidates(tables, t) or small or n_pos in (0, len(yt)):
            out.append(None)
            continue
        ones = torch.ones_like(zt)
        base = _cv_losses(torch.stack([zt, ones], 1), yt, fold)
        best: tuple[Tensor, int, Tensor] | None = None
        for s, per_task in enumerate(tables):
            if per_task[t] is None:  # not a candidate
                continue
            num, den = per_task[t]  # type: ignore[misc]
            ids = sparse[sel, s].clamp(0, len(den) - 1)
            candidates = [_smoothed_logit(num, den, m) for m in SMOOTHING_GRID]
            table = min(candidates, key=lambda lt: float(logistic_loss(lt[ids, None], yt, _UNIT)))
            cv = _cv_losses(torch.stack([zt, table[ids], ones], 1), yt, fold)
            if best is None or cv.mean() < best[0].mean():
                best = (cv, s, table)
        if best is None:
            out.append(None)
            continue
        d = base - best[0]  # [n] paired held-out loss differences
        gain = float(d.mean())
        noise = float(d.std()) / math.sqrt(len(d))  # standard error of the gain
        if not math.isfinite(gain) or gain < min_gain or gain < min_z * noise:
            out.append(None)
            continue
        _, s, table = best
        ids = sparse[sel, s].clamp(0, len(table) - 1)
        w = fit_logistic(torch.stack([zt, table[ids], ones], 1), yt)
        out.append(PriorChoice(s, table.float(), float(w[0]), float(w[1]), float(w[2]), gain))
    return out


_UNIT = torch.ones(1, dtype=torch.float64)
