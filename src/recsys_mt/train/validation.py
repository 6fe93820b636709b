"""Validation on a whole frame: :class:`ValidationMixin` of :class:`~recsys_mt.train.Trainer`.

The model's ``validation_metrics(frame, batch_size)`` is called in eval mode under
:func:`torch.inference_mode`; under ``torchrun``, a model that splits it into
``validation_outputs`` / ``validation_metrics_from`` has each process compute the outputs of a
contiguous share of the rows, and every process the metrics of the gathered outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..data.frame import TensorFrame
from . import distributed as dist_utils
from .devices import place_frame
from .settings import check_model

__all__ = ["ValidationMixin"]


class ValidationMixin:
    """Mixed into :class:`~recsys_mt.train.Trainer`; uses its ``batch_size``,
    ``eval_batch_size``, ``world_size``, ``rank``, ``device``, ``data_on_device`` and
    ``num_threads``."""

    batch_size: int
    eval_batch_size: int | None
    world_size: int
    rank: int
    device: torch.device
    data_on_device: Any
    num_threads: int | None

    def _evaluate(self, model: nn.Module, frame: TensorFrame) -> dict[str, float]:
        """``val/<key>`` metrics of ``model`` on ``frame`` (eval mode, inference mode, fp32)."""
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                raw = self._validation_metrics(model, frame)
        finally:
            model.train(was_training)
        if not isinstance(raw, Mapping):
            raise TypeError(f"validation_metrics must return a dict, got {type(raw).__name__}")
        out = {}
        for key, value in raw.items():
            try:
                out[f"val/{key}"] = float(value)
            except (TypeError, ValueError) as e:
                raise TypeError(f"validation metric {key!r} is not a number: {value!r}") from e
        return out

    def _validation_metrics(self, model: nn.Module, frame: TensorFrame) -> Mapping[str, Any]:
        """The model's metrics on all of ``frame``. Under ``torchrun``, with a model that
        splits its protocol into ``validation_outputs`` / ``validation_metrics_from``, each
        process computes the outputs of a contiguous share of the rows and all processes
        compute the metrics of the gathered outputs: the same numbers as one process."""
        batch_size = self.eval_batch_size or self.batch_size
        outputs_fn = getattr(model, "validation_outputs", None)
        from_fn = getattr(model, "validation_metrics_from", None)
        if self.world_size == 1 or outputs_fn is None or from_fn is None:
            return model.validation_metrics(frame, batch_size)
        n = len(frame)
        if n < self.world_size:
            return model.validation_metrics(frame, batch_size)
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        outputs = outputs_fn(frame.subset(slice(lo, hi)), batch_size)
        gathered = {
            k: dist_utils.all_gather_rows(v.to(self.device)).cpu() for k, v in outputs.items()
        }
        return from_fn(gathered)

    def validate(self, model: nn.Module, frame: TensorFrame) -> dict[str, float]:
        """Evaluate ``model`` on the whole ``frame``; returns ``{"val/<key>": value}``.

        Moves the model to the trainer's device (it stays there). Does not touch
        ``history`` or the callbacks.
        """
        check_model(model, training=False, validation=True)
        if len(frame) == 0:
            raise ValueError("cannot validate on an empty frame")
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        model.to(self.device)
        placed, _ = place_frame(frame, self.device, self.data_on_device)
        return self._evaluate(model, placed)
