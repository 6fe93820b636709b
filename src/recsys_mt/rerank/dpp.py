"""Fast greedy DPP MAP inference (Chen, Zhang & Zhou, NeurIPS 2018), batched over users."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_finite_number, check_fraction, check_int
from ._vectors import UnitVectors
from .base import PAD, Reranker, RerankInputs, _pad_rows, _relevance_fill

__all__ = ["DPP", "dpp_tolerance"]


def dpp_tolerance(eps: float, dtype: torch.dtype) -> float:
    """Effective threshold on the squared residual ``d_i^2``: ``max(eps, 1000 * finfo.eps)``.

    With unit vectors ``d_i^2`` is in ``[0, 1]``; values at the rounding-noise level of the dtype
    (about ``1.2e-4`` for float32, below the default ``eps=1e-10`` for float64) mean "linearly
    dependent on the selected items" and must not be treated as new information.
    """
    return max(float(eps), 1000.0 * torch.finfo(dtype).eps)


class DPP(Reranker):
    """Greedy MAP inference for a determinantal point process with a quality/diversity kernel.

    Kernel (Chen et al. 2018, section 4.1): ``L = diag(r) S diag(r)`` with ``S_ij = cos(v_i, v_j)``
    (PSD) and ``r_i = exp(alpha * rel_i)``, ``alpha = theta / (2 (1 - theta))``, so that

    ``log det L_Y = theta/(1-theta) * sum_{i in Y} rel_i + log det S_Y``,

    i.e. up to the factor ``1/(1-theta)`` the objective ``theta * sum rel + (1-theta) log det S_Y``.
    ``theta = 1`` is the explicit pure-relevance end (plain score order, no vectors needed) and
    ``theta = 0`` is pure diversity (max-volume selection).

    Greedy step: pick ``argmax_i log d_i^2 = 2 alpha rel_i + log dS_i^2`` where ``dS_i^2`` is the
    squared residual of ``v_i`` after projecting out the selected items. The paper's incremental
    Cholesky update is ``e_i = (S_ji - <c_j, c_i>) / d_j``, ``c_i <- [c_i, e_i]``, ``d_i^2 -=
    e_i^2``. Because ``S = V V^T`` is given by unit vectors, the coordinates are ``c_i = Q v_i`` for
    the orthonormal basis ``Q`` (``t x d``) of the selected vectors, so the update is computed as
    ``q_t = (v_j - Q^T Q v_j) / d_j`` (Gram-Schmidt in ``R^d``, applied twice for orthogonality) and
    ``e = V q_t``: one ``[1, d] x [d, N]`` product per step and user, the same cost as an MMR step,
    ``O(N d + t d)``. Neither the ``N x N`` kernel nor the ``[k, N]`` coordinate matrix is
    materialised. Working with ``S`` instead of ``L`` keeps the quality term in log space, so a
    large ``theta`` cannot overflow (when the per-row quality spread is small enough, the equivalent
    product ``exp(2 alpha rel_i - max) * dS_i^2`` is ranked instead, which saves a ``log`` per
    step).

    Stopping: a candidate whose ``dS_i^2`` is below :func:`dpp_tolerance` (``max(eps,
    1000 * finfo(dtype).eps)``) is linearly dependent on the selection and is not chosen by the DPP
    step.  When no remaining valid candidate is above the tolerance, the row stops the DPP and
    its remaining slots are filled in relevance (score) order among the unselected valid
    candidates.  Zero item vectors have ``dS^2 = 0`` and can only be picked by that fill.

    Sliding window (section 4.2): with ``window=w`` only the ``w - 1`` most recently selected items
    enter the determinant when the next item is chosen (every ``w`` consecutive items are
    diverse).  The oldest item is removed from the factorisation with a rank-one Cholesky update
    (Givens rotations of ``Q``, ``O(w d)``) plus one ``[1, d] x [d, N]`` product that returns the
    removed direction to the residuals.  ``window=None`` (default) uses the whole list.

    Raw scores (``normalize=None``) whose quality term ``2 alpha rel_i`` overflows are shifted by
    the row's best relevance first; candidates then at ``-inf`` are reachable only through the
    relevance-order fill.

    Call: ``DPP(0.7)(scores [B, N], k, mask=..., item_vectors=[B, N, d])`` (or ``item_ids`` +
    ``catalog``) ``-> LongTensor [B, min(k, N)]``, ``-1`` padded in rows with fewer valid
    candidates (see :class:`~recsys_mt.rerank.base.Reranker`).

    Args:
        theta: relevance/diversity trade-off in ``[0, 1]`` (``1`` = pure relevance).
        window: sliding window size ``w >= 1`` or ``None``.
        eps: stopping threshold on ``dS_i^2`` (see above).
        normalize: relevance normalisation (``"minmax"``, ``"softmax"`` or ``None``).
    """

    inputs_used = frozenset({"item_vectors", "item_ids", "catalog"})

    def __init__(
        self,
        theta: float = 0.7,
        window: int | None = None,
        eps: float = 1e-10,
        *,
        normalize: str | None = "minmax",
    ) -> None:
        super().__init__(normalize)
        self.theta = check_fraction("theta", theta)
        self.window = None if window is None else check_int("window", window, 1)
        self.eps = check_finite_number("eps", eps, 0.0)

    def __repr__(self) -> str:
        return (
            f"DPP(theta={self.theta}, window={self.window}, eps={self.eps}, "
            f"normalize={self.normalize!r})"
        )

    @property
    def alpha(self) -> float:
        """``theta / (2 (1 - theta))`` (``inf`` for ``theta = 1``)."""
        return math.inf if self.theta == 1.0 else self.theta / (2.0 * (1.0 - self.theta))

    def _check_inputs(self, inputs: RerankInputs) -> None:
        if self.theta < 1.0:
            inputs.require_vectors()

    def _rerank(self, inputs: RerankInputs, k: int) -> Tensor:
        if self.theta == 1.0:
            return _relevance_fill(inputs.scores, k)
        bsz, n = inputs.rel.shape
        device, dtype = inputs.rel.device, inputs.rel.dtype
        rows = torch.arange(bsz, device=device)
        tol = dpp_tolerance(self.eps, dtype)
        neg_inf = -torch.inf
        valid = inputs.valid
        n_valid, steps = inputs.valid_counts(k)
        units = inputs.unit_vectors()
        d = units.t.shape[1]

        # Orthonormal basis of the selected (window) item vectors, one row per selected item:
        # the paper's Cholesky coordinates are c_i = basis @ v_i, so e_i = q_t . v_i.
        cap = k - 1 if self.window is None else min(k - 1, self.window - 1)
        basis = torch.zeros(bsz, max(cap, 1), d, dtype=dtype, device=device)
        basis_t = torch.zeros(bsz, d, max(cap, 1), dtype=dtype, device=device)  # transposed copy
        members = torch.zeros(bsz, max(cap, 1), dtype=torch.long, device=device)  # window items
        used = 0

        # Greedy criterion 2*alpha*rel_i + log dS_i^2.  When the per-row spread of the quality
        # term is small enough for exp() not to underflow, the equivalent product
        # exp(2*alpha*rel_i - max) * dS_i^2 is used (one multiply per step instead of log + add);
        # otherwise the log form.  Unavailable candidates get weight 0 / quality -inf.
        quality = inputs.rel * (2.0 * self.alpha)
        if not bool(torch.isfinite(quality[valid]).all()):
            # raw scores (normalize=None) times a large alpha overflow: shift by the row's best
            # relevance first; -inf then marks candidates hopelessly less relevant than it, which
            # only the relevance-order fill can pick
            best_rel = torch.where(valid, inputs.rel, neg_inf).amax(dim=1, keepdim=True)
            quality = (inputs.rel - best_rel) * (2.0 * self.alpha)
        top = torch.where(valid, quality, neg_inf).amax(dim=1, keepdim=True)
        low = torch.where(valid, quality, torch.inf).amin(dim=1, keepdim=True)
        spread = torch.where(valid.any(dim=1, keepdim=True), top - low, 0.0).max()
        use_product = float(spread) <= (60.0 if dtype == torch.float32 else 600.0)
        if use_product:
            quality = torch.exp(quality - torch.where(top > neg_inf, top, 0.0))
            quality.masked_fill_(~valid, 0.0)
            blocked = 0.0
        else:
            quality.masked_fill_(~valid, neg_inf)
            blocked = neg_inf
        fill_scores = inputs.scores.clone()  # relevance-order fill, -inf = unavailable
        # diag(S) is exactly 1 (0 for zero vectors); exact values keep pure-diversity ties exact
        d2 = units.nonzero.to(dtype)  # squared residuals dS_i^2, kept at exactly 0 once <= tol

        done = torch.zeros(bsz, dtype=torch.bool, device=device)  # row switched to the fill
        any_done = False
        score = torch.empty(bsz, n, dtype=dtype, device=device)
        row = torch.empty(bsz, 1, n, dtype=dtype, device=device)
        out = torch.full((bsz, k), PAD, dtype=torch.long, device=device)

        for t in range(steps):
            if use_product:  # weight_i * d_i^2, 0 = not eligible
                torch.mul(d2, quality, out=score)
            else:  # 2 alpha rel_i + log d_i^2, -inf = not eligible
                torch.log(d2, out=score)
                score.add_(quality)
            top_score, best = score.max(dim=1)  # first maximum -> lowest index on ties
            stuck = top_score <= blocked  # no eligible candidate left
            if any_done or bool(stuck.any()):
                any_done = True
                done |= stuck
                if bool(done.all()):  # every row is filling: rest is plain relevance order
                    out[:, t:steps] = _relevance_fill(fill_scores, steps - t)
                    break
                best = torch.where(done, fill_scores.argmax(dim=1), best)
            out[:, t] = best
            if t + 1 == steps:
                break
            fill_scores[rows, best] = neg_inf
            quality[rows, best] = blocked
            if cap == 0:
                continue
            if used == cap:  # sliding window full: drop the oldest item first
                self._drop_oldest(basis, members, d2, units, rows, cap, row)
                used -= 1
                basis_t[:, :, :used] = basis[:, :used].transpose(1, 2)

            # New direction q = (v_j - proj_basis v_j) / d_j (Gram-Schmidt, applied twice for
            # orthogonality), then e_i = q . v_i for all candidates: one [1, d] x [d, N] product.
            resid = units.rows(rows, best)  # [B, 1, d]
            if used:
                for _ in range(2):  # row-vector products: the fast orientation of tiny bmm
                    coef = torch.bmm(resid, basis_t[:, :, :used])  # [B, 1, used]
                    resid = torch.baddbmm(resid, coef, basis[:, :used], alpha=-1.0)
            norm = torch.linalg.vector_norm(resid, dim=2, keepdim=True)
            keep = norm > 0 if not any_done else (norm > 0) & ~done.view(bsz, 1, 1)
            q = resid * torch.where(keep, 1.0 / torch.where(keep, norm, 1.0), 0.0)
            basis[:, used] = q.squeeze(1)  # finished rows get q = 0: no update
            basis_t[:, :, used] = q.squeeze(1)
            torch.bmm(q, units.t, out=row)
            e = row.squeeze(1)
            d2.addcmul_(e, e, value=-1.0)
            torch.threshold_(d2, tol, 0.0)  # dependent / chosen candidates: exactly 0
            members[:, used] = best
            used += 1
        return _pad_rows(out, n_valid)

    @staticmethod
    def _drop_oldest(
        basis: Tensor,
        members: Tensor,
        d2: Tensor,
        units: UnitVectors,
        rows: Tensor,
        m: int,
        row: Tensor,
    ) -> None:
        """Remove the oldest window item from the factorisation (in place).

        ``basis[p]`` is orthonormal and item ``p`` of the window lies in ``span(basis[:p+1])``
        (the Cholesky factor ``F[p, l] = q_l . v_p`` is lower triangular).  Removing item 0 is a
        rank-one Cholesky update: Givens rotations fold the direction ``q~`` (initially ``q_0``)
        into ``q_1 .. q_{m-1}`` so that the rotated ``q'_0 .. q'_{m-2}`` span the remaining items
        in the same triangular way; the final ``q~`` is orthogonal to all of them and is
        returned to the residuals, ``d_i^2 += (q~ . v_i)^2`` (one ``[1, d] x [d, N]`` product).
        """
        tiny = torch.finfo(basis.dtype).tiny
        carry = basis[:, 0].clone()  # q~
        for col in range(m - 1):
            item = units.rows(rows, members[:, col + 1]).squeeze(1)  # [B, d]
            nxt = basis[:, col + 1]
            diag = (nxt * item).sum(dim=1, keepdim=True)
            off = (carry * item).sum(dim=1, keepdim=True)
            radius = torch.hypot(diag, off).clamp_min(tiny)
            cos, sin = diag / radius, off / radius
            basis[:, col] = cos * nxt + sin * carry
            carry = cos * carry - sin * nxt
        basis[:, m - 1] = 0.0
        torch.bmm(carry.unsqueeze(1), units.t, out=row)
        d2.addcmul_(row.squeeze(1), row.squeeze(1))
        members[:, : m - 1] = members[:, 1:m].clone()
