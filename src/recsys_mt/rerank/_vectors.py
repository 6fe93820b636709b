"""Cosine-similarity view of item vectors: overflow-safe unit vectors in a reusable workspace."""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_item_ids, first_index

__all__ = ["UnitVectors", "unit_vectors", "release_workspace"]


def unit_vectors(
    item_vectors: Tensor | None,
    item_ids: Tensor | None,
    catalog: Tensor | None,
    valid: Tensor,
    dtype: torch.dtype,
) -> UnitVectors:
    """L2-normalised item vectors of a batch (see :class:`UnitVectors`).

    Args:
        item_vectors: ``[B, N, d]`` vectors, or None to look them up as ``catalog[item_ids]``.
        item_ids: ``[B, N]`` long ids into ``catalog [M, d]`` (only read at valid candidates).
        catalog: ``[M, d]`` embedding table.
        valid: ``[B, N]`` bool validity of the candidates.
        dtype: compute dtype.

    Raises:
        ValueError: a valid candidate's id is outside the catalog, or its vector has a NaN /
            ``±inf`` entry (the message names row and candidate).
    """
    ids = None
    if item_vectors is not None:
        vecs = item_vectors.to(dtype)
    else:
        check_item_ids(item_ids, valid, catalog.shape[0])
        ids = torch.where(valid, item_ids, torch.zeros_like(item_ids))
        if catalog.shape[0] == 0:  # no valid candidate: nothing to look up
            vecs = torch.zeros(*ids.shape, catalog.shape[1], dtype=dtype, device=ids.device)
        else:
            vecs = catalog[ids].to(dtype)
    vecs, norm = _finite_scaled(vecs, valid, ids)  # norm: [B, N]
    nonzero = norm > 0
    inv = torch.where(nonzero, 1.0 / torch.where(nonzero, norm, 1.0), 0.0)
    bsz, n, d = vecs.shape
    unit_t = _workspace((bsz, d, n), dtype, vecs.device)
    unit_t.copy_(vecs.transpose(1, 2))  # copy_ has a fast (blocked) transpose path
    unit_t.mul_(inv.unsqueeze(1))
    return UnitVectors(unit_t, nonzero, vecs, inv)


def _finite_scaled(vecs: Tensor, valid: Tensor, ids: Tensor | None) -> tuple[Tensor, Tensor]:
    """Vectors whose L2 norm is computed without overflow or underflow, and that norm.

    Args:
        vecs: ``[B, N, d]`` item vectors (floating).
        valid: ``[B, N]`` bool validity of the candidates.
        ids: ``[B, N]`` catalog ids the vectors were looked up with (for messages), or None.

    Returns:
        ``(vecs [B, N, d], norm [B, N])``.  Vectors whose norm is comfortably inside the range of
        the dtype are returned bitwise unchanged; the others (entries near the overflow limit,
        such as ``1e20`` in float32, or tiny / subnormal ones) are divided by their largest
        absolute entry first, which keeps their direction.  Non-finite vectors of invalid
        candidates become zero vectors.

    Raises:
        ValueError: a valid candidate's vector has a NaN or ``±inf`` entry.
    """
    norm = torch.linalg.vector_norm(vecs, dim=-1)
    info = torch.finfo(vecs.dtype)
    safe = torch.isfinite(norm) & (norm >= math.sqrt(info.tiny / info.eps))
    if vecs.shape[-1] == 0 or bool(safe.all()):
        return vecs, norm
    big = vecs.abs().amax(dim=-1)  # NaN / inf propagate
    finite = torch.isfinite(big)
    bad = valid & ~finite
    if bool(bad.any()):
        b, i = first_index(bad)
        what = f"item_vectors[{b}, {i}]" if ids is None else f"catalog[{int(ids[b, i])}]"
        raise ValueError(
            f"{what} has a NaN or infinite entry (row {b}, candidate {i} of "
            f"{tuple(vecs.shape)}); vectors of valid candidates must be finite"
        )
    divisor = torch.where(safe | ~finite | (big == 0), 1.0, big).unsqueeze(-1)
    vecs = torch.where(finite.unsqueeze(-1), vecs / divisor, 0.0)
    return vecs, torch.linalg.vector_norm(vecs, dim=-1)


class UnitVectors(NamedTuple):
    """Cosine-similarity view of the item vectors of a batch.

    Attributes:
        t: ``[B, d, N]`` contiguous, ``t[b, :, i]`` = unit vector of candidate ``i`` (zero for a
            zero vector).  The transposed layout makes the per-step similarity row ``v_j^T V`` a
            ``[1, d] x [d, N]`` product per user, the fastest form of ``torch.bmm``.
        nonzero: ``[B, N]`` bool, False for zero vectors.
        raw: ``[B, N, d]`` the input vectors (for cheap contiguous row gathers).
        inv_norm: ``[B, N]`` reciprocal norms (0 for zero vectors).
    """

    t: Tensor
    nonzero: Tensor
    raw: Tensor
    inv_norm: Tensor

    def rows(self, rows: Tensor, index: Tensor) -> Tensor:
        """Unit vectors of candidate ``index[b]`` of every row ``b``: ``[B, 1, d]``."""
        return (self.raw[rows, index] * self.inv_norm[rows, index].unsqueeze(1)).unsqueeze(1)


_LOCAL = threading.local()


def _workspace(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uninitialised scratch tensor for the ``[B, d, N]`` unit vectors, reused on CPU per thread.

    Fresh multi-megabyte CPU allocations are page-faulted in on first touch, which costs about as
    much as a pass over the data; keeping the thread's largest workspace avoids that on repeated
    calls (it is released by :func:`release_workspace`).  CUDA uses PyTorch's caching allocator.
    """
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    numel = math.prod(shape)
    buf = getattr(_LOCAL, "buffer", None)
    if buf is None or buf.dtype != dtype or buf.numel() < numel:
        # a normal tensor even when first called under inference_mode: an inference tensor
        # could not be written by a later call made outside it
        with torch.inference_mode(False):
            buf = torch.empty(numel, dtype=dtype)
        _LOCAL.buffer = buf
    return buf[:numel].view(shape)


def release_workspace() -> None:
    """Free the calling thread's cached re-ranking workspace.

    On CPU the re-rankers keep the ``[B, d, N]`` normalised-vector scratch buffer of the last
    (largest) call alive per thread so that repeated calls do not pay for fresh page faults.
    """
    _LOCAL.buffer = None
