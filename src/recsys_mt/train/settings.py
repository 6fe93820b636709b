"""Validation of :class:`~recsys_mt.train.Trainer`'s settings: a clear error naming the
argument before anything is built, also for a setting that would have no effect."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "as_list",
    "check_model",
    "check_optimizer_kwargs",
    "check_schedule",
    "check_settings",
    "hparams",
    "positive_int",
]

#: Names accepted by ``Trainer(optimizer=...)``.
OPTIMIZERS = ("adamw", "adam", "sgd")
#: Names accepted by ``Trainer(scheduler=...)``.
SCHEDULERS = ("cosine", "linear", "linear_warmup")
#: The dense optimiser of each name in :data:`OPTIMIZERS`.
DENSE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}
#: ``optimizer_kwargs`` the sparse-embedding optimiser receives too (the rest are dense only).
SPARSE_KWARGS = {"adamw": ("betas", "eps"), "adam": ("betas", "eps"), "sgd": ()}
#: ``optimizer_kwargs`` that need not reach the sparse optimiser: how the dense update is
#: computed (not what it is), or weight-decay options (sparse groups get no decay).
DENSE_ONLY_KWARGS = ("fused", "foreach", "capturable", "differentiable", "decoupled_weight_decay")
#: Optimiser arguments the trainer sets itself, and the argument to use instead.
TRAINER_KWARGS = {
    "params": "the trainer passes the model's parameter groups",
    "lr": "use Trainer(lr=...)",
    "weight_decay": "use Trainer(weight_decay=...); every parameter group sets its own",
}


def check_settings(
    *,
    max_epochs: Any,
    batch_size: Any,
    grad_accum_steps: Any,
    log_every_n_steps: Any,
    eval_batch_size: Any,
    num_threads: Any,
    lr: Any,
    weight_decay: Any,
    grad_clip_norm: Any,
    sparse_embeddings: Any,
    data_on_device: Any,
    optimizer: Any,
    scheduler: Any,
    warmup_steps: Any,
    min_lr_ratio: Any,
    shuffle: Any = True,
    seed: Any = 0,
    optimizer_kwargs: Any = None,
) -> None:
    """Raise ``ValueError`` (``TypeError`` for a wrong type) naming the first invalid trainer
    argument."""
    positive_int("max_epochs", max_epochs, minimum=1)
    positive_int("batch_size", batch_size, minimum=1)
    positive_int("grad_accum_steps", grad_accum_steps, minimum=1)
    positive_int("log_every_n_steps", log_every_n_steps, minimum=0)
    if eval_batch_size is not None:
        positive_int("eval_batch_size", eval_batch_size, minimum=1)
    if num_threads is not None:
        positive_int("num_threads", num_threads, minimum=1)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if grad_clip_norm is not None and not grad_clip_norm > 0:
        raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm!r}")
    if sparse_embeddings not in ("auto", True, False):
        raise ValueError(
            f"sparse_embeddings must be 'auto', True or False, got {sparse_embeddings!r}"
        )
    if data_on_device not in ("auto", True, False):
        raise ValueError(f"data_on_device must be 'auto', True or False, got {data_on_device!r}")
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZERS} or a callable, got {optimizer!r}"
            )
    elif not callable(optimizer):
        raise ValueError(f"optimizer must be a name or a callable, got {optimizer!r}")
    check_optimizer_kwargs(optimizer, optimizer_kwargs)
    check_schedule(scheduler, warmup_steps, min_lr_ratio)


def check_schedule(scheduler: Any, warmup_steps: Any, min_lr_ratio: Any) -> None:
    """Raise ``ValueError`` (``TypeError`` for a wrong type) naming the bad scheduler setting,
    also for one the chosen scheduler would ignore: ``warmup_steps`` with a callable scheduler,
    ``min_lr_ratio`` with one that does not decay (not ``"cosine"`` / ``"linear"``)."""
    if scheduler is not None and not callable(scheduler) and scheduler not in SCHEDULERS:
        raise ValueError(
            f"scheduler must be None, one of {SCHEDULERS} or a callable, got {scheduler!r}"
        )
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral):
        raise TypeError(f"warmup_steps must be an integer, got {warmup_steps!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if isinstance(min_lr_ratio, bool) or not isinstance(min_lr_ratio, numbers.Real):
        raise TypeError(f"min_lr_ratio must be a number, got {min_lr_ratio!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if callable(scheduler) and warmup_steps > 0:
        raise ValueError(
            f"warmup_steps={warmup_steps} is used by the named schedulers {SCHEDULERS} and by "
            "scheduler=None; a callable scheduler must do its own warm-up (e.g. with "
            "torch.optim.lr_scheduler.SequentialLR)"
        )
    if min_lr_ratio != 0.0 and scheduler not in ("cosine", "linear"):
        raise ValueError(
            f"min_lr_ratio={min_lr_ratio} is the final rate of the 'cosine' and 'linear' "
            f"decays; scheduler={scheduler!r} does not use it"
        )


def check_optimizer_kwargs(optimizer: Any, optimizer_kwargs: Any) -> None:
    """Raise ``ValueError`` (``TypeError`` for a wrong type) unless ``optimizer_kwargs`` are
    arguments of the named optimiser's torch class, other than those the trainer sets itself
    (:data:`TRAINER_KWARGS`), with values that class accepts. A callable ``optimizer`` takes
    none."""
    if optimizer_kwargs is None:
        return
    if not isinstance(optimizer_kwargs, Mapping):
        raise TypeError(f"optimizer_kwargs must be a dict or None, got {optimizer_kwargs!r}")
    if not optimizer_kwargs:
        return
    if not isinstance(optimizer, str):
        raise ValueError(
            f"optimizer_kwargs {sorted(map(str, optimizer_kwargs))} apply to the named "
            f"optimizers {OPTIMIZERS}; a callable optimizer builds its optimiser itself"
        )
    cls = DENSE_OPTIMIZERS.get(optimizer.lower())
    if cls is None:  # an unknown name: the optimizer check reports it
        return
    for key in optimizer_kwargs:
        if not isinstance(key, str):
            raise TypeError(f"optimizer_kwargs keys must be strings, got {key!r}")
        if key in TRAINER_KWARGS:
            raise ValueError(f"optimizer_kwargs cannot set {key!r}: {TRAINER_KWARGS[key]}")
    params = inspect.signature(cls).parameters
    accepted = [k for k in params if k not in TRAINER_KWARGS]
    unknown = [k for k in optimizer_kwargs if k not in params]
    if unknown:
        raise ValueError(
            f"optimizer_kwargs {unknown} are not arguments of torch.optim.{cls.__name__} "
            f"(optimizer={optimizer!r}), which takes {accepted}"
        )
    # build it on a probe tensor: torch checks the values (a negative momentum, nesterov
    # without momentum ...); the flags of the kernel depend on the device and are left out
    probe = {k: v for k, v in optimizer_kwargs.items() if k not in DENSE_ONLY_KWARGS}
    try:
        cls([torch.zeros(1, requires_grad=True)], **probe)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"optimizer_kwargs {dict(optimizer_kwargs)!r} are not valid for "
            f"torch.optim.{cls.__name__}: {e}"
        ) from e


def dense_only_kwargs(name: str, optimizer_kwargs: Mapping[str, Any]) -> list[str]:
    """The ``optimizer_kwargs`` of optimiser ``name`` that change the dense update (a value
    other than the torch default) but do not reach the sparse-embedding optimiser."""
    params = inspect.signature(DENSE_OPTIMIZERS[name]).parameters
    missed = []
    for key, value in optimizer_kwargs.items():
        if key in SPARSE_KWARGS[name] or key in DENSE_ONLY_KWARGS:
            continue
        try:
            same = bool(value == params[key].default)
        except Exception:  # e.g. compared element-wise
            same = False
        if not same:
            missed.append(key)
    return missed


def positive_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def as_list(items: Any, cls: type, name: str) -> list:
    if items is None:
        return []
    if isinstance(items, cls):
        return [items]
    items = list(items)
    for item in items:
        if not isinstance(item, cls):
            raise TypeError(f"{name} must hold {cls.__name__} instances, got {type(item).__name__}")
    return items


def check_model(model: Any, training: bool, validation: bool) -> None:
    """Clear errors for objects that do not implement the trainer protocol's methods."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if training and not callable(getattr(model, "training_step", None)):
        raise TypeError(f"{type(model).__name__} has no training_step(batch) method")
    if validation and not callable(getattr(model, "validation_metrics", None)):
        raise TypeError(
            f"{type(model).__name__} has no validation_metrics(frame, batch_size) method"
        )


def hparams(trainer: Any) -> dict[str, Any]:
    """The trainer's settings as plain values, for ``Logger.log_hyperparams``."""

    def plain(v: Any) -> Any:
        return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)

    return {
        "max_epochs": trainer.max_epochs,
        "batch_size": trainer.batch_size,
        "lr": trainer.lr,
        "weight_decay": trainer.weight_decay,
        "optimizer": plain(trainer.optimizer_spec),
        "device": str(trainer.device),
        "precision": trainer.precision,
        "grad_accum_steps": trainer.grad_accum_steps,
        "grad_clip_norm": trainer.grad_clip_norm,
        "scheduler": plain(trainer.scheduler_spec),
        "warmup_steps": trainer.warmup_steps,
        "seed": trainer.seed,
        "world_size": trainer.world_size,
        "sparse_embeddings": trainer._sparse_resolved,
    }
