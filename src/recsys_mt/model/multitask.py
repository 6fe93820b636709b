"""``MultiTaskModel``: encoders → fusion → multi-task head, with funnel-aware outputs."""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import __version__
from ..data.frame import TensorFrame
from ..data.schema import Schema
from ..encoders import ConcatFusion, DenseEncoder, Encoder, Fusion, IDEmbedding
from ..losses import (
    SUPERVISIONS,
    Balancer,
    StaticWeights,
    chain_log_probs,
    funnel_counts,
    funnel_losses,
)
from ..registry import to_config as registered_config
from ..tasks import MMoE
from ..tasks.heads import Head
from .calibration import METHODS as CALIBRATION_METHODS
from .calibration import apply_calibration, fit_calibration, identity_calibration
from .counterfactual import CounterfactualRegulariser, check_counterfactual
from .evaluation import evaluate_funnel
from .persistence import FORMAT_VERSION, CheckpointError, load_pretrained, save_pretrained

__all__ = ["CheckpointError", "MultiTaskModel"]


class MultiTaskModel(nn.Module):
    """Encoders + fusion + multi-task head predicting a purchase funnel.

    Args:
        schema: a fitted :class:`~recsys_mt.data.Schema` with at least one task.
        encoders: encoder modules (default: :class:`IDEmbedding`, plus :class:`DenseEncoder`
            when the schema has dense features). Each is built from the schema.
        head: a :class:`~recsys_mt.tasks.Head` (default ``MMoE()``).
        fusion: combines encoder outputs (default :class:`ConcatFusion`).
        supervision: ``"entire_space"`` (ESMM-style joint supervision on all rows) or
            ``"conditional"`` (child tasks masked to rows where the parent is positive).
        balancer: a :class:`~recsys_mt.losses.Balancer` (default :class:`StaticWeights` using
            each ``Task.weight``).
        counterfactual: ``None``, ``"ips"`` or ``"dr"``: add an ESCM²-style counterfactual
            risk (:mod:`recsys_mt.losses.counterfactual`) to the training loss of every binary
            child task whose parent chain is binary; see :meth:`losses`.
        counterfactual_weight: multiplier of that risk (default 0.1).
        auto_calibrate: calibration method (``"platt"``, ``"temperature"``) that
            :meth:`after_fit` applies on the validation frame at the end of
            :meth:`Trainer.fit <recsys_mt.train.Trainer.fit>`, or ``None`` to leave
            probabilities as trained. Platt scaling by default: embeddings over-fit training
            users and items, and new ones at serving time get over-confident scores whose log
            loss a per-task ``a·z + b`` repairs without changing any ranking.

    Outputs: :meth:`forward` gives logits ``[B, T]`` in ``schema.tasks`` order; each binary
    logit is the *conditional* log-odds given the parent task. :meth:`predict` returns the
    conditional probabilities and, for child tasks, the joint ones (``ctcvr``).

    Example:
        >>> model = MultiTaskModel(schema, head=MMoE(num_experts=4))          # doctest: +SKIP
        >>> Trainer(max_epochs=3).fit(model, train, val)                     # doctest: +SKIP
        >>> model.predict(test).head()                                       # doctest: +SKIP
    """

    def __init__(
        self,
        schema: Schema,
        encoders: list[Encoder] | None = None,
        head: Head | None = None,
        fusion: Fusion | None = None,
        supervision: str = "entire_space",
        balancer: Balancer | None = None,
        counterfactual: str | None = None,
        counterfactual_weight: float = 0.1,
        auto_calibrate: str | None = "platt",
    ):
        super().__init__()
        if not isinstance(schema, Schema):
            raise TypeError(f"schema must be a recsys_mt Schema, got {type(schema).__name__}")
        if not schema.is_fitted:
            raise ValueError("the schema is not fitted: call schema.fit(train_df) first")
        if not schema.tasks:
            raise ValueError("the schema has no tasks; pass tasks=[Task(...)] to Schema")
        if supervision not in SUPERVISIONS:
            raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
        self.schema = schema
        self.supervision = supervision
        if encoders is None:
            encoders = [IDEmbedding()] if (schema.sparse or schema.sequences) else []
            if schema.dense_columns:
                encoders.append(DenseEncoder())
        if not encoders:
            raise ValueError(
                "no encoders: pass encoders=[...] (the schema has no id/dense features)"
            )
        self.encoders = nn.ModuleList(encoders)
        for enc in self.encoders:
            enc.build(schema)
            if not getattr(enc, "out_dim", 0):
                raise ValueError(f"encoder {type(enc).__name__} has out_dim 0 after build()")
        self.fusion = fusion if fusion is not None else ConcatFusion()
        self.fusion.build([e.out_dim for e in self.encoders])
        index = {t.name: i for i, t in enumerate(schema.tasks)}
        self.parents = [index[t.given] if t.given else None for t in schema.tasks]
        self.binary = [t.binary for t in schema.tasks]
        self.head = head if head is not None else MMoE()
        if "parents" in inspect.signature(self.head.build).parameters:  # funnel-aware head
            self.head.build(self.fusion.out_dim, len(schema.tasks), parents=list(self.parents))
        else:
            self.head.build(self.fusion.out_dim, len(schema.tasks))
        self.balancer = balancer if balancer is not None else StaticWeights()
        self.balancer.build(schema.tasks)
        self.counterfactual = counterfactual
        self.counterfactual_weight = check_counterfactual(counterfactual, counterfactual_weight)
        self.counterfactual_reg = None
        if counterfactual is not None:
            self.counterfactual_reg = CounterfactualRegulariser(
                counterfactual,
                counterfactual_weight,
                schema.tasks,
                self.parents,
                self.fusion.out_dim,
            )
        # Post-hoc calibration rows (a, b) per task, identity until calibrate(); saved with the
        # weights, applied by predict / evaluate only (never by forward or training).
        self.register_buffer("calibration", identity_calibration(len(schema.tasks)))
        self.calibration_method: str | None = None
        if auto_calibrate not in (None, *CALIBRATION_METHODS) or auto_calibrate == "none":
            raise ValueError(
                f"auto_calibrate must be None, 'platt' or 'temperature', got {auto_calibrate!r}"
            )
        self.auto_calibrate = auto_calibrate

    # ------------------------------------------------------------------ forward
    @property
    def tasks(self) -> list:
        return self.schema.tasks

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits ``[B, T]`` (conditional log-odds for binary tasks, values for regression)."""
        return self._forward(batch)[1]

    def _forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(fused [B, D], logits [B, T])``: the fusion output and the head's logits."""
        fused = self.fusion([enc(batch) for enc in self.encoders])
        return fused, self.head(fused)

    def probabilities(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(conditional [B, T], joint [B, T])`` from logits.

        Binary: conditional = σ(z); joint = Π σ(z) over the chain (equal for root tasks).
        Regression columns carry the raw prediction in both. Applies no calibration: pass
        ``self.calibrate_logits(logits)`` for calibrated probabilities.
        """
        logits = logits.float()
        cond = torch.where(
            torch.tensor(self.binary, device=logits.device), torch.sigmoid(logits), logits
        )
        joint = chain_log_probs(logits, self.parents).exp()
        joint = torch.where(torch.tensor(self.binary, device=logits.device), joint, logits)
        return cond, joint

    def losses(
        self,
        logits: Tensor,
        labels: Tensor,
        fused: Tensor | None = None,
        window: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-task loss ``{task: scalar}`` under the model's supervision mode.

        With ``counterfactual`` set and ``fused`` (the ``[B, D]`` fusion output the logits came
        from) given, ``counterfactual_weight ·`` the IPS / DR risk is added to each regularised
        child task's entry, so balancers weigh it with its task. Without ``fused`` (as in
        :meth:`validation_metrics`) the plain funnel losses: a fixed criterion.

        ``window`` (``[1 + T]``, see :meth:`loss_counts`) turns every entry into this batch's
        *share* of the loss of a larger batch that it is part of: sums divided by the larger
        batch's row / mask counts instead of this batch's means.
        """
        counts = None if window is None else window[1:]
        per = funnel_losses(
            logits, labels, self.parents, self.binary, self.supervision, counts=counts
        )
        out = dict(zip(self.schema.task_names, per))
        if self.counterfactual_reg is not None and fused is not None:
            share = 1.0 if window is None else logits.shape[0] / window[0].clamp_min(1.0)
            for name, reg in self.counterfactual_reg(fused, logits, labels).items():
                out[name] = out[name] + reg * share
        return out

    def loss_counts(self, batch: dict[str, Tensor]) -> Tensor:
        """Trainer protocol: ``[1 + T]`` float, the rows of this batch and, per task, the rows
        its loss averages over (all rows, or the rows whose parent is positive).

        The trainer sums these over the micro-batches of one optimiser step (and over
        processes) and passes the total to :meth:`training_step` as ``window``, so that
        gradient accumulation and DDP give exactly the gradient of one big batch even for
        masked losses (conditional supervision, regression children), where weighting each
        micro-batch's mean by its rows would not.
        """
        if "labels" not in batch:
            raise ValueError("the batch has no labels: transform the training data with labels")
        labels = batch["labels"]
        per = funnel_counts(labels, self.parents, self.binary, self.supervision)
        return torch.cat([per.new_tensor([float(labels.shape[0])]), per])

    def training_step(
        self, batch: dict[str, Tensor], window: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Trainer protocol: ``{"loss": total, "loss/<task>": detached per-task loss}``.

        Without ``window``, ``loss`` is the balanced loss of this batch. With ``window`` (the
        :meth:`loss_counts` of all micro-batches of one optimiser step on all processes,
        ``[1 + T]``) ``loss`` is this batch's share ``s · balancer(L / s)`` of the window's
        loss, with ``s`` = this batch's fraction of the window's rows and ``L`` the per-task
        shares: the shares of all micro-batches add up to exactly the window's balanced loss
        for any balancer linear in the task losses (static weights; uncertainty weighting's
        ``s_t / 2`` term counted once per window). ``loss/<task>`` then holds ``L / s``, this
        batch's estimate of the window's task loss.
        """
        if "labels" not in batch:
            raise ValueError("the batch has no labels: transform the training data with labels")
        fused, logits = self._forward(batch)
        per = self.losses(logits, batch["labels"], fused, window=window)
        if window is None:
            total = self.balancer(per)
        else:
            share = logits.shape[0] / window[0].clamp_min(1.0)
            per = {k: v / share for k, v in per.items()}
            total = self.balancer(per) * share
        out = {"loss": total}
        out.update({f"loss/{k}": v.detach() for k, v in per.items()})
        return out

    def param_groups(self, sparse: bool) -> list[dict[str, Any]]:
        """Trainer protocol: optimizer groups (embedding tables flagged sparse; the balancer's
        learned weights without weight decay; everything else in the default group)."""
        groups: list[dict[str, Any]] = []
        taken: set[int] = set()
        for enc in self.encoders:
            for g in enc.param_groups(sparse) or []:
                groups.append(g)
                taken.update(id(p) for p in g["params"])
        bal = [p for p in self.balancer.parameters() if id(p) not in taken]
        if bal:
            groups.append({"params": bal, "weight_decay": 0.0})
            taken.update(id(p) for p in bal)
        rest = [p for p in self.parameters() if id(p) not in taken]
        if rest:
            groups.append({"params": rest})
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ inference
    def prepare(self, frame: TensorFrame) -> TensorFrame:
        """Let encoders add what they need to a frame once, before batching (Trainer protocol).

        Each encoder with a ``prepare(frame) -> frame`` method is called in turn (a text tower
        tokenises and caches the frame's distinct texts here and adds index columns). Idempotent:
        a frame already prepared for this model is returned as is.
        """
        if frame.meta.get("prepared_by") == id(self):
            return frame
        for enc in self.encoders:
            fn = getattr(enc, "prepare", None)
            if fn is not None:
                frame = fn(frame)
        frame.meta["prepared_by"] = id(self)
        return frame

    def _as_frame(self, data: TensorFrame | pd.DataFrame) -> TensorFrame:
        if isinstance(data, pd.DataFrame):
            data = self.schema.transform(data, labels="auto")
        if not isinstance(data, TensorFrame):
            raise TypeError(f"expected a TensorFrame or DataFrame, got {type(data).__name__}")
        return self.prepare(data)

    @torch.inference_mode()
    def predict_logits(
        self, data: TensorFrame | pd.DataFrame, batch_size: int = 8192, calibrated: bool = False
    ) -> Tensor:
        """Logits ``[N, T]`` for every row, on the CPU.

        The raw head outputs of :meth:`forward` by default; ``calibrated=True`` applies the map
        fitted by :meth:`calibrate` (what :meth:`predict` and :meth:`evaluate` use).

        Puts the model in eval mode and leaves it there (the Trainer switches it back to
        training at every epoch): restoring the previous mode afterwards would let one thread
        switch id dropout back on while another thread is still predicting.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        frame = self._as_frame(data)
        if len(frame) == 0:
            raise ValueError("the frame has 0 rows: nothing to predict")
        if self.training:
            self.eval()
        device = self.device
        out = [
            self({k: v.to(device, non_blocking=True) for k, v in b.items()}).float().cpu()
            for b in frame.batches(batch_size)
        ]
        logits = torch.cat(out)
        return self.calibrate_logits(logits) if calibrated else logits

    def predict_columns(self) -> list[str]:
        """Names of the columns :meth:`predict` returns, in order."""
        cols = [t.name for t in self.tasks]
        return cols + [t.joint for t in self.tasks if t.given is not None and t.binary]

    def predict(self, data: TensorFrame | pd.DataFrame, batch_size: int = 8192) -> pd.DataFrame:
        """Per-row predictions as a DataFrame.

        Columns: one per task (conditional probability, e.g. ``ctr``, ``cvr`` = p(buy | click),
        or the predicted value for regression tasks), then one per binary child task with the
        joint probability (``ctcvr`` = p(click ∧ buy), ``repurchase_joint``, …). After
        :meth:`calibrate` the conditionals are calibrated and the joints are their products.
        """
        cond, joint = self.probabilities(self.predict_logits(data, batch_size, calibrated=True))
        cols: dict[str, np.ndarray] = {}
        for j, t in enumerate(self.tasks):
            cols[t.name] = cond[:, j].numpy()
        for j, t in enumerate(self.tasks):
            if t.given is not None and t.binary:
                cols[t.joint] = joint[:, j].numpy()
        return pd.DataFrame(cols)

    def evaluate(self, data: TensorFrame | pd.DataFrame, batch_size: int = 8192) -> pd.DataFrame:
        """Funnel-aware metrics as a tidy DataFrame ``[task, metric, value, rows]``.

        Binary root tasks: AUC, GAUC (when the schema has a group column), logloss, ECE
        (:func:`~recsys_mt.metrics.ece`, 15 bins) and calibration (mean predicted / mean
        observed) on all rows. Binary child tasks: the same for the conditional probability on
        the rows where the parent's joint label is 1 (CVR on clicked rows), plus AUC / logloss /
        ECE of the joint probability on all rows under the joint name (``ctcvr``). Regression:
        MSE and RMSE on observed rows. Metrics that are undefined (one class present) are NaN.
        Probabilities are calibrated when :meth:`calibrate` has been called.
        """
        frame = self._as_frame(data)
        if "labels" not in frame:
            raise ValueError("evaluate needs labels: the frame was transformed without them")
        cond, joint = self.probabilities(self.predict_logits(frame, batch_size, calibrated=True))
        return evaluate_funnel(
            self.tasks,
            self.parents,
            cond,
            joint,
            frame["labels"],
            frame["group"] if "group" in frame else None,
        )

    def validation_metrics(self, frame: TensorFrame, batch_size: int) -> dict[str, float]:
        """Trainer protocol: ``{"loss", "<task>_auc", "<task>_logloss", "<joint>_auc", …}``.

        ``loss`` is ``Σ_t Task.weight · L_t`` with the model's supervision — a fixed criterion
        for early stopping even when the balancer learns its weights. Like training, it uses
        the uncalibrated logits.
        """
        frame = self.prepare(frame)
        logits = self.predict_logits(frame, batch_size)
        labels = frame["labels"]
        with torch.no_grad():
            per = self.losses(logits, labels.to(logits.device))
        total = sum(t.weight * float(per[t.name]) for t in self.tasks)
        out = {"loss": total}
        out.update({f"loss_{k}": float(v) for k, v in per.items()})
        cond, joint = self.probabilities(logits)
        table = evaluate_funnel(
            self.tasks,
            self.parents,
            cond,
            joint,
            labels,
            frame["group"] if "group" in frame else None,
        )
        for row in table.itertuples(index=False):
            out[f"{row.task}_{row.metric}"] = float(row.value)
        aucs = [out[f"{t.name}_auc"] for t in self.tasks if t.binary]
        aucs = [a for a in aucs if a == a]  # tasks with one class in validation are NaN
        out["auc_mean"] = float(np.mean(aucs)) if aucs else float("nan")
        return out

    @property
    def default_monitor(self) -> str:
        """What ``EarlyStopping()`` watches by default: ``"val/auc_mean"`` (mean stage AUC)
        when there is a binary task, else ``"val/loss"``."""
        return "val/auc_mean" if any(self.binary) else "val/loss"

    def after_fit(self, val: TensorFrame | None) -> None:
        """Trainer protocol, at the end of fit: :meth:`calibrate` on ``val`` with
        ``auto_calibrate`` (nothing without a validation frame or with ``auto_calibrate=None``)."""
        if self.auto_calibrate is not None and val is not None and "labels" in val:
            self.calibrate(val, method=self.auto_calibrate)

    # ------------------------------------------------------------------ calibration
    @property
    def calibrated(self) -> bool:
        """True when a non-identity calibration map is applied by :meth:`predict` / evaluate."""
        a, b = self.calibration[:, 0], self.calibration[:, 1]
        return bool(((a != 1) | (b != 0)).any())

    def calibrate_logits(self, logits: Tensor) -> Tensor:
        """Calibrated logits ``a_t · z + b_t`` ``[B, T]`` (identity columns are left as is)."""
        return apply_calibration(logits, self.calibration)

    def calibrate(
        self,
        val: TensorFrame | pd.DataFrame,
        method: str = "temperature",
        batch_size: int = 8192,
        min_rows: int = 50,
    ) -> MultiTaskModel:
        """Fit a monotone map ``z → a·z + b`` (``a > 0``) of each binary task's conditional logit.

        Minimises the log loss of the conditional probability on the task's observed rows of
        ``val`` (all rows for a root task, rows where the parent's joint label is 1 for a child),
        in float64 on the cached logits; the network is not touched and rankings never change.
        :meth:`predict` and :meth:`evaluate` then use calibrated conditionals and their products
        as joints; :meth:`forward`, training and :meth:`validation_metrics` never do. The map is
        a buffer saved by :meth:`save_pretrained`. Regression tasks keep the identity, and so do
        binary tasks with fewer than ``min_rows`` observed rows or one class (with a warning).

        Args:
            val: held-out data with labels (a TensorFrame or a DataFrame with label columns).
            method: ``"temperature"`` (``a = 1/T``, ``b = 0``), ``"platt"`` (``a`` and ``b``)
                or ``"none"`` (reset to the identity).
            batch_size: rows per forward pass.
            min_rows: fewest observed rows a task needs to be fitted.

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
        if skipped:
            names = ", ".join(f"{self.tasks[t].name!r} ({why})" for t, why in skipped.items())
            warnings.warn(f"calibration left these tasks uncalibrated: {names}", stacklevel=2)
        with torch.no_grad():
            self.calibration.copy_(params.to(self.calibration))
        self.calibration_method = None if method == "none" else method
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before calibration existed carry no map: load them as uncalibrated.
        key = prefix + "calibration"
        if key not in state_dict:
            state_dict[key] = identity_calibration(len(self.tasks)).to(self.calibration)
            self.calibration_method = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"supervision={self.supervision!r}, calibration={self.calibration_method!r}"

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """JSON-able description of the architecture (``config.json``)."""
        return {
            "library": "recsys_mt",
            "version": __version__,
            "format_version": FORMAT_VERSION,
            "encoders": [registered_config(e, "encoder") for e in self.encoders],
            "fusion": registered_config(self.fusion, "fusion"),
            "head": registered_config(self.head, "head"),
            "balancer": registered_config(self.balancer, "balancer"),
            "supervision": self.supervision,
            "counterfactual": self.counterfactual,
            "counterfactual_weight": self.counterfactual_weight,
            "calibration": self.calibration_method,
            "auto_calibrate": self.auto_calibrate,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``schema.json`` and ``model.safetensors`` to ``directory``.

        Encoders may add files of their own (``save_extra(directory)``) and leave parameters
        out of the weights file (``checkpoint_exclude()`` prefixes, e.g. a frozen base model).
        """
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        schema: Schema | None = None,
        map_location: str | torch.device = "cpu",
    ) -> MultiTaskModel:
        """Rebuild a model saved by :meth:`save_pretrained` from a local directory.

        Nothing is unpickled: the config is JSON, the weights are safetensors. Passing
        ``schema`` checks it against the saved one and raises :class:`CheckpointError` listing
        the differences. Weights whose names or shapes do not match the rebuilt architecture
        also raise :class:`CheckpointError`.
        """
        return load_pretrained(cls, directory, schema, map_location)
