"""Fast greedy DPP MAP inference (Chen, Zhang & Zhou, NeurIPS 2018), batched over users."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import PAD, Reranker, RerankInputs, _relevance_fill, _rows_of

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
    squared residual of ``v_i`` after projecting out the selected items, maintained with the
    paper's incremental Cholesky update (``e_i = (S_ji - <c_j, c_i>) / d_j``, ``c_i <- [c_i, e_i]``,
    ``d_i^2 <- d_i^2 - e_i^2``).  Working with ``S`` instead of ``L`` keeps the update in log
    space, so large ``theta`` cannot overflow.  Kernel rows are computed from the vectors
    (``S_j. = V v_j``, ``O(N d)``); the ``N x N`` kernel is never materialised.  Per step and user
    the cost is ``O(N d + N t)``.

    Stopping: a candidate whose ``dS_i^2`` is below :func:`dpp_tolerance` (``max(eps,
    1000 * finfo(dtype).eps)``) is linearly dependent on the selection and is not chosen by the DPP
    step.  When no remaining valid candidate is above the tolerance, the row stops the DPP and
    its remaining slots are filled in relevance (score) order among the unselected valid
    candidates.  Zero item vectors have ``dS^2 = 0`` and can only be picked by that fill.

    Sliding window (section 4.2): with ``window=w`` only the ``w - 1`` most recently selected items
    enter the determinant when the next item is chosen (every ``w`` consecutive items are
    diverse).  The oldest item is removed from the Cholesky factor with a rank-one update applied
    to all candidates (``O(w N)`` per step).  ``window=None`` (default) uses the whole list.

    Args:
        theta: relevance/diversity trade-off in ``[0, 1]`` (``1`` = pure relevance).
        window: sliding window size ``w >= 1`` or ``None``.
        eps: stopping threshold on ``dS_i^2`` (see above).
        normalize: relevance normalisation (``"minmax"``, ``"softmax"`` or ``None``).
    """

    def __init__(
        self,
        theta: float = 0.7,
        window: int | None = None,
        eps: float = 1e-10,
        *,
        normalize: str | None = "minmax",
    ) -> None:
        super().__init__(normalize)
        theta = float(theta)
        if not 0.0 <= theta <= 1.0:
            raise ValueError(f"theta must be in [0, 1], got {theta}")
        if window is not None and (isinstance(window, bool) or int(window) < 1):
            raise ValueError(f"window must be None or an int >= 1, got {window!r}")
        if not (eps >= 0.0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        self.theta = theta
        self.window = None if window is None else int(window)
        self.eps = float(eps)

    def __repr__(self) -> str:
        return (
            f"DPP(theta={self.theta}, window={self.window}, eps={self.eps}, "
            f"normalize={self.normalize!r})"
        )

    @property
    def alpha(self) -> float:
        """``theta / (2 (1 - theta))`` (``inf`` for ``theta = 1``)."""
        return math.inf if self.theta == 1.0 else self.theta / (2.0 * (1.0 - self.theta))

    def _rerank(self, inputs: RerankInputs, k: int) -> Tensor:
        if self.theta == 1.0:
            return _relevance_fill(inputs.scores, k)
        unit_t, nonzero = inputs.unit_vectors()
        bsz, n = inputs.rel.shape
        device, dtype = inputs.rel.device, inputs.rel.dtype
        rows = torch.arange(bsz, device=device)
        tol = dpp_tolerance(self.eps, dtype)
        neg_inf = -torch.inf

        # Quality term 2*alpha*rel; -inf marks candidates that may not be chosen.
        quality = inputs.rel * (2.0 * self.alpha)
        quality.masked_fill_(~inputs.valid, neg_inf)
        fill_scores = inputs.scores.clone()  # relevance-order fill, -inf = unavailable
        # diag(S) is exactly 1 (0 for zero vectors); exact values keep pure-diversity ties exact
        d2 = nonzero.to(dtype)  # squared residuals dS_i^2; diag(S) = 1 (0 for zero vectors)

        # Cholesky coordinates c_i of every candidate w.r.t. the current selection (window).
        cap = k - 1 if self.window is None else min(k - 1, self.window - 1)
        coords = torch.empty(bsz, max(cap, 1), n, dtype=dtype, device=device)  # slot t written at t
        members = torch.zeros(bsz, max(cap, 1), dtype=torch.long, device=device)  # window items
        used = 0

        done = torch.zeros(bsz, dtype=torch.bool, device=device)
        score = torch.empty(bsz, n, dtype=dtype, device=device)
        row = torch.empty(bsz, 1, n, dtype=dtype, device=device)
        out = torch.full((bsz, k), PAD, dtype=torch.long, device=device)

        for t in range(k):
            # score_i = 2 alpha rel_i + log d_i^2; d_i^2 <= tol is kept at exactly 0 (-> -inf)
            torch.log(d2, out=score)
            score.add_(quality)
            best = score.argmax(dim=1)
            done |= ~(score[rows, best] > neg_inf)
            if bool(done.any()):
                best = torch.where(done, fill_scores.argmax(dim=1), best)
            ok = fill_scores[rows, best] > neg_inf
            if not bool(ok.any()):
                break
            out[:, t] = torch.where(ok, best, PAD)
            fill_scores[rows, best] = neg_inf
            quality[rows, best] = neg_inf
            if t + 1 == k or cap == 0 or bool(done.all()):
                continue

            if used == cap:  # sliding window full: drop the oldest item first
                self._drop_oldest(coords, members, d2, rows, cap)
                used -= 1

            # e_i = (S_ji - <c_j, c_i>) / d_j for the new item j = best: bmm gives S_j. / d_j,
            # baddbmm subtracts <c_j, c_.> / d_j in place (contiguous output keeps bmm batched).
            inv_d = torch.where(done, 0.0, d2[rows, best].clamp_min(tol).rsqrt())  # 0: finished
            inv_d = inv_d.to(dtype).view(bsz, 1, 1)
            torch.bmm(_rows_of(unit_t, rows, best) * inv_d, unit_t, out=row)
            if used:
                c_j = coords[rows, :used, best].unsqueeze(1)  # [B, 1, used]
                torch.baddbmm(row, c_j * -inv_d, coords[:, :used], out=row)
            e = row.squeeze(1)
            coords[:, used].copy_(e)
            d2.addcmul_(e, e, value=-1.0)
            torch.threshold_(d2, tol, 0.0)  # dependent / chosen candidates: exactly 0
            members[:, used] = best
            used += 1
        return out

    @staticmethod
    def _drop_oldest(coords: Tensor, members: Tensor, d2: Tensor, rows: Tensor, m: int) -> None:
        """Remove the oldest window item from the factorisation (in place).

        With window Cholesky factor ``S_WW = F F^T`` and candidate coordinates ``c_i = F^{-1}
        S_Wi``, removing item 0 leaves ``S_W'W' = F' F'^T + f f^T`` (``F' = F[1:, 1:]``,
        ``f = F[1:, 0]``).  Givens rotations that fold ``f`` into ``F'`` (rank-one Cholesky update)
        are applied to every candidate's ``[c_i[1:], c_i[0]]``; the rotated-out remainder ``a_i``
        returns to the residual, ``d_i^2 += a_i^2``.  Row ``p`` of ``F`` is the coordinate vector of
        window item ``p`` itself, so the rotation angles are read from ``coords`` directly.
        """
        tiny = torch.finfo(coords.dtype).tiny
        carry = coords[:, 0].clone()  # a_i: component along the removed direction
        new_l = torch.empty_like(carry)
        for col in range(m - 1):
            item = members[:, col + 1]
            diag = coords[rows, col + 1, item]
            off = carry[rows, item]
            radius = torch.hypot(diag, off).clamp_min(tiny)
            cos = (diag / radius).unsqueeze(1)
            sin = (off / radius).unsqueeze(1)
            nxt = coords[:, col + 1]
            torch.mul(nxt, cos, out=new_l)
            new_l.addcmul_(carry, sin)
            carry.mul_(cos).addcmul_(nxt, sin, value=-1.0)
            coords[:, col] = new_l
        d2.addcmul_(carry, carry)
        members[:, : m - 1] = members[:, 1:m].clone()
