"""Argument and input validation shared by the re-rankers.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong shape, range or
content) with a message that names the argument, the offending shape and, for content errors,
the batch row and candidate index, so that bad inputs never surface as an ``IndexError`` or
``RuntimeError`` from deep inside a greedy loop, nor as a silently wrong list.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "first_index",
    "real_number",
    "check_fraction",
    "check_int",
    "check_k",
    "check_finite_number",
    "as_tensor",
    "prepare_scores",
    "compute_dtype",
    "batch_shaped",
    "integer_tensor",
    "check_item_ids",
]


def first_index(bad: Tensor) -> tuple[int, ...]:
    """Row-major position of the first True entry of ``bad`` (which must contain one)."""
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    pos = []
    for size in reversed(bad.shape):
        pos.append(flat % size)
        flat //= size
    return tuple(reversed(pos))


def real_number(name: str, value: object) -> float:
    """``value`` as a float; ``bool``, strings and non-scalars raise ``TypeError``."""
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None


def check_fraction(name: str, value: object, *, open_low: bool = False) -> float:
    """``value`` as a float in ``[0, 1]`` (``(0, 1]`` with ``open_low``).

    Raises:
        TypeError: ``value`` is not a real number (``bool`` included).
        ValueError: ``value`` is NaN or out of range.
    """
    out = real_number(name, value)
    low_ok = out > 0.0 if open_low else out >= 0.0
    if not (low_ok and out <= 1.0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return out


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as a Python int ``>= minimum`` (numpy / torch integer scalars accepted).

    Raises:
        TypeError: ``value`` is not an integer (``bool`` and ``float`` included).
        ValueError: ``value < minimum``.
    """
    if isinstance(value, (bool, float)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    try:
        out = int(value.__index__())  # int, numpy / torch integer scalars
    except (AttributeError, TypeError, RuntimeError):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def check_k(k: object, n: int) -> int:
    """Validated list length ``min(k, n)`` (``k >= 0``; ``k > n`` is allowed)."""
    return min(check_int("k", k, 0), n)


def as_tensor(value: object, name: str, device: torch.device | None = None) -> Tensor:
    """``value`` as a tensor (on ``device``); what torch cannot convert raises naming ``name``.

    Raises:
        TypeError: strings, string / object arrays and other non-numeric values.
        ValueError: ragged nested sequences.
    """
    try:
        return torch.as_tensor(value, device=device)
    except (TypeError, RuntimeError):
        what = getattr(value, "dtype", type(value).__name__)
        raise TypeError(f"{name} must be a numeric tensor or array, got {what}") from None
    except ValueError as err:
        raise ValueError(f"{name} must be a rectangular numeric array: {err}") from None


def prepare_scores(scores: object, mask: object | None) -> tuple[Tensor, Tensor, bool]:
    """Batch-shape and validate ``scores`` / ``mask``.

    Args:
        scores: ``[B, N]`` or ``[N]`` real scores.
        mask: ``[B, N]`` (``[N]``) bool or integer tensor, True = candidate present; or None.

    Returns:
        ``(scores [B, N]`` in the compute dtype, ``valid [B, N]`` bool, ``squeeze)``.
        ``valid`` is ``mask & (scores > -inf)``: ``-inf`` marks an absent candidate.

    Raises:
        TypeError: complex or non-numeric scores, or a floating / complex / non-numeric mask.
        ValueError: wrong shapes, or a NaN / ``+inf`` score at an unmasked candidate.
    """
    scores = as_tensor(scores, "scores")
    if scores.dtype.is_complex:
        raise TypeError(f"scores must be real, got dtype {scores.dtype}")
    squeeze = scores.dim() == 1
    if squeeze:
        scores = scores.unsqueeze(0)
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, N] or [N], got {tuple(scores.shape)}")
    scores = scores.to(compute_dtype(scores.dtype, scores.device))
    present = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        mask = as_tensor(mask, "mask", scores.device)
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise TypeError(f"mask must be a bool tensor (True = candidate), got {mask.dtype}")
        if squeeze:
            mask = mask.unsqueeze(0)
        if mask.shape != scores.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal scores shape {tuple(scores.shape)}"
            )
        present = mask.bool()
    bad = present & (torch.isnan(scores) | (scores == torch.inf))
    if bool(bad.any()):
        b, i = first_index(bad)
        raise ValueError(
            f"scores[{b}, {i}] = {float(scores[b, i])} at an unmasked candidate (row {b}, "
            f"candidate {i} of scores {tuple(scores.shape)}); scores of candidates must be "
            "finite: mask the candidate out or give it -inf to leave it out"
        )
    return scores, present & (scores > -torch.inf), squeeze


def compute_dtype(dtype: torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """Floating dtype the re-rankers compute ``dtype`` scores in.

    float32 / float64 stay; float16 / bfloat16 compute in float32; integer (and bool) scores in
    float64, which holds every integer up to ``2**53`` exactly (float32 would merge distinct
    int64 scores such as ``1_700_000_000`` and ``1_700_000_001`` into ties).  On MPS, which has
    no float64, integers compute in float32.
    """
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype.is_floating_point:
        return torch.float32
    if device is not None and torch.device(device).type == "mps":
        return torch.float32
    return torch.float64


def batch_shaped(
    t: object | None, name: str, tail: int, shape: torch.Size, squeeze: bool, device: torch.device
) -> Tensor | None:
    """``t`` as a ``[B, N, *tail]`` tensor on ``device`` matching ``shape = (B, N)``, or None.

    Raises:
        TypeError: ``t`` is not numeric (e.g. a string array); the message names ``name``.
        ValueError: ``t`` has the wrong shape.
    """
    if t is None:
        return None
    t = as_tensor(t, name, device)
    if squeeze:
        t = t.unsqueeze(0)
    if t.dim() != 2 + tail or tuple(t.shape[:2]) != tuple(shape):
        want = "[B, N" + ", d" * tail + "]"
        raise ValueError(
            f"{name} must have shape {want} = {tuple(shape)}{', d' * tail}, got {tuple(t.shape)}"
        )
    return t


def integer_tensor(t: Tensor, name: str) -> Tensor:
    """``t`` as int64; floating, complex and bool tensors are rejected with ``TypeError``."""
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    return t.long()


def check_item_ids(ids: Tensor, valid: Tensor, num_items: int) -> None:
    """Every valid candidate's id must index the catalog: ``0 <= id < M``."""
    bad = valid & ((ids < 0) | (ids >= num_items))
    if bool(bad.any()):
        b, i = first_index(bad)
        raise ValueError(
            f"item_ids[{b}, {i}] = {int(ids[b, i])} is outside the catalog of {num_items} rows "
            f"(row {b}, candidate {i})"
        )


def check_finite_number(name: str, value: object, minimum: float) -> float:
    """``value`` as a finite float ``>= minimum``."""
    out = real_number(name, value)
    if not (math.isfinite(out) and out >= minimum):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return out
