"""Shared input handling and helpers for the batched re-rankers.

Conventions used by every re-ranker in :mod:`recsys_mt.rerank`:

* ``scores`` is ``[B, N]`` (``B`` users/requests, ``N`` candidates per user).  A 1-D ``[N]``
  tensor is accepted as a single user; the result is then 1-D as well.
* The result is a ``LongTensor [B, k']`` of *positions into N* in selection order, with
  ``k' = min(k, N)``.  ``k > N`` is not an error: every candidate is ranked.
* Rows with fewer than ``k'`` valid candidates are right-padded with :data:`PAD` (``-1``); a
  ``-1`` never appears before a real index.  :meth:`Reranker.select` also returns the boolean
  validity mask of the slots.
* A candidate is valid when ``mask`` is True *and* its score is finite (NaN / ``±inf`` scores are
  treated as padding).  Invalid and already chosen candidates are never selected.
* Ties are broken deterministically towards the lowest candidate index.
* Relevance is normalised per row over the valid candidates before it is mixed with similarity
  or coverage terms (``normalize="minmax"`` by default, see :func:`normalize_relevance`).
* Similarities are cosine similarities: item vectors are L2-normalised once (zero vectors stay
  zero and are similar to nothing).
* All work is batched over users on the device of ``scores``; only the ``k`` greedy selection
  steps are a Python loop.
"""

from __future__ import annotations

import abc
import math
import threading
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "PAD",
    "NORMALIZATIONS",
    "RerankInputs",
    "Reranker",
    "normalize_relevance",
    "relevance_order",
    "gather_selected",
    "release_workspace",
]

#: Index used for padded output slots (rows that run out of valid candidates).
PAD: int = -1

#: Accepted values of the ``normalize`` option.
NORMALIZATIONS = (None, "minmax", "softmax")

_NEG_INF = float("-inf")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype.is_floating_point:  # float16 / bfloat16: compute in float32
        return torch.float32
    return torch.get_default_dtype()


def normalize_relevance(scores: Tensor, valid: Tensor, method: str | None = "minmax") -> Tensor:
    """Normalise relevance scores per row over the valid candidates.

    Args:
        scores: ``[B, N]`` floating scores.
        valid: ``[B, N]`` bool, True for valid candidates.
        method: ``"minmax"`` maps the valid scores of each row affinely onto ``[0, 1]``
            (``(s - min) / (max - min)``; a row whose valid scores are all equal maps to ``1``);
            ``"softmax"`` is the softmax over the valid candidates of the row (sums to 1);
            ``None`` keeps the raw scores.

    Returns:
        ``[B, N]`` tensor of the same dtype; invalid entries are ``0``.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {method!r}")
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if method is None:
        return torch.where(valid, scores, zero)
    if method == "minmax":
        lo = torch.where(valid, scores, torch.inf).amin(dim=1, keepdim=True)
        hi = torch.where(valid, scores, -torch.inf).amax(dim=1, keepdim=True)
        span = hi - lo
        flat = ~(span > 0)  # constant rows (and rows without valid candidates)
        rel = (scores - torch.where(flat, zero, lo)) / torch.where(flat, 1.0, span)
        rel = torch.where(flat, torch.ones_like(rel), rel)
        return torch.where(valid, rel, zero)
    logits = torch.where(valid, scores, -torch.inf)
    rel = torch.softmax(logits, dim=1)
    return torch.where(valid, rel, zero)  # rows without valid candidates give NaN -> 0


def relevance_order(scores: Tensor, k: int, mask: Tensor | None = None) -> Tensor:
    """Plain top-``k`` by score (the pure-relevance ranking), with the package's conventions.

    Same shapes, padding and tie rules as :meth:`Reranker.__call__`: ``[B, N] -> [B, min(k, N)]``,
    ties towards the lowest index, padding ``-1``.
    """
    scores, valid, squeeze = _prepare_scores(scores, mask)
    k = _check_k(k, scores.shape[1])
    out = _relevance_fill(torch.where(valid, scores, _NEG_INF), k)
    return out.squeeze(0) if squeeze else out


def gather_selected(values: Tensor, indices: Tensor, fill: float | int = PAD) -> Tensor:
    """Map selected positions back to per-candidate values (e.g. item ids).

    Args:
        values: ``[B, N, ...]`` per-candidate values (``[N, ...]`` with 1-D ``indices``).
        indices: ``[B, k]`` output of a re-ranker (``-1`` = padding).
        fill: value written into padded slots.

    Returns:
        ``[B, k, ...]`` with ``out[b, t] = values[b, indices[b, t]]`` and ``fill`` where
        ``indices[b, t] == -1``.
    """
    if indices.dim() == 1:
        return gather_selected(values.unsqueeze(0), indices.unsqueeze(0), fill).squeeze(0)
    pad = indices < 0
    idx = indices.clamp_min(0)
    batch = torch.arange(values.shape[0], device=values.device).unsqueeze(1)
    out = values[batch, idx]
    fill_t = torch.as_tensor(fill, dtype=out.dtype, device=out.device)
    return torch.where(pad.view(*pad.shape, *([1] * (out.dim() - 2))), fill_t, out)


@dataclass
class RerankInputs:
    """Validated, batch-shaped inputs handed to :meth:`Reranker._rerank`.

    Attributes:
        scores: ``[B, N]`` raw scores in the compute dtype, ``-inf`` at invalid candidates.
        valid: ``[B, N]`` bool validity (mask AND finite score).
        rel: ``[B, N]`` normalised relevance (``0`` at invalid candidates).
        item_vectors: ``[B, N, d]`` raw vectors or None.
        item_ids / catalog: ``[B, N]`` long ids into ``catalog [M, d]``, or None.
        categories: ``[B, N]`` long categories (negative = uncategorised) or None.
        user_category_pref: ``[B, C]`` category preference / target distribution or None.
    """

    scores: Tensor
    valid: Tensor
    rel: Tensor
    item_vectors: Tensor | None = None
    item_ids: Tensor | None = None
    catalog: Tensor | None = None
    categories: Tensor | None = None
    user_category_pref: Tensor | None = None

    def unit_vectors(self) -> UnitVectors:
        """L2-normalised item vectors (see :class:`UnitVectors`).

        Raises:
            ValueError: when neither ``item_vectors`` nor ``item_ids`` + ``catalog`` was given.
        """
        if self.item_vectors is not None:
            vecs = self.item_vectors
        elif self.item_ids is not None and self.catalog is not None:
            ids = torch.where(self.valid, self.item_ids, torch.zeros_like(self.item_ids))
            vecs = self.catalog[ids]
        else:
            raise ValueError("this re-ranker needs item_vectors [B, N, d] or item_ids + catalog")
        dtype = self.scores.dtype
        vecs = vecs.to(dtype)
        norm = torch.linalg.vector_norm(vecs, dim=-1)  # [B, N]
        nonzero = norm > 0
        inv = torch.where(nonzero, 1.0 / torch.where(nonzero, norm, 1.0), 0.0)
        bsz, n, d = vecs.shape
        unit_t = _workspace((bsz, d, n), dtype, vecs.device)
        unit_t.copy_(vecs.transpose(1, 2))  # copy_ has a fast (blocked) transpose path
        unit_t.mul_(inv.unsqueeze(1))
        return UnitVectors(unit_t, nonzero, vecs, inv)

    def valid_counts(self, k: int) -> tuple[Tensor, int]:
        """``(n_valid [B], steps)``: valid candidates per row and ``min(k, max_b n_valid)``."""
        n_valid = self.valid.sum(dim=1)
        steps = min(k, int(n_valid.max())) if n_valid.numel() else 0
        return n_valid, steps


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


class Reranker(abc.ABC):
    """Base class of the batched greedy re-rankers.

    Subclasses implement :meth:`_rerank`; :meth:`__call__` / :meth:`select` validate inputs.

    Args:
        normalize: relevance normalisation, one of ``None``, ``"minmax"`` (default),
            ``"softmax"`` (see :func:`normalize_relevance`).
    """

    def __init__(self, normalize: str | None = "minmax") -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize

    # -- public API ----------------------------------------------------------------------------
    def __call__(
        self,
        scores: Tensor,
        k: int,
        *,
        mask: Tensor | None = None,
        item_vectors: Tensor | None = None,
        item_ids: Tensor | None = None,
        catalog: Tensor | None = None,
        categories: Tensor | None = None,
        user_category_pref: Tensor | None = None,
    ) -> Tensor:
        """Re-rank each row of ``scores`` and return the selected candidate positions.

        Args:
            scores: ``[B, N]`` relevance scores (higher = better), or ``[N]`` for one user.
            k: list length to select (``>= 0``); ``k > N`` returns all ``N`` candidates ranked.
            mask: ``[B, N]`` bool, True = valid candidate (default: all valid).
            item_vectors: ``[B, N, d]`` item embeddings for similarity-based methods.
            item_ids: ``[B, N]`` long ids into ``catalog`` (alternative to ``item_vectors``).
            catalog: ``[M, d]`` embedding table indexed by ``item_ids``.
            categories: ``[B, N]`` long category ids (negative = uncategorised).
            user_category_pref: ``[B, C]`` per-user category preference/target distribution.

        Inputs a method does not use are ignored, so re-rankers are interchangeable.

        Returns:
            ``LongTensor [B, min(k, N)]`` of candidate positions in selection order, padded with
            ``-1`` in rows that run out of valid candidates.
        """
        return self.select(
            scores,
            k,
            mask=mask,
            item_vectors=item_vectors,
            item_ids=item_ids,
            catalog=catalog,
            categories=categories,
            user_category_pref=user_category_pref,
        )[0]

    def select(
        self,
        scores: Tensor,
        k: int,
        *,
        mask: Tensor | None = None,
        item_vectors: Tensor | None = None,
        item_ids: Tensor | None = None,
        catalog: Tensor | None = None,
        categories: Tensor | None = None,
        user_category_pref: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`__call__` but returns ``(indices [B, k'], slot_valid [B, k'] bool)``."""
        raw, valid, squeeze = _prepare_scores(scores, mask)
        n = raw.shape[1]
        k = _check_k(k, n)
        device = raw.device

        def batched(t: Tensor | None, name: str, tail: int) -> Tensor | None:
            if t is None:
                return None
            t = torch.as_tensor(t, device=device)
            if squeeze:
                t = t.unsqueeze(0)
            if t.dim() != 2 + tail or tuple(t.shape[:2]) != tuple(raw.shape):
                want = "[B, N" + ", d" * tail + "]"
                raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
            return t

        vecs = batched(item_vectors, "item_vectors", 1)
        ids = batched(item_ids, "item_ids", 0)
        cats = batched(categories, "categories", 0)
        if vecs is not None and ids is not None:
            raise ValueError("pass either item_vectors or item_ids + catalog, not both")
        if (ids is None) != (catalog is None):
            raise ValueError("item_ids and catalog must be given together")
        if ids is not None:
            ids = ids.long()
            catalog = torch.as_tensor(catalog, device=device)
            if catalog.dim() != 2:
                raise ValueError(f"catalog must have shape [M, d], got {tuple(catalog.shape)}")
        if cats is not None:
            if cats.dtype.is_floating_point or cats.dtype == torch.bool:
                raise TypeError("categories must be an integer tensor")
            cats = cats.long()
        pref = user_category_pref
        if pref is not None:
            pref = torch.as_tensor(pref, device=device).to(raw.dtype)
            if squeeze:
                pref = pref.unsqueeze(0)
            if pref.dim() != 2 or pref.shape[0] != raw.shape[0]:
                raise ValueError(
                    f"user_category_pref must have shape [B, C], got {tuple(pref.shape)}"
                )

        inputs = RerankInputs(
            scores=torch.where(valid, raw, _NEG_INF),
            valid=valid,
            rel=normalize_relevance(raw, valid, self.normalize),
            item_vectors=vecs,
            item_ids=ids,
            catalog=catalog,
            categories=cats,
            user_category_pref=pref,
        )
        if k == 0:
            out = torch.empty(raw.shape[0], 0, dtype=torch.long, device=device)
        else:
            with torch.no_grad():
                out = self._rerank(inputs, k)
        slot_valid = out >= 0
        if squeeze:
            return out.squeeze(0), slot_valid.squeeze(0)
        return out, slot_valid

    # -- subclass hook -------------------------------------------------------------------------
    @abc.abstractmethod
    def _rerank(self, inputs: RerankInputs, k: int) -> Tensor:
        """Return ``[B, k]`` selected positions (``1 <= k <= N``), ``-1`` padded."""


# -- private helpers ---------------------------------------------------------------------------
def _prepare_scores(scores: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    scores = torch.as_tensor(scores)
    squeeze = scores.dim() == 1
    if squeeze:
        scores = scores.unsqueeze(0)
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, N] or [N], got {tuple(scores.shape)}")
    scores = scores.to(_compute_dtype(scores.dtype))
    valid = torch.isfinite(scores)
    if mask is not None:
        mask = torch.as_tensor(mask, device=scores.device)
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise TypeError("mask must be a bool tensor (True = valid candidate)")
        if squeeze:
            mask = mask.unsqueeze(0)
        if mask.shape != scores.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != scores {tuple(scores.shape)}")
        valid &= mask.bool()
    return scores, valid, squeeze


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        try:
            k = int(k.__index__())  # numpy / torch integer scalars
        except AttributeError:
            raise TypeError(f"k must be an int, got {type(k).__name__}") from None
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return min(k, n)


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
        buf = torch.empty(numel, dtype=dtype)
        _LOCAL.buffer = buf
    return buf[:numel].view(shape)


def release_workspace() -> None:
    """Free the calling thread's cached re-ranking workspace.

    On CPU the re-rankers keep the ``[B, d, N]`` normalised-vector scratch buffer of the last
    (largest) call alive per thread so that repeated calls do not pay for fresh page faults.
    """
    _LOCAL.buffer = None


def _pad_rows(out: Tensor, n_valid: Tensor) -> Tensor:
    """Set slots ``t >= n_valid[b]`` of ``out [B, k]`` to ``PAD`` (in place) and return it."""
    slots = torch.arange(out.shape[1], device=out.device).unsqueeze(0)
    return out.masked_fill_(slots >= n_valid.unsqueeze(1), PAD)


def _relevance_fill(masked_scores: Tensor, k: int) -> Tensor:
    """Top-``k`` positions of ``masked_scores`` (``-inf`` = invalid), lowest index on ties."""
    order = torch.sort(masked_scores, dim=1, descending=True, stable=True)
    idx = order.indices[:, :k]
    return torch.where(order.values[:, :k] > _NEG_INF, idx, torch.full_like(idx, PAD))
