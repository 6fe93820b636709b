"""alpha-NDCG of recommended lists: novelty- and redundancy-aware ranking quality over the
categories or subtopics each list covers (Clarke et al., 2008). Conventions (padding, ``mask``,
``reduction``, empty lists) as in :mod:`.diversity`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .classification import Result, _check_no_nan, _device_of, _is_numpy_like, _reduce, _to_tensor
from .diversity import _same_category, _slot_mask, _valid_first

__all__ = ["alpha_ndcg"]


def _alpha_prepare(x: Any, mask: Any, device: torch.device, name: str):
    """Return (mode, data, valid) with mode 'cat' ([B, L] ids) or 'sub' ([B, L, S] 0/1)."""
    t = _to_tensor(x, device)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() == 2:
        _check_no_nan(t, name)
        return "cat", t, _slot_mask(mask, tuple(t.shape), device)
    if t.dim() == 3:
        t = t.to(torch.float32 if device.type == "mps" else torch.float64)
        _check_no_nan(t, name)
        return "sub", t, _slot_mask(mask, tuple(t.shape[:2]), device)
    raise ValueError(
        f"{name} must be categories [B, L] or subtopics [B, L, S], got {tuple(t.shape)}"
    )


def _alpha_dcg_list(mode: str, data: torch.Tensor, valid: torch.Tensor, base: float, k: int):
    """alpha-DCG@k of lists already compacted (valid slots first)."""
    dtype = torch.float32 if data.device.type == "mps" else torch.float64
    length = data.shape[1]
    if mode == "cat":
        eq = _same_category(data, valid)
        lower = torch.ones(length, length, dtype=torch.bool, device=data.device).tril(-1)
        prev = (eq & lower).sum(2).to(dtype)  # earlier items sharing the category
        gain = torch.pow(torch.tensor(base, dtype=dtype, device=data.device), prev) * valid
    else:
        j = data * valid[:, :, None]
        prev = torch.cumsum(j, dim=1) - j  # per-subtopic coverage before each position
        gain = (j * torch.pow(base, prev)).sum(2)
    gain = gain[:, :k]
    disc = 1.0 / torch.log2(torch.arange(gain.shape[1], device=data.device, dtype=dtype) + 2.0)
    return (gain * disc).sum(1)


def _alpha_ideal(mode: str, data: torch.Tensor, valid: torch.Tensor, base: float, k: int):
    """Greedy ideal alpha-DCG@k over candidates ``data`` (loop over the k positions only)."""
    dtype = torch.float32 if data.device.type == "mps" else torch.float64
    b, n = data.shape[0], data.shape[1]
    steps = min(k, n)
    ideal = torch.zeros(b, dtype=dtype, device=data.device)
    if steps == 0:
        return ideal
    avail = valid.clone()
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=data.device)
    base_t = torch.tensor(base, dtype=dtype, device=data.device)
    if mode == "cat":
        # Dense per-row category ids in [0, N) so coverage counts fit in a [B, N] table.
        sorted_c, order = torch.sort(data, dim=1, stable=True)
        new = torch.zeros_like(sorted_c, dtype=torch.long)
        new[:, 1:] = (sorted_c[:, 1:] != sorted_c[:, :-1]).long()
        dense = torch.empty_like(new).scatter_(1, order, torch.cumsum(new, 1))
        counts = torch.zeros(b, n, dtype=dtype, device=data.device)
    else:
        counts = torch.zeros(b, data.shape[2], dtype=dtype, device=data.device)
    for t in range(steps):
        if mode == "cat":
            gain = torch.pow(base_t, counts.gather(1, dense))
        else:
            gain = (data * torch.pow(base_t, counts)[:, None, :]).sum(2)
        gain = torch.where(avail, gain, neg_inf)
        best = torch.argmax(gain, dim=1, keepdim=True)  # first maximum = lowest index
        g = gain.gather(1, best).squeeze(1)
        has = torch.isfinite(g)
        ideal = ideal + torch.where(has, g, torch.zeros_like(g)) / math.log2(t + 2.0)
        avail = avail.scatter(1, best, False)
        if mode == "cat":
            counts = counts.scatter_add(1, dense.gather(1, best), has[:, None].to(dtype))
        else:
            picked = data.gather(1, best[:, :, None].expand(-1, -1, data.shape[2])).squeeze(1)
            counts = counts + picked * has[:, None].to(dtype)
    return ideal


def alpha_ndcg(
    ranked: Any,
    k: int | None = None,
    alpha: float = 0.5,
    candidates: Any = None,
    mask: Any = None,
    candidate_mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """alpha-NDCG@k (Clarke et al., SIGIR 2008) of ranked lists.

    The gain of the item at rank r is ``sum_s J(r, s) * (1 - alpha) ** c(s, r)``, where
    ``J(r, s) = 1`` if the item covers subtopic s and ``c(s, r)`` is how many higher-ranked
    items already covered s; discount is ``1 / log2(r + 1)``. Subtopics are given either as one
    category id per item (the item covers exactly its category) or as a 0/1 matrix. To count
    only relevant items, zero the subtopic rows of non-relevant items
    (``subtopics * rel[..., None]``).

    The ideal alpha-DCG@k is computed with the standard greedy approximation (the ideal is
    NP-hard): at each rank pick the candidate with the largest marginal gain, ties broken by
    lower index. Because it is an approximation, values can slightly exceed 1 for some
    matrix inputs.

    Args:
        ranked: list in rank order, ``[B, L]`` category ids or ``[B, L, S]`` 0/1 subtopics.
        k: cut-off, default ``L``.
        alpha: redundancy penalty in [0, 1].
        candidates: pool for the ideal, same format as ``ranked`` (``[B, N]`` or
            ``[B, N, S]``); default: the valid items of ``ranked`` themselves (then the metric
            judges only the ordering of the list).
        mask: optional ``[B, L]`` bool, False = padded slot (padded slots are removed).
        candidate_mask: optional ``[B, N]`` bool, False = invalid candidate.
        reduction: see module doc; rows with ideal 0 score 0.
        ignore_empty: see ``reduction``.

    Example:
        >>> # list A, A, B: DCG = 1 + 0.5/log2(3) + 1/2; greedy ideal A, B, A = 1 + 1/log2(3) + 0.25
        >>> round(alpha_ndcg([[0, 0, 1]], alpha=0.5), 4)
        0.9652
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = 1.0 - float(alpha)
    device = _device_of(ranked, candidates, mask, candidate_mask)
    mode, data, valid = _alpha_prepare(ranked, mask, device, "ranked")
    perm = _valid_first(valid)
    valid = valid.gather(1, perm)
    if mode == "cat":
        data = data.gather(1, perm)
    else:
        data = data.gather(1, perm[:, :, None].expand(-1, -1, data.shape[2]))
    if k is None:
        k = data.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    dcg = _alpha_dcg_list(mode, data, valid, base, k)

    if candidates is None:
        if candidate_mask is not None:
            raise ValueError("candidate_mask given without candidates")
        c_mode, c_data, c_valid = mode, data, valid
    else:
        c_mode, c_data, c_valid = _alpha_prepare(candidates, candidate_mask, device, "candidates")
        if c_mode != mode:
            raise ValueError("ranked and candidates must use the same format (ids or subtopics)")
        if c_data.shape[0] != data.shape[0]:
            raise ValueError(f"candidates has {c_data.shape[0]} rows but ranked {data.shape[0]}")
        if mode == "sub" and c_data.shape[2] != data.shape[2]:
            raise ValueError("ranked and candidates have a different number of subtopics")
    ideal = _alpha_ideal(c_mode, c_data, c_valid, base, k)
    nonempty = ideal > 0
    val = torch.where(nonempty, dcg / ideal.clamp_min(1e-300), torch.zeros_like(dcg))
    return _reduce(val, nonempty if ignore_empty else None, reduction, _is_numpy_like(ranked))
