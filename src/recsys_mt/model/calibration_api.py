"""The calibration half of :class:`~recsys_mt.model.MultiTaskModel`: fitting the per-task
map ``a·z + b`` (with an optional rate prior) on held-out rows, applying it, publishing a new
one safely under concurrent predicts, and the checkpoint layout of the buffers it adds."""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ..data.frame import TensorFrame
from .calibration import METHODS as CALIBRATION_METHODS
from .calibration import apply_calibration, fit_calibration
from .rate_prior import choose_rate_prior

__all__ = ["CalibrationMixin", "NothingToCalibrate"]


class NothingToCalibrate(ValueError):
    """:meth:`~CalibrationMixin.calibrate` found no binary task it could fit on the frame
    (each has one class or too few rows there); the model's calibration is unchanged."""


class CalibrationMixin:
    """Mixed into :class:`~recsys_mt.model.MultiTaskModel`; uses its ``schema``, ``tasks``,
    ``parents``, ``binary``, ``calibration`` buffer, ``rate_prior`` and ``predict_logits``."""

    schema: Any
    tasks: Any
    parents: list[int | None]
    binary: list[bool]
    calibration: Tensor
    calibration_method: str | None
    rate_prior: Any

    def state_layout(self) -> dict[str, Any]:
        """Trainer protocol (optional): what decides which buffers :meth:`state_dict` holds
        beyond the architecture — the features of the rate prior's tables. Saved in training
        checkpoints, so a resume can rebuild them (:meth:`set_state_layout`)."""
        return {"rate_prior": list(self.rate_prior.columns)}

    def set_state_layout(self, layout: dict[str, Any]) -> None:
        """Rebuild the buffers :meth:`state_layout` describes (zeros until a state is loaded)."""
        columns = layout.get("rate_prior") or [None] * len(self.tasks)
        self.rate_prior.configure(self.schema, list(columns))

    @property
    def calibrated(self) -> bool:
        """True when a non-identity calibration map is applied by :meth:`predict` / evaluate."""
        a, b = self.calibration[:, 0], self.calibration[:, 1]
        return bool(((a != 1) | (b != 0)).any()) or self.rate_prior.active

    def calibration_state(self) -> tuple:
        """The calibration map as it is now: ``(calibration [T, 2], rate prior snapshot)``.

        :meth:`calibrate` replaces these tensors, never writes them in place, and swaps the
        new ones in together under ``rate_prior.lock``: a state taken here stays whole while
        another thread re-calibrates, so one predict call scores every batch with one map.
        """
        with self.rate_prior.lock:
            return self.calibration, self.rate_prior.snapshot()

    def calibrate_logits(
        self, logits: Tensor, batch: dict[str, Tensor] | None = None, state: tuple | None = None
    ) -> Tensor:
        """Calibrated logits ``a_t · z + b_t (+ c_t · logit(rate_t))`` ``[B, T]``.

        ``batch`` (the rows' input tensors) is needed when a task has a rate prior: its
        ``sparse`` ids index the rate tables. Identity columns are left as is. ``state``: a
        :meth:`calibration_state` to apply (default: the current one).
        """
        calibration, prior = self.calibration_state() if state is None else state
        out = apply_calibration(logits, calibration)
        if all(s is None for s in prior[0]):
            return out
        if batch is None or "sparse" not in batch:
            raise ValueError(
                "this model's calibration adds a rate prior of "
                f"{[c for c in self.rate_prior.columns if c]}: pass the batch to calibrate_logits"
            )
        return out + self.rate_prior(batch, prior).to(out)

    def calibrate(
        self,
        val: TensorFrame | pd.DataFrame,
        method: str = "temperature",
        batch_size: int = 8192,
        min_rows: int = 50,
        prior_from: TensorFrame | pd.DataFrame | None = None,
    ) -> Any:
        """Fit a monotone map ``z → a·z + b`` (``a > 0``) of each binary task's conditional logit.

        Minimises the log loss of the conditional probability on the task's observed rows of
        ``val`` (all rows for a root task, rows where the parent's joint label is 1 for a child),
        in float64 on the cached logits; the network is not touched and rankings never change.
        :meth:`predict` and :meth:`evaluate` then use calibrated conditionals and their products
        as joints; :meth:`forward`, training and :meth:`validation_metrics` never do. The map is
        a buffer saved by :meth:`save_pretrained`. Regression tasks keep the identity, and so do
        binary tasks with fewer than ``min_rows`` observed rows or one class (with a warning).
        When that leaves no binary task to fit, :class:`NothingToCalibrate` (a ``ValueError``)
        is raised and the current calibration is kept.

        Args:
            val: held-out data with labels (a TensorFrame or a DataFrame with label columns).
            method: ``"temperature"`` (``a = 1/T``, ``b = 0``), ``"platt"`` (``a`` and ``b``)
                or ``"none"`` (reset to the identity).
            batch_size: rows per forward pass.
            min_rows: fewest observed rows a task needs to be fitted.
            prior_from: the training rows (a TensorFrame, or a DataFrame the schema
                transforms), with ``method="platt"``: each binary task may then also take the
                smoothed training rate of one sparse feature, ``a·z + c·logit(rate) + b``
                (:mod:`~recsys_mt.model.rate_prior_fit`; the feature is chosen by two-fold
                cross-validation on ``val``, kept only where it lowers the log loss by at
                least 0.001). This does change rankings across items. ``None``: no prior
                (an earlier one is removed).

        Returns:
            ``self``.
        """
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
        frame = self._as_frame(val)
        if "labels" not in frame:
            raise ValueError(
                "calibrate needs labels: pass validation data with the tasks' label columns"
            )
        logits = self.predict_logits(frame, batch_size)
        params, skipped = fit_calibration(
            logits, frame["labels"], self.parents, self.binary, method, min_rows
        )
        choices: list = [None] * len(self.tasks)
        if prior_from is not None:
            if method != "platt":
                raise ValueError(f"prior_from needs method='platt', got {method!r}")
            train = self._as_frame(prior_from)
            choices = choose_rate_prior(self, frame, logits, train, set(skipped))
            for t, c in enumerate(choices):
                if c is not None:
                    params[t] = torch.tensor([c.a, c.b], dtype=params.dtype)
        if skipped:
            names = ", ".join(f"{self.tasks[t].name!r} ({why})" for t, why in skipped.items())
            binary = [t for t, b in enumerate(self.binary) if b]
            if method != "none" and binary and all(t in skipped for t in binary):
                raise NothingToCalibrate(
                    f"calibrate: no task can be fitted on this frame: {names}; the current "
                    "calibration is kept"
                )
            warnings.warn(f"calibration left these tasks uncalibrated: {names}", stacklevel=2)
        # published whole (see calibration_state), as normal tensors even when called under
        # inference mode: load_state_dict must be able to copy into them later
        with torch.inference_mode(False), self.rate_prior.lock:
            self.calibration = params.to(self.calibration).clone()  # new, not written in place
            self.rate_prior.set_choices(self.schema, choices)
            self.calibration_method = None if method == "none" else method
        return self
