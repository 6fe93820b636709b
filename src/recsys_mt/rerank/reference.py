"""Plain per-user NumPy reference implementations of the re-rankers.

These follow the definitions literally (one user at a time, float64) and are the oracle for the
tests and the baseline of ``benchmarks/rerank.py``.  They share the conventions of the batched
versions: relevance normalisation, ``-1`` padding, ``k' = min(k, N)``, lowest index wins ties,
``-inf`` scores are invalid and NaN / ``+inf`` scores of unmasked candidates raise ``ValueError``.

Every function takes one user's arrays (``scores [N]``, ``vectors [N, d]``, ``categories [N]``)
and returns ``int64 [min(k, N)]``.  :func:`per_user` runs one of them over a ``[B, N]`` batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "normalize_reference",
    "relevance_order_reference",
    "mmr_reference",
    "xquad_reference",
    "calibrated_reference",
    "dpp_reference",
    "dpp_logdet",
    "per_user",
]


def _valid(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    present = np.ones(scores.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    bad = present & (np.isnan(scores) | (scores == np.inf))
    if bad.any():
        raise ValueError(f"score of unmasked candidate {int(np.argmax(bad))} is NaN or +inf")
    return present & (scores > -np.inf)


def normalize_reference(
    scores: np.ndarray, valid: np.ndarray, method: str | None = "minmax"
) -> np.ndarray:
    """Per-user relevance normalisation over the valid candidates (0 at invalid ones)."""
    rel = np.zeros(scores.shape, dtype=np.float64)
    if not valid.any():
        return rel
    s = scores[valid].astype(np.float64)
    if method is None:
        rel[valid] = s
    elif method == "minmax":
        lo, hi = s.min(), s.max()
        if hi - lo == np.inf:  # the span overflows: map the scaled scores
            top = max(abs(lo), abs(hi))
            s, lo, hi = s / top, lo / top, hi / top
        rel[valid] = (s - lo) / (hi - lo) if hi > lo else 1.0
    elif method == "softmax":
        e = np.exp(s - s.max())
        rel[valid] = e / e.sum()
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    return rel


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    # exact power-of-two scaling: no overflow / underflow in the norm, same unit vectors
    _, exponent = np.frexp(np.abs(v).max(axis=1, keepdims=True, initial=0.0))
    v = np.ldexp(v, -exponent)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    return v * inv


def _pad(selected: list[int], k: int) -> np.ndarray:
    out = np.full(k, -1, dtype=np.int64)
    out[: len(selected)] = selected
    return out


def relevance_order_reference(
    scores: np.ndarray, k: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """Valid candidates by descending score, lowest index first among equal scores."""
    scores = np.asarray(scores, dtype=np.float64)
    k = min(k, scores.shape[0])
    valid = _valid(scores, mask)
    idx = np.flatnonzero(valid)
    order = idx[np.lexsort((idx, -scores[idx]))]
    return _pad(list(order[:k]), k)


def mmr_reference(
    scores: np.ndarray,
    k: int,
    vectors: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    lambda_: float = 0.7,
    normalize: str | None = "minmax",
    incremental: bool = False,
) -> np.ndarray:
    """MMR: ``argmax lambda*rel(i) - (1-lambda)*max_{j in S} cos(i, j)``; the first pick (empty
    ``S``) is the most relevant candidate, also for ``lambda_ = 0``.

    ``incremental=False`` recomputes the similarity to the whole selected set at every step (the
    literal definition); ``incremental=True`` keeps a running maximum (the fast per-user loop).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    k = min(k, n)
    valid = _valid(scores, mask)
    if lambda_ == 1.0:
        return relevance_order_reference(scores, k, valid)
    rel = normalize_reference(scores, valid, normalize)
    unit = _unit(vectors)
    avail = valid.copy()
    selected: list[int] = []
    for _ in range(k):
        if not avail.any():
            break
        if not selected:  # the most relevant candidate, lowest index on ties
            j = int(np.argmax(np.where(avail, scores, -np.inf)))
            selected.append(j)
            avail[j] = False
            running = unit @ unit[j]
            continue
        if incremental:
            max_sim = running
        else:
            max_sim = (unit @ unit[selected].T).max(axis=1)
        score = lambda_ * rel - (1.0 - lambda_) * max_sim
        score[~avail] = -np.inf
        j = int(np.argmax(score))
        selected.append(j)
        avail[j] = False
        if incremental:
            running = np.maximum(running, unit @ unit[j])
    return _pad(selected, k)


def _category_pref(
    categories: np.ndarray, rel: np.ndarray, valid: np.ndarray, pref: np.ndarray | None
) -> np.ndarray:
    categories = np.asarray(categories, dtype=np.int64)
    if pref is not None:
        p = np.asarray(pref, dtype=np.float64)
        total = p.sum()
        return p / total if total > 0 else p
    # mean of the relevance-weighted and the count distribution of the categorised candidates
    has = valid & (categories >= 0)
    num = int(categories[has].max()) + 1 if has.any() else 1
    counts = np.bincount(categories[has], minlength=num).astype(np.float64)
    p = np.zeros(num)
    np.add.at(p, categories[has], np.maximum(rel[has], 0.0))
    p = p if p.sum() > 0 else counts
    if not has.any():
        return p
    return (p / p.sum() + counts / counts.sum()) * 0.5


def xquad_reference(
    scores: np.ndarray,
    k: int,
    categories: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    lambda_: float = 0.5,
    gamma: float = 0.5,
    pref: np.ndarray | None = None,
    normalize: str | None = "minmax",
) -> np.ndarray:
    """xQuAD, hard membership: ``(1-l) rel(i) + l p(c_i) prod_{j in S} (1 - gamma [c_j = c_i])``.

    ``pref`` defaults to the mean of the relevance-weighted and the count category distribution
    of the valid candidates (as ``CategoryCoverage``); negative categories earn no coverage.
    """
    scores = np.asarray(scores, dtype=np.float64)
    categories = np.asarray(categories, dtype=np.int64)
    n = scores.shape[0]
    k = min(k, n)
    valid = _valid(scores, mask)
    if lambda_ == 0.0:
        return relevance_order_reference(scores, k, valid)
    rel = normalize_reference(scores, valid, normalize)
    p = _category_pref(categories, rel, valid, pref)
    avail = valid.copy()
    selected: list[int] = []
    for _ in range(k):
        if not avail.any():
            break
        score = np.full(n, -np.inf)
        for i in np.flatnonzero(avail):
            div = 0.0
            c = categories[i]
            if c >= 0:
                div = lambda_ * p[c]
                for j in selected:
                    if categories[j] == c:
                        div *= 1.0 - gamma
            score[i] = (1.0 - lambda_) * rel[i] + div
        j = int(np.argmax(score))
        selected.append(j)
        avail[j] = False
    return _pad(selected, k)


def calibrated_reference(
    scores: np.ndarray,
    k: int,
    categories: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    lambda_: float = 0.5,
    alpha: float = 0.01,
    target: np.ndarray | None = None,
    normalize: str | None = "minmax",
) -> np.ndarray:
    """Calibrated greedy (Steck 2018): ``max (1-l) sum rel - l KL(p || (1-a) q_S + a p)``.

    ``q_S(c) = #{j in S : c_j = c} / |S|`` (uncategorised items count in ``|S|`` only).
    """
    scores = np.asarray(scores, dtype=np.float64)
    categories = np.asarray(categories, dtype=np.int64)
    n = scores.shape[0]
    k = min(k, n)
    valid = _valid(scores, mask)
    if lambda_ == 0.0:
        return relevance_order_reference(scores, k, valid)
    rel = normalize_reference(scores, valid, normalize)
    p = _category_pref(categories, rel, valid, target)
    support = p > 0
    avail = valid.copy()
    selected: list[int] = []
    for _ in range(k):
        if not avail.any():
            break
        score = np.full(n, -np.inf)
        for i in np.flatnonzero(avail):
            q = np.zeros_like(p)
            for j in [*selected, i]:
                if categories[j] >= 0:
                    q[categories[j]] += 1.0
            q /= len(selected) + 1
            q_s = np.maximum((1.0 - alpha) * q + alpha * p, np.finfo(np.float64).tiny)
            kl = float(np.sum(p[support] * np.log(p[support] / q_s[support])))
            score[i] = (1.0 - lambda_) * rel[i] - lambda_ * kl
        j = int(np.argmax(score))
        selected.append(j)
        avail[j] = False
    return _pad(selected, k)


def dpp_logdet(
    scores: np.ndarray,
    subset: np.ndarray,
    vectors: np.ndarray,
    *,
    theta: float,
    mask: np.ndarray | None = None,
    normalize: str | None = "minmax",
) -> float:
    """``log det L_Y`` of the kernel ``L = diag(r) S diag(r)`` on ``subset`` (``-1`` ignored)."""
    scores = np.asarray(scores, dtype=np.float64)
    valid = _valid(scores, mask)
    rel = normalize_reference(scores, valid, normalize)
    y = np.asarray(subset)
    y = y[y >= 0]
    unit = _unit(vectors)[y]
    sign, logdet = np.linalg.slogdet(unit @ unit.T)
    if sign <= 0:
        return -math.inf
    alpha = theta / (2.0 * (1.0 - theta))
    return float(logdet + 2.0 * alpha * rel[y].sum())


def dpp_reference(
    scores: np.ndarray,
    k: int,
    vectors: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    theta: float = 0.7,
    window: int | None = None,
    eps: float = 1e-10,
    tol_dtype: Any = np.float64,
    normalize: str | None = "minmax",
    method: str = "bruteforce",
) -> np.ndarray:
    """Greedy DPP MAP: ``argmax_i 2 alpha rel_i + log det S_{W+i} - log det S_W``.

    ``alpha = theta / (2 (1 - theta))``; ``W`` = the DPP-selected items (the last ``window - 1``
    of them with a window).  Candidates with ``det S_{W+i} / det S_W <= tol`` (``tol = max(eps,
    1000 * finfo(tol_dtype).eps)``) are not eligible; when none is, the remaining slots are filled
    by score order.  ``method="bruteforce"`` evaluates every candidate's determinant with
    ``slogdet``; ``method="cholesky"`` is the per-user incremental algorithm of Chen et al. 2018
    (no window).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    k = min(k, n)
    valid = _valid(scores, mask)
    if theta == 1.0:
        return relevance_order_reference(scores, k, valid)
    if method not in ("bruteforce", "cholesky"):
        raise ValueError(f"unknown method {method!r}")
    if method == "cholesky" and window is not None:
        raise ValueError("method='cholesky' does not support a window")
    rel = normalize_reference(scores, valid, normalize)
    alpha = theta / (2.0 * (1.0 - theta))
    tol = max(eps, 1000.0 * float(np.finfo(tol_dtype).eps))
    unit = _unit(vectors)
    avail = valid.copy()
    selected: list[int] = []
    dpp_items: list[int] = []
    done = False
    if method == "cholesky":
        coords = np.zeros((max(k - 1, 1), n))
        d2 = (np.abs(unit).max(axis=1, initial=0.0) > 0).astype(np.float64)
    else:
        sim = unit @ unit.T
        np.fill_diagonal(sim, (np.abs(unit).max(axis=1, initial=0.0) > 0).astype(np.float64))
    for _ in range(k):
        if not avail.any():
            break
        j = -1
        if not done:
            cand = np.flatnonzero(avail)
            if method == "cholesky":
                resid = d2[cand]
                log_gain = np.log(np.where(resid > tol, resid, 1.0))
                eligible = resid > tol
            else:
                w = dpp_items
                if window is not None:  # the last window - 1 DPP picks
                    w = dpp_items[max(0, len(dpp_items) - (window - 1)) :] if window > 1 else []
                base = np.linalg.slogdet(sim[np.ix_(w, w)])[1] if w else 0.0
                sub = np.array([[*w, i] for i in cand])
                sign, logdet = np.linalg.slogdet(sim[sub[:, :, None], sub[:, None, :]])
                log_gain = np.where(sign > 0, logdet - base, -np.inf)
                eligible = log_gain > math.log(tol)
            if eligible.any():
                score = np.where(eligible, 2.0 * alpha * rel[cand] + log_gain, -np.inf)
                j = int(cand[np.argmax(score)])
            else:
                done = True
        if done:
            j = int(np.argmax(np.where(avail, scores, -np.inf)))
        elif method == "cholesky" and len(selected) + 1 < k:
            t = len(dpp_items)
            e = (sim_row(unit, j) - coords[:t, j] @ coords[:t]) / math.sqrt(d2[j])
            coords[t] = e
            d2 = d2 - e * e
        if not done:
            dpp_items.append(j)
        selected.append(j)
        avail[j] = False
    return _pad(selected, k)


def sim_row(unit: np.ndarray, j: int) -> np.ndarray:
    """Cosine similarities of candidate ``j`` to all candidates (unit vectors)."""
    return unit @ unit[j]


def per_user(
    fn: Callable[..., np.ndarray],
    scores: Any,
    k: int,
    *,
    mask: Any = None,
    **kwargs: Any,
) -> np.ndarray:
    """Run a per-user reference ``fn`` over a batch; returns ``int64 [B, min(k, N)]``.

    ``scores`` / ``mask`` are ``[B, N]``; keyword arguments that are arrays or tensors with a
    leading dimension ``B`` (vectors, categories, pref/target) are sliced per user, everything
    else is passed through unchanged.
    """
    scores = _to_numpy(scores)
    bsz = scores.shape[0]
    mask = None if mask is None else _to_numpy(mask)
    arrays = {}
    for key, value in kwargs.items():
        is_array = isinstance(value, np.ndarray) or hasattr(value, "detach")
        if is_array and value.ndim and value.shape[0] == bsz:
            arrays[key] = _to_numpy(value)
    rows = []
    for b in range(bsz):
        extra = {key: (arrays[key][b] if key in arrays else v) for key, v in kwargs.items()}
        rows.append(fn(scores[b], k, mask=None if mask is None else mask[b], **extra))
    return np.stack(rows) if rows else np.zeros((0, min(k, scores.shape[1])), dtype=np.int64)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.double()
        return x.numpy()
    return np.asarray(x)
