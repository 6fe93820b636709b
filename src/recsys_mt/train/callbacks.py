"""Training callbacks: hooks into :class:`~recsys_mt.train.Trainer` plus checkpointable state.

Hook order within one :meth:`Trainer.fit <recsys_mt.train.Trainer.fit>`::

    on_fit_start                 (then, when resuming, load_state_dict from the checkpoint)
    per epoch:
        on_train_epoch_start
        on_before_optimizer_step (per optimiser step, after unscaling and clipping)
        on_validation_end        (only when a validation frame was given)
        on_train_epoch_end       (callbacks with ``run_last = True``, i.e. checkpointing,
                                  run after all the others, so they save up-to-date state)
    on_fit_end

When ``on_validation_end`` runs, ``trainer.callback_metrics`` already holds this epoch's
``train/*`` and ``val/*`` values; when ``on_train_epoch_end`` runs, the epoch's row is also in
``trainer.history``. A callback stops training by setting ``trainer.should_stop = True``.

Callback state (:meth:`Callback.state_dict`) must consist of tensors, numbers, strings, ``None``
and nested dicts / lists, so checkpoints load with ``torch.load(weights_only=True)``. It is
stored under :attr:`Callback.state_key` (the class name, suffixed ``#1``, ``#2`` ... for repeats)
and restored on resume into the callback with the same key.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from .trainer import Trainer

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "resolve_mode", "resolve_monitor"]

_MAX_WORDS = ("auc", "ndcg", "recall", "hit", "mrr", "accuracy", "precision", "f1")


def resolve_mode(monitor: str, mode: str) -> str:
    """``"min"`` or ``"max"``; ``"auto"`` is ``"max"`` when the metric name contains one of
    auc / ndcg / recall / hit / mrr / accuracy / precision / f1 (case-insensitive), else
    ``"min"`` (losses, errors)."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    name = monitor.lower()
    return "max" if any(word in name for word in _MAX_WORDS) else "min"


def _improved(current: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``current`` beats ``best`` by more than ``min_delta`` (NaN never improves)."""
    if math.isnan(current):
        return False
    if best is None:
        return True
    if mode == "min":
        return current < best - min_delta
    return current > best + min_delta


def resolve_monitor(monitor: str, model: nn.Module) -> str:
    """``monitor`` itself, or for ``"auto"`` the model's ``default_monitor`` attribute
    (``"val/loss"`` when it has none)."""
    if monitor != "auto":
        return monitor
    return str(getattr(model, "default_monitor", None) or "val/loss")


def _monitored(trainer: Trainer, monitor: str, who: str) -> float:
    """The current value of ``monitor``, or a clear error listing what was logged."""
    metrics = trainer.callback_metrics
    if monitor not in metrics:
        available = ", ".join(sorted(metrics)) or "(none)"
        hint = ""
        if monitor.startswith("val/") and not any(k.startswith("val/") for k in metrics):
            hint = " (no validation frame was passed to fit?)"
        raise KeyError(
            f"{who} monitors {monitor!r}, which was not logged{hint}; available keys: {available}"
        )
    return float(metrics[monitor])


def _check_validation(trainer: Trainer, monitor: str | None, who: str) -> None:
    """Refuse, before the first epoch, a ``val/`` monitor in a fit without a validation
    frame (the metric would be missing only after a whole epoch had trained)."""
    if monitor and monitor.startswith("val/") and not getattr(trainer, "has_validation", True):
        raise ValueError(
            f"{who} monitors {monitor!r}, but fit was given no validation frame: pass "
            f"fit(model, train, val), or monitor a training metric such as 'train/loss'"
        )


class Callback:
    """Base class: override the hooks you need; all default to doing nothing.

    ``model`` is always the user's model (never the DDP wrapper). Set the class attribute
    ``run_last = True`` for callbacks that persist trainer state at epoch end (as
    :class:`ModelCheckpoint` does) so they see the other callbacks' updates.
    """

    run_last: bool = False

    @property
    def state_key(self) -> str:
        """Key of this callback's state in checkpoints (the trainer de-duplicates repeats)."""
        return type(self).__qualname__

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        """Before the first epoch (model on its device, optimiser built)."""

    def on_train_epoch_start(self, trainer: Trainer, model: nn.Module) -> None:
        """Before the first batch of an epoch (``trainer.current_epoch`` is set)."""

    def on_before_optimizer_step(
        self, trainer: Trainer, model: nn.Module, optimizer: Optimizer
    ) -> None:
        """After gradients are complete, unscaled and clipped; before ``optimizer.step()``."""

    def on_train_step_end(self, trainer: Trainer, model: nn.Module) -> None:
        """After each optimiser step (``trainer.global_step`` counts it)."""

    def on_validation_end(
        self, trainer: Trainer, model: nn.Module, metrics: dict[str, float]
    ) -> None:
        """After the epoch's validation; ``metrics`` holds the ``val/*`` values."""

    def on_train_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        """At the end of an epoch, after validation and after the history row is recorded."""

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        """After the last epoch (or an early stop)."""

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (plain data and tensors only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""


class EarlyStopping(Callback):
    """Stop when a monitored metric has not improved for ``patience`` epochs.

    The check runs at every epoch end on ``trainer.callback_metrics``. With
    ``restore_best_weights`` a CPU copy of the model's state dict is kept at each improvement
    and loaded back into the model at the end of fit, whether training was stopped by patience
    or ran to ``max_epochs``. The copy is part of the callback state, so checkpoints hold it
    too (it doubles their size) and a resumed run restores the same weights.

    Args:
        monitor: a logged key, e.g. ``"val/loss"``, ``"val/ctr_auc"``, ``"train/loss"``, or
            ``"auto"``: the model's ``default_monitor`` (see :func:`resolve_monitor`). For a
            :class:`~recsys_mt.model.MultiTaskModel` that is ``"val/auc_mean"``, the mean AUC of
            the funnel stages, each on its own rows: the summed validation loss is dominated by
            the first stage, whose log loss starts rising (over-confidence) epochs before the
            deeper stages stop improving, so it stops training with CVR and repurchase
            under-trained (and log loss is the calibration's job, after training).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (see :func:`resolve_mode`).
        patience: epochs without improvement before stopping (>= 1).
        min_delta: an improvement must exceed this margin.
        restore_best_weights: load the best epoch's weights at fit end.

    Attributes:
        best_score, best_epoch: the best value so far and the epoch it was reached (or None).
        wait_count: epochs since the last improvement.
        stopped_epoch: the epoch at which training was stopped (None if it was not).
    """

    def __init__(
        self,
        monitor: str = "auto",
        mode: str = "auto",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
    ):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self._monitor_arg, self._mode_arg = monitor, mode
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode) if monitor != "auto" else mode
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.restore_best_weights = restore_best_weights
        self._reset()

    def _reset(self) -> None:
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.wait_count = 0
        self.stopped_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        self._reset()
        self.monitor = resolve_monitor(self._monitor_arg, model)
        self.mode = resolve_mode(self.monitor, self._mode_arg)
        _check_validation(trainer, self.monitor, "EarlyStopping")

    def on_train_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        current = _monitored(trainer, self.monitor, "EarlyStopping")
        if _improved(current, self.best_score, self.mode, self.min_delta):
            self.best_score = current
            self.best_epoch = trainer.current_epoch
            self.wait_count = 0
            if self.restore_best_weights:
                self.best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                self.stopped_epoch = trainer.current_epoch
                trainer.should_stop = True

    def on_fit_end(self, trainer: Trainer, model: nn.Module) -> None:
        if self.restore_best_weights and self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = state.get("best_score")
        self.best_epoch = state.get("best_epoch")
        self.wait_count = int(state.get("wait_count", 0))
        self.stopped_epoch = state.get("stopped_epoch")
        best_state = state.get("best_state")
        self.best_state = dict(best_state) if best_state is not None else None


class ModelCheckpoint(Callback):
    """Write ``last.ckpt`` every epoch and ``best.ckpt`` whenever ``monitor`` improves.

    Files are written with :meth:`Trainer.save_checkpoint
    <recsys_mt.train.Trainer.save_checkpoint>` (rank 0 only; atomic replace), after every
    other callback's epoch-end hook, so they contain the up-to-date callback state and the
    full history. Resume with ``trainer.fit(..., resume_from=ckpt.last_path)``. With
    ``every_n_steps``, ``last.ckpt`` is also written every that many optimiser steps in the
    middle of an epoch (long epochs over streamed data); resuming from such a file continues
    the epoch at the next batch and ends as an uninterrupted run would.

    Args:
        dirpath: directory for the files (created if needed).
        monitor: metric deciding "best"; ``None`` disables ``best.ckpt``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (see :func:`resolve_mode`).
        save_last: write ``last.ckpt`` every epoch.
        save_best: write ``best.ckpt`` on improvement (needs ``monitor``).
        every_n_steps: also write ``last.ckpt`` every that many optimiser steps (``None``:
            only at epoch ends).
    """

    run_last = True

    def __init__(
        self,
        dirpath: str | os.PathLike,
        monitor: str | None = None,
        mode: str = "auto",
        save_last: bool = True,
        save_best: bool = True,
        every_n_steps: int | None = None,
    ):
        n = every_n_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"every_n_steps must be a positive int or None, got {n!r}")
        self.every_n_steps = every_n_steps
        self.dirpath = os.fspath(dirpath)
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode) if monitor is not None else "min"
        self.save_last = save_last
        self.save_best = save_best and monitor is not None
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> str:
        return os.path.join(self.dirpath, "last.ckpt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.dirpath, "best.ckpt")

    def on_fit_start(self, trainer: Trainer, model: nn.Module) -> None:
        if self.save_best:
            _check_validation(trainer, self.monitor, "ModelCheckpoint")
        self.best_score = None
        self.best_epoch = None

    def on_train_step_end(self, trainer: Trainer, model: nn.Module) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.last_path)

    def on_train_epoch_end(self, trainer: Trainer, model: nn.Module) -> None:
        write_best = False
        if self.save_best:
            current = _monitored(trainer, self.monitor, "ModelCheckpoint")
            if _improved(current, self.best_score, self.mode, 0.0):
                self.best_score = current
                self.best_epoch = trainer.current_epoch
                write_best = True
        # State is updated before writing, so the files carry it.
        if write_best:
            trainer.save_checkpoint(self.best_path)
        if self.save_last:
            trainer.save_checkpoint(self.last_path)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = state.get("best_score")
        self.best_epoch = state.get("best_epoch")


def run_order(callbacks: list[Callback]) -> list[Callback]:
    """Callbacks with ``run_last`` ones (checkpointing) moved to the end, order kept."""
    first = [cb for cb in callbacks if not cb.run_last]
    return first + [cb for cb in callbacks if cb.run_last]


def state_keys(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Unique checkpoint keys: ``state_key``, then ``state_key#1``, ``#2`` for repeats."""
    counts: dict[str, int] = {}
    out = []
    for cb in callbacks:
        key = cb.state_key
        n = counts.get(key, 0)
        counts[key] = n + 1
        out.append((key if n == 0 else f"{key}#{n}", cb))
    return out
