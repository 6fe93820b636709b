"""Loss balancers: combine per-task losses into the scalar that is back-propagated.

Protocol (subclass :class:`Balancer`)::

    class MyBalancer(rm.Balancer):
        def build(self, tasks: list[Task]) -> None: ...             # create parameters if any
        def forward(self, losses: dict[str, Tensor]) -> Tensor: ... # task name -> scalar; total
        def to_config(self) -> dict: ...

Register with ``@rm.register("balancer", "name")`` to save models that use it. A balancer is an
``nn.Module``: learned weights are model parameters, trained by the same optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..registry import register


class Balancer(nn.Module):
    """Base class: ``forward({task: loss}) -> total loss``."""

    def build(self, tasks: list) -> None:
        self.task_names = [t.name for t in tasks]

    def forward(self, losses: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """Current effective weight of each task's loss (for logging)."""
        return {}

    def to_config(self) -> dict[str, Any]:
        return {}


@register("balancer", "static")
class StaticWeights(Balancer):
    """``Σ_t w_t · L_t`` with fixed weights.

    Args:
        weights: ``{task: weight}``; tasks not named use their ``Task.weight`` (default 1).
    """

    def __init__(self, weights: dict[str, float] | None = None):
        super().__init__()
        self.given = dict(weights or {})

    def build(self, tasks: list) -> None:
        super().build(tasks)
        unknown = sorted(set(self.given) - set(self.task_names))
        if unknown:
            raise ValueError(
                f"StaticWeights names unknown task(s) {unknown}; tasks: {self.task_names}"
            )
        self.w = {t.name: float(self.given.get(t.name, t.weight)) for t in tasks}

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

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        s = self.log_vars
        # a task with weight 0 has no loss term to balance: without the mask its s/2 alone would
        # be minimised and s would run to -inf
        active = (self.scale > 0).to(s.dtype)
        return (self.scale * torch.exp(-s) * stacked + 0.5 * s * active).sum()

    def weights(self) -> dict[str, float]:
        w = (self.scale * torch.exp(-self.log_vars.detach())).tolist()
        return dict(zip(self.task_names, w))

    def to_config(self) -> dict[str, Any]:
        return {"init_log_var": self.init_log_var}
