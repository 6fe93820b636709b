"""The training loop: :class:`Trainer`.

The model protocol
------------------
The trainer imports no model class. It drives any :class:`torch.nn.Module` that implements
:class:`TrainableModel`:

``training_step(batch) -> dict``
    ``batch`` is a dict of tensors (one :meth:`TensorFrame.take
    <recsys_mt.data.TensorFrame.take>` slice, on the training device). Returns ``{"loss":
    scalar tensor to backpropagate, ...}``; further scalar entries (e.g. ``"loss/ctr"``) are
    averaged over the epoch and logged as ``train/<key>``. They should be detached.
``validation_metrics(frame, batch_size) -> dict[str, float]``
    Evaluates a whole :class:`~recsys_mt.data.TensorFrame`. Called with the model in eval mode,
    on the training device, under :func:`torch.inference_mode`; ``frame`` is on that device
    when it fits there (see ``data_on_device``), otherwise on the CPU, and the model moves its
    batches. Returned keys are logged as ``val/<key>``.
``after_fit(val) -> None`` (optional)
    Called once at the end of :meth:`Trainer.fit`, after the callbacks' ``on_fit_end`` (so after
    :class:`~recsys_mt.train.EarlyStopping` restored the best weights), with the validation
    frame (or ``None``), in eval mode under :func:`torch.inference_mode`.
    :class:`~recsys_mt.model.MultiTaskModel` calibrates its probabilities there.
``default_monitor`` (optional attribute)
    The metric :class:`~recsys_mt.train.EarlyStopping` and
    :class:`~recsys_mt.train.ModelCheckpoint` watch when created with ``monitor="auto"``.
``param_groups(sparse) -> list[dict]`` (optional)
    Parameter groups ``{"params": [...], "sparse": bool, "lr_scale": float,
    "weight_decay": float | None}`` (all but ``params`` optional). Groups flagged sparse hold
    embedding tables; when called with ``sparse=True`` the model switches those tables to
    sparse gradients. Without this method all parameters form one dense group.

The loop
--------
``fit`` seeds torch (``torch.manual_seed(seed)``: create the model under *your* seed before,
the trainer's seed governs dropout and shuffling), moves the model to the device, builds the
optimiser and scheduler, optionally restores a checkpoint, and then for every epoch:

1. shuffles the training frame with seed ``seed + epoch`` (:class:`~recsys_mt.data.BatchLoader`),
2. for each micro-batch: forward under autocast, backward of the micro-batch's part of the
   optimiser step's loss. A model with the optional ``loss_counts(batch) -> [K]`` method (the
   rows each of its loss terms averages over) gets the counts summed over the
   ``grad_accum_steps`` micro-batches of the step and over all processes as
   ``training_step(batch, window=counts)`` and returns its *share* of that big batch's loss,
   so masked losses (conditional supervision, regression children) get exactly the big batch's
   gradient; other models' mean-reduced losses are weighted by ``rows / window_rows`` (exact
   for plain means over all rows); after the last micro-batch of a window (or of the epoch): check the loss is finite
   (else ``FloatingPointError``, before the step), unscale (16-mixed), clip
   (``grad_clip_norm``, sparse-aware), ``on_before_optimizer_step``, step, zero grads, step the
   scheduler (per *optimiser* step),
3. validates on the whole validation frame, records a history row, logs, runs the epoch-end
   callbacks (early stopping, checkpoints) and stops if ``trainer.should_stop``.

Validation runs in float32 even with mixed precision: ranking metrics such as AUC are
sensitive to the ties that bf16 / fp16 scores would create.

Precision
---------
``"32"``: float32. ``"bf16-mixed"``: forward under ``torch.autocast(dtype=torch.bfloat16)`` on
CPU or CUDA (parameters and optimiser state stay float32; no loss scaling needed).
``"16-mixed"``: autocast float16 plus :class:`torch.amp.GradScaler`; CUDA only (steps whose
gradients overflow are skipped, and so is the scheduler step). ``"auto"``: ``"bf16-mixed"`` on
CUDA devices that support bf16, else ``"32"``.

Sparse embeddings
-----------------
Dense optimisers such as AdamW update *every* embedding row every step (moments decay even
for rows with zero gradient), which is slow for tables with millions of rows and changes rows
not seen in the batch. With ``sparse_embeddings`` on (``"auto"``: on for a single process on
CPU / CUDA), groups the model flags as sparse get sparse gradients and
:class:`~recsys_mt.train.sparse_optim.RowSparseAdam` (lazy Adam: only the rows in the batch
are touched), the rest
AdamW; :class:`~recsys_mt.train.optim.CombinedOptimizer` joins them.

Distributed (``torchrun``)
--------------------------
With ``WORLD_SIZE > 1`` the trainer initialises the process group if needed (NCCL on CUDA,
Gloo on CPU), uses ``cuda:LOCAL_RANK`` (or the CPU), wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel` (through
:class:`~recsys_mt.train.distributed.StepModule`, so ``training_step`` runs inside DDP's
forward), and gives each rank every ``world_size``-th row of the epoch's shuffled order.
Embedding gradients are dense (``param_groups(sparse=False)``), since DDP's NCCL all-reduce
does not handle sparse tensors. Gradient accumulation uses ``no_sync`` on the inner
micro-batches. Every rank validates on the *full* validation frame, so all ranks see the same
metrics and take the same early-stopping decision (``should_stop`` is also OR-ed across ranks).
Only rank 0 shows progress, calls loggers and writes checkpoints. Training losses in the
history are averaged over ranks. Call :func:`recsys_mt.train.distributed.cleanup` at the end of
the script.

Checkpoints
-----------
:meth:`Trainer.save_checkpoint` stores only tensors and plain Python values (model and
optimiser / scheduler / grad-scaler state, epoch, step, callback states, history, RNG states of
torch CPU / CUDA / MPS, numpy and ``random``), and ``fit(resume_from=path)`` loads them with
``torch.load(weights_only=True)``, so loading never unpickles arbitrary objects. Training
continues with the epoch after the saved one; in a single process the result is bit-identical
to an uninterrupted run with the same settings.
"""

from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from ..data.frame import TensorFrame
from ..data.loader import BatchLoader
from . import distributed as dist_utils
from .callbacks import Callback
from .loggers import Logger
from .optim import (
    OPTIMIZERS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
    clip_grad_norm_,
    resolve_param_groups,
)

__all__ = ["CHECKPOINT_FORMAT", "PRECISIONS", "Trainer", "TrainableModel"]

#: Accepted ``precision`` values (``32`` and ``16`` as ints are read as ``"32"`` / ``"16-mixed"``).
PRECISIONS = ("32", "bf16-mixed", "16-mixed", "auto")
_PRECISION_ALIASES = {"32": "32", "32-true": "32", "16": "16-mixed"}
#: Value of the ``"format"`` entry of checkpoints written by this trainer.
CHECKPOINT_FORMAT = "recsys_mt.train/1"
_DEVICE_TYPES = ("cpu", "cuda", "mps")


@runtime_checkable
class TrainableModel(Protocol):
    """What :class:`Trainer` needs from a model (an :class:`torch.nn.Module`).

    See the module documentation for the contract of each method; ``param_groups`` is
    optional and therefore not part of this runtime-checkable protocol.
    """

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]: ...

    def validation_metrics(self, frame: TensorFrame, batch_size: int) -> dict[str, float]: ...


# --------------------------------------------------------------------------- configuration


def resolve_device(device: str | torch.device | None, distributed: bool = False) -> torch.device:
    """The device to train on.

    ``"auto"`` / ``None``: CUDA if available, else MPS (single process only), else CPU.
    Strings such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` and :class:`torch.device`
    are accepted. In distributed mode an index-less CUDA device becomes ``cuda:LOCAL_RANK``.
    Raises ``ValueError`` for unknown devices and ``RuntimeError`` for unavailable ones.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif not distributed and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
    elif isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            dev = None
        if dev is None or dev.type not in _DEVICE_TYPES:
            raise ValueError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            )
    else:
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"unsupported device type {dev.type!r}; use cpu, cuda or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(dev)!r} was requested but CUDA is not available")
        if dev.index is None:
            index = dist_utils.env_local_rank() if distributed else torch.cuda.current_device()
            dev = torch.device("cuda", index)
        if dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(dev)!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' was requested but MPS is not available")
        if distributed:
            raise ValueError("distributed training on MPS is not supported; use CPU or CUDA")
    return dev


def resolve_precision(precision: str | int, device: torch.device) -> str:
    """Validate ``precision`` for ``device``; returns ``"32"``, ``"bf16-mixed"`` or
    ``"16-mixed"``."""
    key = str(precision).lower()
    key = _PRECISION_ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if key == "auto":
        return "bf16-mixed" if cuda_bf16 else "32"
    if key == "16-mixed" and device.type != "cuda":
        raise ValueError(
            f"precision '16-mixed' (float16 autocast with gradient scaling) needs a CUDA "
            f"device, not {device.type!r}; use 'bf16-mixed' or '32' on this device"
        )
    if key == "bf16-mixed":
        if device.type not in ("cpu", "cuda"):
            raise ValueError(
                f"precision 'bf16-mixed' is supported on CPU and CUDA, not {device.type!r}; "
                "use '32'"
            )
        if device.type == "cuda" and not cuda_bf16:
            raise ValueError("this CUDA device does not support bfloat16; use '16-mixed' or '32'")
    return key


def _frame_nbytes(frame: TensorFrame) -> int:
    return sum(t.numel() * t.element_size() for t in frame.tensors.values())


def _free_memory(device: torch.device) -> int | None:
    """Free accelerator memory in bytes, or None if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    except (AttributeError, RuntimeError):
        return None
    return None


# --------------------------------------------------------------------------- checkpoint helpers


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` unless ``obj`` is tensors / primitives in nested dicts, lists,
    tuples (what ``torch.load(weights_only=True)`` reads back)."""
    if obj is None or isinstance(obj, (bool, int, float, str, Tensor)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}: {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__name__}; checkpoints may hold only tensors, numbers, "
        "strings, None and dicts / lists of those"
    )


def _rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU, and CUDA / MPS when in use), numpy and ``random``, as tensors
    and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_state[0]),
            "state": torch.tensor(py_state[1], dtype=torch.int64),
            "gauss_next": py_state[2],
        },
        "cuda": None,
        "mps": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    if torch.backends.mps.is_available():
        try:
            state["mps"] = torch.mps.get_rng_state()
        except (AttributeError, RuntimeError):
            pass
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`_rng_state` output."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state.get("numpy")
    if np_state is not None:
        np.random.set_state(
            (
                np_state["name"],
                np_state["keys"].numpy().astype(np.uint32),
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )
    py_state = state.get("python")
    if py_state is not None:
        random.setstate(
            (
                int(py_state["version"]),
                tuple(int(x) for x in py_state["state"].tolist()),
                py_state["gauss_next"],
            )
        )
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i].cpu(), i)
    mps = state.get("mps")
    if mps is not None and torch.backends.mps.is_available():
        try:
            torch.mps.set_rng_state(mps.cpu())
        except (AttributeError, RuntimeError):
            pass


def _parse_output(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Split ``training_step`` output into the loss and the extra scalars to log."""
    if isinstance(out, Tensor):
        loss, rest = out, {}
    elif isinstance(out, Mapping) and "loss" in out:
        loss, rest = out["loss"], {k: v for k, v in out.items() if k != "loss"}
    else:
        keys = f" with keys {list(out)}" if isinstance(out, Mapping) else ""
        raise TypeError(
            f"training_step must return a dict with a 'loss' tensor, got {type(out).__name__}{keys}"
        )
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(f"training_step's 'loss' must be a scalar tensor, got {shape}")
    if not loss.requires_grad:
        raise RuntimeError(
            "training_step's loss does not require grad (computed under no_grad, or the "
            "model has no trainable parameters?)"
        )
    extras: dict[str, Tensor] = {}
    for key, value in rest.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            extras[key] = value.detach().reshape(()).float()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            extras[key] = torch.tensor(float(value))
    return loss.reshape(()), extras


def _batch_rows(batch: Mapping[str, Tensor]) -> int:
    return int(next(iter(batch.values())).shape[0])


# --------------------------------------------------------------------------- the trainer


class Trainer:
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
        _positive_int("max_epochs", max_epochs, minimum=1)
        _positive_int("batch_size", batch_size, minimum=1)
        _positive_int("grad_accum_steps", grad_accum_steps, minimum=1)
        _positive_int("log_every_n_steps", log_every_n_steps, minimum=0)
        if eval_batch_size is not None:
            _positive_int("eval_batch_size", eval_batch_size, minimum=1)
        if num_threads is not None:
            _positive_int("num_threads", num_threads, minimum=1)
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
            raise ValueError(
                f"data_on_device must be 'auto', True or False, got {data_on_device!r}"
            )
        if isinstance(optimizer, str):
            if optimizer.lower() not in OPTIMIZERS:
                raise ValueError(
                    f"optimizer must be one of {OPTIMIZERS} or a callable, got {optimizer!r}"
                )
        elif not callable(optimizer):
            raise ValueError(f"optimizer must be a name or a callable, got {optimizer!r}")
        if scheduler is not None and not callable(scheduler) and scheduler not in SCHEDULERS:
            raise ValueError(
                f"scheduler must be None, one of {SCHEDULERS} or a callable, got {scheduler!r}"
            )
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

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
        self.callbacks: list[Callback] = _as_list(callbacks, Callback, "callbacks")
        self.loggers: list[Logger] = _as_list(loggers, Logger, "loggers")
        self.progress_bar = bool(progress_bar)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.eval_batch_size = eval_batch_size
        self.sparse_embeddings = sparse_embeddings
        self.data_on_device = data_on_device
        self.num_threads = num_threads
        self.log_every_n_steps = int(log_every_n_steps)
        self.find_unused_parameters = bool(find_unused_parameters)
        if self.distributed and sparse_embeddings is True:
            raise ValueError(
                "sparse_embeddings=True is not supported with distributed training (DDP "
                "all-reduces dense gradients); use 'auto' or False"
            )
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

    def _resolve_sparse(self) -> bool:
        if self.sparse_embeddings == "auto":
            return not self.distributed and self.device.type in ("cpu", "cuda")
        return bool(self.sparse_embeddings)

    def _current_lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    def _ordered_callbacks(self) -> list[Callback]:
        """Callbacks with ``run_last`` ones (checkpointing) moved to the end, order kept."""
        first = [cb for cb in self.callbacks if not cb.run_last]
        return first + [cb for cb in self.callbacks if cb.run_last]

    def _callback_keys(self) -> list[tuple[str, Callback]]:
        """Unique checkpoint keys: ``state_key``, then ``state_key#1``, ``#2`` for repeats."""
        counts: dict[str, int] = {}
        out = []
        for cb in self.callbacks:
            key = cb.state_key
            n = counts.get(key, 0)
            counts[key] = n + 1
            out.append((key if n == 0 else f"{key}#{n}", cb))
        return out

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self._ordered_callbacks():
            getattr(cb, hook)(self, self.model, *args)

    def _log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.is_global_zero:
            return
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def _hparams(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)

        return {
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "optimizer": plain(self.optimizer_spec),
            "device": str(self.device),
            "precision": self.precision,
            "grad_accum_steps": self.grad_accum_steps,
            "grad_clip_norm": self.grad_clip_norm,
            "scheduler": plain(self.scheduler_spec),
            "warmup_steps": self.warmup_steps,
            "seed": self.seed,
            "world_size": self.world_size,
            "sparse_embeddings": self._resolve_sparse(),
        }

    # ------------------------------------------------------------------ data placement

    def _place(self, frame: TensorFrame) -> tuple[TensorFrame, torch.device | None]:
        """``(frame, batch_device)``: the frame moved to the device when it should live
        there (then ``batch_device`` is None), else the frame as is and the device to which
        each batch must be copied."""
        if frame.device == self.device:
            return frame, None
        if self.device.type == "cpu":
            return frame, self.device
        move = self.data_on_device is True
        if self.data_on_device == "auto":
            free = _free_memory(self.device)
            move = free is not None and _frame_nbytes(frame) < 0.5 * free
        if move:
            return frame.to(self.device), None
        return frame, self.device

    @staticmethod
    def _check_model(model: nn.Module, training: bool, validation: bool) -> None:
        """Clear errors for objects that do not implement the needed protocol methods."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if training and not callable(getattr(model, "training_step", None)):
            raise TypeError(f"{type(model).__name__} has no training_step(batch) method")
        if validation and not callable(getattr(model, "validation_metrics", None)):
            raise TypeError(
                f"{type(model).__name__} has no validation_metrics(frame, batch_size) method"
            )

    # ------------------------------------------------------------------ validation

    def _evaluate(self, model: nn.Module, frame: TensorFrame) -> dict[str, float]:
        """``val/<key>`` metrics of ``model`` on ``frame`` (eval mode, inference mode, fp32)."""
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                raw = model.validation_metrics(frame, self.eval_batch_size or self.batch_size)
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

    def validate(self, model: nn.Module, frame: TensorFrame) -> dict[str, float]:
        """Evaluate ``model`` on the whole ``frame``; returns ``{"val/<key>": value}``.

        Moves the model to the trainer's device (it stays there). Does not touch
        ``history`` or the callbacks.
        """
        self._check_model(model, training=False, validation=True)
        if len(frame) == 0:
            raise ValueError("cannot validate on an empty frame")
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        model.to(self.device)
        placed, _ = self._place(frame)
        return self._evaluate(model, placed)

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        model: nn.Module,
        train: TensorFrame,
        val: TensorFrame | None = None,
        resume_from: str | os.PathLike | None = None,
    ) -> nn.Module:
        """Train ``model`` on ``train`` for ``max_epochs`` epochs, validating on ``val``.

        Args:
            model: a :class:`TrainableModel`. It is moved to the device and stays there.
            train: training rows.
            val: validation rows (optional; needed for ``val/*`` metrics).
            resume_from: a checkpoint written by :meth:`save_checkpoint` (e.g. by
                :class:`~recsys_mt.train.ModelCheckpoint`); training continues with the epoch
                after the one it holds.

        Returns:
            The trained model (the same object; best weights restored if an
            :class:`~recsys_mt.train.EarlyStopping` callback asks for it).
        """
        self._check_model(model, training=True, validation=val is not None)
        if len(train) == 0:
            raise ValueError("the training frame is empty: nothing to train on")
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
        groups = resolve_param_groups(model, self._resolve_sparse(), self.lr, self.weight_decay)
        self.optimizer = build_optimizer(
            groups, self.optimizer_spec, self.lr, self.optimizer_kwargs
        )

        prepare = getattr(model, "prepare", None)  # optional protocol: once per frame
        if prepare is not None:
            train = prepare(train)
            val = prepare(val) if val is not None else None
        train_frame, batch_device = self._place(train)
        val_frame = self._place(val)[0] if val is not None else None
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

        self._call("on_fit_start")
        start_epoch = 0
        if resume_from is not None:
            start_epoch = self._restore(resume_from)

        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(
                dist_utils.StepModule(model),
                device_ids=device_ids,
                find_unused_parameters=self.find_unused_parameters,
            )
        else:
            self._ddp = None

        if self.is_global_zero:
            for logger in self.loggers:
                logger.log_hyperparams(self._hparams())
        try:
            for epoch in range(start_epoch, self.max_epochs):
                self._run_epoch(epoch, loader, val_frame)
                if self.should_stop:
                    break
            self._call("on_fit_end")
            after_fit = getattr(model, "after_fit", None)  # optional protocol
            if after_fit is not None:
                with torch.inference_mode():
                    model.eval()
                    after_fit(val_frame)
                    model.train()
        finally:
            self._ddp = None
            if self.is_global_zero:
                for logger in self.loggers:
                    logger.finalize()
        return model

    def _windows(self, loader: BatchLoader) -> Iterator[list[tuple[int, dict[str, Tensor]]]]:
        """The epoch's micro-batches grouped into optimiser steps of ``grad_accum_steps``."""
        window: list[tuple[int, dict[str, Tensor]]] = []
        for i, batch in enumerate(loader):
            window.append((i, batch))
            if len(window) == self.grad_accum_steps:
                yield window
                window = []
        if window:
            yield window

    def _run_epoch(self, epoch: int, loader: BatchLoader, val: TensorFrame | None) -> None:
        model = self.model
        assert model is not None and self.optimizer is not None
        self.current_epoch = epoch
        loader.set_epoch(epoch)
        model.train()
        self._call("on_train_epoch_start")

        n_batches = len(loader)
        rank_rows = len(loader.frame) // self.world_size
        step_fn: Callable[..., Any] = self._ddp if self._ddp is not None else model.training_step
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch}",
            file=sys.stderr,
            disable=not (self.progress_bar and self.is_global_zero),
            dynamic_ncols=True,
            leave=True,
        )
        t0 = time.perf_counter()
        epoch_loss, epoch_rows = 0.0, 0
        extra_sums: dict[str, Tensor] = {}
        counts_fn = getattr(model, "loss_counts", None)  # optional protocol
        self.optimizer.zero_grad(set_to_none=True)
        try:
            for window in self._windows(loader):
                first, last = window[0][0], window[-1][0]
                local_rows = sum(_batch_rows(b) for _, b in window)
                counts = None
                if counts_fn is not None:
                    counts = torch.stack(
                        [counts_fn(b).float().to(self.device) for _, b in window]
                    ).sum(0)
                    counts = dist_utils.all_reduce_sum(counts)
                    global_rows = float(counts[0])
                window_loss = torch.zeros((), device=self.device)
                for j, (_, batch) in enumerate(window):
                    rows = _batch_rows(batch)
                    sync = (
                        self._ddp.no_sync()
                        if self._ddp is not None and j + 1 < len(window)
                        else nullcontext()
                    )
                    with sync:
                        with self._autocast():
                            out = (
                                step_fn(batch) if counts is None else step_fn(batch, window=counts)
                            )
                        loss, extras = _parse_output(out)
                        if counts is None:  # mean-reduced loss of this micro-batch
                            scaled = loss.float() * (rows / local_rows)
                            window_loss = window_loss + loss.detach().float() * rows
                        else:  # this micro-batch's share of the whole window's loss
                            # DDP averages gradients over processes; the shares add up
                            scaled = loss.float() * self.world_size
                            window_loss = window_loss + loss.detach().float() * global_rows
                        if self.scaler is not None:
                            scaled = self.scaler.scale(scaled)
                        scaled.backward()
                    for key, value in extras.items():
                        contrib = value.to(self.device) * rows
                        extra_sums[key] = (
                            extra_sums[key] + contrib if key in extra_sums else contrib
                        )
                    bar.update(1)
                value = self._window_loss(window_loss, local_rows, epoch, first, last)
                self._optimizer_step()
                self.global_step += 1
                epoch_loss += value * local_rows
                epoch_rows += local_rows
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                if self.log_every_n_steps and self.global_step % self.log_every_n_steps == 0:
                    self._log(
                        {"epoch": epoch, "train/loss_step": value, "lr": self._current_lr()},
                        self.global_step,
                    )
            train_time = time.perf_counter() - t0

            row: dict[str, Any] = {"epoch": epoch, "step": self.global_step}
            row["train/loss"] = epoch_loss / max(epoch_rows, 1)
            if extra_sums:
                keys = sorted(extra_sums)
                sums = torch.stack([extra_sums[k].float() for k in keys])
                sums = dist_utils.all_reduce_sum(sums) / (rank_rows * self.world_size)
                for key, v in zip(keys, sums.tolist()):
                    row[f"train/{key}"] = v
            row["lr"] = self._current_lr()
            row["time/train_s"] = train_time

            val_metrics: dict[str, float] = {}
            if val is not None:
                t1 = time.perf_counter()
                val_metrics = self._evaluate(model, val)
                row.update(val_metrics)
                row["time/val_s"] = time.perf_counter() - t1
            bar.set_postfix(
                {k.split("/", 1)[-1]: f"{v:.4f}" for k, v in row.items() if _shown(k)},
                refresh=False,
            )
        finally:
            bar.close()

        self.callback_metrics = dict(row)
        if val is not None:
            self._call("on_validation_end", dict(val_metrics))
        self.history.append(dict(row))
        self._log(row, self.global_step)
        self._call("on_train_epoch_end")
        if self.distributed:
            self.should_stop = dist_utils.any_true(self.should_stop, self.device)

    def _window_loss(
        self, window_loss: Tensor, window_rows: int, epoch: int, first: int, last: int
    ) -> float:
        """Mean loss of the finished window (averaged over processes); raises
        ``FloatingPointError`` when it is not finite, before the optimiser step."""
        total = torch.stack([window_loss, torch.tensor(float(window_rows), device=self.device)])
        total = dist_utils.all_reduce_sum(total)
        value = float(total[0] / total[1])
        if not math.isfinite(value):
            where = f"batch {first}" if first == last else f"batches {first}-{last}"
            raise FloatingPointError(
                f"non-finite training loss ({value}) at epoch {epoch}, optimizer step "
                f"{self.global_step} ({where} of the epoch); the step was not applied. Check "
                "the inputs for NaN / inf, lower the learning rate or set grad_clip_norm."
            )
        return value

    def _optimizer_step(self) -> None:
        """Unscale, clip, run the hook, step (via the scaler for 16-mixed), zero grads and
        step the scheduler when the optimiser actually stepped."""
        opt = self.optimizer
        assert opt is not None
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.grad_clip_norm is not None:
            params = [p for g in opt.param_groups for p in g["params"]]
            clip_grad_norm_(params, self.grad_clip_norm)
        self._call("on_before_optimizer_step", opt)
        stepped = True
        if self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.step(opt)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= before  # the scale shrinks on a skipped step
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if self.scheduler is not None and stepped:
            self.scheduler.step()

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        """The checkpoint dict (tensors and plain values only) of the current fit."""
        if self.model is None or self.optimizer is None:
            raise RuntimeError("there is nothing to checkpoint before fit() has started")
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "callbacks": {key: cb.state_dict() for key, cb in self._callback_keys()},
            "history": [dict(row) for row in self.history],
            "rng": _rng_state(),
            "loop": {
                "batch_size": self.batch_size,
                "grad_accum_steps": self.grad_accum_steps,
                "seed": self.seed,
                "shuffle": self.shuffle,
                "world_size": self.world_size,
                "total_steps": self._total_steps,
                "precision": self.precision,
            },
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the training state to ``path`` (rank 0 only; written to a temporary file and
        renamed, so a crash never leaves a truncated checkpoint).

        Meant for epoch ends (as :class:`~recsys_mt.train.ModelCheckpoint` does): the file
        records ``current_epoch`` as completed, and resuming starts with the next epoch.
        Raises ``TypeError`` if some state (e.g. a custom scheduler's) is not plain data.
        """
        if not self.is_global_zero:
            return
        state = self.checkpoint_state()
        _check_plain(state)
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _restore(self, path: str | os.PathLike) -> int:
        """Load a checkpoint into the fit being set up; returns the epoch to start with."""
        assert self.model is not None and self.optimizer is not None
        try:
            ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # unpickling refused or corrupt file
            raise RuntimeError(f"cannot load checkpoint {os.fspath(path)!r}: {e}") from e
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a checkpoint written by this Trainer")
        _check_model_state(ckpt.get("model"), self.model.state_dict(), os.fspath(path))
        # load everything or nothing: on any failure the model, optimiser, scheduler, scaler and
        # callbacks get their states back
        backup = {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "callbacks": {key: copy.deepcopy(cb.state_dict()) for key, cb in self._callback_keys()},
        }
        try:
            return self._load_checkpoint(ckpt)
        except Exception as e:
            self.model.load_state_dict(backup["model"])
            self.optimizer.load_state_dict(backup["optimizer"])
            if backup["scheduler"] is not None:
                self.scheduler.load_state_dict(backup["scheduler"])
            if backup["scaler"] is not None:
                self.scaler.load_state_dict(backup["scaler"])
            for key, cb in self._callback_keys():
                cb.load_state_dict(backup["callbacks"][key])
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} does not fit this trainer's model / optimiser "
                f"({type(e).__name__}: {e}); nothing was changed"
            ) from e

    def _load_checkpoint(self, ckpt: dict[str, Any]) -> int:
        """The loading part of :meth:`_restore` (``ckpt`` already read and checked)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        elif (self.scheduler is None) != (ckpt.get("scheduler") is None):
            warnings.warn(
                "the checkpoint and this trainer disagree on using a scheduler; the scheduler "
                "state is not restored",
                stacklevel=3,
            )
        if self.scaler is not None and ckpt.get("grad_scaler") is not None:
            self.scaler.load_state_dict(ckpt["grad_scaler"])
        saved_callbacks = ckpt.get("callbacks") or {}
        for key, cb in self._callback_keys():
            if key in saved_callbacks:
                cb.load_state_dict(saved_callbacks[key])
        self.history = [dict(row) for row in ckpt.get("history", [])]
        self.callback_metrics = dict(self.history[-1]) if self.history else {}
        self.global_step = int(ckpt["global_step"])
        self.current_epoch = int(ckpt["epoch"])
        loop = ckpt.get("loop") or {}
        mine = {
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "world_size": self.world_size,
        }
        if isinstance(self.scheduler_spec, str):
            mine["total_steps"] = self._total_steps
        changed = [k for k, v in mine.items() if k in loop and loop[k] != v]
        if changed:
            diffs = ", ".join(f"{k}: {loop[k]} -> {mine[k]}" for k in changed)
            warnings.warn(
                f"resuming with different settings ({diffs}); the run will not reproduce an "
                "uninterrupted one",
                stacklevel=3,
            )
        _set_rng_state(ckpt["rng"])
        return self.current_epoch + 1


def _check_model_state(saved: Any, expected: Mapping[str, Tensor], path: str) -> None:
    """Raise ``ValueError`` naming the keys / shapes where a checkpoint's model state differs
    from the model's, before anything is loaded."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"checkpoint {path!r} holds no model state")
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in saved and isinstance(saved[k], Tensor) and saved[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {path!r} was written for another architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {wrong[:5]}; nothing was changed"
        )


def _shown(key: str) -> bool:
    """Keys shown in the progress bar's end-of-epoch summary: the losses and AUCs (the full
    set of validation metrics goes to the loggers and ``history``)."""
    return key in ("train/loss", "val/loss") or (key.startswith("val/") and key.endswith("_auc"))


def _positive_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _as_list(items: Any, cls: type, name: str) -> list:
    if items is None:
        return []
    if isinstance(items, cls):
        return [items]
    items = list(items)
    for item in items:
        if not isinstance(item, cls):
            raise TypeError(f"{name} must hold {cls.__name__} instances, got {type(item).__name__}")
    return items
