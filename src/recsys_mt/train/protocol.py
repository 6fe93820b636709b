"""The model protocol: what :class:`~recsys_mt.train.Trainer` needs from a model.

The trainer imports no model class. It drives any :class:`torch.nn.Module` that implements
:class:`TrainableModel`:

``training_step(batch) -> dict``
    ``batch`` is a dict of tensors (one :meth:`TensorFrame.take
    <recsys_mt.data.TensorFrame.take>` slice, on the training device). Returns ``{"loss":
    scalar tensor to backpropagate, ...}``; further scalar entries (e.g. ``"loss/ctr"``) are
    averaged over the epoch and logged as ``train/<key>``. They should be detached.
``loss_counts(batch) -> Tensor [K]`` (optional)
    The rows each of the model's loss terms averages over in ``batch`` (float). When present,
    the trainer sums them over the micro-batches of one optimiser step and over processes and
    calls ``training_step(batch, window=counts)``, which must then return this batch's *share*
    of the step's loss (sums divided by ``counts``), so that accumulation and DDP give exactly
    the big batch's gradient also for losses averaged over a subset of rows.
``validation_metrics(frame, batch_size) -> dict[str, float]``
    Evaluates a whole :class:`~recsys_mt.data.TensorFrame`. Called with the model in eval mode,
    on the training device, under :func:`torch.inference_mode`; ``frame`` is on that device
    when it fits there (see ``data_on_device``), otherwise on the CPU, and the model moves its
    batches. Returned keys are logged as ``val/<key>``.
``before_fit(train, val) -> None`` (optional)
    Called once in :meth:`Trainer.fit` before the first epoch, after ``prepare``, with the
    training data and the validation frame (or ``None``). The training data is the prepared
    frame, or, when training from a streaming source, the source itself (not read yet; use
    :func:`~recsys_mt.data.loader.is_source` to tell them apart; earlier versions passed
    ``None``). Reading a source here costs a pass over it; under ``torch.distributed`` every
    process calls it, and should read only its rank's shard and combine over the processes.
    :class:`~recsys_mt.model.MultiTaskModel` passes the frames to its encoders' ``before_fit``,
    with ``None`` for a source; it counts the training rows' OOV shares an
    :class:`~recsys_mt.encoders.IDEmbedding` with ``match_unseen`` needs in one pass over the
    source (only when a validation frame is given).
``after_fit(val) -> None`` (optional)
    Called once at the end of :meth:`Trainer.fit`, after the callbacks' ``on_fit_end`` (so after
    :class:`~recsys_mt.train.EarlyStopping` restored the best weights), with the validation
    frame (or ``None``), in eval mode under :func:`torch.no_grad` (not inference mode: buffers
    it creates must stay normal tensors, which ``load_state_dict`` can later copy into).
    :class:`~recsys_mt.model.MultiTaskModel` calibrates its probabilities there.
``state_layout() -> dict`` and ``set_state_layout(layout)`` (optional, together)
    Plain data describing buffers that exist only after some fit (a calibration's rate-prior
    tables), saved in training checkpoints; a resume calls ``set_state_layout`` before it
    checks and loads the model state, so a checkpoint of a calibrated model resumes into a
    freshly built one.
``default_monitor`` (optional attribute)
    The metric :class:`~recsys_mt.train.EarlyStopping` and
    :class:`~recsys_mt.train.ModelCheckpoint` watch when created with ``monitor="auto"``.
``param_groups(sparse) -> list[dict]`` (optional)
    Parameter groups ``{"params": [...], "sparse": bool, "lr_scale": float,
    "weight_decay": float | None}`` (all but ``params`` optional). Groups flagged sparse hold
    embedding tables; when called with ``sparse=True`` the model switches those tables to
    sparse gradients. Without this method all parameters form one dense group.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from ..data.frame import TensorFrame

__all__ = ["TrainableModel"]


@runtime_checkable
class TrainableModel(Protocol):
    """What :class:`Trainer` needs from a model (an :class:`torch.nn.Module`).

    See :mod:`recsys_mt.train.protocol` for the contract of each method; ``param_groups`` is
    optional and therefore not part of this runtime-checkable protocol.
    """

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]: ...

    def validation_metrics(self, frame: TensorFrame, batch_size: int) -> dict[str, float]: ...
