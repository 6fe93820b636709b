"""Inference and calibration methods of :class:`~recsys_mt.model.MultiTaskModel`: preparing
frames, ``predict`` / ``evaluate``, validation metrics for the trainer, post-hoc calibration."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.frame import TensorFrame
from ..data.loader import is_source
from ..encoders.text import CATALOGUE_FLAG
from .calibration_api import NothingToCalibrate
from .evaluation import evaluate_funnel
from .input_checks import check_inputs

__all__ = ["InferenceMixin"]


class InferenceMixin:
    """Mixed into :class:`~recsys_mt.model.MultiTaskModel`; uses its ``schema``, ``encoders``,
    ``parents``, ``binary``, ``calibration`` buffer and ``_forward``."""

    schema: Any
    encoders: Any
    parents: list[int | None]
    binary: list[bool]
    calibration: Tensor
    auto_calibrate: str | None
    calibration_method: str | None
    calibration_prior: str | None
    rate_prior: Any
    _prior_source: Any

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

    def before_fit(self, train: Any, val: TensorFrame | None) -> None:
        """Trainer protocol, once before training with the prepared validation frame and the
        prepared training frame, or the streaming source itself (``Trainer.fit`` passes the
        source): each encoder with a ``before_fit(train, val)`` method is called in turn, with
        ``train=None`` for a source (:class:`~recsys_mt.encoders.IDEmbedding` matches its id
        dropout to the validation rows' unseen ids there).

        From a source with a validation frame, the encoders whose ``train_oov_columns()``
        names ids (``IDEmbedding`` with ``match_unseen``) need the training rows' OOV shares:
        the model counts them in one pass over the source (each process its shard, summed over
        ``torch.distributed``; :func:`~recsys_mt.encoders.unseen_rates.source_oov_shares`) and
        calls ``before_fit(None, val, train_oov=shares)`` on those encoders. With
        ``calibration_prior="auto"`` the model keeps a reference to a training frame until
        :meth:`after_fit` counts its rates. The frames (not a source) are checked first: ids
        beyond the model's vocabularies (a frame of a grown schema before ``model.grow``)
        would train other features' embedding rows."""
        from ..encoders.unseen_rates import source_oov_shares

        source = train if is_source(train) else None
        train = None if source is not None else train
        for name, frame in (("fit (training frame)", train), ("fit (validation frame)", val)):
            if frame is not None:
                check_inputs(self, frame, name)
        wanted: dict[int, dict[str, tuple[str, int | None]]] = {}
        if source is not None and val is not None:
            for enc in self.encoders:
                fn = getattr(enc, "train_oov_columns", None)
                cols = fn() if fn is not None and hasattr(enc, "before_fit") else None
                if cols:
                    wanted[id(enc)] = cols
        shares: dict[str, float] = {}
        if wanted:  # the one extra pass over the source, only when an encoder needs it
            columns = {n: kc for cols in wanted.values() for n, kc in cols.items()}
            device = next(self.parameters()).device
            shares = source_oov_shares(source, columns, device)
        for enc in self.encoders:
            fn = getattr(enc, "before_fit", None)
            if fn is None:
                continue
            if id(enc) in wanted:
                fn(None, val, train_oov={n: shares[n] for n in wanted[id(enc)]})
            else:
                fn(train, val)
        # The training rows the calibration's rate prior is counted on (after_fit drops them).
        wants_prior = self.calibration_prior == "auto" and self.auto_calibrate == "platt"
        self._prior_source = train if wants_prior and train is not None else None

    def _as_frame(
        self, data: TensorFrame | pd.DataFrame, labels: bool | str = "auto"
    ) -> TensorFrame:
        """``data`` prepared for this model; a DataFrame is transformed first, reading its
        label columns when present (``labels="auto"``) or never (``labels=False``: scoring
        needs no outcome, and rows not yet observed may hold none). A DataFrame with every
        label column still counts as labelled data for a text tower's catalogue
        (:func:`~recsys_mt.encoders.text.is_catalogue_frame`), whichever ``labels`` is."""
        if isinstance(data, pd.DataFrame):
            labelled = all(t.label in data.columns for t in self.schema.tasks)
            data = self.schema.transform(data, labels=labels)
            if labelled and "labels" not in data:
                data.meta.setdefault(CATALOGUE_FLAG, True)
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
        return self._scan(data, batch_size, calibrated=calibrated)[0]

    @torch.inference_mode()
    def _scan(
        self, data: Any, batch_size: int, need_labels: bool = False, calibrated: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(logits [N, T], labels [N, T] | None, group [N] | None)`` on the CPU, for a frame,
        a DataFrame or an unshuffled streaming source (read batch by batch, in file order)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if is_source(data):
            if getattr(data, "shuffle", False):
                raise ValueError(
                    f"{type(data).__name__} shuffles its rows: pass one made with "
                    "shuffle=False to predict or evaluate, so rows come back in file order"
                )
            batches = (b for b in data.batches(0) if len(next(iter(b.values()))))
            frame = None
        else:
            frame = self._as_frame(data, labels="auto" if need_labels else False)
            if len(frame) == 0:
                raise ValueError("the frame has 0 rows: nothing to predict")
            batches = frame.batches(batch_size)
        if self.training:
            self.eval()
        device = self.device
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        state = self.calibration_state() if calibrated else None  # one map for every batch
        out, labels, groups = [], [], []
        for b in batches:
            check_inputs(self, b, "predict")  # a frame of another (grown) schema: named
            moved = {  # float inputs in the model's dtype (a model.to(torch.bfloat16) scores)
                k: v.to(
                    device=device,
                    dtype=dtype if v.is_floating_point() else v.dtype,
                    non_blocking=True,
                )
                for k, v in b.items()
            }
            z = self(moved).float()
            out.append((self.calibrate_logits(z, moved, state) if calibrated else z).cpu())
            if frame is None and need_labels:
                if "labels" not in b:
                    raise ValueError("the source reads no labels: evaluate needs them")
                labels.append(b["labels"].cpu())
                if "group" in b:
                    groups.append(b["group"].cpu())
        if not out:
            raise ValueError("the data has 0 rows: nothing to predict")
        logits = torch.cat(out)
        if frame is not None:
            lab = frame["labels"].cpu() if need_labels and "labels" in frame else None
            grp = frame["group"].cpu() if need_labels and "group" in frame else None
            return logits, lab, grp
        return logits, torch.cat(labels) if labels else None, torch.cat(groups) if groups else None

    def predict_columns(self) -> list[str]:
        """Names of the columns :meth:`predict` returns, in order."""
        cols = [t.name for t in self.tasks]
        return cols + [t.joint for t in self.tasks if t.given is not None and t.binary]

    def predict(self, data: TensorFrame | pd.DataFrame, batch_size: int = 8192) -> pd.DataFrame:
        """Per-row predictions as a DataFrame (``data``: a frame, a DataFrame, or an unshuffled
        streaming source such as ``ParquetSource(..., shuffle=False)``, read batch by batch).

        Columns: one per task (conditional probability, e.g. ``ctr``, ``cvr`` = p(buy | click),
        or the predicted value for regression tasks), then one per binary child task with the
        joint probability (``ctcvr`` = p(click ∧ buy), ``repurchase_joint``, …). After
        :meth:`calibrate` the conditionals are calibrated and the joints are their products.

        For a DataFrame the result has its index, so ``df.assign(**model.predict(df))`` lines
        up with the rows even after filtering; label columns are never read (they may be
        missing or NaN).
        """
        cols = self.predict_tensors(data, batch_size)
        index = data.index if isinstance(data, pd.DataFrame) else None
        return pd.DataFrame({name: v.numpy() for name, v in cols.items()}, index=index)

    def predict_tensors(
        self, data: TensorFrame | pd.DataFrame, batch_size: int = 8192
    ) -> dict[str, Tensor]:
        """:meth:`predict` without the DataFrame: ``{column: float32 [N]}`` on the CPU, in
        :meth:`predict_columns` order (the same values)."""
        cond, joint = self.probabilities(self.predict_logits(data, batch_size, calibrated=True))
        cols: dict[str, Tensor] = {}
        for j, t in enumerate(self.tasks):
            cols[t.name] = cond[:, j]
        for j, t in enumerate(self.tasks):
            if t.given is not None and t.binary:
                cols[t.joint] = joint[:, j]
        return cols

    def explain(
        self,
        data: TensorFrame | pd.DataFrame,
        task: str = "ctr",
        *,
        target: str = "logit",
        n_steps: int = 64,
        batch_size: int = 64,
        baseline: str = "oov",
        encoders: bool = True,
        progress_bar: bool | None = None,
    ) -> pd.DataFrame:
        """Integrated-gradients attributions of ``task``'s logit per row and feature (needs
        ``pip install recsys-mt[explain]``); see :func:`recsys_mt.model.explain.explain`."""
        from .explain import explain

        return explain(
            self,
            data,
            task,
            target=target,
            n_steps=n_steps,
            batch_size=batch_size,
            baseline=baseline,
            encoders=encoders,
            progress_bar=progress_bar,
        )

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
        logits, labels, groups = self._scan(data, batch_size, need_labels=True, calibrated=True)
        if labels is None:
            raise ValueError("evaluate needs labels: the frame was transformed without them")
        cond, joint = self.probabilities(logits)
        return evaluate_funnel(self.tasks, self.parents, cond, joint, labels, groups)

    def validation_metrics(self, frame: TensorFrame, batch_size: int) -> dict[str, float]:
        """Trainer protocol: ``{"loss", "<task>_auc", "<task>_logloss", "<joint>_auc", …}``.

        ``loss`` is ``Σ_t Task.weight · L_t`` with the model's supervision — a fixed criterion
        for early stopping even when the balancer learns its weights. Like training, it uses
        the uncalibrated logits. Equal to
        ``validation_metrics_from(validation_outputs(frame, batch_size))``.
        """
        return self.validation_metrics_from(self.validation_outputs(frame, batch_size))

    def validation_outputs(self, frame: TensorFrame, batch_size: int) -> dict[str, Tensor]:
        """Trainer protocol: the per-row tensors validation metrics are computed from, on the
        CPU: ``logits`` ``[N, T]``, ``labels`` ``[N, T]`` and, when the frame has groups,
        ``group`` ``[N]``. Under ``torchrun`` each process computes them for its share of the
        validation rows and the trainer gathers them, so metrics cover all rows exactly."""
        frame = self.prepare(frame)
        if "labels" not in frame:
            raise ValueError("validation needs labels: transform the data with its label columns")
        out = {"logits": self.predict_logits(frame, batch_size), "labels": frame["labels"].cpu()}
        if "group" in frame:
            out["group"] = frame["group"].cpu()
        return out

    def validation_metrics_from(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """Trainer protocol: :meth:`validation_metrics` from (gathered)
        :meth:`validation_outputs`."""
        logits, labels = outputs["logits"], outputs["labels"]
        with torch.no_grad():
            per = self.losses(logits, labels.to(logits.device))
        total = sum(t.weight * float(per[t.name]) for t in self.tasks)
        out = {"loss": total}
        out.update({f"loss_{k}": float(v) for k, v in per.items()})
        cond, joint = self.probabilities(logits)
        table = evaluate_funnel(self.tasks, self.parents, cond, joint, labels, outputs.get("group"))
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
        ``auto_calibrate`` (nothing without a validation frame or with ``auto_calibrate=None``),
        with the training rows of :meth:`before_fit` as ``prior_from`` when
        ``calibration_prior="auto"``."""
        source, self._prior_source = self._prior_source, None
        if self.auto_calibrate is not None and val is not None and "labels" in val:
            try:
                self.calibrate(val, method=self.auto_calibrate, prior_from=source)
            except NothingToCalibrate as e:  # a map fitted before this training is stale
                warnings.warn(f"{e}: reset to the identity instead", stacklevel=2)
                self.calibrate(val, method="none")
