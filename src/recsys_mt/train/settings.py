"""Validation of :class:`~recsys_mt.train.Trainer`'s settings: a clear error naming the
argument before anything is built."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .optim import OPTIMIZERS, check_schedule

__all__ = ["as_list", "check_model", "check_settings", "hparams", "positive_int"]


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
) -> None:
    """Raise ``ValueError`` naming the first invalid trainer argument."""
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
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
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
    check_schedule(scheduler, warmup_steps, min_lr_ratio)


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
