"""Small helpers for multi-process data-parallel training launched with ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
for every process. The :class:`~recsys_mt.train.Trainer` treats ``WORLD_SIZE > 1`` (or an
already initialised process group with more than one member) as distributed mode: it calls
:func:`init_process_group` (NCCL on CUDA, Gloo on CPU), trains a
:class:`~torch.nn.parallel.DistributedDataParallel` wrapper around :class:`StepModule`, shards
the batches by rank, and lets only rank 0 log and write files.

Nothing here is needed in a single process; every helper degrades to the single-process answer
(rank 0 of 1) when no process group exists.
"""

from __future__ import annotations

import datetime
import gc
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "StepModule",
    "all_gather_rows",
    "average_sparse_grads",
    "all_reduce_sum",
    "any_true",
    "barrier",
    "cleanup",
    "env_local_rank",
    "env_rank",
    "env_world_size",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_distributed",
    "is_initialized",
    "is_rank_zero",
    "unwrap_model",
    "wrap_ddp",
]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """``RANK`` from the environment (0 when unset)."""
    return int(os.environ.get("RANK", "0"))


def env_local_rank() -> int:
    """``LOCAL_RANK`` from the environment (0 when unset): the process's index on its node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """More than one process: an initialised group of size > 1, or ``WORLD_SIZE > 1``."""
    if is_initialized():
        return dist.get_world_size() > 1
    return env_world_size() > 1


def get_rank() -> int:
    """Global rank (from the process group, else the environment)."""
    return dist.get_rank() if is_initialized() else env_rank()


def get_world_size() -> int:
    """Number of processes (from the process group, else the environment)."""
    return dist.get_world_size() if is_initialized() else env_world_size()


def is_rank_zero() -> bool:
    """True in the process that logs, prints and writes files."""
    return get_rank() == 0


def init_process_group(device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from the ``torchrun`` environment if needed.

    Uses NCCL when ``device`` is CUDA (and makes ``device`` the current CUDA device first),
    Gloo otherwise. Returns ``True`` if this call created the group (the caller may then
    :func:`cleanup` it), ``False`` if one existed already.
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return True


def cleanup() -> None:
    """Destroy the default process group, if any (call once at the end of a script).

    Waits for every process first and releases dropped DDP wrappers (their reducers hold
    communication state), so no process tears the group down while another still uses it.
    """
    if is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all processes (no-op in a single process)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over processes in place and return it (unchanged in a single process)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(t: Tensor) -> Tensor:
    """Concatenate every process's ``t`` along dim 0, in rank order (first dims may differ;
    trailing dims and dtype must agree). ``t`` itself in a single process."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return t
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(x) for x in sizes]
    if max(counts) == 0:
        return t
    padded = t.new_zeros((max(counts), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def any_true(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true in any process (so all processes take the same branch)."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class StepModule(nn.Module):
    """Routes ``forward(batch)`` to ``model.training_step(batch)``.

    :class:`~torch.nn.parallel.DistributedDataParallel` only synchronises gradients for work
    done inside its ``forward``; wrapping this module (rather than the model) makes the
    model's ``training_step`` that forward. ``module.model`` is the original model, so its
    state dict keys are unaffected.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor], **kwargs: Any) -> Any:
        return self.model.training_step(batch, **kwargs)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / :class:`StepModule` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, StepModule):
            model = model.model
        else:
            return model


def wrap_ddp(
    model: nn.Module,
    device: torch.device,
    sparse_params: list[nn.Parameter],
    find_unused_parameters: bool = False,
) -> nn.Module:
    """``DistributedDataParallel(StepModule(model))`` with ``sparse_params`` (embedding tables
    with row-sparse gradients) left out of DDP's all-reduce: they are broadcast from rank 0 once
    here and their gradients averaged by :func:`average_sparse_grads` before each step."""
    step = StepModule(model)
    ids = {id(p) for p in sparse_params}
    ignored = [f"model.{n}" for n, p in model.named_parameters() if id(p) in ids]
    if ignored:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            step, ignored
        )
        for p in sparse_params:
            dist.broadcast(p.data, src=0)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        step, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def average_sparse_grads(params: list[nn.Parameter]) -> None:
    """Replace each parameter's row-sparse gradient by the mean over processes, exchanging
    only the touched rows (ids and rows gathered from every process, duplicates summed); a
    process without a gradient for a table contributes no rows. Dense tensors of the table's
    size never travel."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    for p in params:
        dim = p.shape[1:]
        g = p.grad
        if g is None:
            rows = torch.zeros(0, dtype=torch.long, device=p.device)
            vals = p.new_zeros((0, *dim))
        elif g.is_sparse:
            g = g.coalesce()
            rows, vals = g.indices()[0], g.values()
        else:  # a dense gradient (e.g. a table read without the sparse path): its nonzero rows
            rows = g.reshape(g.shape[0], -1).abs().sum(1).nonzero().flatten()
            vals = g[rows]
        rows_all = all_gather_rows(rows)
        vals_all = all_gather_rows(vals)
        summed = torch.sparse_coo_tensor(rows_all[None], vals_all, p.shape).coalesce()
        p.grad = summed / world
