"""Beyond-accuracy metrics of recommended lists: diversity, coverage, entropy, novelty, alpha-NDCG.

Every function evaluates a batch of lists (one per user/request) and is vectorised over the
batch. Lists of different lengths are padded to a common length ``k`` and described by
``mask [B, k]`` (bool, False = padded slot). Padded slots are excluded from every metric; where a
list is given as item indices, negative indices are treated as padding as well.

A list with nothing to measure (e.g. fewer than two valid items for ILD, no valid items for the
others) scores 0 and, with ``ignore_empty=True`` (default), is excluded from the mean.
``reduction="mean"`` returns a float (NaN if every list is excluded), ``reduction="none"`` the
per-list values ``[B]`` (numpy if the first argument is numpy, else a tensor on its device).
1-D category/popularity inputs (and 2-D item-vector inputs) are treated as a single list.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .classification import (
    Result,
    _as_float,
    _check_no_nan,
    _device_of,
    _is_numpy_like,
    _reduce,
    _to_tensor,
)

__all__ = [
    "alpha_ndcg",
    "category_coverage",
    "category_entropy",
    "intra_list_diversity",
    "novelty",
]


# --------------------------------------------------------------------------- helpers


def _slot_mask(mask: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Bool ``[B, k]`` validity of list slots (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    m = _to_tensor(mask, device).to(torch.bool)
    if m.dim() == 1 and len(shape) == 2 and shape[0] == 1:
        m = m.unsqueeze(0)
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"mask shape {tuple(m.shape)} does not match list shape {tuple(shape)}")
    return m


def _categories(categories: Any, device: torch.device) -> torch.Tensor:
    c = _to_tensor(categories, device)
    if c.dim() == 1:
        c = c.unsqueeze(0)
    if c.dim() != 2:
        raise ValueError(f"categories must have shape [B, k] (or [k]), got {tuple(c.shape)}")
    _check_no_nan(c, "categories")
    return c


def _same_category(c: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``eq[b, i, j]`` = slots i and j are both valid and share a category. ``[B, k, k]``."""
    return (c[:, :, None] == c[:, None, :]) & valid[:, :, None] & valid[:, None, :]


def _valid_first(valid: torch.Tensor) -> torch.Tensor:
    """Permutation ``[B, k]`` moving valid slots to the front, keeping their order."""
    return torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)


# --------------------------------------------------------------------------- ILD


def intra_list_diversity(
    items: Any,
    vectors: Any = None,
    mask: Any = None,
    metric: str = "cosine",
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Intra-list diversity: mean pairwise distance over all unordered pairs of valid items.

    With ``metric="cosine"`` the distance is ``1 - cos(u, v)`` (a zero vector has cosine 0 with
    everything); ``metric="euclidean"`` uses the L2 distance.

    Args:
        items: either item feature vectors in list order ``[B, k, d]`` (``vectors=None``), or
            integer indices ``[B, k]`` into ``vectors`` (negative = padding).
        vectors: per-row candidate vectors ``[B, N, d]`` or a catalog ``[M, d]``.
        mask: optional ``[B, k]`` bool, False = padded slot.
        metric: ``"cosine"`` or ``"euclidean"``.
        reduction: see module doc; lists with < 2 valid items score 0.
        ignore_empty: see ``reduction``.

    Example:
        >>> round(intra_list_diversity([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]), 4)  # (1+0+1)/3
        0.6667
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    device = _device_of(items, vectors, mask)
    if vectors is None:
        x = _as_float(items, device)
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3:
            raise ValueError(f"item vectors must have shape [B, k, d], got {tuple(x.shape)}")
        valid = _slot_mask(mask, tuple(x.shape[:2]), device)
    else:
        idx = _to_tensor(items, device)
        if idx.dim() == 1:
            idx = idx.unsqueeze(0)
        if idx.is_floating_point() or idx.dim() != 2:
            raise ValueError("with `vectors`, items must be integer indices of shape [B, k]")
        idx = idx.long()
        v = _as_float(vectors, device)
        valid = _slot_mask(mask, tuple(idx.shape), device) & (idx >= 0)
        safe = idx.clamp_min(0)
        if v.dim() == 2:
            if idx.numel() and bool((idx >= v.shape[0]).any()):
                raise ValueError("items contains an index >= number of catalog vectors")
            x = v[safe]
        elif v.dim() == 3:
            if v.shape[0] != idx.shape[0]:
                raise ValueError(f"vectors has {v.shape[0]} rows but items has {idx.shape[0]}")
            if idx.numel() and bool((idx >= v.shape[1]).any()):
                raise ValueError("items contains an index >= number of candidates")
            x = v.gather(1, safe[:, :, None].expand(-1, -1, v.shape[2]))
        else:
            raise ValueError(f"vectors must be [M, d] or [B, N, d], got {tuple(v.shape)}")
    _check_no_nan(x, "item vectors")

    if metric == "cosine":
        norms = x.norm(dim=-1, keepdim=True)
        xn = x / norms.clamp_min(torch.finfo(x.dtype).tiny)
        dist = 1.0 - xn @ xn.transpose(1, 2)
    else:
        diff = x[:, :, None, :] - x[:, None, :, :]
        dist = diff.pow(2).sum(-1).sqrt()

    k = x.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=device).triu(1)
    pairs = valid[:, :, None] & valid[:, None, :] & upper
    n_pairs = pairs.sum((1, 2)).to(x.dtype)
    total = (dist * pairs).sum((1, 2))
    nonempty = n_pairs > 0
    ild = torch.where(nonempty, total / n_pairs.clamp_min(1), torch.zeros_like(total))
    return _reduce(ild, nonempty if ignore_empty else None, reduction, _is_numpy_like(items))


# --------------------------------------------------------------------------- categories


def category_coverage(
    categories: Any,
    num_categories: int | None = None,
    mask: Any = None,
    normalize: str = "list",
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Fraction of categories covered by each list.

    With ``n`` = number of valid slots and ``d`` = number of distinct categories among them:

    * ``normalize="list"``: ``d / min(n, num_categories)`` (``d / n`` if ``num_categories`` is
      None), i.e. 1.0 means the list is as diverse as its length allows;
    * ``normalize="catalog"``: ``d / num_categories`` (``num_categories`` required).

    Args:
        categories: ``[B, k]`` category id of each list item.
        num_categories: total number of categories in the catalog.
        mask: optional ``[B, k]`` bool, False = padded slot.
        normalize: ``"list"`` or ``"catalog"``.
        reduction: see module doc (empty lists score 0).
        ignore_empty: see ``reduction``.

    Example:
        >>> category_coverage([[3, 3, 5, 1]])  # 3 distinct / 4 items
        0.75
    """
    if normalize not in ("list", "catalog"):
        raise ValueError(f"normalize must be 'list' or 'catalog', got {normalize!r}")
    if normalize == "catalog" and num_categories is None:
        raise ValueError("normalize='catalog' requires num_categories")
    if num_categories is not None and num_categories < 1:
        raise ValueError(f"num_categories must be >= 1, got {num_categories}")
    device = _device_of(categories, mask)
    c = _categories(categories, device)
    valid = _slot_mask(mask, tuple(c.shape), device)
    eq = _same_category(c, valid)
    k = c.shape[1]
    lower = torch.ones(k, k, dtype=torch.bool, device=device).tril(-1)
    seen_before = (eq & lower).any(2)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    distinct = (valid & ~seen_before).sum(1).to(dtype)
    n = valid.sum(1).to(dtype)
    if normalize == "catalog":
        denom = torch.full_like(n, float(num_categories))
    elif num_categories is None:
        denom = n
    else:
        denom = n.clamp_max(float(num_categories))
    nonempty = n > 0
    cov = torch.where(nonempty, distinct / denom.clamp_min(1), torch.zeros_like(n))
    return _reduce(cov, nonempty if ignore_empty else None, reduction, _is_numpy_like(categories))


def category_entropy(
    categories: Any,
    mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Shannon entropy (natural log) of the category distribution inside each list.

    ``H = -sum_c p_c log p_c`` with ``p_c`` = share of the list's valid items in category c.

    Args:
        categories: ``[B, k]`` category id of each list item.
        mask: optional ``[B, k]`` bool, False = padded slot.
        reduction: see module doc (empty lists score 0).
        ignore_empty: see ``reduction``.

    Example:
        >>> round(category_entropy([[1, 1, 2, 2]]), 4)  # log(2)
        0.6931
    """
    device = _device_of(categories, mask)
    c = _categories(categories, device)
    valid = _slot_mask(mask, tuple(c.shape), device)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    count = _same_category(c, valid).sum(2).to(dtype)  # [B, k]: size of item's category
    n = valid.sum(1, keepdim=True).to(dtype)
    # Each item of a category with count m contributes (1/n) * log(m/n); sum over items = p log p.
    share = torch.where(valid, count / n.clamp_min(1), torch.ones_like(count))
    ent = -(torch.log(share) * valid).sum(1) / n.squeeze(1).clamp_min(1)
    nonempty = n.squeeze(1) > 0
    return _reduce(ent, nonempty if ignore_empty else None, reduction, _is_numpy_like(categories))


# --------------------------------------------------------------------------- novelty


def novelty(
    items: Any,
    popularity: Any = None,
    mask: Any = None,
    total: float | None = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Mean self-information ``-log2 p(item)`` of each list's items (higher = less popular).

    ``p(item)`` is the item's popularity share:

    * ``popularity`` is a catalog table ``[M]`` (e.g. interaction counts) and ``items [B, k]``
      are item ids (negative = padding): ``p = popularity[id] / (total or popularity.sum())``;
    * ``popularity`` is a per-row table ``[B, N]`` and ``items [B, k]`` index its columns:
      ``p = popularity[b, id] / (total or 1)``;
    * ``popularity`` is None: ``items [B, k]`` already hold each slot's popularity, and
      ``p = items / (total or 1)`` (pass shares directly, or counts plus ``total``).

    Raises:
        ValueError: if a valid item has ``p <= 0`` (smooth the counts, e.g. add 1).

    Example:
        >>> novelty([[0, 1]], popularity=[2, 2, 4])  # p = 0.25, 0.25 -> 2 bits
        2.0
    """
    device = _device_of(items, popularity, mask)
    if popularity is None:
        pop = _as_float(items, device)
        if pop.dim() == 1:
            pop = pop.unsqueeze(0)
        valid = _slot_mask(mask, tuple(pop.shape), device)
        denom = 1.0 if total is None else float(total)
    else:
        idx = _to_tensor(items, device)
        if idx.dim() == 1:
            idx = idx.unsqueeze(0)
        if idx.is_floating_point() or idx.dim() != 2:
            raise ValueError("with `popularity`, items must be integer ids of shape [B, k]")
        idx = idx.long()
        table = _as_float(popularity, device)
        valid = _slot_mask(mask, tuple(idx.shape), device) & (idx >= 0)
        safe = idx.clamp_min(0)
        if table.dim() == 1:
            if idx.numel() and bool((idx >= table.shape[0]).any()):
                raise ValueError("items contains an id >= len(popularity)")
            pop = table[safe]
            denom = float(table.sum()) if total is None else float(total)
        elif table.dim() == 2:
            if table.shape[0] != idx.shape[0]:
                raise ValueError(f"popularity has {table.shape[0]} rows but items {idx.shape[0]}")
            if idx.numel() and bool((idx >= table.shape[1]).any()):
                raise ValueError("items contains an index >= popularity.shape[1]")
            pop = table.gather(1, safe)
            denom = 1.0 if total is None else float(total)
        else:
            raise ValueError(f"popularity must be [M] or [B, N], got {tuple(table.shape)}")
    _check_no_nan(pop, "popularity")
    if denom <= 0:
        raise ValueError("popularity total must be positive")
    p = pop / denom
    if bool((p[valid] <= 0).any()):
        raise ValueError("novelty is undefined for items with zero popularity; smooth the counts")
    n = valid.sum(1).to(p.dtype)
    info = -torch.log2(torch.where(valid, p, torch.ones_like(p)))
    nonempty = n > 0
    nov = (info * valid).sum(1) / n.clamp_min(1)
    return _reduce(nov, nonempty if ignore_empty else None, reduction, _is_numpy_like(items))


# --------------------------------------------------------------------------- alpha-NDCG


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
