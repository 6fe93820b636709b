"""Sampling helpers of the synthetic funnel (:mod:`recsys_mt.data.synthetic`): the logistic
function, the intercept that hits a target rate, and draws of items by softmax logits
(impressions, user histories), computed in chunks of at most ``_MAX_CHUNK`` user x item cells.
Only numpy is used.
"""

from __future__ import annotations

import math

import numpy as np

_MAX_CHUNK = 4_000_000  # users x items cells materialised at once


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _calibrate_intercept(z: np.ndarray, target: float, weights: np.ndarray | None) -> float:
    """The ``b`` with ``sum(w * sigmoid(z + b)) / sum(w) = target`` (safeguarded Newton)."""
    if weights is None:
        w = np.full(len(z), 1.0 / len(z))
    else:
        total = float(weights.sum())
        if not total > 0:  # all weights zero: any intercept is as good as another
            return math.log(target / (1.0 - target))
        w = weights / total
    lo, hi = -40.0 - float(z.max()), 40.0 - float(z.min())
    b = math.log(target / (1.0 - target)) - float(np.dot(w, z))
    b = min(max(b, lo), hi)
    for _ in range(100):
        p = _sigmoid(z + b)
        f = float(np.dot(w, p)) - target
        if f < 0:
            lo = b
        else:
            hi = b
        slope = float(np.dot(w, p * (1.0 - p)))
        step = f / slope if slope > 0 else math.inf
        nb = b - step
        if not lo < nb < hi:
            nb = 0.5 * (lo + hi)
        if abs(nb - b) < 1e-10 or hi - lo < 1e-10:
            return nb
        b = nb
    return b


def _scaled(
    user_vecs: np.ndarray, item_vecs: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(user [U, d] · temperature/√d as float32, item.T [d, I] float32, users per chunk)``:
    the two factors of the ``[U, I]`` logits and how many users' rows fit in one chunk."""
    scale = temperature / math.sqrt(item_vecs.shape[1])
    user32 = (user_vecs * scale).astype(np.float32)
    item32 = np.ascontiguousarray(item_vecs.T, dtype=np.float32)
    return user32, item32, max(1, _MAX_CHUNK // item_vecs.shape[0])


def _sample_by_logits(
    rng: np.random.Generator,
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    temperature: float,
    draw_users: np.ndarray,
) -> np.ndarray:
    """For each entry of ``draw_users`` an item drawn with p(i) ~ exp(temperature * a_ui)."""
    n_users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    out = np.empty(len(draw_users), dtype=np.int64)
    order = np.argsort(draw_users, kind="stable")
    sorted_users = draw_users[order]
    u01 = rng.random(len(draw_users))
    user32, item32, step = _scaled(user_vecs, item_vecs, temperature)
    for s in range(0, n_users, step):
        e = min(n_users, s + step)
        a, b = np.searchsorted(sorted_users, [s, e])
        if a == b:
            continue
        logits = user32[s:e] @ item32
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        cdf = np.cumsum(logits, axis=1, dtype=np.float64)
        cdf /= cdf[:, -1:]
        cdf += np.arange(e - s, dtype=np.float64)[:, None]
        rows = sorted_users[a:b] - s
        pos = np.searchsorted(cdf.ravel(), rows + u01[a:b], side="right")
        out[order[a:b]] = np.clip(pos - rows * n_items, 0, n_items - 1)
    return out


def _sample_histories(
    rng: np.random.Generator,
    user_vecs: np.ndarray,
    item_vecs: np.ndarray,
    temperature: float,
    lengths: np.ndarray,
) -> np.ndarray:
    """Per user ``lengths[u]`` distinct items, p ~ exp(temperature * a_ui), random order."""
    n_users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    out = np.empty(n_users, dtype=object)
    k_max = int(lengths.max()) if n_users else 0
    user32, item32, step = _scaled(user_vecs, item_vecs, temperature)
    for s in range(0, n_users, step):
        e = min(n_users, s + step)
        m = e - s
        if k_max == 0:
            for u in range(s, e):
                out[u] = []
            continue
        # Gumbel top-k in float32: keys = -(logits + Gumbel) = log(Exp(1)) - logits, smallest win
        keys = rng.standard_exponential(size=(m, n_items), dtype=np.float32)
        np.maximum(keys, np.float32(1e-30), out=keys)  # float32 draws can be exactly 0
        np.log(keys, out=keys)
        keys -= user32[s:e] @ item32
        if k_max < n_items:
            top = np.argpartition(keys, k_max - 1, axis=1)[:, :k_max]
        else:
            top = np.broadcast_to(np.arange(n_items), (m, n_items)).copy()
        top_keys = np.take_along_axis(keys, top, axis=1)
        top = np.take_along_axis(top, np.argsort(top_keys, axis=1), axis=1)
        # keep the best lengths[u] per row, then shuffle them into a random chronology
        lens = lengths[s:e]
        shuffle_keys = rng.random((m, k_max))
        shuffle_keys[np.arange(k_max)[None, :] >= lens[:, None]] = np.inf
        top = np.take_along_axis(top, np.argsort(shuffle_keys, axis=1), axis=1)
        rows = top.tolist()
        for r in range(m):
            out[s + r] = rows[r][: lens[r]]
    return out
