"""The training loop: :class:`Trainer`.

The trainer imports no model class. It drives any :class:`torch.nn.Module` that implements
:class:`~recsys_mt.train.protocol.TrainableModel` (see :mod:`recsys_mt.train.protocol` for the
contract of each method and the optional hooks). The loop, precision, sparse embeddings,
``torchrun`` and checkpoints are described in :mod:`recsys_mt.train.loop`,
:mod:`recsys_mt.train.devices` and :mod:`recsys_mt.train.checkpointing`; validation on the
whole frame in :mod:`recsys_mt.train.validation`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..data.frame import TensorFrame
from ..data.loader import BatchLoader, SourceLoader, is_source
from . import distributed as dist_utils
from .callbacks import Callback, run_order
from .checkpointing import CHECKPOINT_FORMAT, CheckpointMixin
from .devices import PRECISIONS, place_frame, resolve_device, resolve_precision
from .loggers import Logger
from .loop import EpochLoopMixin
from .optim import (
    build_optimizer,
    build_scheduler,
    resolve_param_groups,
)
from .protocol import TrainableModel
from .settings import as_list, check_model, check_settings, hparams
from .validation import ValidationMixin

#: Under ``torchrun``, ``sparse_embeddings="auto"`` exchanges embedding gradients as touched
#: rows when the largest table has at least this many rows (measured crossover: dense all-reduce
#: is cheaper at 10^5 rows x 16 dims, the row exchange 4.7x cheaper at 10^6, 2 processes, Gloo).
SPARSE_DDP_MIN_ROWS = 250_000

__all__ = [
    "SPARSE_DDP_MIN_ROWS",
    "CHECKPOINT_FORMAT",
    "PRECISIONS",
    "TrainableModel",
    "Trainer",
    "resolve_device",
    "resolve_precision",
]


# --------------------------------------------------------------------------- the trainer


class Trainer(EpochLoopMixin, CheckpointMixin, ValidationMixin):
    """Fits a :class:`TrainableModel` on :class:`~recsys_mt.data.TensorFrame` data.

    Args:
        max_epochs: number of epochs (a resumed run continues up to this count).
        batch_size: rows per micro-batch (per process under ``torchrun``).
        lr: base learning rate (each group uses ``lr * lr_scale``).
        weight_decay: default weight decay of dense groups (decoupled for AdamW).
        optimizer: ``"adamw"``, ``"adam"``, ``"sgd"`` or a callable
            ``(param_groups) -> Optimizer`` (see :func:`~recsys_mt.train.optim.build_optimizer`).
        optimizer_kwargs: extra arguments of the named dense optimiser (``betas``,
            ``momentum`` ...).
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"`` or a :class:`torch.device`. ``accelerator`` is an alias.
        precision: ``"32"``, ``"bf16-mixed"``, ``"16-mixed"`` (CUDA only) or ``"auto"``.
        grad_accum_steps: micro-batches per optimiser step.
        grad_clip_norm: clip the global L2 norm of all gradients (dense and sparse) to this.
        scheduler: ``None``, ``"cosine"``, ``"linear"``, ``"linear_warmup"`` or a callable
            ``(optimizer) -> LRScheduler``; stepped once per optimiser step.
        warmup_steps: shape of the named schedules (see
            :func:`~recsys_mt.train.optim.build_scheduler`).
        min_lr_ratio: see ``warmup_steps``.
        callbacks: :class:`~recsys_mt.train.Callback` instances.
        loggers: :class:`~recsys_mt.train.Logger` instances (rank 0 only).
        progress_bar: show a tqdm bar per epoch on stderr (rank 0 only).
        seed: ``torch.manual_seed`` at fit start and base seed of the shuffle.
        shuffle: reshuffle the training rows every epoch.
        eval_batch_size: batch size passed to ``validation_metrics`` (default ``batch_size``).
        sparse_embeddings: ``"auto"``, ``True`` or ``False`` (see the module docs).
        data_on_device: ``"auto"`` (copy whole frames to an accelerator when they take less
            than half its free memory), ``True`` (always) or ``False`` (copy each batch,
            ``non_blocking``).
        num_threads: ``torch.set_num_threads`` at the start of fit / validate.
        log_every_n_steps: log ``train/loss_step`` and ``lr`` every n optimiser steps
            (0: only at epoch ends).
        find_unused_parameters: passed to DDP (needed when some parameters get no gradient
            in some steps, e.g. a task head without labels in a batch).

    Attributes (after / during fit):
        history: one dict per epoch (``epoch``, ``step``, ``train/*``, ``val/*``, ``lr``,
            ``time/*``).
        callback_metrics: the latest epoch's dict.
        global_step: optimiser steps taken.
        current_epoch: the epoch running / last completed.
        should_stop: set by callbacks to end training after the current epoch.
        model, optimizer, scheduler, scaler: the objects of the current / last fit.
        device, precision, rank, world_size: resolved settings.
    """

    def __init__(
        self,
        max_epochs: int = 10,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str | Callable[[list[dict[str, Any]]], Optimizer] = "adamw",
        optimizer_kwargs: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        precision: str | int = "32",
        grad_accum_steps: int = 1,
        grad_clip_norm: float | None = None,
        scheduler: str | Callable[[Optimizer], LRScheduler] | None = None,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        callbacks: Callback | Sequence[Callback] | None = None,
        loggers: Logger | Sequence[Logger] | None = None,
        progress_bar: bool = True,
        seed: int = 0,
        shuffle: bool = True,
        eval_batch_size: int | None = None,
        sparse_embeddings: bool | str = "auto",
        data_on_device: bool | str = "auto",
        num_threads: int | None = None,
        log_every_n_steps: int = 50,
        find_unused_parameters: bool = False,
        accelerator: str | torch.device | None = None,
    ):
        if accelerator is not None:
            if device not in ("auto", accelerator):
                raise ValueError(f"device={device!r} and accelerator={accelerator!r} disagree")
            device = accelerator
        check_settings(
            max_epochs=max_epochs,
            batch_size=batch_size,
            grad_accum_steps=grad_accum_steps,
            log_every_n_steps=log_every_n_steps,
            eval_batch_size=eval_batch_size,
            num_threads=num_threads,
            lr=lr,
            weight_decay=weight_decay,
            grad_clip_norm=grad_clip_norm,
            sparse_embeddings=sparse_embeddings,
            data_on_device=data_on_device,
            optimizer=optimizer,
            scheduler=scheduler,
            warmup_steps=warmup_steps,
            min_lr_ratio=min_lr_ratio,
            shuffle=shuffle,
            seed=seed,
            optimizer_kwargs=optimizer_kwargs,
        )

        self.max_epochs = int(max_epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.optimizer_spec = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.distributed = dist_utils.is_distributed()
        self.device = resolve_device(device, self.distributed)
        self.precision = resolve_precision(precision, self.device)
        self.grad_accum_steps = int(grad_accum_steps)
        self.grad_clip_norm = None if grad_clip_norm is None else float(grad_clip_norm)
        self.scheduler_spec = scheduler
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.callbacks: list[Callback] = as_list(callbacks, Callback, "callbacks")
        self.loggers: list[Logger] = as_list(loggers, Logger, "loggers")
        self.progress_bar = bool(progress_bar)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.eval_batch_size = eval_batch_size
        self.sparse_embeddings = sparse_embeddings
        self.data_on_device = data_on_device
        self.num_threads = num_threads
        self.log_every_n_steps = int(log_every_n_steps)
        self.find_unused_parameters = bool(find_unused_parameters)
        if sparse_embeddings is True and self.device.type == "mps":
            raise ValueError("sparse embedding gradients are not supported on MPS")

        self.history: list[dict[str, Any]] = []
        self.callback_metrics: dict[str, Any] = {}
        self.global_step = 0
        self.current_epoch = 0
        self.should_stop = False
        self.model: nn.Module | None = None
        self.optimizer: Optimizer | None = None
        self.scheduler: LRScheduler | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.rank = dist_utils.get_rank() if self.distributed else 0
        self.world_size = dist_utils.get_world_size() if self.distributed else 1
        self._ddp: nn.Module | None = None
        self._total_steps = 0
        self._sparse_resolved = False
        self._sparse_params: list[nn.Parameter] = []
        self._progress: dict[str, Any] | None = None  # the running epoch's accumulators
        self._resume_progress: dict[str, Any] | None = None

    # ------------------------------------------------------------------ small properties

    @property
    def is_global_zero(self) -> bool:
        """True in the process that logs and writes files (always true in a single process)."""
        return self.rank == 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the precision setting (None for ``"32"``)."""
        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)

    def _autocast(self) -> Any:
        dtype = self.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _resolve_sparse(self, model: nn.Module | None = None) -> bool:
        """Sparse embedding gradients or not. ``"auto"``: on for one process on CPU / CUDA;
        under ``torchrun``, on when the model's largest sparse-flagged table has at least
        :data:`SPARSE_DDP_MIN_ROWS` rows, where exchanging the touched rows costs less than
        all-reducing the whole table (``benchmarks/ddp_embeddings.py``)."""
        if self.sparse_embeddings != "auto":
            return bool(self.sparse_embeddings)
        if self.device.type not in ("cpu", "cuda"):
            return False
        if not self.distributed:
            return True
        if model is None:
            return self._sparse_resolved
        probe = resolve_param_groups(model, True, self.lr, self.weight_decay)
        rows = [p.shape[0] for g in probe if g["sparse"] for p in g["params"]]
        return bool(rows) and max(rows) >= SPARSE_DDP_MIN_ROWS

    def _current_lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    def _call(self, hook: str, *args: Any) -> None:
        for cb in run_order(self.callbacks):
            getattr(cb, hook)(self, self.model, *args)

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.is_global_zero:
            return
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        model: nn.Module,
        train: TensorFrame | Any,
        val: TensorFrame | None = None,
        resume_from: str | os.PathLike | None = None,
    ) -> nn.Module:
        """Train ``model`` on ``train`` for ``max_epochs`` epochs, validating on ``val``.

        Args:
            model: a :class:`TrainableModel`. It is moved to the device and stays there.
            train: training rows: a :class:`~recsys_mt.data.TensorFrame`, or a streaming
                source such as :class:`~recsys_mt.data.ParquetSource` (its own batch size,
                shuffling and sharding by rank and worker apply; the trainer's ``batch_size``,
                ``shuffle`` and ``data_on_device`` do not).
            val: validation rows (optional; needed for ``val/*`` metrics).
            resume_from: a checkpoint written by :meth:`save_checkpoint` (e.g. by
                :class:`~recsys_mt.train.ModelCheckpoint`); training continues with the epoch
                after the one it holds.

        Returns:
            The trained model (the same object; best weights restored if an
            :class:`~recsys_mt.train.EarlyStopping` callback asks for it).
        """
        check_model(model, training=True, validation=val is not None)
        streaming = is_source(train)
        if streaming and not getattr(model, "streamable", True):
            raise NotImplementedError(
                f"{type(model).__name__} cannot train from a streaming source: one of its "
                "encoders prepares whole frames (a text tower); train it from a TensorFrame"
            )
        if len(train) == 0:
            raise ValueError("the training data is empty: nothing to train on")
        if val is not None and len(val) == 0:
            raise ValueError("the validation frame is empty; pass val=None to skip validation")
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)

        if self.distributed:
            dist_utils.init_process_group(self.device)
            self.rank = dist_utils.get_rank()
            self.world_size = dist_utils.get_world_size()
        else:
            self.rank, self.world_size = 0, 1
        if len(train) < self.world_size:
            raise ValueError(
                f"the training frame has {len(train)} rows, fewer than the {self.world_size} "
                "processes"
            )

        self.history = []
        self.callback_metrics = {}
        self.global_step = 0
        self.current_epoch = 0
        self.should_stop = False

        torch.manual_seed(self.seed)
        model.to(self.device)
        self.model = model
        self._sparse_resolved = self._resolve_sparse(model)
        groups = resolve_param_groups(model, self._sparse_resolved, self.lr, self.weight_decay)
        self._sparse_params = [p for g in groups if g["sparse"] for p in g["params"]]
        self.optimizer = build_optimizer(
            groups, self.optimizer_spec, self.lr, self.optimizer_kwargs
        )

        prepare = getattr(model, "prepare", None)  # optional protocol: once per frame
        if prepare is not None:
            train = train if streaming else prepare(train)
            val = prepare(val) if val is not None else None
        before_fit = getattr(model, "before_fit", None)  # optional protocol
        if before_fit is not None:
            before_fit(train, val)  # the source itself when streaming
        val_frame = (
            place_frame(val, self.device, self.data_on_device)[0] if val is not None else None
        )
        loader: BatchLoader | SourceLoader
        if streaming:  # batches come from the source, which reads and shards them itself
            device = None if self.device.type == "cpu" else self.device
            loader = SourceLoader(train, self.rank, self.world_size, device=device)
        else:
            train_frame, batch_device = place_frame(train, self.device, self.data_on_device)
            loader = BatchLoader(
                train_frame,
                self.batch_size,
                shuffle=self.shuffle,
                seed=self.seed,
                drop_last=False,
                rank=self.rank,
                world_size=self.world_size,
                device=batch_device,
            )
        steps_per_epoch = -(-len(loader) // self.grad_accum_steps)
        self._total_steps = steps_per_epoch * self.max_epochs
        self.scheduler = build_scheduler(
            self.scheduler_spec,
            self.optimizer,
            self._total_steps,
            self.warmup_steps,
            self.min_lr_ratio,
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "16-mixed" else None

        self.has_validation = val is not None  # callbacks monitoring val/ metrics check it
        self._call("on_fit_start")
        start_epoch = 0
        self._resume_progress = None
        if resume_from is not None:
            start_epoch = self._restore(resume_from)

        if self.distributed:
            self._ddp = dist_utils.wrap_ddp(
                model, self.device, self._sparse_params, self.find_unused_parameters
            )
        else:
            self._ddp = None
            self._sparse_params = []  # one process: nothing to exchange

        if self.is_global_zero:
            for logger in self.loggers:
                logger.log_hyperparams(hparams(self))
        try:
            for epoch in range(start_epoch, self.max_epochs):
                resume = self._resume_progress if epoch == start_epoch else None
                self._run_epoch(epoch, loader, val_frame, resume)
                if self.should_stop:
                    break
            self._call("on_fit_end")
            after_fit = getattr(model, "after_fit", None)  # optional protocol
            if after_fit is not None:  # no_grad, not inference_mode: what it writes (the
                with torch.no_grad():  # calibration buffers) must stay loadable in place
                    model.eval()
                    after_fit(val_frame)
                    model.train()
        finally:
            self._ddp = None
            if self.is_global_zero:
                for logger in self.loggers:
                    logger.finalize()
        return model
