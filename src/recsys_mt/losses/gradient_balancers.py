"""Gradient-level balancers: task weights computed from the per-task gradients.

On the parameters shared by all tasks, GradNorm, PCGrad, MGDA, CAGrad and Pareto weights all
produce a non-negative combination ``Σ_t c_t g_t`` of the task gradients ``g_t``. A balancer
here therefore only computes the coefficients ``c [T]`` from ``g [T, N]``
(:meth:`~recsys_mt.losses.Balancer.weights_from`); :func:`balance_gradients` back-propagates
``Σ_t c_t · L_t`` with ``c`` detached, which gives exactly that combination on the shared
parameters in one backward pass (plus the ``T`` gradient calls the statistics need).

``needs_grads`` chooses the gradients:

* ``"shared"``: w.r.t. :meth:`MultiTaskModel.shared_parameters
  <recsys_mt.model.MultiTaskModel.shared_parameters>` (dense parameters of the encoders and the
  fusion, and the head's shared trunk), flattened and concatenated, ``[T, P]``;
* ``"representation"``: w.r.t. the fusion output ``fused [B, D]``, flattened, ``[T, B·D]``:
  cheaper (the "upper bound" of MGDA-UB), and the only choice when the encoders are embedding
  tables alone.

All statistics are computed in float32 (NumPy float64 for the ``[T, T]`` solvers).

A task with no observed rows in the batch (a child task under conditional supervision when no
row has a positive parent) has a constant zero loss and an all-zero gradient row. The min-norm
balancers (:class:`MGDA`, :class:`ParetoWeights`) leave such tasks out of their problem with
weight 0 (:func:`observed_tasks`); otherwise the zero vector would be the min-norm point and
the whole step would get a zero gradient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..registry import register
from .balancers import Balancer
from .min_norm import cagrad_weights, min_norm_weights

__all__ = [
    "CAGrad",
    "GRAD_MODES",
    "GradNorm",
    "GradientBalancer",
    "MGDA",
    "PCGrad",
    "ParetoWeights",
    "balance_gradients",
    "observed_tasks",
    "task_gradients",
]

GRAD_MODES = ("shared", "representation")
NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def task_gradients(losses: list[Tensor], inputs: list[Tensor]) -> Tensor:
    """``[T, N]`` float32: row ``t`` the gradient of ``losses[t]`` w.r.t. ``inputs``, flattened
    and concatenated (zeros where a loss does not depend on an input). Keeps the graph."""
    rows = []
    for loss in losses:
        if not loss.requires_grad:
            rows.append(torch.cat([x.new_zeros(x.numel(), dtype=torch.float32) for x in inputs]))
            continue
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(x) if g is None else g).float().reshape(-1)
                    for g, x in zip(grads, inputs)
                ]
            )
        )
    return torch.stack(rows)


def balance_gradients(
    balancer: Balancer,
    losses: dict[str, Tensor],
    fused: Tensor,
    shared: Callable[[], list[Tensor]],
) -> tuple[Tensor, Tensor]:
    """``(Σ_t c_t · L_t, c [T])`` for a gradient-level balancer, ``c`` detached.

    Args:
        losses: ``{task: scalar}`` in the balancer's task order.
        fused: the fusion output ``[B, D]`` (for ``needs_grads="representation"``).
        shared: returns the shared parameters (for ``needs_grads="shared"``).
    """
    mode = balancer.needs_grads
    name = type(balancer).__name__
    if mode not in GRAD_MODES:
        raise ValueError(f"{name}.needs_grads must be None or one of {GRAD_MODES}, got {mode!r}")
    inputs = [fused] if mode == "representation" else shared()
    inputs = [x for x in inputs if x.requires_grad]
    if not inputs:
        raise ValueError(
            f"{name} needs gradients w.r.t. the {mode} "
            + ("parameters" if mode == "shared" else "representation")
            + ", but nothing there is trainable (only embedding tables or frozen encoders?): "
            "use grads='representation'"
        )
    names = balancer.task_names
    stacked = [losses[n] for n in names]
    grads = task_gradients(stacked, inputs)
    c = balancer.weights_from(losses, grads)
    if not isinstance(c, Tensor) or c.shape != (len(names),):
        shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
        raise ValueError(
            f"{name}.weights_from returned {shape}, expected a tensor of shape ({len(names)},): "
            f"one weight per task {names}"
        )
    c = c.detach().to(stacked[0].device, torch.float32)
    if not bool(torch.isfinite(c).all()):
        raise FloatingPointError(f"{name}.weights_from returned non-finite weights {c.tolist()}")
    total = sum(c[i] * loss for i, loss in enumerate(stacked))
    extra = getattr(balancer, "weights_loss", None)
    if extra is not None:
        total = total + extra(losses, grads)
    return total, c


def observed_tasks(grads: Tensor) -> np.ndarray:
    """Boolean ``[T]``: the tasks whose gradient row ``grads [T, N]`` is not all zero.

    A row is all zero exactly when the task has no observed row in the batch (its mask count,
    :meth:`MultiTaskModel.loss_counts <recsys_mt.model.MultiTaskModel.loss_counts>`, is 0: the
    masked loss is a constant 0) or when its loss does not reach the inputs at all; either way
    the task has nothing to contribute to the step's direction."""
    return (grads != 0).any(dim=1).cpu().numpy()


def _gram(grads: Tensor) -> np.ndarray:
    """``G Gᵀ`` ``[T, T]`` as float64 NumPy."""
    g = grads.float()
    return (g @ g.t()).double().cpu().numpy()


class GradientBalancer(Balancer):
    """Base of the built-in gradient-level balancers.

    Outside training (or under ``no_grad``) ``forward`` weighs the losses with the last weights
    computed (ones before the first step). ``Task.weight`` is not used: the balancer chooses
    the weights.

    Args:
        grads: ``"shared"`` (gradients w.r.t. the shared parameters) or ``"representation"``
            (w.r.t. the fusion output; cheaper).
    """

    def __init__(self, grads: str = "shared"):
        super().__init__()
        if grads not in GRAD_MODES:
            raise ValueError(f"grads must be one of {GRAD_MODES}, got {grads!r}")
        self.needs_grads = grads

    def build(self, tasks: list) -> None:
        super().build(tasks)
        self.register_buffer("last", torch.ones(len(tasks)), persistent=False)

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        return (self.last.to(stacked) * stacked).sum()

    def _keep(self, c: Any) -> Tensor:
        c = torch.as_tensor(c, dtype=torch.float32).to(self.last.device)
        self.last.copy_(c)
        return c

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.last.tolist()))

    def to_config(self) -> dict[str, Any]:
        return {"grads": self.needs_grads}


def _check_names(owner: str, arg: str, given: dict[str, float], names: list[str]) -> None:
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{owner} {arg} names unknown task(s) {unknown}; tasks: {names}")


@register("balancer", "pcgrad")
class PCGrad(GradientBalancer):
    """Projecting conflicting gradients (Yu et al., NeurIPS 2020).

    For each task ``i`` and the other tasks ``j`` in a random order, if ``g_i' · g_j < 0`` then
    ``g_i' ← g_i' − (g_i' · g_j / ‖g_j‖²) g_j``; the update is ``Σ_i g_i'``. Done on the Gram
    matrix in coefficient space, so ``Σ_i g_i' = Σ_t c_t g_t`` exactly.

    The order of each step comes from a generator seeded with ``seed`` and a hash of that
    step's Gram matrix: it changes from step to step as the gradients do, yet depends on nothing
    but ``seed`` and the gradients, so the balancer keeps no random state and a run resumed
    from a checkpoint takes the same orders as an uninterrupted one.
    """

    def __init__(self, seed: int = 0, grads: str = "shared"):
        super().__init__(grads)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"PCGrad seed must be an int >= 0, got {seed!r}")
        self.seed = int(seed)

    def _rng(self, gram: np.ndarray) -> np.random.Generator:
        digest = hashlib.blake2b(np.ascontiguousarray(gram).tobytes(), digest_size=16).digest()
        words = np.frombuffer(digest, dtype=np.uint32).tolist()
        return np.random.default_rng([self.seed, *words])

    def weights_from(self, losses: dict[str, Tensor], grads: Tensor) -> Tensor:
        m = _gram(grads)
        t = m.shape[0]
        rng = self._rng(m)
        coef = np.eye(t)
        for i in range(t):
            for j in rng.permutation([k for k in range(t) if k != i]):
                dot = float(coef[i] @ m[:, j])
                if dot < 0 and m[j, j] > 0:
                    coef[i, j] -= dot / m[j, j]
        return self._keep(coef.sum(0))

    def to_config(self) -> dict[str, Any]:
        return {"seed": self.seed, **super().to_config()}


def _normalizers(kind: str, losses: Tensor, norms: Tensor) -> Tensor:
    if kind == "l2":
        return norms
    if kind == "loss":
        return losses
    if kind == "loss+":
        return losses * norms
    return torch.ones_like(norms)


@register("balancer", "mgda")
class MGDA(GradientBalancer):
    """Multiple-gradient descent (Sener & Koltun, NeurIPS 2018): the min-norm point of the
    convex hull of the (normalised) task gradients, a common descent direction.

    Gradients are divided by ``n_t`` (``normalize``: ``"none"``; ``"l2"`` ‖g_t‖; ``"loss"`` L_t;
    ``"loss+"`` L_t·‖g_t‖) and ``w = argmin ‖Σ w_t g_t / n_t‖²`` over the simplex; the weights
    ``c_t ∝ w_t / n_t`` give the same direction on the raw gradients, rescaled to sum to 1.
    ``grads="representation"`` is MGDA-UB. Tasks with an all-zero gradient (no observed rows
    in the batch) are left out with weight 0; when every task's gradient is zero the weights
    are uniform (the step is zero on the shared parameters anyway).
    """

    def __init__(self, normalize: str = "loss+", grads: str = "shared"):
        super().__init__(grads)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"MGDA normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize

    def weights_from(self, losses: dict[str, Tensor], grads: Tensor) -> Tensor:
        stacked = torch.stack([losses[n].detach().float() for n in self.task_names])
        n = _normalizers(self.normalize, stacked, grads.norm(dim=1)).clamp_min(1e-12).cpu()
        gram = _gram(grads / n.to(grads.device)[:, None])
        w = torch.from_numpy(min_norm_weights(gram, active=observed_tasks(grads)))
        c = w.float() / n
        return self._keep(c / c.sum().clamp_min(1e-12))

    def to_config(self) -> dict[str, Any]:
        return {"normalize": self.normalize, **super().to_config()}


@register("balancer", "cagrad")
class CAGrad(GradientBalancer):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    Maximises the worst task's local improvement in a ball of radius ``c‖g₀‖`` around the
    average gradient ``g₀``. With ``w`` solving the dual
    (:func:`~recsys_mt.losses.min_norm.cagrad_weights`) and ``g_w = Σ_t w_t g_t``, the update
    is ``(g₀ + c‖g₀‖/‖g_w‖ · g_w) / (1 + c²)``, again a combination of task gradients.
    ``c = 0`` is the average gradient.
    """

    def __init__(self, c: float = 0.5, grads: str = "shared"):
        super().__init__(grads)
        if not (isinstance(c, (int, float)) and c >= 0):
            raise ValueError(f"CAGrad c must be a number >= 0, got {c!r}")
        self.c = float(c)

    def weights_from(self, losses: dict[str, Tensor], grads: Tensor) -> Tensor:
        m = _gram(grads)
        t = m.shape[0]
        w = cagrad_weights(m, self.c)
        gw = float(np.sqrt(max(w @ m @ w, 0.0)))
        g0 = float(np.sqrt(max(m.mean(), 0.0)))
        lam = self.c * g0 / gw if gw > 1e-12 else 0.0
        return self._keep((np.full(t, 1.0 / t) + lam * w) / (1.0 + self.c**2))

    def to_config(self) -> dict[str, Any]:
        return {"c": self.c, **super().to_config()}


@register("balancer", "pareto")
class ParetoWeights(GradientBalancer):
    """Pareto-efficient weights in the spirit of PE-LTR (Lin et al., RecSys 2019): the min-norm
    combination of the task gradients subject to lower bounds ``w_t ≥ bounds[t]``.

    Tasks with an all-zero gradient (no observed rows in the batch) are left out with weight 0,
    bound included; the others share the simplex under their bounds. When every task's
    gradient is zero the weights are the bounds plus an equal share of the rest.

    Args:
        bounds: ``{task: lower bound}`` in ``[0, 1]`` with sum ``≤ 1``; other tasks 0.
    """

    def __init__(self, bounds: dict[str, float] | None = None, grads: str = "shared"):
        super().__init__(grads)
        self.bounds = {k: float(v) for k, v in (bounds or {}).items()}
        bad = {k: v for k, v in self.bounds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"ParetoWeights bounds must lie in [0, 1], got {bad}")
        if sum(self.bounds.values()) > 1.0 + 1e-9:
            raise ValueError(f"ParetoWeights bounds sum to more than 1: {self.bounds}")

    def build(self, tasks: list) -> None:
        super().build(tasks)
        _check_names("ParetoWeights", "bounds", self.bounds, self.task_names)
        self.lower = np.array([self.bounds.get(n, 0.0) for n in self.task_names])

    def weights_from(self, losses: dict[str, Tensor], grads: Tensor) -> Tensor:
        return self._keep(min_norm_weights(_gram(grads), self.lower, observed_tasks(grads)))

    def to_config(self) -> dict[str, Any]:
        return {"bounds": dict(self.bounds), **super().to_config()}


@register("balancer", "gradnorm")
class GradNorm(GradientBalancer):
    """GradNorm (Chen et al., ICML 2018): learned weights that equalise training rates.

    Weights ``w [T]`` (a parameter, renormalised to ``Σ w = T`` before each use) weigh the
    losses. Their own loss, added to the training loss by :func:`balance_gradients`, is
    ``Σ_t |w_t ‖g_t‖ − Ḡ · r_t^α|`` with ``Ḡ`` the mean weighted gradient norm and
    ``r_t = (L_t / L_t(0)) / mean`` the relative inverse training rate (``L_t(0)``: the first
    loss seen, a buffer); the target is a constant, so only ``w`` learns from it, with the model
    optimizer (no weight decay).

    Args:
        alpha: ``≥ 0``; larger pulls slow tasks harder (0: equal weighted gradient norms).
    """

    def __init__(self, alpha: float = 1.5, grads: str = "shared"):
        super().__init__(grads)
        if not (isinstance(alpha, (int, float)) and alpha >= 0):
            raise ValueError(f"GradNorm alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)

    def build(self, tasks: list) -> None:
        super().build(tasks)
        self.w = nn.Parameter(torch.ones(len(tasks)))
        self.register_buffer("initial", torch.zeros(len(tasks)))

    def _stacked(self, losses: dict[str, Tensor]) -> Tensor:
        return torch.stack([losses[n].detach().float() for n in self.task_names])

    def weights_from(self, losses: dict[str, Tensor], grads: Tensor) -> Tensor:
        with torch.no_grad():
            self.w.clamp_(min=1e-3)
            self.w.mul_(len(self.task_names) / self.w.sum())
            now = self._stacked(losses).to(self.initial)
            self.initial.copy_(torch.where((self.initial <= 0) & (now > 0), now, self.initial))
        return self._keep(self.w.detach())

    def weights_loss(self, losses: dict[str, Tensor], grads: Tensor) -> Tensor:
        """``Σ_t |w_t ‖g_t‖ − target_t|`` over tasks with a recorded initial loss."""
        active = self.initial > 0
        weighted = self.w * grads.norm(dim=1).to(self.w)
        if not bool(active.any()):
            return weighted.sum() * 0.0
        ratio = self._stacked(losses).to(self.initial) / self.initial.clamp_min(1e-12)
        r = ratio / ratio[active].mean().clamp_min(1e-12)
        target = (weighted.detach()[active].mean() * r.pow(self.alpha)).detach()
        return ((weighted - target).abs() * active).sum()

    def to_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super().to_config()}
