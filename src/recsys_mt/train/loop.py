"""One training epoch: micro-batches, exact gradient accumulation, the optimiser step.

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
   for plain means over all rows); after the last micro-batch of a window (or of the epoch):
   check the loss is finite (else ``FloatingPointError``, before the step), unscale (16-mixed), clip
   (``grad_clip_norm``, sparse-aware), ``on_before_optimizer_step``, step, zero grads, step the
   scheduler (per *optimiser* step),
3. validates on the whole validation frame, records a history row, logs, runs the epoch-end
   callbacks (early stopping, checkpoints) and stops if ``trainer.should_stop``.

Validation runs in float32 even with mixed precision: ranking metrics such as AUC are
sensitive to the ties that bf16 / fp16 scores would create.

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
Embedding tables with row-sparse gradients (``sparse_embeddings=True``, or ``"auto"`` when the
largest table has ``SPARSE_DDP_MIN_ROWS`` rows or more) are kept out of DDP's all-reduce: before
each optimiser step the processes exchange only the touched rows (ids and rows gathered,
duplicates summed, averaged), which is what the lazy Adam needs; smaller tables keep dense
gradients, all-reduced by DDP. Gradient accumulation uses ``no_sync`` on the inner
micro-batches. Validation is sharded: with a model that offers ``validation_outputs`` /
``validation_metrics_from`` (as ``MultiTaskModel`` does), each rank scores a contiguous
``1/world_size`` of the validation rows, the per-row outputs are gathered, and every rank
computes the metrics of all rows (AUC, GAUC and log loss exactly as one process would, not an
average of per-rank values); other models validate on the full frame on every rank. All ranks
see the same metrics and take the same early-stopping decision (``should_stop`` is also OR-ed
across ranks).
Only rank 0 shows progress, calls loggers and writes checkpoints. Training losses in the
history are averaged over ranks. Call :func:`recsys_mt.train.distributed.cleanup` at the end of
the script.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..data.frame import TensorFrame
from ..data.loader import BatchLoader, SourceLoader
from . import distributed as dist_utils
from .optim import clip_grad_norm_


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


def _shown(key: str) -> bool:
    """Keys shown in the progress bar's end-of-epoch summary: the losses and AUCs (the full
    set of validation metrics goes to the loggers and ``history``)."""
    return key in ("train/loss", "val/loss") or (key.startswith("val/") and key.endswith("_auc"))


class EpochLoopMixin:
    """The epoch loop of :class:`~recsys_mt.train.Trainer` (uses its attributes)."""

    def _windows(
        self, loader: BatchLoader | SourceLoader, start: int = 0
    ) -> Iterator[list[tuple[int, dict[str, Tensor]]]]:
        """The epoch's micro-batches (numbered from ``start``) grouped into optimiser steps of
        ``grad_accum_steps``."""
        window: list[tuple[int, dict[str, Tensor]]] = []
        for i, batch in enumerate(loader, start):
            window.append((i, batch))
            if len(window) == self.grad_accum_steps:
                yield window
                window = []
        if window:
            yield window

    def _run_epoch(
        self,
        epoch: int,
        loader: BatchLoader | SourceLoader,
        val: TensorFrame | None,
        resume: dict[str, Any] | None = None,
    ) -> None:
        """One epoch; ``resume`` (a mid-epoch checkpoint's progress) continues a started one."""
        model = self.model
        assert model is not None and self.optimizer is not None
        self.current_epoch = epoch
        start = int(resume["batches"]) if resume else 0
        loader.set_epoch(epoch, start)
        model.train()
        if resume is None:
            self._call("on_train_epoch_start")
        # what the epoch has accumulated: saved by mid-epoch checkpoints, None between epochs
        prog: dict[str, Any] = resume or {"batches": 0, "loss": 0.0, "rows": 0, "extras": {}}
        self._progress = prog

        n_batches = len(loader)
        step_fn: Callable[..., Any] = self._ddp if self._ddp is not None else model.training_step
        bar = tqdm(
            total=n_batches,
            initial=start,
            desc=f"epoch {epoch}",
            file=sys.stderr,
            disable=not (self.progress_bar and self.is_global_zero),
            dynamic_ncols=True,
            leave=True,
        )
        t0 = time.perf_counter()
        extra_sums: dict[str, Tensor] = prog["extras"]
        counts_fn = getattr(model, "loss_counts", None)  # optional protocol
        self.optimizer.zero_grad(set_to_none=True)
        try:
            for window in self._windows(loader, start):
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
                        if rows == 0:  # a rank's padding batch: no rows, zero gradients
                            scaled = loss.float().nan_to_num(0.0) * 0.0
                        elif counts is None:  # mean-reduced loss of this micro-batch
                            scaled = loss.float() * (rows / local_rows)
                            window_loss = window_loss + loss.detach().float() * rows
                        else:  # this micro-batch's share of the whole window's loss
                            # DDP averages gradients over processes; the shares add up
                            scaled = loss.float() * self.world_size
                            window_loss = window_loss + loss.detach().float() * global_rows
                        if self.scaler is not None:
                            scaled = self.scaler.scale(scaled)
                        scaled.backward()
                    for key, value in extras.items() if rows else ():
                        contrib = value.to(self.device) * rows
                        extra_sums[key] = (
                            extra_sums[key] + contrib if key in extra_sums else contrib
                        )
                    bar.update(1)
                value = self._window_loss(window_loss, local_rows, epoch, first, last)
                self._optimizer_step()
                self.global_step += 1
                prog["loss"] += value * local_rows
                prog["rows"] += local_rows
                prog["batches"] = last + 1
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                if self.log_every_n_steps and self.global_step % self.log_every_n_steps == 0:
                    self._log(
                        {"epoch": epoch, "train/loss_step": value, "lr": self._current_lr()},
                        self.global_step,
                    )
                self._call("on_train_step_end")
            train_time = time.perf_counter() - t0
            epoch_loss, epoch_rows = prog["loss"], prog["rows"]
            self._progress = None

            row: dict[str, Any] = {"epoch": epoch, "step": self.global_step}
            row["train/loss"] = epoch_loss / max(epoch_rows, 1)
            if extra_sums:
                keys = sorted(extra_sums)
                sums = torch.stack([extra_sums[k].float() for k in keys])
                total_rows = dist_utils.all_reduce_sum(
                    torch.tensor(float(epoch_rows), device=self.device)
                )
                sums = dist_utils.all_reduce_sum(sums) / total_rows.clamp_min(1.0)
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
        value = float(total[0] / total[1].clamp_min(1.0))
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
        if self._sparse_params:  # embedding tables kept out of DDP: average their touched rows
            dist_utils.average_sparse_grads(self._sparse_params)
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
