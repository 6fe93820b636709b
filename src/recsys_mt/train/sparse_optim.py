"""``RowSparseAdam``: Adam that updates only the embedding rows present in a sparse gradient."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def row_grad(g: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows [U], values [U, d])`` of a sparse row gradient, duplicates summed.

    Cheap when the rows are already sorted and distinct (as ``row_sparse_embedding`` makes
    them; autograd drops the "coalesced" flag on the way, so it is re-checked here in O(U));
    otherwise summed with one ``unique`` + ``index_add_``, far faster than ``Tensor.coalesce``
    on the CPU.
    """
    idx = g._indices()[0]
    vals = g._values()
    if g.is_coalesced() or idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all()):
        return idx, vals
    from ..encoders.sparse_embedding import unique_inverse

    uniq, inv = unique_inverse(idx)
    summed = torch.zeros(
        (uniq.numel(),) + tuple(vals.shape[1:]), dtype=vals.dtype, device=vals.device
    ).index_add_(0, inv, vals)
    return uniq, summed


class RowSparseAdam(torch.optim.Optimizer):
    """Lazy Adam for parameters with sparse (row) gradients, e.g. embedding tables.

    For the rows ``r`` in the gradient: ``m_r ← β₁m_r + (1−β₁)g_r``,
    ``v_r ← β₂v_r + (1−β₂)g_r²`` and ``w_r ← w_r − lr·m̂_r / (√v̂_r + ε)`` with bias
    corrections from the parameter's step count; rows absent from the batch are not touched
    (no decay of their moments), as in ``torch.optim.SparseAdam`` / LazyAdam. Compared with
    ``SparseAdam`` it skips re-coalescing gradients that are already coalesced (as produced by
    :func:`~recsys_mt.encoders.sparse_embedding.row_sparse_embedding`) and does the row update
    with three gathers and scatters. Dense gradients are accepted too (plain Adam).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid RowSparseAdam hyper-parameters lr={lr} betas={betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                g = p.grad
                if g.is_sparse:
                    idx, gv = row_grad(g)
                    if idx.numel() == 0:
                        continue
                    mi = m.index_select(0, idx).lerp_(gv, 1 - b1)
                    vi = v.index_select(0, idx).mul_(b2).addcmul_(gv, gv, value=1 - b2)
                    m.index_copy_(0, idx, mi)
                    v.index_copy_(0, idx, vi)
                    # rows are distinct: gather + update + scatter (index_add_ into a large
                    # table is far slower on the CPU)
                    step = mi.div_(vi.sqrt_().add_(eps)).mul_(-step_size)
                    p.index_copy_(0, idx, p.index_select(0, idx).add_(step))
                else:
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
        return loss


def sparse_grad_norm(grads: list[Tensor]) -> Tensor:
    """Global L2 norm of a list of dense and/or sparse gradients."""
    total = None
    for g in grads:
        if g.is_sparse:
            sq = row_grad(g)[1].float().pow(2).sum()
        else:
            sq = g.float().pow(2).sum()
        total = sq if total is None else total + sq.to(total.device)
    return torch.zeros(()) if total is None else total.sqrt()
