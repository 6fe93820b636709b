"""Per-task losses with funnel semantics: entire-space (ESMM-style) or masked conditional.

For a chain ``ctr → cvr → repurchase`` the head gives a logit per task, read as the
*conditional* probability given the parent: ``p_cvr = p(buy | click)``. The *joint*
probability multiplies down the chain: ``q_cvr = p_ctr · p_cvr = p(click ∧ buy)``.

- ``supervision="entire_space"``: a child task's loss is the binary cross-entropy of its joint
  probability against its joint label (the product of the chain's labels) on **every** row.
  This is ESMM (Ma et al., SIGIR 2018) generalised to any chain; it avoids sample-selection bias
  because the conditional tower is trained through the joint on the whole impression space.
- ``supervision="conditional"``: a child task's loss is the BCE of its conditional probability
  against its label on the rows where the parent's joint label is 1 (clicked rows for CVR),
  averaged over those rows.

Root tasks use plain BCE on all rows in both modes. Regression (``loss="mse"``) tasks use mean
squared error, masked to rows where the parent's joint label is 1 when they have a parent.
Joint log-probabilities are summed ``logsigmoid`` terms, so tiny products stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SUPERVISIONS = ("entire_space", "conditional")


def log1mexp(a: Tensor) -> Tensor:
    """``log(1 - exp(a))`` for ``a <= 0``, accurate over the whole range (Mächler 2012)."""
    a = a.clamp(max=-1e-12)
    return torch.where(
        a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a))
    )


def chain_log_probs(logits: Tensor, parents: list[int | None]) -> Tensor:
    """Joint log-probabilities ``[B, T]``: ``log q_t = log σ(z_t) + log q_parent(t)``.

    ``parents[t]`` is the index of task ``t``'s parent (``None`` for roots); parents come
    before children. Regression columns are left as their raw values' logsigmoid and must be
    ignored by the caller.
    """
    ls = F.logsigmoid(logits)
    out = []
    for t, p in enumerate(parents):
        out.append(ls[:, t] if p is None else ls[:, t] + out[p])
    return torch.stack(out, dim=1)


def funnel_losses(
    logits: Tensor,
    labels: Tensor,
    parents: list[int | None],
    binary: list[bool],
    supervision: str = "entire_space",
    counts: Tensor | None = None,
) -> list[Tensor]:
    """One scalar loss per task.

    Args:
        logits: ``[B, T]`` head outputs (conditional logits; raw predictions for regression).
        labels: ``[B, T]`` labels; for a child task, the label where the parent is 0 is ignored
            (conditional / regression) or multiplied away (entire space).
        parents: parent index per task, parents first.
        binary: ``True`` for BCE tasks, ``False`` for MSE tasks.
        supervision: ``"entire_space"`` or ``"conditional"``.
        counts: optional ``[T]`` denominators. By default each loss is a mean over the rows it
            is defined on in this batch (all rows, or the rows whose parent is positive). With
            ``counts`` (from :func:`funnel_counts` summed over several batches, e.g. the
            micro-batches of one optimiser step on every process), each loss is the batch's
            *sum* divided by ``counts[t]``: the batch's share of the big batch's mean, so the
            shares add up to exactly the loss of the big batch, masked tasks included.
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    logits = logits.float()
    labels = labels.float()
    masks = _parent_masks(labels, parents)
    need_chain = supervision == "entire_space" and any(
        p is not None and binary[t] for t, p in enumerate(parents)
    )
    log_q = chain_log_probs(logits, parents) if need_chain else None
    losses = []
    for t, p in enumerate(parents):
        z, y = logits[:, t], labels[:, t]
        if not binary[t]:
            err = (z - y) ** 2
        elif p is None:
            err = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        elif supervision == "entire_space":
            yq = masks[p] * y
            lq = log_q[:, t]
            err = -(yq * lq + (1 - yq) * log1mexp(lq))
        else:
            err = F.binary_cross_entropy_with_logits(z, y, reduction="none")
        masked = p is not None and not (binary[t] and supervision == "entire_space")
        if masked:
            m = masks[p].to(err.dtype)
            total = (err * m).sum()
            denom = m.sum() if counts is None else counts[t]
        else:
            total = err.sum()
            denom = err.new_tensor(float(err.shape[0])) if counts is None else counts[t]
        losses.append(total / denom.to(err.dtype).clamp_min(1.0))
    return losses


def funnel_counts(
    labels: Tensor, parents: list[int | None], binary: list[bool], supervision: str
) -> Tensor:
    """``[T]`` float: the number of rows each of :func:`funnel_losses`' losses averages over.

    All rows for root tasks and entire-space binary children; the rows whose parent's joint
    label is 1 for conditional and regression children.
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    labels = labels.float()
    masks = _parent_masks(labels, parents)
    rows = float(labels.shape[0])
    out = []
    for t, p in enumerate(parents):
        masked = p is not None and not (binary[t] and supervision == "entire_space")
        out.append(masks[p].sum() if masked else labels.new_tensor(rows))
    return torch.stack(out) if out else labels.new_zeros(0)


def _parent_masks(labels: Tensor, parents: list[int | None]) -> list[Tensor]:
    """Joint label ``[B]`` of every task: the product of the labels down its chain."""
    joint: list[Tensor] = []
    for t, p in enumerate(parents):
        joint.append(labels[:, t] if p is None else labels[:, t] * joint[p])
    return joint


def behavioural_calibration(
    joint_probs: Tensor, parents: list[int | None], binary: list[bool] | None = None
) -> Tensor:
    """AITM's behavioural expectation calibrator: ``mean_b Σ_child relu(q_child − q_parent)``.

    AITM (Xi et al., KDD 2021) adds this penalty because its towers output one unconstrained
    probability per funnel stage, and a later stage (purchase) must not be more likely than the
    one before it (click). In this library a child's stage probability is the **joint**
    ``q_t = q_parent(t) · σ(z_t)`` with ``σ(z_t) ∈ (0, 1)``, so ``q_t <= q_parent(t)`` holds
    by construction for every head, and the penalty of :meth:`MultiTaskModel.probabilities`'s
    joint output is exactly 0 (in floating point too: ``log q_t`` is ``log q_parent`` plus a
    non-positive ``logsigmoid``). It is provided to check that property and for scores that do
    not come from this model.

    Args:
        joint_probs: ``[B, T]`` stage (joint) probabilities in task order.
        parents: parent index per task (``None`` for roots), parents before children.
        binary: optional ``[T]`` flags; pairs where the child or the parent is not binary
            (regression columns) are skipped.

    Returns:
        scalar: mean over rows of the sum over child tasks of ``max(q_child − q_parent, 0)``
        (0 when there is no child task).
    """
    terms = [
        F.relu(joint_probs[:, t] - joint_probs[:, p])
        for t, p in enumerate(parents)
        if p is not None and (binary is None or (binary[t] and binary[p]))
    ]
    if not terms:
        return joint_probs.new_zeros(())
    return torch.stack(terms, dim=1).sum(1).mean()
