"""Loss balancers: combine per-task losses into the scalar that is back-propagated.

Protocol (subclass :class:`Balancer`)::

    class MyBalancer(rm.Balancer):
        def build(self, tasks: list[Task]) -> None: ...             # create parameters if any
        def forward(self, losses: dict[str, Tensor]) -> Tensor: ... # task name -> scalar; total
        def to_config(self) -> dict: ...

Register with ``@rm.register("balancer", "name")`` to save models that use it. A balancer is an
``nn.Module``: learned weights are model parameters, trained by the same optimizer.

Gradient-level balancers (:mod:`recsys_mt.losses.gradient_balancers`) set ``needs_grads`` to
``"shared"`` or ``"representation"`` and implement ``weights_from(losses, grads [T, N]) ->
weights [T]``; the model then back-propagates ``Σ_t weights_t · L_t`` with the weights detached.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import register


class Balancer(nn.Module):
    """Base class: ``forward({task: loss}) -> total loss``.

    ``needs_grads``: ``None`` for a loss-level balancer (``forward`` combines the losses);
    ``"shared"`` or ``"representation"`` for a gradient-level one, which implements
    :meth:`weights_from` and gets the per-task gradients during training.
    """

    needs_grads: str | None = None

    def build(self, tasks: list) -> None:
        self.task_names = [t.name for t in tasks]

    def forward(self, losses: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights_from(self, losses: dict[str, Tensor], grads: Tensor) -> Tensor:
        """Gradient-level balancers: the weight ``[T]`` of each task's loss (tasks in
        ``self.task_names`` order) from the losses and the per-task gradients ``grads [T, N]``
        (float32, row ``t`` the flattened gradient of ``L_t`` w.r.t. what ``needs_grads``
        names)."""
        raise NotImplementedError(
            f"{type(self).__name__} sets needs_grads={self.needs_grads!r} but does not implement "
            "weights_from(losses, grads) -> Tensor [T]"
        )

    def weights(self) -> dict[str, float]:
        """Effective weight of each task's loss in the last training call (for logging)."""
        return {}

    def to_config(self) -> dict[str, Any]:
        return {}


def check_weight(owner: str, task: str, value: Any) -> float:
    """``value`` as a float if it is a finite real number ``>= 0`` (not a bool), else a
    ``TypeError`` / ``ValueError`` naming ``task``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # NumPy bools aren't Real
        raise TypeError(
            f"{owner}: the weight of task {task!r} must be a real number, got "
            f"{type(value).__name__} {value!r}"
        )
    w = float(value)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"{owner}: the weight of task {task!r} must be finite and >= 0, got {w}")
    return w


@register("balancer", "static")
class StaticWeights(Balancer):
    """``Σ_t w_t · L_t`` with fixed weights.

    Args:
        weights: ``{task: weight}``; tasks not named use their ``Task.weight`` (default 1).
    """

    def __init__(self, weights: dict[str, float] | None = None):
        super().__init__()
        if weights is not None and not isinstance(weights, dict):
            raise TypeError(f"StaticWeights weights must be a dict, got {type(weights).__name__}")
        self.given = {k: check_weight("StaticWeights", k, v) for k, v in (weights or {}).items()}

    def build(self, tasks: list) -> None:
        super().build(tasks)
        unknown = sorted(set(self.given) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"StaticWeights names unknown task(s) {unknown}; tasks: {self.task_names}"
            )
        self.w = {
            t.name: check_weight("StaticWeights", t.name, self.given.get(t.name, t.weight))
            for t in tasks
        }

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(self.w[k] * v for k, v in losses.items())

    def weights(self) -> dict[str, float]:
        return dict(self.w)

    def to_config(self) -> dict[str, Any]:
        return {"weights": self.given}


@register("balancer", "uncertainty")
class UncertaintyWeighting(Balancer):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns ``s_t = log σ_t²`` per task and minimises
    ``Σ_t c_t · exp(−s_t) · L_t + s_t / 2`` with ``c_t = 1`` for classification (BCE) and
    ``c_t = 1/2`` for regression (MSE), the paper's likelihood-derived form. ``s_t`` starts at 0
    (all weights 1 for BCE). Task weights ``Task.weight`` multiply ``L_t`` as well; a task with
    weight 0 contributes nothing (its ``s_t`` stays at the initial value).

    :meth:`weights` gives ``c_t · exp(−s_t)`` as applied in the last training call (the
    optimiser has moved ``s`` since); before the first, from the current ``s``.
    """

    def __init__(self, init_log_var: float = 0.0):
        super().__init__()
        self.init_log_var = init_log_var

    def build(self, tasks: list) -> None:
        super().build(tasks)
        self.log_vars = nn.Parameter(torch.full((len(tasks),), float(self.init_log_var)))
        self.register_buffer(
            "scale",
            torch.tensor([t.weight * (1.0 if t.binary else 0.5) for t in tasks]),
            persistent=False,
        )
        self.register_buffer("last", torch.full((len(tasks),), float("nan")), persistent=False)

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        s = self.log_vars
        # a task with weight 0 has no loss term to balance: without the mask its s/2 alone would
        # be minimised and s would run to -inf
        active = (self.scale > 0).to(s.dtype)
        w = self.scale * torch.exp(-s)
        if self.training and torch.is_grad_enabled():
            self.last.copy_(w.detach())
        return (w * stacked + 0.5 * s * active).sum()

    def weights(self) -> dict[str, float]:
        w = self.last
        if bool(torch.isnan(w).any()):  # no training call yet
            w = self.scale * torch.exp(-self.log_vars.detach())
        return dict(zip(self.task_names, w.tolist()))

    def to_config(self) -> dict[str, Any]:
        return {"init_log_var": self.init_log_var}


@register("balancer", "dwa")
class DWA(Balancer):
    """Dynamic weight average (Liu, Johns & Davison, CVPR 2019).

    ``w_t = T · softmax_t(r_t / temperature)`` with ``r_t = L̄_t(k−1) / L̄_t(k−2)``, the ratio of
    task ``t``'s mean training loss over the last two completed periods: a task whose loss
    falls slowly gets more weight. The paper averages over epochs; here a period is ``period``
    training calls (micro-batches), so the weights adapt within long epochs and need no epoch
    signal. All weights are 1 until two periods are complete. The running sums are buffers,
    saved with the model.

    :meth:`weights` gives the weights applied in the last training call; before the first (in
    a new or just loaded model), those the next call will apply (:meth:`current`). The call
    that completes a period applies the weights from before it: the new ones start with the
    next call.

    Args:
        temperature: softmax temperature ``> 0`` (larger: closer to equal weights).
        period: training calls per averaging period (``>= 1``).
    """

    def __init__(self, temperature: float = 2.0, period: int = 100):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature!r}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"DWA period must be an int >= 1, got {period!r}")
        self.temperature = float(temperature)
        self.period = period

    def build(self, tasks: list) -> None:
        super().build(tasks)
        t = len(tasks)
        self.register_buffer("running", torch.zeros(t, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        # previous period means: row 0 the latest, row 1 the one before; completed periods
        self.register_buffer("previous", torch.zeros(2, t, dtype=torch.float64))
        self.register_buffer("completed", torch.zeros((), dtype=torch.long))
        self.register_buffer("last", torch.full((t,), float("nan")), persistent=False)

    def current(self) -> Tensor:
        """Weights ``[T]`` from the last two completed periods (ones before)."""
        if int(self.completed) < 2:
            return torch.ones(len(self.task_names), device=self.running.device)
        r = self.previous[0] / self.previous[1].clamp_min(1e-12)
        return (len(self.task_names) * torch.softmax(r / self.temperature, 0)).float()

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        w = self.current().to(stacked)
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.last.copy_(w.detach())
                self.running += stacked.detach().double()
                self.calls += 1
                if int(self.calls) >= self.period:
                    self.previous[1] = self.previous[0]
                    self.previous[0] = self.running / self.calls
                    self.completed += 1
                    self.running.zero_()
                    self.calls.zero_()
        return (w * stacked).sum()

    def weights(self) -> dict[str, float]:
        w = self.last
        if bool(torch.isnan(w).any()):  # no training call yet
            w = self.current()
        return dict(zip(self.task_names, w.tolist()))

    def to_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "period": self.period}
