"""Checkpoints of a fit: write, validate and restore the whole training state.

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
import os
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .callbacks import state_keys

__all__ = ["CHECKPOINT_FORMAT", "CheckpointMixin"]

#: Value of the ``"format"`` entry of checkpoints written by the trainer.
CHECKPOINT_FORMAT = "recsys_mt.train/1"


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


def _layout(model: Any) -> dict[str, Any] | None:
    """The model's optional ``state_layout()`` (which post-fit buffers its state holds)."""
    fn = getattr(model, "state_layout", None)
    return fn() if fn is not None else None


def _put_back(model: Any, layout: dict[str, Any] | None, state: Mapping[str, Tensor]) -> None:
    """Restore ``model``'s buffer layout, then its state (a failed resume's rollback)."""
    if layout is not None:
        model.set_state_layout(layout)
    model.load_state_dict(state)


def _progress_state(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """A running epoch's accumulators as plain values (None between epochs)."""
    if progress is None:
        return None
    return {
        "batches": int(progress["batches"]),
        "loss": float(progress["loss"]),
        "rows": int(progress["rows"]),
        "extras": {k: v.detach().cpu().clone() for k, v in progress["extras"].items()},
    }


class CheckpointMixin:
    """The checkpoint methods of :class:`~recsys_mt.train.Trainer` (uses its attributes)."""

    def checkpoint_state(self) -> dict[str, Any]:
        """The checkpoint dict (tensors and plain values only) of the current fit."""
        if self.model is None or self.optimizer is None:
            raise RuntimeError("there is nothing to checkpoint before fit() has started")
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "layout": _layout(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "callbacks": {key: cb.state_dict() for key, cb in state_keys(self.callbacks)},
            "history": [dict(row) for row in self.history],
            "progress": _progress_state(self._progress),
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

        At an epoch end (as :class:`~recsys_mt.train.ModelCheckpoint` writes it) the file
        records ``current_epoch`` as completed and resuming starts with the next epoch; between
        optimiser steps (``ModelCheckpoint(every_n_steps=...)``, or a callback's
        ``on_train_step_end``) it also records the epoch's progress (batches done, the running
        loss sums), and resuming continues that epoch at its next batch.
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
        # load everything or nothing: on any failure the model (its buffer layout included),
        # optimiser, scheduler, scaler and callbacks get their states back
        layout = _layout(self.model)
        model_backup = copy.deepcopy(self.model.state_dict())
        if layout is not None and ckpt.get("layout") is not None:
            self.model.set_state_layout(ckpt["layout"])  # e.g. a calibrated model's prior tables
        try:
            _check_model_state(ckpt.get("model"), self.model.state_dict(), os.fspath(path))
        except Exception:
            _put_back(self.model, layout, model_backup)
            raise
        backup = {
            "model": model_backup,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "callbacks": {
                key: copy.deepcopy(cb.state_dict()) for key, cb in state_keys(self.callbacks)
            },
        }
        try:
            return self._load_checkpoint(ckpt)
        except Exception as e:
            _put_back(self.model, layout, backup["model"])
            self.optimizer.load_state_dict(backup["optimizer"])
            if backup["scheduler"] is not None:
                self.scheduler.load_state_dict(backup["scheduler"])
            if backup["scaler"] is not None:
                self.scaler.load_state_dict(backup["scaler"])
            for key, cb in state_keys(self.callbacks):
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
        for key, cb in state_keys(self.callbacks):
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
        progress = ckpt.get("progress")
        if progress is None:
            self._resume_progress = None
            return self.current_epoch + 1
        self._resume_progress = {
            "batches": int(progress["batches"]),
            "loss": float(progress["loss"]),
            "rows": int(progress["rows"]),
            "extras": {k: v.to(self.device) for k, v in progress["extras"].items()},
        }
        return self.current_epoch
