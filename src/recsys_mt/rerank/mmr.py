"""Maximal Marginal Relevance (Carbonell & Goldstein, SIGIR 1998), batched over users."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_fraction
from .base import PAD, Reranker, RerankInputs, _pad_rows, _relevance_fill

__all__ = ["MMR"]


class MMR(Reranker):
    """Greedy MMR re-ranking.

    At step ``t`` (selected set ``S``) pick

    ``argmax_{i not in S}  lambda_ * rel(i) - (1 - lambda_) * max_{j in S} cos(v_i, v_j)``

    where ``rel`` is the per-row normalised relevance (``[0, 1]`` with the default min-max) and the
    max-similarity term is ``0`` while ``S`` is empty, so the first pick is the most relevant
    item: the first item of :func:`~recsys_mt.rerank.relevance_order` for every ``lambda_``,
    including ``lambda_ = 0``, where the formula alone would tie all candidates.  The running
    ``max_{j in S}`` vector is updated incrementally: each step costs one ``[N, d] x [d]``
    product per user (``O(N d)``), never a product against the whole of ``S``.

    ``lambda_ = 1`` is pure relevance (plain score order; no vectors needed); ``lambda_ = 0`` is
    pure diversity.

    Args:
        lambda_: relevance weight in ``[0, 1]``.
        normalize: relevance normalisation (``"minmax"``, ``"softmax"`` or ``None``).

    Call: ``MMR(0.7)(scores [B, N], k, mask=..., item_vectors=[B, N, d])`` (or ``item_ids`` +
    ``catalog``) ``-> LongTensor [B, min(k, N)]``: row ``b`` holds ``min(k, N, n_valid[b])``
    distinct valid positions, then ``-1`` padding; see :class:`~recsys_mt.rerank.base.Reranker`
    (empty inputs give empty results; NaN / ``+inf`` scores and non-finite vectors of valid
    candidates raise ``ValueError``).
    """

    inputs_used = frozenset({"item_vectors", "item_ids", "catalog"})

    def __init__(self, lambda_: float = 0.7, *, normalize: str | None = "minmax") -> None:
        super().__init__(normalize)
        self.lambda_ = check_fraction("lambda_", lambda_)

    def __repr__(self) -> str:
        return f"MMR(lambda_={self.lambda_}, normalize={self.normalize!r})"

    def _check_inputs(self, inputs: RerankInputs) -> None:
        if self.lambda_ < 1.0:
            inputs.require_vectors()

    def _rerank(self, inputs: RerankInputs, k: int) -> Tensor:
        if self.lambda_ == 1.0:
            return _relevance_fill(inputs.scores, k)
        lam = self.lambda_
        units = inputs.unit_vectors()
        bsz, n = inputs.rel.shape
        device, dtype = inputs.rel.device, inputs.rel.dtype
        rows = torch.arange(bsz, device=device)
        n_valid, steps = inputs.valid_counts(k)

        weighted_rel = inputs.rel * lam
        # Running max similarity to the selected set; +inf marks candidates that may not be
        # chosen (invalid / already selected): lam*rel - (1-lam)*inf = -inf since lam < 1.
        # Each step picks a valid candidate while the row has any left (slot t < n_valid[b]);
        # later slots are overwritten with PAD at the end.
        max_sim = torch.zeros(bsz, n, dtype=dtype, device=device)
        max_sim.masked_fill_(~inputs.valid, torch.inf)
        score = torch.empty_like(max_sim)
        sim = torch.empty(bsz, 1, n, dtype=dtype, device=device)
        out = torch.full((bsz, k), PAD, dtype=torch.long, device=device)

        for t in range(steps):
            if t == 0:  # S is empty: the most relevant candidate (relevance order, also at lam=0)
                best = inputs.scores.argmax(dim=1)
            else:
                torch.add(weighted_rel, max_sim, alpha=-(1.0 - lam), out=score)
                best = score.argmax(dim=1)  # first maximum -> lowest index on ties
            out[:, t] = best
            if t + 1 == steps:
                break
            max_sim[rows, best] = torch.inf
            torch.bmm(units.rows(rows, best), units.t, out=sim)
            if t == 0:  # first member of S: the max is its similarity (may be negative)
                max_sim = torch.where(max_sim == torch.inf, max_sim, sim.squeeze(1))
            else:
                torch.maximum(max_sim, sim.squeeze(1), out=max_sim)
        return _pad_rows(out, n_valid)
