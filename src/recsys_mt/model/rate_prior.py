"""The rate prior of a model's calibration: per task, an optional sparse feature whose
smoothed training-period rate enters the calibrated logit (see :mod:`.rate_prior_fit`).

A :class:`RatePrior` holds, for each task ``t`` with a chosen feature, a ``[V]`` table of the
feature's smoothed rate logits and the weight ``c_t``; ``forward(batch)`` gives the ``[B, T]``
offsets ``c_t · table_t[ids]`` (0 for tasks without a prior) that
:meth:`~recsys_mt.model.MultiTaskModel.calibrate_logits` adds to ``a_t · z + b_t``. The tables
are buffers (saved in ``model.safetensors``); which feature each task uses is saved in
``config.json`` (``rate_prior``) so a loaded model rebuilds the same buffers.

The schema's ``group`` column (the user) is never a candidate. A user's counted rate is a few
events of one person, frozen at training time, and returning users drift: on MovieLens the
share of 5-star ratings among the purchases of the test period's returning users is 0.34 in
training, 0.30 in validation and 0.56 in test, so validation rows vouch for a user's rate that
the serving period contradicts (stage-3 log loss 0.75 against 0.68 without it). A user's own
funnel so far belongs in request-time features (``Dense`` running counters) instead.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor, nn

from ..data.features import OOV_ID
from .rate_prior_fit import PriorChoice, count_tables, fit_rate_prior

__all__ = ["RatePrior", "choose_rate_prior"]


def choose_rate_prior(
    model: Any, val: Any, logits: Tensor, train: Any, skip: set[int]
) -> list[PriorChoice | None]:
    """Per task, the rate prior :func:`~.rate_prior_fit.fit_rate_prior` picks for ``model``
    from the ``train`` frame's counts and the ``val`` frame's rows (``logits``: their raw
    ``[N, T]`` logits); ``None`` for tasks in ``skip`` and where nothing gains. Changes
    nothing. ``train`` needs the ``sparse`` and ``labels`` tensors of the training rows."""
    names = [f.name for f in model.schema.sparse]
    if not names:
        return [None] * len(model.tasks)
    excluded = [names.index(model.schema.group)] if model.schema.group in names else []
    for key in ("sparse", "labels"):
        if key not in train:
            raise ValueError(f"prior_from has no {key!r} tensor: pass the encoded training rows")
    if train["labels"].shape[1] != len(model.tasks):
        raise ValueError(
            f"prior_from has {train['labels'].shape[1]} label columns, the model "
            f"{len(model.tasks)} tasks"
        )
    sizes = [model.schema.vocab_size(n) for n in names]
    tables = count_tables(train["sparse"], train["labels"], model.parents, model.binary, sizes)
    group = val["group"] if "group" in val else None
    for s in excluded:  # the group column (the user): see the module docstring
        tables[s] = [None] * len(model.tasks)
    choices = fit_rate_prior(logits, val["labels"], val["sparse"], tables, model.parents, group)
    return [None if t in skip else c for t, c in enumerate(choices)]


class RatePrior(nn.Module):
    """Per-task rate tables of one sparse feature each (none until a calibration chooses).

    Thread safety: tables and weights are replaced, never written in place, and swapped in
    together under ``lock`` (re-entrant; the model holds it while it publishes a new
    calibration). :meth:`snapshot` hands a predict call one consistent set that a concurrent
    re-calibration or growth does not touch.

    Args:
        num_tasks: number of tasks ``T``.
    """

    def __init__(self, num_tasks: int):
        super().__init__()
        self.lock = threading.RLock()
        self.register_buffer("weight", torch.zeros(num_tasks))
        self.columns: list[str | None] = [None] * num_tasks
        self._index: list[int | None] = [None] * num_tasks

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("lock", None)  # a lock is neither copied nor pickled: each copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.lock = threading.RLock()

    @property
    def active(self) -> bool:
        """True when some task has a chosen feature."""
        return any(c is not None for c in self.columns)

    def _name(self, t: int) -> str:
        return f"table_{t}"

    def configure(self, schema: Any, columns: list[str | None]) -> None:
        """Choose the feature of every task (``None``: no prior) and make zero tables of the
        right size; weights are reset to 0. Used by calibration and by checkpoint loading."""
        self._install(schema, columns, {}, torch.zeros_like(self.weight))

    def _install(
        self, schema: Any, columns: list[str | None], tables: dict[int, Tensor], weight: Tensor
    ) -> None:
        """Check ``columns``, then swap in their tables (zeros where ``tables`` has none) and
        ``weight`` ``[T]`` in one step under ``lock``."""
        if len(columns) != len(self.columns):
            raise ValueError(f"rate_prior needs {len(self.columns)} entries, got {len(columns)}")
        names = [f.name for f in schema.sparse]
        for col in columns:
            if col is not None and col not in names:
                raise ValueError(f"rate_prior names {col!r}, which is not a Sparse feature")
        device = self.weight.device
        new = {}
        with torch.inference_mode(False):  # normal tensors: load_state_dict copies into them
            for t, col in enumerate(columns):
                if col is not None:
                    size = schema.vocab_size(col)
                    zeros = torch.zeros(size, device=device)
                    new[t] = tables[t].to(device).clone() if t in tables else zeros
            weight = weight.to(self.weight).clone()
        with self.lock:
            for t in range(len(columns)):
                self._buffers.pop(self._name(t), None)
            for t, table in new.items():
                self.register_buffer(self._name(t), table)
            self.weight = weight
            self.columns = list(columns)
            self._index = [None if c is None else names.index(c) for c in columns]

    def set_choices(self, schema: Any, choices: list[PriorChoice | None]) -> None:
        """Install :func:`choose_rate_prior`'s result: tables and weights ``c_t``."""
        names = [f.name for f in schema.sparse]
        columns = [None if c is None else names[c.column] for c in choices]
        tables = {t: c.table.to(self.weight.dtype) for t, c in enumerate(choices) if c is not None}
        weight = torch.tensor([0.0 if c is None else float(c.c) for c in choices])
        self._install(schema, columns, tables, weight)

    def table(self, t: int) -> Tensor | None:
        """Task ``t``'s ``[V]`` table of smoothed rate logits (before the weight), or ``None``."""
        return self._buffers.get(self._name(t)) if self.columns[t] is not None else None

    def snapshot(self) -> tuple:
        """The tables, weights and feature positions as they are now (one consistent set)."""
        with self.lock:
            tables = [None if s is None else self._buffers[self._name(t)] for t, s in
                      enumerate(self._index)]  # fmt: skip
            return list(self._index), tables, self.weight

    def forward(self, batch: dict[str, Tensor], snapshot: tuple | None = None) -> Tensor | None:
        """``[B, T]`` offsets ``c_t · table_t[ids]``, or ``None`` when no task has a prior.

        ``snapshot``: a :meth:`snapshot` to use (default: take one now)."""
        index, tables, weight = self.snapshot() if snapshot is None else snapshot
        if all(s is None for s in index):
            return None
        sparse = batch["sparse"]
        cols = []
        for t, s in enumerate(index):
            if s is None:
                cols.append(torch.zeros(sparse.shape[0], device=sparse.device))
            else:
                table = tables[t].to(sparse.device)
                ids = sparse[:, s].clamp(0, table.shape[0] - 1)
                cols.append(table[ids] * weight[t].to(sparse.device))
        return torch.stack(cols, dim=1)

    def grow(self, new_schema: Any) -> None:
        """Extend each table to ``new_schema``'s vocabulary: new ids get the OOV id's value
        (what they were scored with while unknown), so predictions do not change."""
        with self.lock, torch.inference_mode(False):
            for t, col in enumerate(self.columns):
                if col is None:
                    continue
                old = self._buffers[self._name(t)]
                size = new_schema.vocab_size(col)
                if size > old.shape[0]:
                    extra = old[OOV_ID].expand(size - old.shape[0])
                    self._buffers[self._name(t)] = torch.cat([old, extra]).contiguous()

    def to_config(self) -> list[str | None] | None:
        """The chosen features, one per task (``None`` when no task has one)."""
        return list(self.columns) if self.active else None

    def extra_repr(self) -> str:
        return f"columns={self.columns}"
