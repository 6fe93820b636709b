"""Batched top-k ranking metrics: NDCG@k, Recall@k, HitRate@k, MRR.

Two families share one implementation:

* score based (``ndcg_at_k``, ``recall_at_k``, ``hit_rate_at_k``, ``mrr``): each row of
  ``scores [B, N]`` is ranked descending (ties broken by lower candidate index first, so results
  are deterministic) and evaluated against ``relevance [B, N]``;
* list based (``list_ndcg``, ``list_recall``, ``list_hit_rate``, ``list_mrr``,
  ``ndcg_of_ranking``): evaluate a list that was already produced, e.g. a re-ranker's output
  ``selected [B, k]`` (indices into the ``N`` candidates), against the relevance of all
  candidates (needed for the ideal DCG / recall denominator).

Conventions:

* ``relevance`` is graded (finite float, >= 0) or binary; for Recall/HitRate/MRR an item is
  relevant iff ``relevance > 0``. NDCG uses gain ``2**rel - 1`` and discount
  ``1 / log2(rank + 1)``; gains too large for ``exp2`` are scaled per row by a common factor,
  which cancels in the ratio. NaN or ``±inf`` relevance raises ``ValueError``.
* ``mask [B, N]`` (bool, True = valid candidate): invalid candidates are never ranked (they go
  after every valid one), have zero relevance, and are excluded from ideal DCG and recall
  denominators. A selected index that points to an invalid candidate earns no gain.
* In list based metrics negative indices in ``selected`` and ``list_mask == False`` mark padded
  slots; they are removed (the remaining items keep their order and move up). A list that
  repeats a candidate index in its real slots raises ``ValueError`` naming the row and index
  (the item's gain would count twice, e.g. NDCG above 1).
* An empty list (``L = 0``) finds no relevant item: Recall, HitRate and MRR score 0 for it.
  NDCG's ideal DCG at cut-off 0 is 0, so every row of an empty list counts as "empty" (below)
  and the NDCG mean is NaN. Without candidates (``N = 0``) no row has a relevant item, so the
  mean of every metric is NaN.
* A row with no relevant valid candidate ("empty" row: ideal DCG = 0) scores 0. With
  ``ignore_empty=True`` (default) such rows are excluded from the mean; with ``False`` they are
  averaged in as 0. ``reduction="mean"`` returns a float (NaN if every row is empty and ignored);
  ``reduction="none"`` returns the per-row values ``[B]`` (numpy if the first argument is numpy,
  else a tensor on its device).
* 1-D inputs are treated as a single row (``B = 1``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .classification import (
    Result,
    _as_float,
    _device_of,
    _is_numpy_like,
    _reduce,
)
from .ranking_inputs import (
    _as_2d,
    _check_finite,
    _check_k,
    _prep_relevance,
    _rank_by_scores,
    _rank_from_list,
)

__all__ = [
    "hit_rate_at_k",
    "list_hit_rate",
    "list_mrr",
    "list_ndcg",
    "list_recall",
    "mrr",
    "ndcg_at_k",
    "ndcg_of_ranking",
    "recall_at_k",
]


# --------------------------------------------------------------------------- core metrics


def _discounts(n: int, like: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(n, device=like.device, dtype=like.dtype)
    return 1.0 / torch.log2(pos + 2.0)


def _ndcg(ranked: torch.Tensor, rel: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row NDCG@k and non-empty flag from ranked relevance ``[B, L]`` and full ``[B, N]``.

    Gains ``2**r - 1`` of a row whose largest relevance might overflow ``exp2`` in a sum (above
    half the dtype's exponent range, 511 in float64) are all multiplied by ``2**-shift``: NDCG is a
    ratio of gain sums, so the common factor cancels and the result stays finite.  Other rows
    are computed exactly as ``2**r - 1``.
    """
    top = ranked[:, :k]
    kk = min(k, rel.shape[1])
    ideal_rel = torch.topk(rel, kk, dim=1).values if kk > 0 else rel[:, :0]
    floor = torch.zeros(rel.shape[0], 1, dtype=rel.dtype, device=rel.device)  # N = 0 / k = 0
    peak = torch.cat([top, ideal_rel, floor], dim=1).amax(1, keepdim=True)
    half_range = math.log2(torch.finfo(rel.dtype).max) // 2  # 511 in float64, 63 in float32
    shift = (peak - half_range).clamp_min(0.0)
    one = torch.exp2(-shift)  # the "- 1" of the gain, scaled like it (exactly 1 when unshifted)
    dcg = ((torch.exp2(top - shift) - one) * _discounts(top.shape[1], top)).sum(1)
    idcg = ((torch.exp2(ideal_rel - shift) - one) * _discounts(kk, rel)).sum(1)
    nonempty = idcg > 0
    return torch.where(nonempty, dcg / idcg.clamp_min(1e-300), torch.zeros_like(dcg)), nonempty


def _recall(ranked: torch.Tensor, rel: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    hits = (ranked[:, :k] > 0).sum(1).to(rel.dtype)
    total = (rel > 0).sum(1).to(rel.dtype)
    nonempty = total > 0
    return torch.where(nonempty, hits / total.clamp_min(1), torch.zeros_like(hits)), nonempty


def _hit(ranked: torch.Tensor, rel: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    hit = (ranked[:, :k] > 0).any(1).to(rel.dtype)
    return hit, (rel > 0).any(1)


def _rr(ranked: torch.Tensor, rel: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    is_rel = ranked[:, :k] > 0
    if is_rel.shape[1] == 0:  # empty lists / no candidates: no relevant item is found
        first = torch.zeros(is_rel.shape[0], dtype=torch.long, device=is_rel.device)
    else:
        first = torch.argmax(is_rel.to(torch.uint8), dim=1)  # first True (0 if none)
    rr = is_rel.any(1).to(rel.dtype) / (first.to(rel.dtype) + 1)
    return rr, (rel > 0).any(1)


def _finish(
    fn: Any,
    ranked: torch.Tensor,
    rel: torch.Tensor,
    k: int,
    reduction: str,
    ignore_empty: bool,
    as_numpy: bool,
) -> Result:
    values, nonempty = fn(ranked, rel, k)
    return _reduce(values, nonempty if ignore_empty else None, reduction, as_numpy)


# --------------------------------------------------------------------------- score based API


def ndcg_at_k(
    scores: Any,
    relevance: Any,
    k: int,
    mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """NDCG@k of the ranking induced by ``scores``.

    Args:
        scores: ``[B, N]`` candidate scores (higher = ranked first; ties -> lower index first).
        relevance: ``[B, N]`` graded (>= 0) or binary relevance; gain is ``2**rel - 1``.
        k: cut-off.
        mask: optional ``[B, N]`` bool, True = valid candidate.
        reduction: ``"mean"`` (float) or ``"none"`` (``[B]`` per row).
        ignore_empty: exclude rows with zero ideal DCG from the mean (they score 0).

    Example:
        >>> ndcg_at_k([[0.9, 0.1, 0.5]], [[0, 1, 0]], k=2)  # relevant item ranked 3rd -> 0
        0.0
    """
    k = _check_k(k, None)
    ranked, rel = _rank_by_scores(scores, relevance, mask)
    return _finish(_ndcg, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(scores))


def recall_at_k(
    scores: Any,
    relevance: Any,
    k: int,
    mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Recall@k: relevant valid items in the top k / all relevant valid items (``rel > 0``).

    Shapes and arguments as in :func:`ndcg_at_k`.

    Example:
        >>> recall_at_k([[0.9, 0.1, 0.5]], [[1, 1, 0]], k=2)
        0.5
    """
    k = _check_k(k, None)
    ranked, rel = _rank_by_scores(scores, relevance, mask)
    return _finish(_recall, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(scores))


def hit_rate_at_k(
    scores: Any,
    relevance: Any,
    k: int,
    mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """HitRate@k: 1 if any relevant (``rel > 0``) item is in the top k, else 0.

    Shapes and arguments as in :func:`ndcg_at_k`.

    Example:
        >>> hit_rate_at_k([[0.9, 0.1, 0.5]], [[0, 1, 0]], k=2)
        0.0
    """
    k = _check_k(k, None)
    ranked, rel = _rank_by_scores(scores, relevance, mask)
    return _finish(_hit, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(scores))


def mrr(
    scores: Any,
    relevance: Any,
    k: int | None = None,
    mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Mean reciprocal rank: ``1 / rank`` of the first relevant item (0 if none within ``k``).

    ``k=None`` considers the full ranking (MRR), an integer gives MRR@k. Other arguments as in
    :func:`ndcg_at_k`.

    Example:
        >>> mrr([[0.9, 0.1, 0.5]], [[0, 1, 1]])  # first relevant at rank 2
        0.5
    """
    ranked, rel = _rank_by_scores(scores, relevance, mask)
    k = _check_k(k, ranked.shape[1])
    return _finish(_rr, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(scores))


# --------------------------------------------------------------------------- list based API


def ndcg_of_ranking(
    ranked_relevance: Any,
    relevance: Any,
    k: int | None = None,
    mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """NDCG@k of relevance given already in ranked order.

    Args:
        ranked_relevance: ``[B, L]`` relevance of the recommended items in list order
            (use 0 for padded slots).
        relevance: ``[B, N]`` relevance of all candidates, used for the ideal DCG.
        k: cut-off, default ``L``.
        mask: optional ``[B, N]`` candidate validity for the ideal DCG.
        reduction: as in :func:`ndcg_at_k`.
        ignore_empty: see ``reduction``.

    Example:
        >>> round(ndcg_of_ranking([[0, 1]], [[1, 0, 0]]), 4)  # 1/log2(3) / 1
        0.6309
    """
    device = _device_of(ranked_relevance, relevance, mask)
    ranked = _as_2d(_as_float(ranked_relevance, device), "ranked_relevance")
    _check_finite(ranked, "ranked_relevance")
    rel, _ = _prep_relevance(relevance, mask, device)
    if ranked.shape[0] != rel.shape[0]:
        raise ValueError(
            f"ranked_relevance has {ranked.shape[0]} rows but relevance has {rel.shape[0]}"
        )
    k = _check_k(k, ranked.shape[1])
    return _finish(_ndcg, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(ranked_relevance))


def list_ndcg(
    selected: Any,
    relevance: Any,
    k: int | None = None,
    mask: Any = None,
    list_mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """NDCG@k of recommended lists given as candidate indices.

    Args:
        selected: ``[B, L]`` int indices into the ``N`` candidates, in list order; negative
            values are padding.
        relevance: ``[B, N]`` relevance of all candidates (ideal DCG uses the valid ones).
        k: cut-off, default ``L``.
        mask: optional ``[B, N]`` candidate validity.
        list_mask: optional ``[B, L]`` bool, False = padded slot.
        reduction: as in :func:`ndcg_at_k`.
        ignore_empty: see ``reduction``.

    Example:
        >>> list_ndcg([[2, 0]], [[0, 0, 1]])
        1.0
    """
    ranked, rel = _rank_from_list(selected, relevance, mask, list_mask)
    k = _check_k(k, ranked.shape[1])
    return _finish(_ndcg, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(selected))


def list_recall(
    selected: Any,
    relevance: Any,
    k: int | None = None,
    mask: Any = None,
    list_mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Recall@k of recommended lists ``selected [B, L]`` (see :func:`list_ndcg`).

    Example:
        >>> list_recall([[2, -1]], [[1, 0, 1]])
        0.5
    """
    ranked, rel = _rank_from_list(selected, relevance, mask, list_mask)
    k = _check_k(k, ranked.shape[1])
    return _finish(_recall, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(selected))


def list_hit_rate(
    selected: Any,
    relevance: Any,
    k: int | None = None,
    mask: Any = None,
    list_mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """HitRate@k of recommended lists ``selected [B, L]`` (see :func:`list_ndcg`).

    Example:
        >>> list_hit_rate([[1, 2]], [[1, 0, 0]])
        0.0
    """
    ranked, rel = _rank_from_list(selected, relevance, mask, list_mask)
    k = _check_k(k, ranked.shape[1])
    return _finish(_hit, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(selected))


def list_mrr(
    selected: Any,
    relevance: Any,
    k: int | None = None,
    mask: Any = None,
    list_mask: Any = None,
    reduction: str = "mean",
    ignore_empty: bool = True,
) -> Result:
    """Reciprocal rank of the first relevant item in ``selected [B, L]`` (see :func:`list_ndcg`).

    Example:
        >>> list_mrr([[1, 2, 0]], [[1, 0, 0]])
        0.3333333333333333
    """
    ranked, rel = _rank_from_list(selected, relevance, mask, list_mask)
    k = _check_k(k, ranked.shape[1])
    return _finish(_rr, ranked, rel, k, reduction, ignore_empty, _is_numpy_like(selected))
