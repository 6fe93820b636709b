"""AITM: Adaptive Information Transfer Multi-task head (Xi et al., KDD 2021).

"Modeling the Sequential Dependence among Audience Multi-step Conversions with Multi-task
Learning" models a conversion funnel as a chain of tasks in which each task receives what its
parent task has learned. Per task ``t``:

1. a tower MLP over the shared input gives the task's own representation ``q_t = f_t(x)``;
2. a task with a parent receives the parent's *transferred information*
   ``p_{t-1} = g_t(z_{parent})`` (one Linear + activation), where ``z_{parent}`` is the
   parent's output of this same step;
3. the **AIT module** combines ``u ∈ {p_{t-1}, q_t}`` with self-attention over the two vectors::

       w_u = softmax_u( <h1(u), h2(u)> / sqrt(H) ),      z_t = Σ_u w_u · h3(u)

   with ``h1, h2, h3`` learned projections ``[H] -> [H]``; a root task uses ``z_t = q_t``;
4. the task's output layer maps ``z_t`` to its logit.

In this library every head outputs *conditional* logits (``p_cvr = p(buy | click)``); the joint
probabilities multiply down the chain, so AITM plugs into the same entire-space or conditional
supervision as the other heads. The paper's *behavioural expectation calibrator* penalises
``max(p_t - p_{t-1}, 0)`` because the paper's towers output unconstrained per-stage
probabilities; here the stage probability is the joint product of conditionals, which can never
exceed its parent's, so the penalty is zero by construction (see
:func:`recsys_mt.losses.behavioural_calibration`).

Speed: all task towers are one batched GEMM (:class:`~recsys_mt.tasks.GroupedMLP` over the
shared input); the tasks at one depth of the funnel tree run their transfer and attention
projections together as batched matrix multiplies (``baddbmm``), one step per depth.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .heads import GroupedMLP, Head, _activation, check_head_args


def ait_attention(h1: Tensor, h2: Tensor, h3: Tensor) -> Tensor:
    """Self-attention of the AIT module over the candidate vectors ``u``.

    Args:
        h1: ``[N, U, B, H]`` first projection of each of the ``U`` candidates (``U = 2`` in
            AITM: the transferred information and the task's own representation).
        h2: ``[N, U, B, H]`` second projection.
        h3: ``[N, U, B, H]`` value projection.

    Returns:
        ``[N, B, H]``: ``Σ_u w_u · h3(u)`` with ``w_u = softmax_u(<h1(u), h2(u)> / sqrt(H))``.
    """
    scores = (h1 * h2).sum(-1) / h1.shape[-1] ** 0.5  # [N, U, B]
    w = torch.softmax(scores, dim=1)
    return (w.unsqueeze(-1) * h3).sum(1)


def _grouped_parameters(groups: int, d_in: int, d_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weights ``[G, d_in, d_out]`` and biases ``[G, 1, d_out]``, uniform ±1/sqrt(d_in)."""
    bound = 1.0 / d_in**0.5
    w = nn.Parameter(torch.empty(groups, d_in, d_out).uniform_(-bound, bound))
    b = nn.Parameter(torch.empty(groups, 1, d_out).uniform_(-bound, bound))
    return w, b


def _check_parents(parents: list[int | None] | None, num_tasks: int) -> list[int | None]:
    if parents is None:  # a linear chain in task order
        return [None] + list(range(num_tasks - 1)) if num_tasks else []
    parents = list(parents)
    if len(parents) != num_tasks:
        raise ValueError(f"AITM got {len(parents)} parents for {num_tasks} tasks")
    for t, p in enumerate(parents):
        if p is not None and not (0 <= p < t):
            raise ValueError(
                f"AITM: task {t}'s parent must be an earlier task index or None, got {p!r}"
            )
    return parents


@register("head", "aitm")
class AITM(Head):
    """Adaptive Information Transfer Multi-task head (Xi et al., KDD 2021).

    Shapes: ``x [B, D]`` → towers ``q [T, B, H]`` (``H = tower_dims[-1]``) → per task
    ``z_t [B, H]`` (root: ``q_t``; child: AIT attention over the parent's transferred
    information and ``q_t``) → logits ``[B, T]`` (conditional log-odds for child tasks).

    The funnel comes from the model: :class:`~recsys_mt.MultiTaskModel` calls
    ``build(in_dim, num_tasks, parents=...)`` with the schema's ``given=`` chain, so trees
    (several children of one parent) work too. Built without ``parents`` the tasks form a
    linear chain in order.

    Args:
        tower_dims: hidden sizes of each task's tower MLP; the last one is the size ``H`` of
            the representations that are transferred and attended over.
        activation: ``"relu"``, ``"gelu"`` or ``"silu"`` (towers and transfer layers).
        dropout: dropout after every tower layer and on the transferred information.

    Example:
        >>> model = rm.MultiTaskModel(schema, head=rm.AITM(tower_dims=(128, 64)))  # doctest: +SKIP
    """

    def __init__(
        self,
        tower_dims: tuple[int, ...] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        check_head_args("AITM", dropout, {}, {"tower_dims": (tower_dims, False)})
        self.tower_dims = tuple(int(d) for d in tower_dims)
        self.activation = activation
        self.dropout = dropout
        self.act = _activation(activation)

    def build(self, in_dim: int, num_tasks: int, parents: list[int | None] | None = None) -> None:
        """Create the parameters.

        Args:
            in_dim: size ``D`` of the fused input.
            num_tasks: number of tasks ``T``.
            parents: parent task index per task (``None`` for roots, parents before
                children); ``None`` means a linear chain ``0 → 1 → … → T-1``.
        """
        parents = _check_parents(parents, num_tasks)
        h = self.tower_dims[-1]
        self.num_tasks = num_tasks
        self.parents = parents
        self.towers = GroupedMLP(num_tasks, in_dim, self.tower_dims, self.activation, self.dropout)
        self.out = GroupedMLP(num_tasks, h, (1,), self.activation, last_activation=False)
        children = [t for t, p in enumerate(parents) if p is not None]
        # one slot per child task: transfer g_t [H, H] and the projections h1 | h2 | h3 [H, 3H]
        # (none without child tasks, so that no parameter goes unused)
        if children:
            self.transfer_weight, self.transfer_bias = _grouped_parameters(len(children), h, h)
            self.attn_weight, self.attn_bias = _grouped_parameters(len(children), h, 3 * h)
        depth: list[int] = []
        for p in parents:
            depth.append(0 if p is None else depth[p] + 1)
        self._levels: list[tuple[list[int], list[int]]] = []  # (child tasks, their parents)
        for d in range(1, max(depth, default=0) + 1):
            slots = [k for k, t in enumerate(children) if depth[t] == d]
            tasks = [children[k] for k in slots]
            self._levels.append((tasks, [parents[t] for t in tasks]))
            self.register_buffer(f"slots_{d}", torch.tensor(slots), persistent=False)
            self.register_buffer(f"tasks_{d}", torch.tensor(tasks), persistent=False)

    def ait(self, z_parent: Tensor, q: Tensor, slots: Tensor) -> Tensor:
        """The AIT module for ``N`` child tasks at once.

        Args:
            z_parent: ``[N, B, H]`` the parents' outputs ``z_{parent}``.
            q: ``[N, B, H]`` the children's tower outputs ``q_t``.
            slots: ``[N]`` long, each child's index among the head's child tasks (selects its
                transfer and projection weights).

        Returns:
            ``[N, B, H]``: ``z_t`` of each child.
        """
        n, b, h = q.shape
        info = torch.baddbmm(
            self.transfer_bias.index_select(0, slots),
            z_parent,
            self.transfer_weight.index_select(0, slots),
        )
        info = self.act(info)  # transferred information p_{t-1}
        if self.dropout and self.training:
            info = F.dropout(info, self.dropout, True)
        u = torch.cat([info, q], dim=1)  # [N, 2B, H]: candidates u ∈ {p_{t-1}, q_t}
        proj = torch.baddbmm(
            self.attn_bias.index_select(0, slots), u, self.attn_weight.index_select(0, slots)
        )  # [N, 2B, 3H]
        h1, h2, h3 = proj.view(n, 2, b, 3, h).unbind(3)
        return ait_attention(h1, h2, h3)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, D]`` → conditional logits ``[B, T]``."""
        q = self.towers(x)  # [T, B, H]
        z = list(q.unbind(0))
        for d, (tasks, pars) in enumerate(self._levels, start=1):
            z_parent = torch.stack([z[p] for p in pars])
            q_level = q.index_select(0, getattr(self, f"tasks_{d}"))
            out = self.ait(z_parent, q_level, getattr(self, f"slots_{d}"))
            for j, t in enumerate(tasks):
                z[t] = out[j]
        return self.out(torch.stack(z)).squeeze(-1).t()

    def to_config(self) -> dict[str, Any]:
        return {
            "tower_dims": list(self.tower_dims),
            "activation": self.activation,
            "dropout": self.dropout,
        }
