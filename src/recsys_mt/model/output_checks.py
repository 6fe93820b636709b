"""Shape checks of what encoders, the fusion and the head return inside ``forward``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["check_width"]


def check_width(
    out: Any, rows: int | None, module: nn.Module, what: str, width: int = -1, unit: str = ""
) -> int:
    """Raise ``ValueError`` naming ``module`` and both shapes unless ``out`` is a ``[rows,
    width]`` tensor (``width`` -1: any); returns its row count."""
    name = type(module).__name__
    if not isinstance(out, Tensor):
        raise TypeError(f"{what} ({name}) returned {type(out).__name__}, not a tensor")
    want = f"[{'B' if rows is None else rows}, {width if width >= 0 else 'D'}]"
    declared = f" ({width} {unit or 'declared out_dim'})" if width >= 0 else ""
    bad_rows = rows is not None and out.dim() == 2 and out.shape[0] != rows
    if out.dim() != 2 or bad_rows or (width >= 0 and out.shape[1] != width):
        raise ValueError(
            f"{what} ({name}) returned shape {tuple(out.shape)}, expected {want}{declared}"
        )
    return int(out.shape[0])
