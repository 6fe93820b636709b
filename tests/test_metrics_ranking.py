"""Tests for recsys_mt.metrics' ranking and list metrics (NDCG, recall, hit rate, MRR, on
scores or on selected lists) and diversity metrics (intra-list diversity, category coverage
and entropy, novelty, alpha-NDCG); reference values computed by hand or by a per-row loop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_mt.metrics import (
    alpha_ndcg,
    category_coverage,
    category_entropy,
    hit_rate_at_k,
    intra_list_diversity,
    list_hit_rate,
    list_mrr,
    list_ndcg,
    list_recall,
    mrr,
    ndcg_at_k,
    ndcg_of_ranking,
    novelty,
    recall_at_k,
)

L3 = math.log2(3)  # discount denominator at rank 2

# --------------------------------------------------------------------------- ranking

# Two users, four candidates.
SCORES = [[0.9, 0.8, 0.3, 0.1], [0.2, 0.5, 0.5, 0.9]]
REL = [[0, 2, 0, 1], [0, 0, 1, 0]]
# user 0 order: 0, 1, 2, 3 -> relevance 0, 2, 0, 1
# user 1 order: 3, 1, 2, 0 (tie 0.5: index 1 before 2) -> relevance 0, 0, 1, 0
# NDCG@3 u0: DCG = (2^2-1)/log2(3) = 3/L3; IDCG = 3/1 + 1/L3
# NDCG@3 u1: DCG = 1/log2(4) = 0.5; IDCG = 1
NDCG3 = [(3 / L3) / (3 + 1 / L3), 0.5]


def test_ndcg_hand_example():
    got = ndcg_at_k(SCORES, REL, k=3, reduction="none")
    np.testing.assert_allclose(got, NDCG3, rtol=1e-12)
    assert ndcg_at_k(SCORES, REL, k=3) == pytest.approx(np.mean(NDCG3))
    # k=1: both top items irrelevant
    assert ndcg_at_k(SCORES, REL, k=1) == 0.0


def test_recall_hit_mrr_hand_example():
    # recall@3: u0 has {1, 3} relevant, top-3 = {0, 1, 2} -> 1/2 ; u1: {2} in top-3 -> 1
    np.testing.assert_allclose(recall_at_k(SCORES, REL, 3, reduction="none"), [0.5, 1.0])
    assert recall_at_k(SCORES, REL, 3) == pytest.approx(0.75)
    # hit@2: u0 rank 2 is relevant -> 1; u1 first relevant at rank 3 -> 0
    np.testing.assert_allclose(hit_rate_at_k(SCORES, REL, 2, reduction="none"), [1.0, 0.0])
    # MRR: u0 first relevant at rank 2 -> 1/2 ; u1 at rank 3 (tie -> lower index first) -> 1/3
    np.testing.assert_allclose(mrr(SCORES, REL, reduction="none"), [0.5, 1 / 3])
    # MRR@2: u1 has none in top 2 -> 0
    assert mrr(SCORES, REL, k=2) == pytest.approx(0.25)


def test_ranking_mask():
    mask = [[False, True, True, True], [True, True, True, False]]
    # u0 without candidate 0: order 1, 2, 3 -> rel 2, 0, 1: DCG = 3 + 1/log2(4); IDCG = 3 + 1/L3
    # u1 without candidate 3 (score 0.9): order 1, 2, 0 -> relevant at rank 2
    got = ndcg_at_k(SCORES, REL, 3, mask=mask, reduction="none")
    np.testing.assert_allclose(got, [3.5 / (3 + 1 / L3), 1 / L3], rtol=1e-12)
    np.testing.assert_allclose(mrr(SCORES, REL, mask=mask, reduction="none"), [1.0, 0.5])
    # masking relevant candidate 3 of u0 removes it from the recall denominator: 1/1
    mask2 = [[True, True, True, False], [True] * 4]
    np.testing.assert_allclose(recall_at_k(SCORES, REL, 2, mask=mask2, reduction="none"), [1, 0])
    # masked candidates never enter the top-k even with the highest score
    s = [[10.0, 0.0, 0.0, 0.0]]
    assert hit_rate_at_k(s, [[0, 0, 0, 1]], 3, mask=[[False, True, True, True]]) == 1.0


def test_ranking_empty_rows():
    rel = [[0, 0, 0, 0], [0, 0, 1, 0]]
    # row 0 has no relevant item: 0 per row, excluded from the mean unless ignore_empty=False
    np.testing.assert_allclose(ndcg_at_k(SCORES, rel, 3, reduction="none"), [0.0, 0.5])
    assert ndcg_at_k(SCORES, rel, 3) == pytest.approx(0.5)
    assert ndcg_at_k(SCORES, rel, 3, ignore_empty=False) == pytest.approx(0.25)
    assert math.isnan(recall_at_k(SCORES, [[0] * 4] * 2, 3))


def test_list_metrics_hand_example():
    selected = [[3, 1, -1], [0, 2, 1]]
    # u0 list rel 1, 2 -> DCG = 1 + 3/L3, IDCG@3 = 3 + 1/L3 ; u1 list rel 0, 1, 0 -> 1/L3 / 1
    exp = [(1 + 3 / L3) / (3 + 1 / L3), 1 / L3]
    np.testing.assert_allclose(list_ndcg(selected, REL, reduction="none"), exp, rtol=1e-12)
    # padding in the middle is removed: same result
    np.testing.assert_allclose(list_ndcg([[3, -1, 1], [0, 2, 1]], REL, reduction="none"), exp)
    lm = [[True, False, True], [True, True, True]]
    np.testing.assert_allclose(
        list_ndcg([[3, 0, 1], [0, 2, 1]], REL, list_mask=lm, reduction="none"), exp
    )
    # equivalent: relevance already in ranked order
    np.testing.assert_allclose(
        ndcg_of_ranking([[1, 2, 0], [0, 1, 0]], REL, reduction="none"), exp, rtol=1e-12
    )
    np.testing.assert_allclose(list_recall(selected, REL, reduction="none"), [1.0, 1.0])
    np.testing.assert_allclose(list_recall(selected, REL, k=1, reduction="none"), [0.5, 0.0])
    np.testing.assert_allclose(list_hit_rate(selected, REL, k=1, reduction="none"), [1, 0])
    np.testing.assert_allclose(list_mrr(selected, REL, reduction="none"), [1.0, 0.5])
    # list_ndcg of the score ranking equals ndcg_at_k
    order = np.argsort(-np.asarray(SCORES), axis=1, kind="stable")[:, :3]
    assert list_ndcg(order, REL) == pytest.approx(ndcg_at_k(SCORES, REL, 3))


def test_ranking_torch_equals_numpy_and_random_reference():
    rng = np.random.default_rng(4)
    b, n, k = 64, 30, 10
    s = rng.integers(0, 8, (b, n)).astype(np.float64)  # ties
    rel = rng.integers(0, 3, (b, n)) * (rng.random((b, n)) < 0.3)
    mask = rng.random((b, n)) < 0.8
    ref = []  # explicit per-row loop as a reference
    for i in range(b):
        idx = [j for j in np.argsort(-s[i], kind="stable") if mask[i, j]]
        gains = 2.0 ** rel[i, idx[:k]] - 1
        dcg = (gains / np.log2(np.arange(len(gains)) + 2)).sum()
        ideal = np.sort(rel[i, mask[i]])[::-1][:k]
        idcg = ((2.0**ideal - 1) / np.log2(np.arange(len(ideal)) + 2)).sum()
        ref.append(dcg / idcg if idcg > 0 else 0.0)
    got_np = ndcg_at_k(s, rel, k, mask=mask, reduction="none")
    got_t = ndcg_at_k(
        torch.tensor(s), torch.tensor(rel), k, mask=torch.tensor(mask), reduction="none"
    )
    assert isinstance(got_np, np.ndarray) and isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_np, ref, rtol=1e-12)
    np.testing.assert_array_equal(got_np, got_t.numpy())
    for fn in (recall_at_k, hit_rate_at_k):
        assert fn(s, rel, k, mask=mask) == fn(
            torch.tensor(s), torch.tensor(rel), k, torch.tensor(mask)
        )


def test_ranking_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(SCORES, REL, k=0)
    with pytest.raises(ValueError, match="shape"):
        ndcg_at_k(SCORES, [[0, 1]], k=1)
    with pytest.raises(ValueError, match="reduction"):
        ndcg_at_k(SCORES, REL, k=1, reduction="sum")
    with pytest.raises(ValueError, match="index"):
        list_ndcg([[7]], REL[:1])


# --------------------------------------------------------------------------- diversity


def test_intra_list_diversity_hand_example():
    # e1, e2, e1: pairs (e1,e2)=1, (e1,e1)=0, (e2,e1)=1 -> 2/3
    x = [[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]
    assert intra_list_diversity(x) == pytest.approx(2 / 3)
    # the duplicate masked out -> only (e1, e2) -> 1
    assert intra_list_diversity(x, mask=[[True, True, False]]) == pytest.approx(1.0)
    # euclidean: sqrt(2), 0, sqrt(2) -> 2*sqrt(2)/3
    assert intra_list_diversity(x, metric="euclidean") == pytest.approx(2 * math.sqrt(2) / 3)
    # indices into a catalog; row 1: e1 vs (1,1): 1 - 1/sqrt(2); -1 = padding
    catalog = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    got = intra_list_diversity([[0, 1, 0], [0, 2, -1]], catalog, reduction="none")
    np.testing.assert_allclose(got, [2 / 3, 1 - 1 / math.sqrt(2)], rtol=1e-12)
    # per-row candidate vectors [B, N, d]
    cand = torch.tensor([catalog, catalog])
    got_t = intra_list_diversity(torch.tensor([[0, 1, 0], [0, 2, -1]]), cand, reduction="none")
    np.testing.assert_allclose(got_t.numpy(), got, rtol=1e-12)
    # a single valid item has no pair: excluded from the mean
    assert intra_list_diversity(x + x, mask=[[True, False, False], [True, True, True]]) == (
        pytest.approx(2 / 3)
    )


def test_category_coverage_and_entropy_hand_example():
    cats = [[1, 1, 2, 3], [5, 5, 5, 5]]
    # distinct 3 of 4 slots ; 1 of 4
    np.testing.assert_allclose(category_coverage(cats, reduction="none"), [0.75, 0.25])
    # catalog of 10 categories: 3/10, 1/10
    np.testing.assert_allclose(
        category_coverage(cats, 10, normalize="catalog", reduction="none"), [0.3, 0.1]
    )
    # only 2 categories (ids 0 and 1) exist -> denominator min(4, 2) = 2 ; row 1: 1/2
    np.testing.assert_allclose(
        category_coverage([[0, 1, 0, 1], [1, 1, 1, 1]], 2, reduction="none"), [1.0, 0.5]
    )
    mask = [[True, True, True, True], [True, False, False, False]]
    np.testing.assert_allclose(category_coverage(cats, mask=mask, reduction="none"), [0.75, 1.0])
    # entropy row 0: p = 1/2, 1/4, 1/4 -> 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2 ; row 1: 0
    np.testing.assert_allclose(
        category_entropy(cats, reduction="none"), [1.5 * math.log(2), 0.0], atol=1e-12
    )
    # masking slots 1 and 3 of row 0 leaves categories 1, 2 -> ln 2
    m2 = [[True, False, True, False], [True] * 4]
    assert category_entropy(cats, mask=m2, reduction="none")[0] == pytest.approx(math.log(2))


def test_novelty_hand_example():
    pop = [5, 3, 2]  # shares 0.5, 0.3, 0.2
    # items 0, 2: (-log2 0.5 - log2 0.2) / 2 = (1 + log2 5) / 2
    assert novelty([[0, 2]], popularity=pop) == pytest.approx((1 + math.log2(5)) / 2)
    # padding (-1) and mask are excluded
    assert novelty([[0, -1, 2, 1]], pop, mask=[[True, True, True, False]]) == pytest.approx(
        (1 + math.log2(5)) / 2
    )
    # popularity values directly: counts + total, or shares
    assert novelty([[5.0, 2.0]], total=10) == pytest.approx((1 + math.log2(5)) / 2)
    assert novelty([[0.5, 0.2]]) == pytest.approx((1 + math.log2(5)) / 2)
    with pytest.raises(ValueError, match="zero popularity"):
        novelty([[0, 1]], popularity=[0, 1])


def test_alpha_ndcg_hand_example():
    # list A, A, B (alpha 0.5): gains 1, 0.5, 1 -> DCG = 1 + 0.5/L3 + 1/2
    # greedy ideal over the same items: A, B, A -> 1 + 1/L3 + 0.5/2
    exp = (1 + 0.5 / L3 + 0.5) / (1 + 1 / L3 + 0.25)
    assert alpha_ndcg([[0, 0, 1]], alpha=0.5) == pytest.approx(exp, rel=1e-12)
    # the same list expressed as one-hot subtopics [B, L, S]
    onehot = [[[1, 0], [1, 0], [0, 1]]]
    assert alpha_ndcg(onehot, alpha=0.5) == pytest.approx(exp, rel=1e-12)
    # ideal from a candidate pool: list A, A vs pool A, A, B at k=2
    # DCG = 1 + 0.5/L3 ; ideal = A then B = 1 + 1/L3
    got = alpha_ndcg([[7, 7]], k=2, candidates=[[7, 7, 9]])
    assert got == pytest.approx((1 + 0.5 / L3) / (1 + 1 / L3), rel=1e-12)
    # multi-subtopic items: d1 = {s0, s1}, d2 = {s0}; list d2, d1
    # DCG = 1 + (0.5 + 1)/L3 ; greedy ideal d1 (gain 2), d2 (gain 0.5) = 2 + 0.5/L3
    sub = [[[1, 0], [1, 1]]]
    assert alpha_ndcg(sub) == pytest.approx((1 + 1.5 / L3) / (2 + 0.5 / L3), rel=1e-12)
    # padding removed: A, pad, B == A, B = perfect
    assert alpha_ndcg([[0, 3, 1]], mask=[[True, False, True]]) == pytest.approx(1.0)
    # alpha = 0 -> plain DCG of all-relevant items = 1
    assert alpha_ndcg([[0, 0, 1]], alpha=0.0) == pytest.approx(1.0)


def test_diversity_torch_equals_numpy():
    rng = np.random.default_rng(5)
    cats = rng.integers(0, 6, (20, 8))
    mask = rng.random((20, 8)) < 0.8
    vec = rng.normal(size=(20, 8, 4))
    for fn, args in (
        (category_coverage, (cats,)),
        (category_entropy, (cats,)),
        (alpha_ndcg, (cats,)),
        (intra_list_diversity, (vec,)),
    ):
        a = fn(*args, mask=mask, reduction="none")
        b = fn(*(torch.tensor(x) for x in args), mask=torch.tensor(mask), reduction="none")
        assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-15)
    # categories and one-hot subtopics agree on random data (candidate pool given)
    pool = rng.integers(0, 6, (20, 15))
    a = alpha_ndcg(cats, k=5, candidates=pool, mask=mask, reduction="none")
    eye = np.eye(6)
    b = alpha_ndcg(eye[cats], k=5, candidates=eye[pool], mask=mask, reduction="none")
    np.testing.assert_allclose(a, b, rtol=1e-12)
