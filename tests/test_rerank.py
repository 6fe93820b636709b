"""Tests for recsys_mt.rerank: batched re-rankers vs per-user NumPy references.

Generic properties (a prefix of valid candidates, the pure-relevance end points), MMR, DPP,
xQuAD and calibrated re-ranking against ``recsys_mt.rerank.reference``, diversity on duplicated
candidates, ``normalize_relevance`` and calibrated target proportions. The DPP's log-det
criterion is tested in test_rerank_dpp.py, edge cases and bad input in
test_rerank_edge_cases.py, score fusion in test_rerank_fusion.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _rerank_helpers import SETTINGS, check_prefix, dims, make_batch, rerankers
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recsys_mt.rerank import DPP, MMR, CategoryCoverage, normalize_relevance, relevance_order
from recsys_mt.rerank import reference as ref


# -- generic properties ------------------------------------------------------------------------
@SETTINGS
@given(dims)
def test_output_is_permutation_prefix_of_valid_candidates(params):
    seed, b, n, k, d, pad = params
    scores, vectors, categories, mask = make_batch(seed, b, n, d, pad)
    for rr in rerankers():
        out = rr(scores, k, mask=mask, item_vectors=vectors, categories=categories)
        check_prefix(out, mask, k)
        idx, slot_valid = rr.select(
            scores, k, mask=mask, item_vectors=vectors, categories=categories
        )
        assert torch.equal(idx, out)
        assert torch.equal(slot_valid, out >= 0)


@SETTINGS
@given(dims)
def test_pure_relevance_settings_reproduce_relevance_order(params):
    seed, b, n, k, d, pad = params
    scores, vectors, categories, mask = make_batch(seed, b, n, d, pad)
    expected = ref.per_user(ref.relevance_order_reference, scores, k, mask=mask)
    assert np.array_equal(relevance_order(scores, k, mask).numpy(), expected)
    for rr in [MMR(1.0), DPP(1.0), CategoryCoverage(0.0), CategoryCoverage(0.0, "calibrated")]:
        out = rr(scores, k, mask=mask, item_vectors=vectors, categories=categories)
        assert np.array_equal(out.numpy(), expected), rr


def test_relevance_limit_of_dpp_converges_to_relevance_order():
    # The explicit end point theta = 1 is exact; theta close to 1 (finite alpha, the real
    # Cholesky path) must agree as well when the relevance gaps are not tiny.
    scores, vectors, categories, mask = make_batch(3, 4, 12, 16, 0.2)
    expected = relevance_order(scores, 8, mask)
    assert torch.equal(DPP(0.999)(scores, 8, mask=mask, item_vectors=vectors), expected)
    assert torch.equal(MMR(0.999)(scores, 8, mask=mask, item_vectors=vectors), expected)
    out = CategoryCoverage(1e-3)(scores, 8, mask=mask, categories=categories)
    assert torch.equal(out, expected)


@SETTINGS
@given(dims, st.sampled_from([0.0, 0.3, 0.7, 0.95]))
def test_mmr_matches_reference(params, lambda_):
    seed, b, n, k, d, pad = params
    scores, vectors, _, mask = make_batch(seed, b, n, d, pad)
    out = MMR(lambda_)(scores, k, mask=mask, item_vectors=vectors).numpy()
    for incremental in (False, True):
        expected = ref.per_user(
            ref.mmr_reference,
            scores,
            k,
            mask=mask,
            vectors=vectors,
            lambda_=lambda_,
            incremental=incremental,
        )
        assert np.array_equal(out, expected)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(dims, st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([None, 1, 2, 4]))
@example((0, 1, 7, 3, 5, 0.0), 0.0, 4)  # window not yet full (w - 1 > picks so far)
def test_dpp_matches_reference(params, theta, window):
    seed, b, n, k, d, pad = params
    scores, vectors, _, mask = make_batch(seed, b, n, d, pad)
    out = DPP(theta, window=window)(scores, k, mask=mask, item_vectors=vectors).numpy()
    expected = ref.per_user(
        ref.dpp_reference, scores, k, mask=mask, vectors=vectors, theta=theta, window=window
    )
    assert np.array_equal(out, expected)
    if window is None:
        fast = ref.per_user(
            ref.dpp_reference,
            scores,
            k,
            mask=mask,
            vectors=vectors,
            theta=theta,
            method="cholesky",
        )
        assert np.array_equal(out, fast)


@SETTINGS
@given(dims, st.sampled_from([0.3, 0.8, 1.0]), st.sampled_from([0.5, 1.0]), st.booleans())
def test_xquad_matches_reference(params, lambda_, gamma, with_pref):
    seed, b, n, k, d, pad = params
    scores, _, categories, mask = make_batch(seed, b, n, d, pad)
    categories[:, ::5] = -1  # some uncategorised candidates
    pref = torch.rand(b, 4, generator=torch.Generator().manual_seed(seed), dtype=scores.dtype)
    pref = pref if with_pref else None
    out = CategoryCoverage(lambda_, gamma=gamma)(
        scores, k, mask=mask, categories=categories, user_category_pref=pref
    ).numpy()
    kwargs = {"pref": pref} if with_pref else {}
    expected = ref.per_user(
        ref.xquad_reference,
        scores,
        k,
        mask=mask,
        categories=categories,
        lambda_=lambda_,
        gamma=gamma,
        **kwargs,
    )
    assert np.array_equal(out, expected)


@SETTINGS
@given(dims, st.sampled_from([0.3, 0.8, 1.0]), st.booleans())
def test_calibrated_matches_reference(params, lambda_, with_target):
    seed, b, n, k, d, pad = params
    scores, _, categories, mask = make_batch(seed, b, n, d, pad)
    categories[:, ::5] = -1
    target = torch.rand(b, 5, generator=torch.Generator().manual_seed(seed), dtype=scores.dtype)
    target[:, 1] = 0.0  # a category the user never wants
    target = target if with_target else None
    out = CategoryCoverage(lambda_, mode="calibrated")(
        scores, k, mask=mask, categories=categories, user_category_pref=target
    ).numpy()
    kwargs = {"target": target} if with_target else {}
    expected = ref.per_user(
        ref.calibrated_reference,
        scores,
        k,
        mask=mask,
        categories=categories,
        lambda_=lambda_,
        **kwargs,
    )
    assert np.array_equal(out, expected)


# -- diversity on duplicated candidates --------------------------------------------------------
@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 6), st.integers(0, 4))
def test_max_diversity_never_repeats_a_duplicate_early(seed, b, m, extra_dim):
    g = torch.Generator().manual_seed(seed)
    d = m + extra_dim  # distinct vectors are linearly independent (needed by the DPP)
    n = 2 * m
    distinct = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    copy_of = perm % m  # position -> distinct item id; each id appears twice
    vectors = distinct[torch.arange(b).unsqueeze(1), copy_of]
    vectors = vectors * (0.5 + torch.rand(b, n, 1, generator=g, dtype=torch.float64))
    scores = torch.randn(b, n, generator=g, dtype=torch.float64)
    for rr, kw in [
        (MMR(0.0), {"item_vectors": vectors}),
        (DPP(0.0), {"item_vectors": vectors}),
        (CategoryCoverage(1.0, gamma=1.0), {"categories": copy_of}),
    ]:
        out = rr(scores, n, **kw)
        for row, ids in zip(out.tolist(), copy_of.tolist()):
            first = [ids[i] for i in row[:m]]
            assert sorted(first) == list(range(m)), (rr, row)


def test_normalize_relevance_options():
    scores = torch.tensor([[1.0, 3.0, 2.0, 9.0], [4.0, 4.0, 4.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    mm = normalize_relevance(scores, valid, "minmax")
    assert torch.allclose(mm, torch.tensor([[0.0, 1.0, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0]]))
    sm = normalize_relevance(scores, valid, "softmax")
    assert torch.allclose(sm.sum(1), torch.ones(2))
    assert sm[0, 3] == 0
    raw = normalize_relevance(scores, valid, None)
    assert raw[0, 1] == 3.0 and raw[0, 3] == 0.0
    with pytest.raises(ValueError):
        normalize_relevance(scores, valid, "zscore")


def test_calibrated_matches_target_proportions():
    # plenty of candidates in three categories; the user wants 50/25/25
    g = torch.Generator().manual_seed(2)
    n = 30
    categories = torch.arange(n).remainder(3).unsqueeze(0)
    scores = torch.rand(1, n, generator=g) + (categories == 2).float()  # cat 2 most relevant
    target = torch.tensor([[0.5, 0.25, 0.25]])
    out = CategoryCoverage(0.99, mode="calibrated")(
        scores, 8, categories=categories, user_category_pref=target
    )
    counts = torch.bincount(categories[0, out[0]], minlength=3).tolist()
    assert counts == [4, 2, 2]
    plain = relevance_order(scores, 8)
    assert torch.bincount(categories[0, plain[0]], minlength=3).tolist()[2] == 8
