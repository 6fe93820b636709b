"""Tests for recsys_mt.rerank: fusion, batched re-rankers vs per-user NumPy references."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from recsys_mt.rerank import (
    DPP,
    MMR,
    CallableFusion,
    CategoryCoverage,
    Fusion,
    WeightedProduct,
    WeightedSum,
    gather_selected,
    normalize_relevance,
    release_workspace,
    relevance_order,
)
from recsys_mt.rerank import reference as ref

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


# -- data helpers ----------------------------------------------------------------------------
def make_batch(seed, b, n, d, pad, dtype=torch.float64, n_cat=4):
    """Random scores/vectors/categories with random padding (some rows fully padded at the end)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=g, dtype=dtype)
    vectors = torch.randn(b, n, d, generator=g, dtype=dtype)
    categories = torch.randint(0, n_cat, (b, n), generator=g)
    mask = torch.rand(b, n, generator=g) >= pad
    # trailing padding of random length per row (typical of padded candidate lists)
    lengths = torch.randint(0, n + 1, (b,), generator=g)
    mask &= torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)
    return scores, vectors, categories, mask


def rerankers():
    return [
        MMR(0.0),
        MMR(0.6),
        MMR(1.0),
        DPP(0.0),
        DPP(0.7),
        DPP(0.95, window=3),
        DPP(1.0),
        CategoryCoverage(0.5),
        CategoryCoverage(1.0, gamma=1.0),
        CategoryCoverage(0.7, mode="calibrated"),
        CategoryCoverage(0.0, mode="calibrated"),
    ]


def check_prefix(out, mask, k):
    b, n = mask.shape
    kk = min(k, n)
    assert out.dtype == torch.long
    assert out.shape == (b, kk)
    for row, m in zip(out.tolist(), mask.tolist()):
        real = [i for i in row if i != -1]
        n_real = len(real)
        assert row[:n_real] == real, "padding (-1) before a real index"
        assert n_real == min(kk, sum(m)), "rows must fill up with valid candidates"
        assert len(set(real)) == n_real, "duplicate selection"
        assert all(m[i] for i in real), "padded candidate selected"


dims = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 4),  # B
    st.integers(1, 12),  # N
    st.integers(0, 15),  # k
    st.integers(1, 6),  # d
    st.sampled_from([0.0, 0.2, 0.5]),  # random padding rate
)


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


# -- k > N, ties, shapes, dtypes ---------------------------------------------------------------
def test_k_larger_than_n_returns_all_candidates():
    scores, vectors, categories, _ = make_batch(1, 3, 7, 3, 0.0)
    for rr in rerankers():
        out = rr(scores, 100, item_vectors=vectors, categories=categories)
        assert out.shape == (3, 7)
        assert all(sorted(row) == list(range(7)) for row in out.tolist())
    out = MMR(0.5)(scores, 0, item_vectors=vectors)
    assert out.shape == (3, 0)


def test_ties_are_broken_towards_lowest_index():
    scores = torch.zeros(2, 6)
    same = torch.ones(2, 6, 3)
    cats = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 0] = False
    for rr in rerankers():
        out = rr(scores, 6, mask=mask, item_vectors=same, categories=cats)
        assert out[0].tolist() == [0, 1, 2, 3, 4, 5], rr
        assert out[1].tolist() == [1, 2, 3, 4, 5, -1], rr
        again = rr(scores, 6, mask=mask, item_vectors=same, categories=cats)
        assert torch.equal(out, again)
    tied = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    assert relevance_order(tied, 5).tolist() == [[1, 2, 4, 3, 0]]


def test_float32_and_float64_agree():
    s64, v64, c, mask = make_batch(11, 4, 20, 8, 0.2)
    s32, v32 = s64.float(), v64.float()
    for rr in rerankers():
        a = rr(s64, 10, mask=mask, item_vectors=v64, categories=c)
        b = rr(s32, 10, mask=mask, item_vectors=v32, categories=c)
        assert torch.equal(a, b), rr
        check_prefix(b, mask, 10)
    half = MMR(0.5)(s64.half(), 5, mask=mask, item_vectors=v64.half())
    check_prefix(half, mask, 5)


def test_catalog_ids_equal_item_vectors_and_1d_input():
    g = torch.Generator().manual_seed(5)
    catalog = torch.randn(30, 6, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 30, (3, 10), generator=g)
    scores = torch.randn(3, 10, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 7:] = False
    ids[2, 7:] = -1  # padded ids are never looked up
    for rr in [MMR(0.5), DPP(0.5, window=3)]:
        a = rr(scores, 6, mask=mask, item_ids=ids, catalog=catalog)
        b = rr(scores, 6, mask=mask, item_vectors=catalog[ids.clamp_min(0)])
        assert torch.equal(a, b)
        one = rr(scores[0], 6, item_vectors=catalog[ids[0]])
        assert one.shape == (6,) and torch.equal(one, b[0])
    items = gather_selected(ids, a)
    assert items.shape == (3, 6)
    assert torch.equal(items[0], ids[0, a[0]])


def test_workspace_reuse_across_shapes_dtypes_and_grad_inputs():
    calls = [(2, 9, 3, torch.float64), (3, 5, 4, torch.float32), (1, 12, 6, torch.float64)]
    for rr in [MMR(0.4), DPP(0.6)]:
        first = []
        for b, n, d, dtype in calls * 2:  # second round reuses the cached workspace
            scores, vectors, _, mask = make_batch(b * n + d, b, n, d, 0.2, dtype=dtype)
            vectors.requires_grad_(True)  # inference only: must not build or break a graph
            out = rr(scores, n, mask=mask, item_vectors=vectors)
            check_prefix(out, mask, n)
            first.append(out)
        for a, b in zip(first[: len(calls)], first[len(calls) :]):
            assert torch.equal(a, b)
        release_workspace()


def test_minus_inf_scores_are_padding_and_nan_or_plus_inf_raise():
    vectors = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0))
    cats = torch.zeros(1, 5, dtype=torch.long)
    nan, inf = float("nan"), float("inf")
    absent = torch.tensor([[0.5, -inf, 0.2, -inf, 0.9]])
    masked = torch.tensor([[0.5, nan, 0.2, inf, 0.9]])
    keep = torch.tensor([[True, False, True, False, True]])
    for rr in [MMR(0.5), DPP(0.5), CategoryCoverage(0.5), CategoryCoverage(0.5, "calibrated")]:
        for scores, mask in [(absent, None), (masked, keep)]:
            out = rr(scores, 5, mask=mask, item_vectors=vectors, categories=cats)
            assert sorted(out[0].tolist()[:3]) == [0, 2, 4]
            assert out[0].tolist()[3:] == [-1, -1]
        for bad in (nan, inf):
            scores = torch.tensor([[0.5, 0.1, 0.2, bad, 0.9]])
            with pytest.raises(ValueError, match=r"scores\[0, 3\]"):
                rr(scores, 5, item_vectors=vectors, categories=cats)
    with pytest.raises(ValueError, match=r"scores\[0, 1\]"):
        relevance_order(masked, 3)


def test_non_finite_item_vectors_raise_unless_the_candidate_is_masked():
    scores, vectors, _, _ = make_batch(4, 2, 6, 3, 0.0)
    mask = torch.ones(2, 6, dtype=torch.bool)
    for bad in (float("nan"), float("inf")):
        broken = vectors.clone()
        broken[1, 2, 0] = bad
        for rr in [MMR(0.5), DPP(0.5), DPP(0.0, window=2)]:
            with pytest.raises(ValueError, match=r"item_vectors\[1, 2\]"):
                rr(scores, 4, item_vectors=broken)
            mask[1, 2] = False
            expected = rr(scores, 6, mask=mask, item_vectors=vectors)
            assert torch.equal(rr(scores, 6, mask=mask, item_vectors=broken), expected)
            mask[1, 2] = True
    catalog, ids = vectors.reshape(12, 3).clone(), torch.arange(12).reshape(2, 6)
    catalog[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"catalog\[7\]"):
        MMR(0.5)(scores, 3, item_ids=ids, catalog=catalog)
    with pytest.raises(ValueError, match=r"item_ids\[0, 1\] = 12"):
        MMR(0.5)(scores, 3, item_ids=ids.where(ids != 1, 12), catalog=catalog)


@pytest.mark.parametrize("scale", [1e20, 1e-30, 1e-40, 3e38])
def test_huge_and_tiny_item_vectors_keep_their_cosines(scale):
    scores, vectors, _, mask = make_batch(8, 3, 9, 4, 0.1, dtype=torch.float32)
    vectors[0, 1] = 0.0  # a zero vector stays similar to nothing
    scaled = vectors / vectors.abs().amax() * scale
    for rr in [MMR(0.0), MMR(0.6), DPP(0.0), DPP(0.6, window=3)]:
        expected = rr(scores, 9, mask=mask, item_vectors=vectors)
        assert torch.equal(rr(scores, 9, mask=mask, item_vectors=scaled), expected), rr


def test_minmax_relevance_survives_an_overflowing_span():
    scores = torch.tensor([[3e38, -3e38, 0.0, 1.5e38, float("-inf")]])
    valid = scores > float("-inf")
    rel = normalize_relevance(scores, valid, "minmax")
    assert torch.allclose(rel, torch.tensor([[1.0, 0.0, 0.5, 0.75, 0.0]]))
    vectors = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(1))
    for rr in [MMR(0.5), DPP(0.5), CategoryCoverage(0.5, "calibrated")]:
        kwargs = {"item_vectors": vectors, "categories": torch.tensor([[0, 1, 0, 1, 0]])}
        out = rr(scores, 5, **kwargs)
        assert torch.equal(out, rr(scores / 1e38, 5, **kwargs)), rr
        assert sorted(out[0, :4].tolist()) == [0, 1, 2, 3] and out[0, 4] == -1
    raw = DPP(1.0 - 1e-9, normalize=None)  # 2 alpha * score overflows: relevance order
    assert raw(scores, 5, item_vectors=vectors).tolist() == [[0, 3, 2, 1, -1]]
    assert raw(scores[:, [1, 3, 0]], 3, item_vectors=vectors[:, :3]).tolist() == [[2, 1, 0]]


def test_calibrated_with_an_underflowing_softmax_preference_returns_full_lists():
    g = torch.Generator().manual_seed(0)
    scores, cats = torch.rand(2, 6, generator=g), torch.randint(0, 4, (2, 6), generator=g)
    pref = torch.softmax(torch.tensor([[0.0, 50.0, 100.0, 200.0], [0.0, 0.0, 100.0, 110.0]]), 1)
    assert pref[0, 2] < torch.finfo(torch.float32).tiny  # subnormal, and an exact 0
    out = CategoryCoverage(0.5, "calibrated")(scores, 4, categories=cats, user_category_pref=pref)
    assert (out >= 0).all() and all(len(set(row)) == 4 for row in out.tolist())


def test_sparse_category_ids_give_the_same_lists_as_dense_ones():
    scores, _, cats, mask = make_batch(5, 3, 8, 2, 0.2)
    cats[:, ::3] = -1
    sparse = torch.where(cats >= 0, cats * 10**12 + 7, cats)
    for rr in [CategoryCoverage(0.6), CategoryCoverage(0.8, "calibrated")]:
        expected = rr(scores, 6, mask=mask, categories=cats + (cats >= 0).long())
        assert torch.equal(rr(scores, 6, mask=mask, categories=sparse), expected)


def test_fusions_saturate_overflow_of_finite_inputs_and_keep_infinite_ones():
    big = torch.finfo(torch.float32).max
    cols = {"a": torch.tensor([3e38, 3e38, 1.0]), "b": torch.tensor([3e38, -3e38, float("-inf")])}
    assert WeightedSum(a=1.0, b=1.0)(cols).tolist() == [big, 0.0, float("-inf")]
    assert WeightedSum(a=2.0, b=-2.0)(cols).tolist()[:2] == [0.0, big]
    assert WeightedProduct(a=2.0)(cols).tolist() == [big, big, 1.0]


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


def test_reranker_input_errors():
    scores = torch.rand(2, 5)
    with pytest.raises(ValueError, match="item_vectors"):
        MMR(0.5)(scores, 3)
    with pytest.raises(ValueError, match="categories"):
        CategoryCoverage(0.5)(scores, 3)
    with pytest.raises(ValueError):
        MMR(1.5)
    with pytest.raises(ValueError):
        DPP(0.5, window=0)
    with pytest.raises(ValueError):
        CategoryCoverage(0.5, mode="other")
    for k in (-1, True, 2.0, "3"):
        with pytest.raises((ValueError, TypeError), match="k must"):
            MMR(0.5)(scores, k, item_vectors=torch.rand(2, 5, 3))
    with pytest.raises(TypeError, match="item_ids"):
        MMR(0.5)(scores, 3, item_ids=torch.zeros(2, 5), catalog=torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"categories\[1, 4\] = 3"):
        CategoryCoverage(0.5)(
            scores,
            3,
            categories=torch.tensor([[0, 1, 0, 1, 0], [1, 1, 0, 0, 3]]),
            user_category_pref=torch.rand(2, 3),
        )
    with pytest.raises(ValueError, match="mask"):
        MMR(0.5)(
            scores, 3, mask=torch.ones(2, 4, dtype=torch.bool), item_vectors=torch.rand(2, 5, 3)
        )
    with pytest.raises(ValueError, match="item_vectors"):
        MMR(0.5)(scores, 3, item_vectors=torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="user_category_pref"):
        CategoryCoverage(0.5)(
            scores,
            3,
            categories=torch.full((2, 5), 3),
            user_category_pref=torch.rand(2, 2),
        )


# -- fusion ------------------------------------------------------------------------------------
def _frame():
    return pd.DataFrame(
        {
            "ctr": [0.1, 0.2, 0.0, 0.5],
            "cvr": [0.5, 0.1, 0.3, 0.0],
            "price": [10.0, 20.0, 5.0, 1.0],
        },
        index=["a", "b", "c", "d"],
    )


def gmv_fn(s):  # module-level so CallableFusion can serialise it
    return s["ctr"] * s["cvr"] * s["price"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_sum_and_product_on_tensors(dtype):
    g = torch.Generator().manual_seed(0)
    scores = {name: torch.rand(3, 5, generator=g, dtype=dtype) for name in ("ctr", "cvr", "price")}
    total = WeightedSum(ctr=1.0, cvr=2.0)(scores)
    assert total.dtype == dtype and total.shape == (3, 5)
    assert torch.allclose(total, scores["ctr"] + 2 * scores["cvr"])
    gmv = WeightedProduct(ctr=1, cvr=1, price=1)(scores)
    assert torch.allclose(gmv, scores["ctr"] * scores["cvr"] * scores["price"], rtol=1e-5)
    sharp = WeightedProduct(ctr=2.0, cvr=0.5)(scores)
    assert torch.allclose(sharp, scores["ctr"] ** 2 * scores["cvr"].sqrt(), rtol=1e-5)
    ints = WeightedSum(a=0.5)({"a": torch.tensor([1, 2])})
    assert ints.dtype.is_floating_point and ints.tolist() == [0.5, 1.0]


def test_fusion_on_dataframe_and_zero_handling():
    df = _frame()
    total = WeightedSum(ctr=1.0, price=0.1)(df)
    assert isinstance(total, pd.Series) and list(total.index) == list(df.index)
    np.testing.assert_allclose(total.to_numpy(), df.ctr + 0.1 * df.price)
    gmv = WeightedProduct(ctr=1, cvr=1, price=1)(df)
    np.testing.assert_allclose(gmv.to_numpy(), df.ctr * df.cvr * df.price, atol=1e-10)
    assert np.isfinite(gmv.to_numpy()).all()
    inv = WeightedProduct(ctr=-1.0)(df)  # zero with a negative exponent: floored, finite
    assert np.isfinite(inv.to_numpy()).all() and inv["c"] == pytest.approx(1e12)
    zeros = WeightedProduct(ctr=1, eps=1e-6)({"ctr": torch.zeros(3)})
    assert torch.isfinite(zeros).all() and torch.allclose(zeros, torch.full((3,), 1e-6))


def test_fusion_missing_objective_raises_keyerror():
    for fusion in [WeightedSum(ctr=1.0, gmv=1.0), WeightedProduct(ctr=1, gmv=1)]:
        with pytest.raises(KeyError, match="gmv") as info:
            fusion(_frame())
        assert "ctr" in str(info.value) and "price" in str(info.value)
        with pytest.raises(KeyError, match="gmv"):
            fusion({"ctr": torch.rand(2)})
    with pytest.raises(KeyError, match="available"):
        CallableFusion(lambda s: s["nope"])({"ctr": torch.rand(2)})


def test_callable_fusion_and_config_roundtrip():
    df = _frame()
    fused = CallableFusion(gmv_fn)
    np.testing.assert_allclose(fused(df).to_numpy(), df.ctr * df.cvr * df.price)
    t = {c: torch.tensor(df[c].to_numpy()) for c in df.columns}
    assert torch.allclose(fused(t), t["ctr"] * t["cvr"] * t["price"])
    with pytest.raises(ValueError):
        CallableFusion(lambda s: s["ctr"][:2])(t)
    with pytest.raises(ValueError):
        CallableFusion(lambda s: s["ctr"]).to_config()
    for fusion in [
        WeightedSum(ctr=1.0, cvr=2.5),
        WeightedProduct(ctr=1, price=0.5, eps=1e-9),
        fused,
    ]:
        config = json.loads(json.dumps(fusion.to_config()))
        back = Fusion.from_config(config, functions={fused.fn.__qualname__: fused.fn})
        assert type(back) is type(fusion)
        np.testing.assert_allclose(back(df).to_numpy(), fusion(df).to_numpy())
    with pytest.raises(ValueError):
        Fusion.from_config({"type": "nope"})
    with pytest.raises(ValueError, match="never import code"):
        Fusion.from_config(fused.to_config())
    with pytest.raises(ValueError):
        WeightedSum()
    with pytest.raises(ValueError):
        WeightedSum(ctr=float("nan"))
    with pytest.raises(ValueError):
        WeightedSum(a=1.0)({"a": torch.rand(2), "b": torch.rand(3)})
    assert WeightedSum({"p(click)": 2.0})({"p(click)": torch.ones(2)}).tolist() == [2.0, 2.0]


def test_rerankers_work_outside_inference_mode_after_a_call_inside_it():
    from recsys_mt.rerank._vectors import release_workspace

    release_workspace()
    g = torch.Generator().manual_seed(0)
    scores, vecs = torch.rand(3, 20, generator=g), torch.randn(3, 20, 8, generator=g)
    with torch.inference_mode():
        inside = MMR(0.5)(scores, 5, item_vectors=vecs)
    outside = MMR(0.5)(scores, 5, item_vectors=vecs)
    assert torch.equal(inside, outside)
    assert torch.equal(DPP()(scores, 5, item_vectors=vecs), DPP()(scores, 5, item_vectors=vecs))
