"""Shared input handling and helpers for the batched re-rankers.

Conventions used by every re-ranker in :mod:`recsys_mt.rerank`:

* ``scores`` is ``[B, N]`` (``B`` users/requests, ``N`` candidates per user).  A 1-D ``[N]``
  tensor is accepted as a single user; the result is then 1-D as well.
* The result is a ``LongTensor [B, k']`` of *positions into N* in selection order, on the
  device of ``scores``, with ``k' = min(k, N)``.  ``k > N`` is not an error: every candidate is
  ranked.  ``k = 0``, ``N = 0`` and ``B = 0`` give an empty ``[B, k']`` result.
* Rows with fewer than ``k'`` valid candidates are right-padded with :data:`PAD` (``-1``): row
  ``b`` holds exactly ``min(k', n_valid[b])`` distinct valid positions followed by ``-1``.
  :meth:`Reranker.select` also returns the boolean validity mask of the slots.
* A candidate is valid when ``mask`` is True *and* its score is not ``-inf`` (``-inf`` marks an
  absent candidate).  A NaN or ``+inf`` score at an unmasked candidate raises ``ValueError``
  naming the row and candidate; masked candidates may hold anything.  Invalid and already chosen
  candidates are never selected.
* Ties are broken deterministically towards the lowest candidate index.
* Relevance is normalised per row over the valid candidates before it is mixed with similarity
  or coverage terms (``normalize="minmax"`` by default, see :func:`normalize_relevance`).
* Similarities are cosine similarities: item vectors are L2-normalised once, overflow- and
  underflow-safe (zero vectors stay zero and are similar to nothing).  A NaN / ``±inf`` entry in
  the vector of a valid candidate raises ``ValueError``; invalid candidates' vectors are ignored.
* All work is batched over users on the device of ``scores``; only the ``k`` greedy selection
  steps are a Python loop.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import as_tensor, batch_shaped, check_k, integer_tensor
from ._checks import prepare_scores as _prepare_scores
from ._vectors import UnitVectors, release_workspace, unit_vectors

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

#: The optional per-candidate / per-user inputs of :meth:`Reranker.__call__`.
OPTIONAL_INPUTS = frozenset(
    {"item_vectors", "item_ids", "catalog", "categories", "user_category_pref"}
)

#: Accepted values of the ``normalize`` option.
NORMALIZATIONS = (None, "minmax", "softmax")

_NEG_INF = float("-inf")


def check_normalize(method: object) -> None:
    """Raise ``ValueError`` unless ``method`` is one of :data:`NORMALIZATIONS`."""
    if not (method is None or (isinstance(method, str) and method in NORMALIZATIONS)):
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {method!r}")


def normalize_relevance(scores: Tensor, valid: Tensor, method: str | None = "minmax") -> Tensor:
    """Normalise relevance scores per row over the valid candidates.

    Args:
        scores: ``[B, N]`` floating scores.
        valid: ``[B, N]`` bool, True for valid candidates.
        method: ``"minmax"`` maps the valid scores of each row affinely onto ``[0, 1]``
            (``(s - min) / (max - min)``; a row whose valid scores are all equal maps to ``1``;
            rows whose span ``max - min`` overflows are divided by ``max |s|`` first);
            ``"softmax"`` is the softmax over the valid candidates of the row (sums to 1);
            ``None`` keeps the raw scores.

    Returns:
        ``[B, N]`` tensor of the same dtype; invalid entries are ``0``.  Finite valid scores give
        finite relevance (``[0, 1]`` for ``"minmax"`` and ``"softmax"``).
    """
    check_normalize(method)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if method is None or scores.shape[-1] == 0:
        return torch.where(valid, scores, zero)
    if method == "minmax":
        lo = torch.where(valid, scores, torch.inf).amin(dim=1, keepdim=True)
        hi = torch.where(valid, scores, -torch.inf).amax(dim=1, keepdim=True)
        span = hi - lo
        flat = ~(span > 0)  # constant rows (and rows without valid candidates)
        # hi - lo overflows (e.g. scores of +-3e38): map the scaled scores s / max|s| instead
        big = (span == torch.inf) & ~flat
        unit = torch.where(big, torch.maximum(hi.abs(), lo.abs()), 1.0)
        lo = torch.where(flat, zero, lo / unit)
        rel = (scores / unit - lo) / torch.where(flat, 1.0, hi / unit - lo)
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
    k = check_k(k, scores.shape[1])
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
        valid: ``[B, N]`` bool validity (mask AND score > -inf).
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
            ValueError: when neither ``item_vectors`` nor ``item_ids`` + ``catalog`` was given,
                when a valid candidate's id is outside the catalog, or when the vector of a valid
                candidate has a NaN / ``±inf`` entry (the message names row and candidate).
        """
        self.require_vectors()
        return unit_vectors(
            self.item_vectors, self.item_ids, self.catalog, self.valid, self.scores.dtype
        )

    def require_vectors(self) -> None:
        """Raise ``ValueError`` unless ``item_vectors`` or ``item_ids`` + ``catalog`` was given."""
        if self.item_vectors is None and (self.item_ids is None or self.catalog is None):
            raise ValueError("this re-ranker needs item_vectors [B, N, d] or item_ids + catalog")

    def valid_counts(self, k: int) -> tuple[Tensor, int]:
        """``(n_valid [B], steps)``: valid candidates per row and ``min(k, max_b n_valid)``."""
        n_valid = self.valid.sum(dim=1)
        steps = min(k, int(n_valid.max())) if n_valid.numel() else 0
        return n_valid, steps


class Reranker(abc.ABC):
    """Base class of the batched greedy re-rankers.

    Subclasses implement :meth:`_rerank`; :meth:`__call__` / :meth:`select` validate inputs.
    A subclass names the optional inputs it reads in :attr:`inputs_used`; the others are ignored
    (not even validated), so that one set of keyword arguments fits every re-ranker.

    Args:
        normalize: relevance normalisation, one of ``None``, ``"minmax"`` (default),
            ``"softmax"`` (see :func:`normalize_relevance`).
    """

    #: Optional inputs this method reads (a subset of :data:`OPTIONAL_INPUTS`).
    inputs_used: frozenset[str] = OPTIONAL_INPUTS

    def __init__(self, normalize: str | None = "minmax") -> None:
        check_normalize(normalize)
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
            k: list length to select, an int ``>= 0``; ``k > N`` ranks all ``N`` candidates.
            mask: ``[B, N]`` bool, True = valid candidate (default: all valid).  Scores of
                unmasked candidates must not be NaN or ``+inf``; ``-inf`` marks them absent.
            item_vectors: ``[B, N, d]`` item embeddings for similarity-based methods.
            item_ids: ``[B, N]`` long ids into ``catalog`` (alternative to ``item_vectors``).
            catalog: ``[M, d]`` embedding table indexed by ``item_ids``.
            categories: ``[B, N]`` long category ids (negative = uncategorised).
            user_category_pref: ``[B, C]`` per-user category preference/target distribution.

        Inputs a method does not use (not in :attr:`inputs_used`) are ignored without being
        checked, so re-rankers are interchangeable.

        Returns:
            ``LongTensor [B, min(k, N)]`` on the device of ``scores``: candidate positions in
            selection order; row ``b`` holds ``min(k, N, n_valid[b])`` distinct valid positions
            followed by ``-1`` padding.  Empty (``[B, 0]`` / ``[0, min(k, N)]``) when ``k``,
            ``N`` or ``B`` is 0.

        Raises:
            TypeError: ``k`` is not an int; a float mask; float / bool ids or categories; a
                non-numeric (e.g. string) input the method reads (the message names it).
            ValueError: inconsistent shapes, a NaN / ``+inf`` score of an unmasked candidate, a
                non-finite vector of a valid candidate, an id outside the catalog, a missing
                input the method needs, ... (messages name the argument, shape and position).
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
        with torch.no_grad():
            raw, valid, squeeze = _prepare_scores(scores, mask)
            k = check_k(k, raw.shape[1])
            given = {
                "item_vectors": item_vectors,
                "item_ids": item_ids,
                "catalog": catalog,
                "categories": categories,
                "user_category_pref": user_category_pref,
            }
            used = {name: (v if name in self.inputs_used else None) for name, v in given.items()}
            inputs = self._inputs(raw, valid, squeeze, **used)
            self._check_inputs(inputs)
            if k == 0 or raw.shape[0] == 0:
                out = torch.empty(raw.shape[0], k, dtype=torch.long, device=raw.device)
            else:
                out = self._rerank(inputs, k)
        slot_valid = out >= 0
        if squeeze:
            return out.squeeze(0), slot_valid.squeeze(0)
        return out, slot_valid

    def _inputs(
        self,
        raw: Tensor,
        valid: Tensor,
        squeeze: bool,
        *,
        item_vectors: Tensor | None,
        item_ids: Tensor | None,
        catalog: Tensor | None,
        categories: Tensor | None,
        user_category_pref: Tensor | None,
    ) -> RerankInputs:
        """Shape-check the optional inputs and bundle them with the scores."""
        device, shape = raw.device, raw.shape
        vecs = batch_shaped(item_vectors, "item_vectors", 1, shape, squeeze, device)
        ids = batch_shaped(item_ids, "item_ids", 0, shape, squeeze, device)
        cats = batch_shaped(categories, "categories", 0, shape, squeeze, device)
        if vecs is not None and ids is not None:
            raise ValueError("pass either item_vectors or item_ids + catalog, not both")
        if (ids is None) != (catalog is None):
            raise ValueError("item_ids and catalog must be given together")
        if ids is not None:
            ids = integer_tensor(ids, "item_ids")
            catalog = as_tensor(catalog, "catalog", device)
            if catalog.dim() != 2:
                raise ValueError(f"catalog must have shape [M, d], got {tuple(catalog.shape)}")
        for name, t in (("item_vectors", vecs), ("catalog", catalog)):
            if t is not None and (t.dtype.is_complex or t.dtype == torch.bool):
                raise TypeError(f"{name} must be a real tensor, got dtype {t.dtype}")
        if cats is not None:
            cats = integer_tensor(cats, "categories")
        pref = user_category_pref
        if pref is not None:
            pref = as_tensor(pref, "user_category_pref", device)
            if pref.dtype.is_complex:
                raise TypeError(f"user_category_pref must be real, got dtype {pref.dtype}")
            pref = pref.to(raw.dtype)
            if squeeze:
                pref = pref.unsqueeze(0)
            if pref.dim() != 2 or pref.shape[0] != raw.shape[0]:
                raise ValueError(
                    f"user_category_pref must have shape [B, C] with B = {raw.shape[0]}, "
                    f"got {tuple(pref.shape)}"
                )
        return RerankInputs(
            scores=torch.where(valid, raw, _NEG_INF),
            valid=valid,
            rel=normalize_relevance(raw, valid, self.normalize),
            item_vectors=vecs,
            item_ids=ids,
            catalog=catalog,
            categories=cats,
            user_category_pref=pref,
        )

    # -- subclass hooks ------------------------------------------------------------------------
    def _check_inputs(self, inputs: RerankInputs) -> None:
        """Raise ``ValueError`` when an input the configured method needs is missing or invalid.

        Called for every call, including empty inputs (``B``, ``N`` or ``k`` = 0), so that
        argument errors do not depend on the batch size.  The default accepts everything.
        """
        return None

    @abc.abstractmethod
    def _rerank(self, inputs: RerankInputs, k: int) -> Tensor:
        """Return ``[B, k]`` selected positions (``1 <= k <= N``), ``-1`` padded."""


# -- private helpers ---------------------------------------------------------------------------
def _pad_rows(out: Tensor, n_valid: Tensor) -> Tensor:
    """Set slots ``t >= n_valid[b]`` of ``out [B, k]`` to ``PAD`` (in place) and return it."""
    slots = torch.arange(out.shape[1], device=out.device).unsqueeze(0)
    return out.masked_fill_(slots >= n_valid.unsqueeze(1), PAD)


def _relevance_fill(masked_scores: Tensor, k: int) -> Tensor:
    """Top-``k`` positions of ``masked_scores`` (``-inf`` = invalid), lowest index on ties."""
    order = torch.sort(masked_scores, dim=1, descending=True, stable=True)
    idx = order.indices[:, :k]
    return torch.where(order.values[:, :k] > _NEG_INF, idx, torch.full_like(idx, PAD))
