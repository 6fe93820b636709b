"""Input handling of the ranking metrics (:mod:`recsys_mt.metrics.ranking`): shape, ``k`` and
mask checks, and turning scores or given lists into relevance in ranked order ``[B, L]`` next to
the valid-masked relevance of all candidates ``[B, N]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .classification import _as_float, _check_no_nan, _device_of, _to_tensor


def _as_2d(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [B, N] (or [N]), got {tuple(t.shape)}")
    return t


def _check_k(k: int | None, default: int | None) -> int:
    if k is None and default is not None:
        return default
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_finite(t: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name`` and the position of a NaN / ``±inf`` entry of ``t``."""
    _check_no_nan(t, name)
    infinite = torch.isinf(t)
    if bool(infinite.any()):
        pos = tuple(int(x) for x in torch.nonzero(infinite)[0])
        raise ValueError(
            f"{name} must be finite, got {float(t[pos])} at {list(pos)} of {tuple(t.shape)}"
        )


def _prep_relevance(
    relevance: Any, mask: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance ``[B, N]`` as float with invalid candidates zeroed, and the validity mask.

    Raises ``ValueError`` for NaN / ``±inf`` relevance anywhere (masked entries included) and
    for negative relevance at a valid candidate.
    """
    rel = _as_2d(_as_float(relevance, device), "relevance")
    _check_finite(rel, "relevance")
    if mask is None:
        valid = torch.ones_like(rel, dtype=torch.bool)
    else:
        valid = _as_2d(_to_tensor(mask, device).to(torch.bool), "mask")
        if valid.shape != rel.shape:
            raise ValueError(
                f"mask shape {tuple(valid.shape)} does not match relevance {tuple(rel.shape)}"
            )
    if bool((rel[valid] < 0).any()):
        raise ValueError("relevance must be non-negative")
    return rel * valid, valid


def _rank_by_scores(scores: Any, relevance: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (relevance in ranked order ``[B, N]``, valid-masked relevance ``[B, N]``)."""
    device = _device_of(scores, relevance, mask)
    rel, valid = _prep_relevance(relevance, mask, device)
    s = _as_2d(_to_tensor(scores, device), "scores")
    if s.shape != rel.shape:
        raise ValueError(
            f"scores shape {tuple(s.shape)} does not match relevance {tuple(rel.shape)}"
        )
    if s.is_floating_point() and bool(torch.isnan(s[valid]).any()):
        raise ValueError("scores contain NaN for valid candidates")
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    # Push invalid candidates behind every valid one, keeping the score order otherwise.
    back = torch.argsort((~valid.gather(1, order)).to(torch.uint8), dim=1, stable=True)
    order = order.gather(1, back)
    return rel.gather(1, order), rel


def _rank_from_list(
    selected: Any, relevance: Any, mask: Any, list_mask: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (relevance of the selected items in list order ``[B, L]``, masked rel ``[B, N]``)."""
    device = _device_of(selected, relevance, mask, list_mask)
    rel, _ = _prep_relevance(relevance, mask, device)
    sel = _as_2d(_to_tensor(selected, device), "selected")
    if sel.is_floating_point() or sel.dtype == torch.bool:
        raise ValueError("selected must contain integer indices")
    sel = sel.long()
    if sel.shape[0] != rel.shape[0]:
        raise ValueError(f"selected has {sel.shape[0]} rows but relevance has {rel.shape[0]}")
    if sel.numel() and bool((sel >= rel.shape[1]).any()):
        raise ValueError(f"selected contains an index >= number of candidates ({rel.shape[1]})")
    slot_valid = sel >= 0
    if list_mask is not None:
        lm = _as_2d(_to_tensor(list_mask, device).to(torch.bool), "list_mask")
        if lm.shape != sel.shape:
            raise ValueError(
                f"list_mask shape {tuple(lm.shape)} does not match selected {tuple(sel.shape)}"
            )
        slot_valid = slot_valid & lm
    _check_no_repeats(sel, slot_valid)
    # Compact: valid slots first, original order kept.
    perm = torch.argsort((~slot_valid).to(torch.uint8), dim=1, stable=True)
    sel = sel.gather(1, perm)
    slot_valid = slot_valid.gather(1, perm)
    ranked = rel.gather(1, sel.clamp_min(0)) * slot_valid
    return ranked, rel


def _check_no_repeats(sel: torch.Tensor, slot_valid: torch.Tensor) -> None:
    """``ValueError`` naming the row and index when a list repeats a candidate.

    Only the real slots (``slot_valid``) count: ``-1`` padding and ``list_mask == False`` slots
    may repeat freely.  A repeated item would earn its gain twice (NDCG above 1, recall of one
    relevant item counted twice), so it is a caller bug, not something to score.
    """
    if sel.shape[1] < 2:
        return
    # padded slots get distinct negative stand-ins so that only real indices can collide
    stand_in = -1 - torch.arange(sel.shape[1], device=sel.device).expand_as(sel)
    ordered = torch.sort(torch.where(slot_valid, sel, stand_in), dim=1).values
    repeat = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if bool(repeat.any()):
        b, j = (int(x) for x in torch.nonzero(repeat)[0])
        index = int(ordered[b, j])
        slots = torch.nonzero(slot_valid[b] & (sel[b] == index)).flatten().tolist()
        raise ValueError(
            f"selected row {b} repeats candidate index {index} (at slots {slots}); a "
            "recommendation list must not contain an item twice"
        )
