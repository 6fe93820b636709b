"""Regression tests for metric defects found by an audit: repeated indices in lists,
uncategorised and out-of-range category ids, empty lists, overflowing or infinite relevance,
numpy ``n_bins``, log-loss ``eps`` / weights and novelty shares above 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_mt.metrics import (
    auc,
    category_coverage,
    ece,
    hit_rate_at_k,
    list_hit_rate,
    list_mrr,
    list_ndcg,
    list_recall,
    logloss,
    mrr,
    ndcg_at_k,
    ndcg_of_ranking,
    novelty,
    recall_at_k,
    reliability_curve,
)
from recsys_mt.metrics.streaming import StreamingLogLoss

LIST_METRICS = [list_ndcg, list_recall, list_hit_rate, list_mrr]


# -- 2. repeated indices -----------------------------------------------------------------------
@pytest.mark.parametrize("metric", LIST_METRICS, ids=lambda f: f.__name__)
def test_list_metrics_reject_a_repeated_index(metric):
    with pytest.raises(ValueError, match=r"row 0 repeats candidate index 0 \(at slots \[0, 1, 2\]"):
        metric([[0, 0, 0]], [[1, 0, 0]])
    with pytest.raises(ValueError, match=r"row 1 repeats candidate index 2 \(at slots \[0, 3\]"):
        metric(torch.tensor([[0, 1, 2, 3], [2, 0, -1, 2]]), torch.ones(2, 4))
    # padding repeats freely: -1 slots and list_mask == False slots are not list items
    assert metric([[2, -1, -1]], [[0, 0, 1]]) == 1.0
    assert metric([[2, 2, 0]], [[0, 0, 1]], list_mask=[[True, False, False]]) == 1.0


def test_list_metrics_without_repeats_are_unchanged_and_bounded():
    assert list_recall([[0, 2]], [[1, 0, 1]]) == 1.0
    assert list_recall([[0, 1]], [[1, 0, 1]]) == 0.5
    g = torch.Generator().manual_seed(0)
    rel = torch.randint(0, 4, (50, 12), generator=g).double()
    sel = torch.stack([torch.randperm(12, generator=g)[:6] for _ in range(50)])
    values = list_ndcg(sel, rel, reduction="none")
    assert bool(((values >= 0) & (values <= 1 + 1e-12)).all())


# -- 3. category coverage ----------------------------------------------------------------------
def test_category_coverage_ignores_uncategorised_and_rejects_ids_beyond_the_catalog():
    assert category_coverage([[-1, -1, 0]], num_categories=2) == 0.5  # 1 category / min(3, 2)
    assert category_coverage([[-1, -1, 0]]) == pytest.approx(1 / 3)
    assert category_coverage([[-1, -1, -1]], num_categories=2) == 0.0  # a list, no category
    assert category_coverage([[-1, 3, 3, 1]], 4, normalize="catalog") == 0.5
    with pytest.raises(ValueError, match=r"categories\[0, 2\] = 2 must be < num_categories = 2"):
        category_coverage([[0, 1, 2]], num_categories=2)
    # a padded slot may hold anything
    assert category_coverage([[0, 1, 2]], 2, mask=[[True, True, False]]) == 1.0
    values = category_coverage(torch.randint(-1, 5, (40, 6)), 5, reduction="none")
    assert bool(((values >= 0) & (values <= 1)).all())


# -- 6. empty lists ----------------------------------------------------------------------------
def test_empty_lists_and_candidate_sets_do_not_crash():
    empty = np.zeros((2, 0), dtype=int)
    rel = [[1, 0], [0, 1]]
    # an empty list finds no relevant item: 0, like list_recall / list_hit_rate
    assert list_mrr(empty, rel) == 0.0
    assert list_mrr(empty, rel) == list_recall(empty, rel) == list_hit_rate(empty, rel)
    assert list_mrr(empty, rel, reduction="none").tolist() == [0.0, 0.0]
    assert math.isnan(list_ndcg(empty, rel))  # ideal DCG@0 = 0: every row counts as empty
    # no candidates at all: no relevant item, every row is empty, the mean is NaN everywhere
    assert math.isnan(mrr(np.zeros((1, 0)), np.zeros((1, 0))))
    assert mrr(np.zeros((1, 0)), np.zeros((1, 0)), reduction="none").tolist() == [0.0]
    for metric in (ndcg_at_k, recall_at_k, hit_rate_at_k):
        assert math.isnan(metric(np.zeros((1, 0)), np.zeros((1, 0)), 1))
    assert math.isnan(mrr(torch.zeros(0, 0), torch.zeros(0, 0)))


# -- 8. relevance range, n_bins, log-loss, novelty ---------------------------------------------
def test_ndcg_with_huge_relevance_is_finite_and_infinite_relevance_is_rejected():
    assert ndcg_at_k([[2.0, 1.0]], [[1100.0, 0.0]], 2) == 1.0
    assert ndcg_at_k([[1.0, 2.0]], [[1100.0, 0.0]], 2) == pytest.approx(1 / math.log2(3))
    # gains 2**1099 and 2**1100, ranked worst first
    expected = (0.5 + 1 / math.log2(3)) / (1 + 0.5 / math.log2(3))
    assert ndcg_at_k([[1.0, 2.0]], [[1100.0, 1099.0]], 2) == pytest.approx(expected, rel=1e-12)
    assert list_ndcg([[1, 0]], [[1100.0, 1099.0]]) == pytest.approx(expected, rel=1e-12)
    assert ndcg_of_ranking([[1100.0, 0.0]], [[1100.0, 0.0, 0.0]]) == 1.0
    # ordinary relevance gives the same numbers as before
    assert ndcg_at_k([[0.3, 0.2, 0.1]], [[0.0, 1.0, 2.0]], 3) == pytest.approx(
        (1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3))
    )
    with pytest.raises(ValueError, match=r"relevance must be finite, got inf at \[0, 0\]"):
        ndcg_at_k([[2.0, 1.0]], [[math.inf, 0.0]], 2)
    with pytest.raises(ValueError, match=r"relevance must be finite, got -inf at \[0, 1\]"):
        list_recall([[0]], [[1.0, -math.inf]], mask=[[True, False]])
    with pytest.raises(ValueError, match="ranked_relevance must be finite"):
        ndcg_of_ranking([[math.inf]], [[1.0]])


def test_ece_accepts_numpy_and_torch_integer_n_bins():
    y, p = [0, 1, 1, 0], [0.2, 0.8, 0.6, 0.1]
    assert ece(y, p, n_bins=np.int64(5)) == ece(y, p, n_bins=5)
    assert ece(y, p, n_bins=torch.tensor(3)) == ece(y, p, n_bins=3)
    curve = reliability_curve(y, p, n_bins=np.int32(2))
    assert [c.tolist() for c in curve] == [c.tolist() for c in reliability_curve(y, p, n_bins=2)]
    for bad in (0, 1.5, True, np.float64(2.0), "3"):
        with pytest.raises(ValueError, match="n_bins"):
            ece(y, p, n_bins=bad)


def test_logloss_rejects_bad_eps_and_weights():
    y, p = [0, 1], [0.0, 1.0]
    for eps in (0, 0.0, -1e-7, 0.5, 1.0, math.nan):
        with pytest.raises(ValueError, match="eps"):
            logloss(y, p, eps=eps)
        with pytest.raises(ValueError, match="eps"):
            StreamingLogLoss(eps=eps)
    assert logloss(y, p, eps=1e-7) == pytest.approx(-math.log(1 - 1e-7))
    with pytest.raises(ValueError, match=r"sample_weight must be finite and non-negative, got -1"):
        logloss([0, 1], [0.2, 0.8], sample_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="sample_weight"):
        logloss([0, 1], [0.2, 0.8], sample_weight=[1.0, math.inf])
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        logloss([0, 1], [0.2, 0.8], sample_weight=[0.0, 0.0])
    with pytest.raises(ValueError, match="sample_weight"):
        auc([0, 1, 1], [0.2, 0.8, 0.4], sample_weight=[1.0, 2.0, -0.5])
    with pytest.raises(ValueError, match="sample_weight"):
        StreamingLogLoss().update([0, 1], [0.2, 0.8], sample_weight=[-1.0, 1.0])
    # a zero weight on some rows is fine
    assert logloss([0, 1], [0.2, 0.8], sample_weight=[0.0, 1.0]) == pytest.approx(-math.log(0.8))


def test_novelty_rejects_popularity_shares_above_one():
    with pytest.raises(ValueError, match=r"share p = 2.0 > 1 at list slot \[0, 0\]"):
        novelty([[2.0]])
    with pytest.raises(ValueError, match="p must be a probability"):
        novelty([[0]], popularity=[3, 1], total=2)  # total below the count
    with pytest.raises(ValueError, match="total must be a positive finite number"):
        novelty([[0.5]], total=math.inf)
    assert novelty([[2.0]], total=4) == 1.0  # counts with their total
    assert novelty([[0.5, 0.25]]) == 1.5
    assert novelty([[1.0, 9.0]], mask=[[True, False]]) == 0.0  # padded slots are not read


def test_category_entropy_leaves_uncategorised_items_out():
    from recsys_mt.metrics import category_entropy

    assert category_entropy([[1, 1, -1, -1]]) == pytest.approx(0.0)  # one category present
    assert category_entropy([[1, 2, -1, -1]]) == pytest.approx(np.log(2))
    assert category_entropy([[-1, -1]], ignore_empty=False) == pytest.approx(0.0)
