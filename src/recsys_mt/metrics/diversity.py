"""Beyond-accuracy metrics of recommended lists: diversity, coverage, entropy, novelty
(alpha-NDCG, which shares the helpers here, is in :mod:`.alpha_ndcg`).

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

from typing import Any

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

    A negative id marks an uncategorised item (e.g. ``-1`` for a missing category): it counts in
    ``n`` but is no category, so it never adds to ``d``.

    Args:
        categories: ``[B, k]`` category id of each list item, in ``[0, num_categories)`` when
            ``num_categories`` is given; negative = uncategorised.
        num_categories: total number of categories in the catalog.
        mask: optional ``[B, k]`` bool, False = padded slot.
        normalize: ``"list"`` or ``"catalog"``.
        reduction: see module doc (empty lists score 0).
        ignore_empty: see ``reduction``.

    Raises:
        ValueError: a valid slot's id is ``>= num_categories`` (the message names the slot), a
            bad ``normalize`` / ``num_categories``, or mismatched shapes.

    Example:
        >>> category_coverage([[3, 3, 5, 1]])  # 3 distinct / 4 items
        0.75
        >>> category_coverage([[-1, -1, 0]], num_categories=2)  # 1 category / min(3, 2)
        0.5
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
    if num_categories is not None and bool((valid & (c >= num_categories)).any()):
        b, i = (int(x) for x in torch.nonzero(valid & (c >= num_categories))[0])
        raise ValueError(
            f"categories[{b}, {i}] = {c[b, i].item()} must be < num_categories = "
            f"{num_categories} (ids are 0..num_categories-1, negative = uncategorised)"
        )
    categorised = valid & (c >= 0)
    eq = _same_category(c, categorised)
    k = c.shape[1]
    lower = torch.ones(k, k, dtype=torch.bool, device=device).tril(-1)
    seen_before = (eq & lower).any(2)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    distinct = (categorised & ~seen_before).sum(1).to(dtype)
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

    ``H = -sum_c p_c log p_c`` with ``p_c`` = share of the list's valid categorised items in
    category c (negative ids mean "uncategorised" and are left out, as in
    :func:`category_coverage`).

    Args:
        categories: ``[B, k]`` category id of each list item (negative = uncategorised).
        mask: optional ``[B, k]`` bool, False = padded slot.
        reduction: see module doc (empty lists score 0).
        ignore_empty: see ``reduction``.

    Example:
        >>> round(category_entropy([[1, 1, 2, 2]]), 4)  # log(2)
        0.6931
    """
    device = _device_of(categories, mask)
    c = _categories(categories, device)
    valid = _slot_mask(mask, tuple(c.shape), device) & (c >= 0)  # uncategorised: left out
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

    ``p`` is a probability, so it must lie in ``(0, 1]`` at every valid slot: a share above 1
    (e.g. a count passed without ``total``, or a ``total`` smaller than a count) would give a
    negative "self-information" and is rejected.

    Raises:
        ValueError: if a valid item has ``p <= 0`` (smooth the counts, e.g. add 1) or ``p > 1``
            (pass counts together with ``total``), or ``total`` is not a positive finite number.

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
    if not (0 < denom < float("inf")):
        raise ValueError(f"popularity total must be a positive finite number, got {denom}")
    p = pop / denom
    if bool((p[valid] <= 0).any()):
        raise ValueError("novelty is undefined for items with zero popularity; smooth the counts")
    if bool((p[valid] > 1).any()):
        b, i = (int(x) for x in torch.nonzero(valid & (p > 1))[0])
        raise ValueError(
            f"popularity share p = {float(p[b, i])} > 1 at list slot [{b}, {i}]: p must be a "
            "probability in (0, 1]; pass shares, or counts together with total="
        )
    n = valid.sum(1).to(p.dtype)
    info = -torch.log2(torch.where(valid, p, torch.ones_like(p)))
    nonempty = n > 0
    nov = (info * valid).sum(1) / n.clamp_min(1)
    return _reduce(nov, nonempty if ignore_empty else None, reduction, _is_numpy_like(items))
