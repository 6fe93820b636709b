"""``MultiTaskModel``: encoders → fusion → multi-task head, with funnel-aware outputs."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..data.schema import Schema
from ..encoders import ConcatFusion, DenseEncoder, Encoder, Fusion, IDEmbedding, VectorEncoder
from ..losses import (
    SUPERVISIONS,
    Balancer,
    StaticWeights,
    balance_gradients,
    chain_log_probs,
    funnel_counts,
    funnel_losses,
)
from ..registry import to_config as registered_config
from ..tasks import MMoE, SharedBottom
from ..tasks.heads import Head
from .calibration import METHODS as CALIBRATION_METHODS
from .calibration import identity_calibration
from .calibration_api import CalibrationMixin
from .counterfactual import CounterfactualRegulariser, check_counterfactual
from .inference import InferenceMixin
from .output_checks import check_width as _check_width
from .ownership import claim_parts
from .persistence import FORMAT_VERSION, CheckpointError, load_pretrained, save_pretrained
from .rate_prior import RatePrior
from .update import grow_model

__all__ = ["CheckpointError", "MultiTaskModel"]


class MultiTaskModel(InferenceMixin, CalibrationMixin, nn.Module):
    """Encoders + fusion + multi-task head predicting a purchase funnel.

    Args:
        schema: a fitted :class:`~recsys_mt.data.Schema` with at least one task.
        encoders: encoder modules (default: :class:`IDEmbedding`, plus :class:`DenseEncoder`
            when the schema has dense features and :class:`VectorEncoder` when it has
            :class:`~recsys_mt.data.Vector` features). Each is built from the schema.
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
        calibration_prior: ``"auto"`` (default): when ``auto_calibrate="platt"`` and the
            trainer passes in-memory training rows, the calibration of each binary task may
            add the smoothed training rate of one sparse feature (chosen on the validation
            rows: usually the item) as a second input, ``a·z + c·logit(rate) + b``, where
            that beats the plain map by cross-validation (:mod:`~recsys_mt.model.rate_prior_fit`).
            Rankings within an item stay the model's. ``None``: the plain map only.

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
        calibration_prior: str | None = "auto",
    ):
        super().__init__()
        if not isinstance(schema, Schema):
            raise TypeError(f"schema must be a recsys_mt Schema, got {type(schema).__name__}")
        if not schema.is_fitted:
            raise ValueError("the schema is not fitted: call schema.fit(train_df) first")
        if not schema.tasks:
            raise ValueError("the schema has no tasks; pass tasks=[Task(...)] to Schema")
        claim_parts(self, [*(encoders or []), fusion, head, balancer], record=False)
        if supervision not in SUPERVISIONS:
            raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
        self.schema = schema
        self.supervision = supervision
        if encoders is None:
            encoders = [IDEmbedding()] if (schema.sparse or schema.sequences) else []
            if schema.dense_columns:
                encoders.append(DenseEncoder())
            if schema.vectors:
                encoders.append(VectorEncoder())
        if not encoders:
            raise ValueError(
                "no encoders: pass encoders=[...] (the schema has no id/dense/vector features)"
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
        if calibration_prior not in (None, "auto"):
            raise ValueError(f"calibration_prior must be 'auto' or None, got {calibration_prior!r}")
        self.calibration_prior = calibration_prior
        # Rate tables the calibration may add (empty until calibrate(..., prior_from=train)).
        self.rate_prior = RatePrior(len(schema.tasks))
        self._prior_source: Any = None  # the training frame, between before_fit and after_fit
        claim_parts(self, [*self.encoders, self.fusion, self.head, self.balancer])  # see ownership

    # ------------------------------------------------------------------ forward
    @property
    def tasks(self) -> list:
        return self.schema.tasks

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def streamable(self) -> bool:
        """Trainer protocol: False when an encoder must prepare whole frames (a text tower
        indexes each frame's distinct texts), so batches from a streaming source cannot feed
        it."""
        return not any(callable(getattr(e, "prepare", None)) for e in self.encoders)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits ``[B, T]`` (conditional log-odds for binary tasks, values for regression)."""
        return self._forward(batch)[1]

    def _forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(fused [B, D], logits [B, T])``: the fusion output and the head's logits."""
        outs = [enc(batch) for enc in self.encoders]
        rows = _check_width(outs[0], None, self.encoders[0], "encoder 0")
        for i, (enc, out) in enumerate(zip(self.encoders, outs)):
            _check_width(out, rows, enc, f"encoder {i}", enc.out_dim)
        fused = self.fusion(outs)
        _check_width(fused, rows, self.fusion, "the fusion", self.fusion.out_dim)
        logits = self.head(fused)
        _check_width(logits, rows, self.head, "the head", len(self.schema.tasks), "tasks")
        return fused, logits

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

        A gradient-level balancer (``needs_grads`` set) gets, in training, the per-task
        gradients of ``L`` and returns weights ``c``; ``loss`` is then ``s · Σ_t c_t L_t`` with
        ``c`` detached (plus the balancer's ``weights_loss`` if it has one), and
        ``weight/<task>`` holds ``c``. Under a window the weights come from each micro-batch's
        own gradients, an approximation of the window's.
        """
        if "labels" not in batch:
            raise ValueError("the batch has no labels: transform the training data with labels")
        fused, logits = self._forward(batch)
        per = self.losses(logits, batch["labels"], fused, window=window)
        share = None
        if window is not None:
            share = logits.shape[0] / window[0].clamp_min(1.0)
            if logits.shape[0]:  # an empty (padding) batch keeps its zero shares
                per = {k: v / share for k, v in per.items()}
        weights = None
        mode = getattr(self.balancer, "needs_grads", None)
        if mode is not None and logits.shape[0] and self.training and torch.is_grad_enabled():
            total, weights = balance_gradients(self.balancer, per, fused, self.shared_parameters)
        else:
            total = self.balancer(per)
        if share is not None:
            total = total * share
        out = {"loss": total}
        out.update({f"loss/{k}": v.detach() for k, v in per.items()})
        if weights is not None:
            out.update({f"weight/{k}": w for k, w in zip(self.balancer.task_names, weights)})
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable dense parameters every task depends on, for gradient-level balancers
        (``needs_grads="shared"``): those of the encoders and the fusion, and of the head's
        shared trunk (``head.shared_parameters()`` when the head defines it; the bottom MLP of
        :class:`~recsys_mt.tasks.SharedBottom`, the experts of :class:`~recsys_mt.tasks.MMoE`;
        none for other heads). Embedding tables (an encoder's ``tables``) are left out of the
        gradient statistics: they are large and row-sparse. They still receive the combined
        gradient."""
        tables = {id(p) for enc in self.encoders for p in getattr(enc, "tables", ())}
        mods: list[nn.Module] = [*self.encoders, self.fusion]
        own = getattr(self.head, "shared_parameters", None)
        if own is not None:
            head = list(own())
        else:
            parts = {SharedBottom: ("bottom",), MMoE: ("first", "rest")}.get(type(self.head), ())
            mods += [getattr(self.head, name) for name in parts]
            head = []
        params = [p for m in mods for p in m.parameters() if id(p) not in tables] + head
        return [p for p in params if p.requires_grad]

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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before calibration existed carry no map: load them as uncalibrated.
        key = prefix + "calibration"
        if key not in state_dict:
            state_dict[key] = identity_calibration(len(self.tasks)).to(self.calibration)
            self.calibration_method = None
        if prefix + "rate_prior.weight" not in state_dict:  # saved before the rate prior
            state_dict[prefix + "rate_prior.weight"] = torch.zeros_like(self.rate_prior.weight)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"supervision={self.supervision!r}, calibration={self.calibration_method!r}"

    def grow(
        self, new_schema: Schema, noise_std: float = 0.0, seed: int | None = None
    ) -> dict[str, int]:
        """Grow the embedding tables to ``new_schema`` (from ``self.schema.update(df)``): known
        rows kept bit for bit, new ids start from their vocabulary's OOV row. Returns the rows
        added per vocabulary; see :func:`~recsys_mt.model.update.grow_model`."""
        return grow_model(self, new_schema, noise_std, seed)

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
            "calibration_prior": self.calibration_prior,
            "rate_prior": self.rate_prior.to_config(),
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
        schema_keys: Any = None,
    ) -> MultiTaskModel:
        """Rebuild a model saved by :meth:`save_pretrained` from a local directory.

        Nothing is unpickled: the config is JSON, the weights are safetensors. Passing
        ``schema`` checks it against the saved one and raises :class:`CheckpointError` listing
        the differences. Weights whose names or shapes do not match the rebuilt architecture
        also raise :class:`CheckpointError`. ``schema_keys``: the secret ``hash_key`` of keyed
        or anonymised features (``{feature: key}`` or one key for all), never stored in the
        checkpoint; taken from ``schema`` when that is given.
        """
        return load_pretrained(cls, directory, schema, map_location, schema_keys)
