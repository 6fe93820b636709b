"""Category coverage re-ranking: xQuAD-style and calibrated (Steck 2018), batched over users."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import PAD, Reranker, RerankInputs, _relevance_fill

__all__ = ["CategoryCoverage", "category_distribution"]

MODES = ("xquad", "calibrated")


def category_distribution(
    categories: Tensor, weights: Tensor, valid: Tensor, num_categories: int
) -> Tensor:
    """Per-row category distribution ``P(c) ∝ sum_{valid i in c} weights_i`` as ``[B, C]``.

    Rows whose valid weights sum to zero fall back to category counts; uncategorised (negative)
    candidates are ignored; rows without any categorised candidate are all zero.
    """
    has_cat = valid & (categories >= 0)
    idx = torch.where(has_cat, categories, torch.zeros_like(categories))
    w = torch.where(has_cat, weights, torch.zeros_like(weights))
    dist = torch.zeros(w.shape[0], num_categories, dtype=w.dtype, device=w.device)
    dist.scatter_add_(1, idx, w)
    total = dist.sum(dim=1, keepdim=True)
    counts = torch.zeros_like(dist).scatter_add_(1, idx, has_cat.to(w.dtype))
    dist = torch.where(total > 0, dist, counts)
    total = dist.sum(dim=1, keepdim=True)
    return dist / torch.where(total > 0, total, torch.ones_like(total))


class CategoryCoverage(Reranker):
    """Greedy category-aware re-ranking with one category per candidate.

    ``p = P(c|u)`` is ``user_category_pref [B, C]`` (rows renormalised to sum 1) when given at call
    time, otherwise the relevance-weighted category distribution of the row's valid candidates
    (see :func:`category_distribution`).  ``categories [B, N]`` are ids in ``[0, C)``; negative ids
    mean "uncategorised" (no coverage gain / no effect on the calibration target).

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

    Call: ``CategoryCoverage(0.5)(scores [B, N], k, mask=..., categories=[B, N],
    user_category_pref=[B, C] | None) -> LongTensor [B, min(k, N)]``.
    """

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
        lambda_ = float(lambda_)
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.lambda_ = lambda_
        self.mode = mode
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def __repr__(self) -> str:
        return (
            f"CategoryCoverage(lambda_={self.lambda_}, mode={self.mode!r}, gamma={self.gamma}, "
            f"alpha={self.alpha}, normalize={self.normalize!r})"
        )

    def _rerank(self, inputs: RerankInputs, k: int) -> Tensor:
        if self.lambda_ == 0.0:
            return _relevance_fill(inputs.scores, k)
        cats = inputs.categories
        if cats is None:
            raise ValueError("CategoryCoverage needs categories [B, N]")
        valid = inputs.valid
        has_cat = valid & (cats >= 0)
        cat_idx = torch.where(has_cat, cats, torch.zeros_like(cats))
        pref = inputs.user_category_pref
        if pref is not None:
            num_cat = pref.shape[1]
            if bool((cat_idx >= num_cat).any()):
                raise ValueError(f"categories must be < user_category_pref.shape[1] = {num_cat}")
            if bool((pref < 0).any()) or not bool(torch.isfinite(pref).all()):
                raise ValueError("user_category_pref must be finite and non-negative")
            total = pref.sum(dim=1, keepdim=True)
            pref = pref / torch.where(total > 0, total, torch.ones_like(total))
        else:
            num_cat = int(cat_idx.max()) + 1 if cat_idx.numel() else 1
            pref = category_distribution(cats, inputs.rel, valid, num_cat)
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

        def plog(x: Tensor) -> Tensor:  # p * log(x) restricted to the support of p
            return torch.where(support, pref * torch.log(torch.where(support, x, 1.0)), zero)

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
