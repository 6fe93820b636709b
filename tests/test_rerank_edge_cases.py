"""Tests for recsys_mt.rerank at the edges: k > N, ties, dtypes, catalog ids, workspace
reuse (and inference mode), non-finite scores and vectors, overflowing and underflowing
values, sparse category ids, and the errors that name bad input."""

from __future__ import annotations

import pytest
import torch
from _rerank_helpers import check_prefix, make_batch, rerankers

from recsys_mt.rerank import (
    DPP,
    MMR,
    CategoryCoverage,
    gather_selected,
    normalize_relevance,
    release_workspace,
    relevance_order,
)


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
