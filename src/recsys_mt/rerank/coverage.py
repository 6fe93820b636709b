"""Category coverage re-ranking: xQuAD-style and calibrated (Steck 2018), batched over users."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_fraction, first_index
from .base import PAD, Reranker, RerankInputs, _relevance_fill

__all__ = ["CategoryCoverage", "category_distribution", "inferred_preference"]

MODES = ("xquad", "calibrated")


def category_distribution(
    categories: Tensor, weights: Tensor, valid: Tensor, num_categories: int
) -> Tensor:
    """Per-row category distribution ``P(c) ∝ sum_{valid i in c} max(weights_i, 0)`` as ``[B, C]``.

    Args:
        categories: ``[B, N]`` long ids in ``[0, num_categories)``, negative = uncategorised.
        weights: ``[B, N]`` finite weights at the valid candidates (negative ones count as 0).
        valid: ``[B, N]`` bool.
        num_categories: ``C``.

    Returns:
        ``[B, C]`` rows summing to 1.  Rows whose valid weights sum to zero fall back to category
        counts; uncategorised (negative) candidates are ignored; rows without any categorised
        candidate are all zero.  Weights whose sum overflows are scaled by the row maximum.
    """
    has_cat = valid & (categories >= 0)
    idx = torch.where(has_cat, categories, torch.zeros_like(categories))
    w = torch.where(has_cat, weights, torch.zeros_like(weights)).clamp_min(0.0)
    dist = torch.zeros(w.shape[0], num_categories, dtype=w.dtype, device=w.device)
    dist.scatter_add_(1, idx, w)
    if not bool(torch.isfinite(dist).all()):  # huge raw weights: sum them scaled
        dist.zero_().scatter_add_(1, idx, w / w.amax(dim=1, keepdim=True).clamp_min(1.0))
    counts = torch.zeros_like(dist).scatter_add_(1, idx, has_cat.to(w.dtype))
    total = dist.sum(dim=1, keepdim=True)
    dist = torch.where(total > 0, dist, counts)
    return _to_distribution(dist)


def inferred_preference(
    categories: Tensor, rel: Tensor, valid: Tensor, num_categories: int
) -> Tensor:
    """``[B, C]`` target ``p = P(c|u)`` of :class:`CategoryCoverage` without a preference.

    ``p = (p_rel + p_count) / 2``: the mean of the relevance-weighted category distribution
    ``p_rel`` (:func:`category_distribution` of ``rel``) and the category distribution of the
    candidates ``p_count(c) = n(c) / n`` (each valid categorised candidate counts once).
    ``p_rel`` alone gives no mass to a category whose candidates all have relevance 0, which
    min-max normalisation assigns to the least relevant candidate of every row: that category
    would never earn coverage, not even at ``lambda_ = 1``.  The count half is one pseudo-vote per
    candidate (additive smoothing), so every category present among the valid candidates gets
    ``p(c) >= n(c) / (2 n) > 0`` while categories rich in relevance still weigh more.

    Args:
        categories: ``[B, N]`` long ids in ``[0, num_categories)``, negative = uncategorised.
        rel: ``[B, N]`` normalised relevance (finite at the valid candidates).
        valid: ``[B, N]`` bool.
        num_categories: ``C``.

    Returns:
        ``[B, C]`` rows summing to 1 (all zero for rows without a categorised valid candidate).
    """
    has_cat = valid & (categories >= 0)
    by_rel = category_distribution(categories, rel, has_cat, num_categories)
    by_count = category_distribution(categories, has_cat.to(rel.dtype), has_cat, num_categories)
    return (by_rel + by_count) * 0.5


def _to_distribution(dist: Tensor) -> Tensor:
    """Rows of the finite non-negative ``dist [B, C]`` divided by their sum (zero rows stay 0).

    Rows whose sum overflows are divided by their maximum first.
    """
    total = dist.sum(dim=1, keepdim=True)
    if not bool(torch.isfinite(total).all()):
        dist = dist / dist.amax(dim=1, keepdim=True).clamp_min(1.0)
        total = dist.sum(dim=1, keepdim=True)
    return dist / torch.where(total > 0, total, torch.ones_like(total))


class CategoryCoverage(Reranker):
    """Greedy category-aware re-ranking with one category per candidate.

    ``p = P(c|u)`` is ``user_category_pref [B, C]`` (rows renormalised to sum 1) when given at call
    time, otherwise inferred from the row's valid candidates (see :func:`inferred_preference`):
    the mean of their relevance-weighted category distribution and of their category counts, so
    that every category present gets positive mass (relevance alone would give none to a
    category holding only the row's least relevant candidate, whose min-max relevance is 0).
    ``categories [B, N]`` are ids in ``[0, C)``; negative ids mean "uncategorised" (no coverage
    gain / no effect on the calibration target).  With ``lambda_ = 1``, ``gamma = 1`` and
    ``mode="xquad"`` the first picks therefore cover every category present before any repeats.

    ``mode="xquad"`` (Santos et al. 2010, with hard item-category membership): pick

    ``argmax_i (1 - lambda_) rel(i) + lambda_ * p(c_i) * (1 - gamma) ** n_S(c_i)``

    where ``n_S(c)`` is the number of already selected items of category ``c``.  This is xQuAD's
    ``sum_c P(c|u) P(i|c) prod_{j in S} (1 - P(j|c))`` with ``P(i|c) = [i in c]`` in the novelty
    product softened to ``gamma * [j in c]``: each pick of a category multiplies that category's
    remaining coverage gain by ``1 - gamma``.  ``gamma = 1`` is the hard xQuAD form (only the first
    item of a category earns coverage); smaller ``gamma`` gives gentler diminishing returns.
    Note ``p`` sums to one, so with many categories the diversity term is small relative to
    ``rel`` in ``[0, 1]`` and a larger ``lambda_`` is needed.

    ``mode="calibrated"`` (Steck, RecSys 2018): greedily maximise
    ``(1 - lambda_) * sum_{i in S} rel(i) - lambda_ * KL(p || q~_S)``, where ``q_S(c) = n_S(c)/|S|``
    is the (unweighted) category distribution of the list and ``q~ = (1 - alpha) q + alpha p``
    (``alpha = 0.01``) keeps the KL finite.  Each step evaluates the KL of ``S + {i}`` for every
    candidate in ``O(C + N)``.

    ``lambda_ = 0`` is the explicit pure-relevance end (plain score order) in both modes.

    Args:
        lambda_: diversity weight in ``[0, 1]``.
        mode: ``"xquad"`` or ``"calibrated"``.
        gamma: xQuAD per-pick coverage decay in ``(0, 1]``.
        alpha: calibrated-mode smoothing in ``(0, 1]``.
        normalize: relevance normalisation (``"minmax"``, ``"softmax"`` or ``None``).

    Without ``user_category_pref`` the category ids may be any non-negative int64 (sparse ids are
    numbered densely internally).  In calibrated mode, target entries so small that ``alpha * p``
    underflows contribute ``p log(p / tiny)`` (``tiny`` = smallest normal float), so the KL stays
    finite and every row still gets ``min(k, N, n_valid)`` items.

    Call: ``CategoryCoverage(0.5)(scores [B, N], k, mask=..., categories=[B, N],
    user_category_pref=[B, C] | None) -> LongTensor [B, min(k, N)]``, ``-1`` padded in rows with
    fewer valid candidates (see :class:`~recsys_mt.rerank.base.Reranker`).
    """

    inputs_used = frozenset({"categories", "user_category_pref"})

    def __init__(
        self,
        lambda_: float = 0.5,
        mode: str = "xquad",
        *,
        gamma: float = 0.5,
        alpha: float = 0.01,
        normalize: str | None = "minmax",
    ) -> None:
        super().__init__(normalize)
        if not (isinstance(mode, str) and mode in MODES):
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.lambda_ = check_fraction("lambda_", lambda_)
        self.mode = mode
        self.gamma = check_fraction("gamma", gamma, open_low=True)
        self.alpha = check_fraction("alpha", alpha, open_low=True)

    def __repr__(self) -> str:
        return (
            f"CategoryCoverage(lambda_={self.lambda_}, mode={self.mode!r}, gamma={self.gamma}, "
            f"alpha={self.alpha}, normalize={self.normalize!r})"
        )

    def _check_inputs(self, inputs: RerankInputs) -> None:
        pref = inputs.user_category_pref
        if pref is not None and not bool((torch.isfinite(pref) & (pref >= 0)).all()):
            b, c = first_index(~(torch.isfinite(pref) & (pref >= 0)))
            raise ValueError(
                f"user_category_pref must be finite and non-negative, got {float(pref[b, c])} "
                f"at [{b}, {c}] of {tuple(pref.shape)}"
            )
        if self.lambda_ > 0.0 and inputs.categories is None:
            raise ValueError("CategoryCoverage needs categories [B, N]")

    def _rerank(self, inputs: RerankInputs, k: int) -> Tensor:
        if self.lambda_ == 0.0:
            return _relevance_fill(inputs.scores, k)
        cats = inputs.categories
        valid = inputs.valid
        has_cat = valid & (cats >= 0)
        cat_idx = torch.where(has_cat, cats, torch.zeros_like(cats))
        pref = inputs.user_category_pref
        if pref is not None:
            num_cat = pref.shape[1]
            too_big = has_cat & (cats >= num_cat)
            if bool(too_big.any()):
                b, i = first_index(too_big)
                raise ValueError(
                    f"categories[{b}, {i}] = {int(cats[b, i])} must be < "
                    f"user_category_pref.shape[1] = {num_cat} (categories {tuple(cats.shape)})"
                )
            if num_cat == 0:  # only uncategorised candidates: one empty category
                pref = pref.new_zeros(pref.shape[0], 1)
            pref = _to_distribution(pref)
        else:
            num_cat = int(cat_idx.max()) + 1
            if num_cat > cats.shape[1]:  # sparse ids: number the categories present densely
                cat_idx = torch.unique(cat_idx, return_inverse=True)[1]
                num_cat = int(cat_idx.max()) + 1
            pref = inferred_preference(cat_idx, inputs.rel, has_cat, num_cat)
        if self.mode == "xquad":
            return self._xquad(inputs, k, pref, cat_idx, has_cat)
        return self._calibrated(inputs, k, pref, cat_idx, has_cat)

    def _xquad(
        self, inputs: RerankInputs, k: int, pref: Tensor, cat_idx: Tensor, has_cat: Tensor
    ) -> Tensor:
        lam = self.lambda_
        bsz, n = inputs.rel.shape
        device = inputs.rel.device
        rows = torch.arange(bsz, device=device)
        base = inputs.rel * (1.0 - lam)
        base.masked_fill_(~inputs.valid, -torch.inf)
        gain = pref * lam  # lambda * p(c) * (1 - gamma) ** n_S(c)
        keep = 1.0 - self.gamma
        hc = has_cat.to(base.dtype)
        score = torch.empty_like(base)
        out = torch.full((bsz, k), PAD, dtype=torch.long, device=device)
        for t in range(k):
            torch.gather(gain, 1, cat_idx, out=score)
            score.mul_(hc).add_(base)
            best = score.argmax(dim=1)
            ok = score[rows, best] > -torch.inf
            if not bool(ok.any()):
                break
            out[:, t] = torch.where(ok, best, PAD)
            base[rows, best] = -torch.inf
            c = cat_idx[rows, best]
            hit = ok & has_cat[rows, best]
            gain[rows, c] = torch.where(hit, gain[rows, c] * keep, gain[rows, c])
        return out

    def _calibrated(
        self, inputs: RerankInputs, k: int, pref: Tensor, cat_idx: Tensor, has_cat: Tensor
    ) -> Tensor:
        lam, alpha = self.lambda_, self.alpha
        bsz, n = inputs.rel.shape
        device, dtype = inputs.rel.device, inputs.rel.dtype
        rows = torch.arange(bsz, device=device)
        base = inputs.rel * (1.0 - lam)
        base.masked_fill_(~inputs.valid, -torch.inf)
        support = pref > 0
        zero = torch.zeros((), dtype=dtype, device=device)
        # sum_c p log p, constant per row
        neg_entropy = torch.where(support, pref * torch.log(torch.where(support, pref, 1.0)), zero)
        neg_entropy = neg_entropy.sum(dim=1, keepdim=True)
        counts = torch.zeros_like(pref)
        smooth = alpha * pref
        hc = has_cat.to(dtype)
        out = torch.full((bsz, k), PAD, dtype=torch.long, device=device)

        # x >= alpha * p > 0 on the support, but alpha * p underflows for tiny (subnormal) p:
        # clamping at the smallest normal keeps every KL term finite (p * log(tiny) ~ 0).
        tiny = torch.finfo(dtype).tiny

        def plog(x: Tensor) -> Tensor:  # p * log(x) restricted to the support of p
            x = torch.where(support, x, 1.0).clamp_min_(tiny)
            return torch.where(support, pref * torch.log(x), zero)

        for t in range(k):
            # Adding i (category c_i) to S (|S| = t):  q~(c) = (1-a)(n_c + [c = c_i])/(t+1) + a p_c
            # KL_i = sum p log p - [sum_c p log A_c + p_ci (log B_ci - log A_ci)]
            scale = (1.0 - alpha) / (t + 1)
            log_a = plog(counts * scale + smooth)
            log_b = plog((counts + 1.0) * scale + smooth)
            cross = log_a.sum(dim=1, keepdim=True)
            delta = torch.gather(log_b - log_a, 1, cat_idx) * hc
            kl = neg_entropy - cross - delta
            score = base - lam * kl
            best = score.argmax(dim=1)
            ok = score[rows, best] > -torch.inf
            if not bool(ok.any()):
                break
            out[:, t] = torch.where(ok, best, PAD)
            base[rows, best] = -torch.inf
            c = cat_idx[rows, best]
            hit = (ok & has_cat[rows, best]).to(dtype)
            counts[rows, c] += hit
        return out
