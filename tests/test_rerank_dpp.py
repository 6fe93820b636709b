"""Tests for recsys_mt.rerank.DPP: the greedy log-det equals a brute-force greedy on the
explicit kernel, the log and product criteria agree with the reference, rank-deficient
vectors fall back to relevance order, and the sliding window's limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _rerank_helpers import SETTINGS, make_batch
from hypothesis import given
from hypothesis import strategies as st

from recsys_mt.rerank import DPP, relevance_order
from recsys_mt.rerank import reference as ref


# -- DPP vs brute-force log-det ----------------------------------------------------------------
def _kernel_logdet_greedy(scores, vectors, k, theta):
    """Independent greedy on the explicit kernel L = diag(r) S diag(r), r = exp(alpha rel)."""
    s = scores.astype(np.float64)
    rel = (s - s.min()) / (s.max() - s.min())
    alpha = theta / (2 * (1 - theta))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    r = np.exp(alpha * rel)
    sim = unit @ unit.T
    np.fill_diagonal(sim, 1.0)  # cos(v, v) = 1 exactly (theta = 0 starts with an exact tie)
    kernel = r[:, None] * sim * r[None, :]
    chosen: list[int] = []
    for _ in range(k):
        best, best_val = -1, -math.inf
        for i in range(len(s)):
            if i in chosen:
                continue
            sub = [*chosen, i]
            sign, val = np.linalg.slogdet(kernel[np.ix_(sub, sub)])
            if sign > 0 and val > best_val:
                best, best_val = i, val
        chosen.append(best)
    return chosen, best_val


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 8),
    st.integers(0, 3),
    st.sampled_from([0.0, 0.3, 0.7, 0.9]),
)
def test_dpp_logdet_equals_bruteforce_greedy(seed, n, extra_dim, theta):
    g = torch.Generator().manual_seed(seed)
    d = n + extra_dim  # full rank: every greedy step is a DPP step
    scores = torch.randn(1, n, generator=g, dtype=torch.float64)
    vectors = torch.randn(1, n, d, generator=g, dtype=torch.float64)
    k = n
    out = DPP(theta)(scores, k, item_vectors=vectors)[0].numpy()
    chosen, brute_val = _kernel_logdet_greedy(scores[0].numpy(), vectors[0].numpy(), k, theta)
    for t in range(1, k + 1):
        ours = ref.dpp_logdet(scores[0].numpy(), out[:t], vectors[0].numpy(), theta=theta)
        brute = ref.dpp_logdet(scores[0].numpy(), chosen[:t], vectors[0].numpy(), theta=theta)
        assert ours == pytest.approx(brute, rel=1e-9, abs=1e-9)
    assert ref.dpp_logdet(scores[0].numpy(), out, vectors[0].numpy(), theta=theta) == pytest.approx(
        brute_val, rel=1e-9, abs=1e-9
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dpp_log_and_product_criteria_agree_with_reference(dtype):
    # Raw (unnormalised) large scores make the quality spread too wide for the exp() product
    # form, so the log form is used; small spreads use the product form.
    scores, vectors, _, mask = make_batch(21, 4, 12, 5, 0.2, dtype=dtype)
    tol_dtype = np.float32 if dtype == torch.float32 else np.float64
    for scale, theta in [(300.0, 0.9), (0.05, 0.9), (1.0, 0.995)]:
        s = scores * scale
        out = DPP(theta, normalize=None)(s, 8, mask=mask, item_vectors=vectors).numpy()
        expected = ref.per_user(
            ref.dpp_reference,
            s,
            8,
            mask=mask,
            vectors=vectors,
            theta=theta,
            normalize=None,
            tol_dtype=tol_dtype,
        )
        assert np.array_equal(out, expected), (scale, theta)


def test_dpp_rank_deficient_stops_and_fills_by_relevance():
    # 6 candidates spanning only 2 dimensions: after 2 DPP picks the rest is relevance order.
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(1, 6, 2, generator=g, dtype=torch.float64)
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.5, 0.2]], dtype=torch.float64)
    out = DPP(0.5)(scores, 6, item_vectors=vectors)[0].tolist()
    first_two, rest = out[:2], out[2:]
    left = [i for i in [1, 3, 4, 2, 5, 0] if i not in first_two]
    assert rest == left
    # zero vectors are only reachable through the relevance fill
    vectors[0, 1] = 0.0
    out = DPP(0.5)(scores, 3, item_vectors=vectors)[0].tolist()
    assert 1 not in out[:2] and out[2] == 1


def test_dpp_window_larger_than_list_equals_no_window():
    scores, vectors, _, mask = make_batch(7, 3, 12, 4, 0.2)
    full = DPP(0.6)(scores, 8, mask=mask, item_vectors=vectors)
    assert torch.equal(DPP(0.6, window=8)(scores, 8, mask=mask, item_vectors=vectors), full)
    assert torch.equal(DPP(0.6, window=50)(scores, 8, mask=mask, item_vectors=vectors), full)
    # window=1: no diversity at all -> relevance order (vectors are all non-zero)
    one = DPP(0.6, window=1)(scores, 8, mask=mask, item_vectors=vectors)
    assert torch.equal(one, relevance_order(scores, 8, mask))
