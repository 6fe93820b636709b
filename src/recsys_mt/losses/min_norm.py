"""Small convex problems over the simplex of task weights, solved on the task Gram matrix.

Gradient-level balancers reduce to finding weights ``w`` (``[T]``, ``w ≥ 0``, ``Σ w = 1``) of a
combination ``Σ_t w_t g_t`` of the task gradients ``g_t``. Every quantity they need is a
function of the Gram matrix ``M = G Gᵀ`` (``[T, T]``, ``M[i, j] = g_i · g_j``), so the solvers
here work on ``M`` in float64 NumPy and never touch the ``[T, N]`` gradients.

* :func:`min_norm_weights`: ``argmin_w ‖Σ_t w_t g_t‖²`` over the simplex, optionally with lower
  bounds ``w_t ≥ b_t`` (MGDA, PE-LTR) and over a subset of the tasks. Exact closed form for two
  tasks; pairwise Frank-Wolfe with exact line search (linear convergence on the simplex)
  otherwise.
* :func:`cagrad_weights`: the dual of CAGrad, ``argmin_w wᵀM𝟙/T + √φ · ‖Σ_t w_t g_t‖``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["cagrad_weights", "min_norm_weights", "simplex_descent"]


def simplex_descent(
    grad: Callable[[np.ndarray], np.ndarray],
    step: Callable[[np.ndarray, np.ndarray, float], float],
    lower: np.ndarray,
    max_iter: int = 500,
    tol: float = 1e-12,
) -> np.ndarray:
    """Pairwise Frank-Wolfe over ``{w : w ≥ lower, Σ w = 1}`` for a convex objective.

    Writes ``w = lower + s·u`` with ``s = 1 − Σ lower`` and ``u`` on the simplex; each iteration
    moves mass from the active coordinate with the largest partial derivative to the one with
    the smallest. Stops when the two differ by at most ``tol`` (the KKT conditions).

    Args:
        grad: ``w [T] -> ∇f(w) [T]``.
        step: ``(w, d, γ_max) -> γ`` in ``[0, γ_max]``, the line search along ``w + γ d``.
        lower: lower bounds ``[T]`` (zeros for the plain simplex), ``Σ lower ≤ 1``.

    Returns:
        ``w [T]`` (float64).
    """
    t = lower.shape[0]
    s = 1.0 - float(lower.sum())
    u = np.full(t, 1.0 / t)
    if s <= 0:
        return lower / lower.sum()
    for _ in range(max_iter):
        w = lower + s * u
        g = grad(w)
        best = int(np.argmin(g))
        active = np.flatnonzero(u > 0)
        worst = int(active[np.argmax(g[active])])
        if g[worst] - g[best] <= tol or best == worst:
            break
        d = np.zeros(t)
        d[best], d[worst] = s, -s
        gamma = step(w, d, float(u[worst]))
        if gamma <= 0:
            break
        u[best] += gamma
        u[worst] = max(u[worst] - gamma, 0.0)
    return lower + s * u


def _check_gram(gram: np.ndarray) -> np.ndarray:
    m = np.asarray(gram, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"gram must be a square [T, T] matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("gram has NaN / inf entries: the task gradients are not finite")
    return 0.5 * (m + m.T)


def min_norm_weights(
    gram: np.ndarray, lower: np.ndarray | None = None, active: np.ndarray | None = None
) -> np.ndarray:
    """``argmin_w wᵀ M w`` over ``{w ≥ lower, Σ w = 1}``: the min-norm point of the convex hull.

    Args:
        gram: ``M [T, T]``, the task gradients' Gram matrix.
        lower: optional lower bounds ``[T]`` with ``Σ lower ≤ 1``.
        active: optional boolean mask ``[T]``. Tasks outside it are left out of the problem
            (their lower bounds too) and get weight 0; the others share the simplex. A task with
            a zero gradient would otherwise *be* the min-norm point and take all the weight.
            When no task is active, all are.

    Returns:
        ``w [T]`` (float64). Zero gradients give the uniform weights.
    """
    m = _check_gram(gram)
    t = m.shape[0]
    lo = np.zeros(t) if lower is None else np.asarray(lower, dtype=np.float64)
    if active is not None:
        keep = np.flatnonzero(np.asarray(active, dtype=bool).reshape(t))
        if 0 < keep.size < t:
            w = np.zeros(t)
            w[keep] = min_norm_weights(m[np.ix_(keep, keep)], lo[keep])
            return w
    if t == 1:
        return np.ones(1)
    scale = max(float(np.trace(m)), 1e-300)
    if t == 2:  # closed form: f(a) = ‖a g1 + (1 − a) g2‖², a ∈ [lo_1, 1 − lo_2]
        den = m[0, 0] - 2 * m[0, 1] + m[1, 1]
        a = (m[1, 1] - m[0, 1]) / den if den > 1e-12 * scale else 0.5
        a = float(np.clip(a, lo[0], 1.0 - lo[1]))
        return np.array([a, 1.0 - a])

    def step(w: np.ndarray, d: np.ndarray, gmax: float) -> float:
        curv = float(d @ m @ d)
        slope = 2.0 * float(w @ m @ d)
        return gmax if curv <= 0 else float(np.clip(-slope / (2.0 * curv), 0.0, gmax))

    return simplex_descent(lambda w: 2.0 * m @ w, step, lo, tol=1e-12 * scale)


def cagrad_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """The CAGrad dual ``argmin_w wᵀ M 𝟙 / T + c‖g₀‖ · sqrt(wᵀ M w)`` over the simplex.

    ``g₀`` is the average gradient, ``‖g₀‖² = 𝟙ᵀ M 𝟙 / T²``. The line search bisects on the
    derivative (the objective is convex, not quadratic).

    Returns:
        ``w [T]`` (float64).
    """
    m = _check_gram(gram)
    t = m.shape[0]
    b = m.mean(axis=1)
    r = c * float(np.sqrt(max(m.mean(), 0.0)))
    if t == 1 or r == 0:
        return np.full(t, 1.0 / t)

    def grad(w: np.ndarray) -> np.ndarray:
        return b + r * (m @ w) / max(float(np.sqrt(max(w @ m @ w, 0.0))), 1e-12)

    def step(w: np.ndarray, d: np.ndarray, gmax: float) -> float:
        # F(γ) = const + γ d·b + r sqrt(q0 + 2γ q1 + γ² q2) is convex: bisect on F'(γ)
        q0, q1, q2, slope = float(w @ m @ w), float(w @ m @ d), float(d @ m @ d), float(d @ b)

        def deriv(x: float) -> float:
            q = max(q0 + 2 * x * q1 + x * x * q2, 1e-300)
            return slope + r * (q1 + x * q2) / q**0.5

        if deriv(0.0) >= 0:
            return 0.0
        if deriv(gmax) <= 0:
            return gmax
        lo, hi = 0.0, gmax
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if deriv(mid) < 0 else (lo, mid)
        return 0.5 * (lo + hi)

    return simplex_descent(grad, step, np.zeros(t), tol=1e-10 * max(np.abs(m).max(), 1e-300))
