"""Multi-task heads: shared-bottom, MMoE and PLE, with experts fused into batched GEMMs.

A head maps the fused encoder output ``x [B, D]`` to one logit per task, ``[B, T]``. The
protocol (subclass :class:`Head`)::

    class MyHead(rm.Head):
        def build(self, in_dim: int, num_tasks: int) -> None: ...   # create parameters
        def forward(self, x: Tensor) -> Tensor: ...                 # [B, in_dim] -> [B, num_tasks]
        def to_config(self) -> dict: ...                            # constructor kwargs

Register it with ``@rm.register("head", "my_head")`` to save and load models that use it. A head
whose ``build`` accepts a ``parents`` keyword (the parent index of each task, ``None`` for roots)
is given the funnel by the model, as :class:`~recsys_mt.tasks.AITM` is.

Speed: all experts of a layer run as one batched matrix multiply (``baddbmm`` over a
``[G, B, d]`` stack) and the first expert layer of MMoE shares one GEMM with the gates, instead
of one small GEMM per expert. No BatchNorm: plain Linear + activation (+ dropout).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def check_head_args(head: str, dropout: Any, counts: dict, layers: dict) -> None:
    """Raise ``ValueError`` naming the argument of ``head`` that cannot build: ``dropout``
    outside ``[0, 1)``, a count (``num_experts``, …) that is not an int ``>= 1`` (``>= 0`` for
    ``num_shared_experts``), or layer sizes that are not a tuple of positive ints (``layers``:
    ``{name: (sizes, may_be_empty)}``)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{head}: dropout must be a number in [0, 1), got {dropout!r}")
    for name, value in counts.items():
        low = 0 if name == "num_shared_experts" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{head}: {name} must be an int >= {low}, got {value!r}")
    for name, (sizes, may_be_empty) in layers.items():
        ok = isinstance(sizes, (tuple, list)) and (may_be_empty or len(sizes) > 0)
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in sizes)
        if not ok:
            need = "a tuple of positive ints" + ("" if may_be_empty else ", at least one")
            raise ValueError(f"{head}: {name} must be {need}, got {sizes!r}")


class Head(nn.Module):
    """Base class of multi-task heads: ``forward(x [B, D]) -> logits [B, T]``."""

    def build(self, in_dim: int, num_tasks: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        return {}


class GroupedMLP(nn.Module):
    """``G`` independent MLPs evaluated together.

    Input ``[G, B, d_in]`` (or ``[B, d_in]`` shared by all groups), output ``[G, B, d_out]``.
    Each layer is one ``baddbmm``; the activation follows every layer except, when
    ``last_activation=False``, the last.
    """

    def __init__(
        self,
        groups: int,
        in_dim: int,
        dims: tuple[int, ...],
        activation: str = "relu",
        dropout: float = 0.0,
        last_activation: bool = True,
    ):
        super().__init__()
        self.groups = groups
        self.act = _activation(activation)
        self.dropout = dropout
        self.last_activation = last_activation
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        prev = in_dim
        for d in dims:
            bound = 1.0 / prev**0.5
            self.weights.append(nn.Parameter(torch.empty(groups, prev, d).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(groups, 1, d).uniform_(-bound, bound)))
            prev = d
        self.out_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if x.dim() == 2:  # shared input: one GEMM for all groups
                g, d_in, d_out = w.shape
                y = (x @ w.permute(1, 0, 2).reshape(d_in, g * d_out)).view(-1, g, d_out)
                x = y.transpose(0, 1) + b
            else:
                x = torch.baddbmm(b, x, w)
            if i < n - 1 or self.last_activation:
                x = self.act(x)
                if self.dropout and self.training:
                    x = F.dropout(x, self.dropout, True)
        return x


class _Towers(nn.Module):
    """One tower MLP per task, ``[T, B, d]`` → logits ``[B, T]``."""

    def __init__(self, num_tasks: int, in_dim: int, dims: tuple[int, ...], activation, dropout):
        super().__init__()
        self.mlp = GroupedMLP(num_tasks, in_dim, tuple(dims), activation, dropout)
        self.out = GroupedMLP(num_tasks, self.mlp.out_dim, (1,), activation, last_activation=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mlp(x)).squeeze(-1).t()


@register("head", "shared_bottom")
class SharedBottom(Head):
    """One shared MLP (``bottom_dims``) then a tower MLP (``tower_dims``) per task."""

    def __init__(
        self,
        bottom_dims: tuple[int, ...] = (128, 64),
        tower_dims: tuple[int, ...] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        layers = {"bottom_dims": (bottom_dims, False), "tower_dims": (tower_dims, True)}
        check_head_args("SharedBottom", dropout, {}, layers)
        self.bottom_dims = tuple(bottom_dims)
        self.tower_dims = tuple(tower_dims)
        self.activation = activation
        self.dropout = dropout
        _activation(activation)

    def build(self, in_dim: int, num_tasks: int) -> None:
        self.bottom = GroupedMLP(1, in_dim, self.bottom_dims, self.activation, self.dropout)
        self.towers = _Towers(
            num_tasks, self.bottom.out_dim, self.tower_dims, self.activation, self.dropout
        )
        self.num_tasks = num_tasks

    def forward(self, x: Tensor) -> Tensor:
        h = self.bottom(x)[0]  # [B, H]
        return self.towers(h)

    def to_config(self) -> dict[str, Any]:
        return {
            "bottom_dims": list(self.bottom_dims),
            "tower_dims": list(self.tower_dims),
            "activation": self.activation,
            "dropout": self.dropout,
        }


@register("head", "mmoe")
class MMoE(Head):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    ``E`` expert MLPs over the input, one softmax gate per task over the experts, a tower per
    task. Shapes: ``x [B, D]`` → experts ``[E, B, H]`` → per-task mixtures ``[T, B, H]`` →
    logits ``[B, T]``. The experts' first layer is one ``[D, E·H₁]`` GEMM for all experts, the
    gates one ``[D, T·E]`` GEMM for all tasks.
    """

    def __init__(
        self,
        num_experts: int = 4,
        expert_dims: tuple[int, ...] = (128, 64),
        tower_dims: tuple[int, ...] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        layers = {"expert_dims": (expert_dims, False), "tower_dims": (tower_dims, True)}
        check_head_args("MMoE", dropout, {"num_experts": num_experts}, layers)
        self.num_experts = num_experts
        self.expert_dims = tuple(expert_dims)
        self.tower_dims = tuple(tower_dims)
        self.activation = activation
        self.dropout = dropout
        self.act = _activation(activation)

    def build(self, in_dim: int, num_tasks: int) -> None:
        e, h1 = self.num_experts, self.expert_dims[0]
        self.num_tasks = num_tasks
        self.first = nn.Linear(in_dim, e * h1)
        self.gate = nn.Linear(in_dim, num_tasks * e)
        bound = 1.0 / in_dim**0.5
        nn.init.uniform_(self.first.weight, -bound, bound)
        nn.init.uniform_(self.gate.weight, -bound, bound)
        nn.init.zeros_(self.gate.bias)  # gates start near uniform
        self.rest = GroupedMLP(e, h1, self.expert_dims[1:], self.activation, self.dropout)
        self.towers = _Towers(
            num_tasks, self.rest.out_dim, self.tower_dims, self.activation, self.dropout
        )

    def forward(self, x: Tensor) -> Tensor:
        e, h1, t = self.num_experts, self.expert_dims[0], self.num_tasks
        h = self.act(self.first(x)).view(-1, e, h1).transpose(0, 1)  # [E, B, H1]
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout, True)
        gates = torch.softmax(self.gate(x).view(-1, t, e), dim=-1)  # [B, T, E]
        experts = self.rest(h) if len(self.expert_dims) > 1 else h  # [E, B, H]
        # Σ_e gate[b, t, e] · expert[e, b] as E fused multiply-adds into [T, B, H] (a batched
        # matmul of B tiny [T, E] × [E, H] products, or one broadcast [T, E, B, H] product, is
        # slower on the CPU)
        g = gates.permute(1, 2, 0).unsqueeze(-1)  # [T, E, B, 1]
        mixed = g[:, 0] * experts[0]
        for i in range(1, self.num_experts):
            mixed = torch.addcmul(mixed, g[:, i], experts[i])  # [T, B, H]
        return self.towers(mixed)

    def to_config(self) -> dict[str, Any]:
        return {
            "num_experts": self.num_experts,
            "expert_dims": list(self.expert_dims),
            "tower_dims": list(self.tower_dims),
            "activation": self.activation,
            "dropout": self.dropout,
        }


@register("head", "ple")
class PLE(Head):
    """Progressive layered extraction (Tang et al., RecSys 2020): stacked CGC levels.

    Each level has ``num_task_experts`` experts per task and ``num_shared_experts`` shared
    ones. Task ``t``'s gate mixes its own and the shared experts; except at the last level a
    shared gate mixes all experts to feed the next level's shared experts. Inputs per level are
    ``[T + 1, B, d]`` (one per task plus the shared stream); all experts of a level run as one
    batched GEMM stack.
    """

    def __init__(
        self,
        num_levels: int = 2,
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        expert_dims: tuple[int, ...] = (128, 64),
        tower_dims: tuple[int, ...] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        counts = {
            "num_levels": num_levels,
            "num_shared_experts": num_shared_experts,
            "num_task_experts": num_task_experts,
        }
        layers = {"expert_dims": (expert_dims, False), "tower_dims": (tower_dims, True)}
        check_head_args("PLE", dropout, counts, layers)
        self.num_levels = num_levels
        self.num_shared_experts = num_shared_experts
        self.num_task_experts = num_task_experts
        self.expert_dims = tuple(expert_dims)
        self.tower_dims = tuple(tower_dims)
        self.activation = activation
        self.dropout = dropout
        _activation(activation)

    def build(self, in_dim: int, num_tasks: int) -> None:
        t, s, k = num_tasks, self.num_shared_experts, self.num_task_experts
        self.num_tasks = t
        n_exp = t * k + s
        # expert e reads stream src[e]: task experts their task's stream, shared the shared one
        src = [i for i in range(t) for _ in range(k)] + [t] * s
        self.register_buffer("src", torch.tensor(src, dtype=torch.long), persistent=False)
        # gate g (task 0..T-1, then shared) chooses among experts allowed[g]
        allowed = [list(range(i * k, (i + 1) * k)) + list(range(t * k, n_exp)) for i in range(t)]
        allowed.append(list(range(n_exp)))
        self._allowed = allowed
        for g, idx in enumerate(allowed):
            self.register_buffer(
                f"allowed_{g}", torch.tensor(idx, dtype=torch.long), persistent=False
            )
        self.experts = nn.ModuleList()
        self.gates = nn.ModuleList()
        d = in_dim
        for level in range(self.num_levels):
            last = level == self.num_levels - 1
            self.experts.append(
                GroupedMLP(n_exp, d, self.expert_dims, self.activation, self.dropout)
            )
            n_gates = t if last else t + 1
            gate = nn.ModuleList([nn.Linear(d, len(allowed[g])) for g in range(n_gates)])
            for lin in gate:
                nn.init.zeros_(lin.bias)
            self.gates.append(gate)
            d = self.expert_dims[-1]
        self.towers = _Towers(t, d, self.tower_dims, self.activation, self.dropout)

    def forward(self, x: Tensor) -> Tensor:
        t = self.num_tasks
        streams: Tensor | None = None  # [T + 1, B, d]
        for experts, gates in zip(self.experts, self.gates):
            if streams is None:
                out = experts(x)  # shared input, [E, B, H]
                inputs = [x] * len(gates)
            else:
                out = experts(streams.index_select(0, self.src))
                inputs = [streams[g] for g in range(len(gates))]
            mixed = []
            for g, gate in enumerate(gates):
                w = torch.softmax(gate(inputs[g]), dim=-1)  # [B, n_allowed]
                sel = out.index_select(0, getattr(self, f"allowed_{g}"))  # [n_allowed, B, H]
                mixed.append((w.t().unsqueeze(-1) * sel).sum(0))  # [B, H]
            streams = torch.stack(mixed)  # [T (+1), B, H]
        return self.towers(streams[:t])

    def to_config(self) -> dict[str, Any]:
        return {
            "num_levels": self.num_levels,
            "num_shared_experts": self.num_shared_experts,
            "num_task_experts": self.num_task_experts,
            "expert_dims": list(self.expert_dims),
            "tower_dims": list(self.tower_dims),
            "activation": self.activation,
            "dropout": self.dropout,
        }
