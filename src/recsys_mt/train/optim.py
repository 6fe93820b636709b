"""Optimisers, learning-rate schedules and gradient clipping for the :class:`Trainer`.

- :func:`resolve_param_groups` asks the model for its parameter groups (``param_groups(sparse)``)
  or falls back to one group of all trainable parameters, and normalises every group to
  ``{"params", "lr", "weight_decay", "sparse", "lr_scale", ...}``.
- :func:`build_optimizer` builds one optimiser for the dense groups (AdamW / Adam / SGD) and,
  when some groups hold sparse-gradient embedding tables, a second one for them
  (:class:`~recsys_mt.train.sparse_optim.RowSparseAdam`, or plain SGD for ``"sgd"``), joined by
  :class:`CombinedOptimizer` so the training loop sees a single optimiser.
- :func:`build_scheduler` turns ``"cosine"`` / ``"linear"`` / ``"linear_warmup"`` or a callable
  into a per-optimiser-step :class:`~torch.optim.lr_scheduler.LRScheduler` (``None`` with
  ``warmup_steps`` is a warm-up to a constant rate).
- :func:`clip_grad_norm_` clips by the global norm over dense *and* sparse gradients
  (:func:`torch.nn.utils.clip_grad_norm_` raises ``NotImplementedError`` on sparse COO grads).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from .settings import (
    DENSE_OPTIMIZERS,
    OPTIMIZERS,
    SCHEDULERS,
    SPARSE_KWARGS,
    check_optimizer_kwargs,
    check_schedule,
    dense_only_kwargs,
)
from .sparse_optim import RowSparseAdam, row_grad

__all__ = [
    "CombinedOptimizer",
    "OPTIMIZERS",
    "SCHEDULERS",
    "build_optimizer",
    "build_scheduler",
    "clip_grad_norm_",
    "grad_norm",
    "resolve_param_groups",
]

OptimizerFactory = Callable[[list[dict[str, Any]]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]


# --------------------------------------------------------------------------- parameter groups


def resolve_param_groups(
    model: nn.Module, sparse: bool, lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """The model's parameter groups, normalised.

    If the model defines ``param_groups(sparse)`` it is called (this is also the model's cue to
    switch its embedding tables to sparse gradients when ``sparse`` is true); otherwise all
    parameters form one group. Each returned group has:

    - ``"params"``: the trainable (``requires_grad``) parameters, at least one;
    - ``"sparse"``: ``True`` only if the model flagged it *and* ``sparse`` is true;
    - ``"lr_scale"`` and ``"lr"`` (``= lr * lr_scale``);
    - ``"weight_decay"``: the group's own value, or ``weight_decay`` when absent / ``None``;
    - any other keys the model put there (e.g. ``"name"``), unchanged.

    Groups left empty after dropping frozen parameters are removed. A parameter listed in two
    groups raises ``ValueError``.
    """
    fn = getattr(model, "param_groups", None)
    if callable(fn):
        raw = fn(sparse=sparse)
        if not isinstance(raw, (list, tuple)) or not all(isinstance(g, dict) for g in raw):
            raise TypeError("model.param_groups(sparse) must return a list of dicts")
    else:
        raw = [{"params": list(model.parameters())}]
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, group in enumerate(raw):
        if "params" not in group:
            raise ValueError(f"param group {i} has no 'params' entry")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        params = [p for p in params if p.requires_grad]
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter appears in more than one param group (group {i})")
            seen.add(id(p))
        if not params:
            continue
        scale = float(group.get("lr_scale", 1.0))
        wd = group.get("weight_decay")
        out = {k: v for k, v in group.items() if k != "params"}
        out.update(
            params=params,
            sparse=bool(group.get("sparse", False)) and sparse,
            lr_scale=scale,
            lr=lr * scale,
            weight_decay=float(weight_decay if wd is None else wd),
        )
        if out["sparse"] and wd is not None and float(wd) > 0:
            warnings.warn(
                f"param group {i} is sparse: its weight_decay={wd} is ignored (SparseAdam "
                "applies none)",
                stacklevel=2,
            )
        groups.append(out)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


# --------------------------------------------------------------------------- optimisers


class CombinedOptimizer(Optimizer):
    """Several optimisers driven as one (e.g. AdamW for dense weights + SparseAdam for
    embedding tables).

    ``param_groups`` is the concatenation of the children's groups (the *same* dict objects),
    so learning-rate schedulers and :class:`torch.amp.GradScaler` act on every child through
    this object. ``step`` / ``zero_grad`` / ``state_dict`` / ``load_state_dict`` forward to each
    child; the state dict is ``{"optimizers": [child_state, ...]}``.

    ``Optimizer.__init__`` is deliberately not called: the children own the groups and the
    state; this subclass exists so code that checks ``isinstance(x, Optimizer)`` (LR schedulers)
    accepts it.
    """

    def __init__(self, optimizers: Sequence[Optimizer]):
        optimizers = list(optimizers)
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.optimizers = optimizers
        self.defaults: dict[str, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict[Tensor, Any]:  # type: ignore[override]
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Step every child. A closure, if given, is evaluated once (with grad enabled)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        states = state_dict.get("optimizers")
        if states is None or len(states) != len(self.optimizers):
            got = "none" if states is None else len(states)
            raise ValueError(
                f"optimizer state holds {got} optimizer(s), this CombinedOptimizer has "
                f"{len(self.optimizers)} (were sparse embeddings switched on/off since?)"
            )
        for opt, st in zip(self.optimizers, states):
            opt.load_state_dict(st)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise NotImplementedError("add param groups to one of CombinedOptimizer.optimizers")

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers, "defaults": self.defaults}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        inner = ", ".join(type(o).__name__ for o in self.optimizers)
        return f"CombinedOptimizer({inner})"


def _clean(group: dict[str, Any], drop: Iterable[str] = ()) -> dict[str, Any]:
    """A shallow copy of ``group`` without the keys in ``drop``."""
    drop = set(drop)
    return {k: v for k, v in group.items() if k not in drop}


def build_optimizer(
    groups: list[dict[str, Any]],
    optimizer: str | OptimizerFactory,
    lr: float,
    optimizer_kwargs: dict[str, Any] | None = None,
) -> Optimizer:
    """Build the optimiser for normalised ``groups`` (see :func:`resolve_param_groups`).

    ``optimizer`` is a name in :data:`OPTIMIZERS` or a callable ``(groups) -> Optimizer`` that
    receives the groups unchanged (with their ``"lr"``, ``"weight_decay"`` and ``"sparse"``
    entries) and has full control (``optimizer_kwargs`` must then be empty). For names, dense
    groups go to AdamW / Adam / SGD (with ``optimizer_kwargs``, e.g. ``betas`` or ``momentum``,
    checked by :func:`~recsys_mt.train.settings.check_optimizer_kwargs`); sparse groups go to
    RowSparseAdam (adam, adamw; with ``betas`` and ``eps``) or plain SGD (sgd), *without*
    weight decay: those optimisers apply no decay, and decaying an embedding table would touch
    every row every step. A ``UserWarning`` names the other ``optimizer_kwargs`` set to a
    non-default value (e.g. SGD's ``momentum``, Adam's ``amsgrad``) when sparse groups exist,
    as they do not reach those groups. The two are joined by :class:`CombinedOptimizer` when
    both exist.
    """
    check_optimizer_kwargs(optimizer, optimizer_kwargs)
    if callable(optimizer):
        opt = optimizer(groups)
        if not isinstance(opt, Optimizer):
            raise TypeError(
                f"the optimizer factory returned {type(opt).__name__}, not an Optimizer"
            )
        return opt
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a callable, got {optimizer!r}")
    name = optimizer.lower()
    kwargs = dict(optimizer_kwargs or {})
    dense = [g for g in groups if not g["sparse"]]
    sparse = [g for g in groups if g["sparse"]]
    opts: list[Optimizer] = []
    if dense:
        cls = DENSE_OPTIMIZERS[name]
        if name in ("adam", "adamw") and "fused" not in kwargs and "foreach" not in kwargs:
            # the fused kernel does Adam's element-wise passes in one sweep (CPU and CUDA)
            params = [p for g in dense for p in g["params"]]
            if all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params):
                kwargs["fused"] = True
        opts.append(cls([_clean(g) for g in dense], lr=lr, **kwargs))
    if sparse:
        _warn_dense_only(name, optimizer_kwargs or {})
        sparse_groups = [_clean(g, drop=("weight_decay",)) for g in sparse]
        keep = {k: kwargs[k] for k in SPARSE_KWARGS[name] if k in kwargs}
        if name == "sgd":
            opts.append(torch.optim.SGD(sparse_groups, lr=lr, **keep))
        else:
            opts.append(RowSparseAdam(sparse_groups, lr=lr, **keep))
    return opts[0] if len(opts) == 1 else CombinedOptimizer(opts)


def _warn_dense_only(name: str, optimizer_kwargs: dict[str, Any]) -> None:
    """Warn about ``optimizer_kwargs`` that change the dense update but miss the sparse one."""
    missed = dense_only_kwargs(name, optimizer_kwargs)
    if missed:
        sparse_cls = "SGD" if name == "sgd" else "RowSparseAdam"
        passed = ", ".join(SPARSE_KWARGS[name]) or "none"
        warnings.warn(
            f"optimizer_kwargs {missed} apply to the dense parameters only: the sparse embedding "
            f"tables are updated by {sparse_cls}, which takes {passed} of them; pass "
            "sparse_embeddings=False to use one optimiser for every parameter",
            UserWarning,
            stacklevel=3,
        )


def optimizer_children(optimizer: Optimizer) -> list[Optimizer]:
    """The optimisers inside ``optimizer`` (itself, unless it is a :class:`CombinedOptimizer`)."""
    if isinstance(optimizer, CombinedOptimizer):
        return list(optimizer.optimizers)
    return [optimizer]


# --------------------------------------------------------------------------- schedulers


def _schedule_factor(
    kind: str, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "linear_warmup":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # linear decay
            shape = 1.0 - progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * shape

    return factor


def build_scheduler(
    scheduler: str | SchedulerFactory | None,
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LRScheduler | None:
    """A scheduler stepped once per optimiser step, or ``None``.

    Names (all with an optional linear warm-up over ``warmup_steps`` steps from ``lr /
    warmup_steps`` to ``lr``):

    - ``"cosine"``: then cosine decay to ``min_lr_ratio * lr`` at ``total_steps``;
    - ``"linear"``: then linear decay to ``min_lr_ratio * lr`` at ``total_steps``;
    - ``"linear_warmup"``: then constant.

    ``None`` is a constant rate: no scheduler, or with ``warmup_steps > 0`` the warm-up of
    ``"linear_warmup"``. A callable ``(optimizer) -> LRScheduler`` is used as is (it must not be
    :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`, which needs a metric).
    ``warmup_steps`` with a callable and ``min_lr_ratio`` with anything but ``"cosine"`` /
    ``"linear"`` would have no effect and raise ``ValueError`` (see :func:`check_schedule`).
    """
    check_schedule(scheduler, warmup_steps, min_lr_ratio)
    if scheduler is None:
        if warmup_steps == 0:
            return None
        scheduler = "linear_warmup"
    if callable(scheduler):
        sched = scheduler(optimizer)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise TypeError(
                "ReduceLROnPlateau is stepped with a metric and is not supported; "
                "use a per-step scheduler"
            )
        if not isinstance(sched, LRScheduler):
            raise TypeError(
                f"the scheduler factory returned {type(sched).__name__}, not an LRScheduler"
            )
        return sched
    warmup_steps = int(warmup_steps)
    return LambdaLR(optimizer, _schedule_factor(scheduler, total_steps, warmup_steps, min_lr_ratio))


# --------------------------------------------------------------------------- clipping


def _grads(parameters: Iterable[Tensor] | Tensor) -> list[Tensor]:
    """Parameters that have a gradient; sparse gradients are coalesced in place."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    out = []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse and not p.grad.is_coalesced():
            # Duplicate indices would be counted separately in the norm of the raw values.
            rows, values = row_grad(p.grad)
            p.grad = torch.sparse_coo_tensor(
                rows.unsqueeze(0), values, p.grad.shape, is_coalesced=True, check_invariants=False
            )
        out.append(p)
    return out


def grad_norm(parameters: Iterable[Tensor] | Tensor, norm_type: float = 2.0) -> Tensor:
    """Global ``norm_type``-norm of all gradients (dense and sparse COO), as a float32 tensor.

    Sparse gradients are coalesced first, so the norm is that of the dense equivalent.
    Returns a zero tensor when no parameter has a gradient.
    """
    params = _grads(parameters)
    if not params:
        return torch.zeros(())
    device = params[0].grad.device
    norms = []
    for p in params:
        g = p.grad._values() if p.grad.is_sparse else p.grad
        norms.append(torch.linalg.vector_norm(g.float(), norm_type).to(device))
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


def clip_grad_norm_(
    parameters: Iterable[Tensor] | Tensor,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """Scale gradients in place so their global norm is at most ``max_norm``.

    Like :func:`torch.nn.utils.clip_grad_norm_` (same ``max_norm / (norm + 1e-6)`` coefficient,
    clamped to 1) but also for sparse COO gradients, whose norm is computed from the values of
    the coalesced tensor and which are scaled through those values. No host synchronisation.

    Returns:
        The total norm *before* clipping.
    """
    params = _grads(parameters)
    total = grad_norm(params, norm_type)
    if not params:
        return total
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(f"the total norm of gradients is non-finite ({float(total)})")
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        g = p.grad
        c = coef.to(device=g.device, dtype=g.dtype)
        if g.is_sparse:
            g._values().mul_(c)
        else:
            g.mul_(c)
    return total
