"""Regression tests for re-ranking defects found by an audit: integer scores computed in
float64, zero fusion weights against infinite objectives, the inferred category target of
CategoryCoverage, unused and non-numeric inputs, and MMR's first pick."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_mt.rerank import (
    DPP,
    MMR,
    CategoryCoverage,
    WeightedProduct,
    WeightedSum,
    relevance_order,
)
from recsys_mt.rerank._checks import compute_dtype
from recsys_mt.rerank.reference import mmr_reference, per_user, xquad_reference

INF, NAN = float("inf"), float("nan")


# -- 1. integer scores -------------------------------------------------------------------------
def test_integer_scores_keep_their_order_in_every_reranker():
    big = torch.tensor([1_700_000_000, 1_700_000_001, 1_700_000_002])  # ties in float32
    assert compute_dtype(torch.int64) == torch.float64
    assert compute_dtype(torch.float16) == torch.float32
    assert relevance_order(big, 3).tolist() == [2, 1, 0]
    assert relevance_order(big.unsqueeze(0), 2).tolist() == [[2, 1]]
    vectors = torch.eye(3)  # orthogonal: no similarity penalty, relevance decides
    categories = torch.tensor([0, 1, 2])
    for rr in [
        MMR(0.5),
        DPP(0.5),
        CategoryCoverage(0.5),
        CategoryCoverage(0.5, "calibrated"),
    ]:
        out = rr(big, 3, item_vectors=vectors, categories=categories)
        assert out.tolist() == [2, 1, 0], rr


def test_fusion_computes_integer_columns_in_float64():
    ints = torch.tensor([16777217, 16777216])  # 2**24 + 1 and 2**24: equal in float32
    out = WeightedSum(a=1)({"a": ints})
    assert out.dtype == torch.float64
    assert out.tolist() == [16777217.0, 16777216.0]
    assert bool(WeightedProduct(a=1)({"a": ints})[0] > WeightedProduct(a=1)({"a": ints})[1])
    mixed = WeightedSum(a=1, b=1)({"a": ints, "b": torch.zeros(2)})
    assert mixed.dtype == torch.float64 and mixed.tolist() == [16777217.0, 16777216.0]
    assert WeightedSum(a=1)({"a": torch.ones(2)}).dtype == torch.float32  # floats keep theirs
    assert WeightedSum(a=1)({"a": torch.ones(2, dtype=torch.float16)}).dtype == torch.float16


# -- 5. zero weights ---------------------------------------------------------------------------
def test_zero_weight_objective_contributes_nothing_even_when_infinite():
    cols = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([-INF, 1.0])}
    assert WeightedSum(a=1, b=0)(cols).tolist() == [1.0, 2.0]
    cols = {"ctr": torch.tensor([0.5, 0.25]), "price": torch.tensor([INF, NAN])}
    assert WeightedProduct(ctr=1, price=0)(cols).tolist() == pytest.approx([0.5, 0.25])
    assert WeightedProduct(ctr=0, price=0)(cols).tolist() == [1.0, 1.0]  # x ** 0 = 1
    assert WeightedSum(price=0)(cols).tolist() == [0.0, 0.0]
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [np.inf, np.nan]})
    assert WeightedSum(a=2, b=0)(frame).tolist() == [2.0, 4.0]
    with pytest.raises(KeyError, match="'b' not found"):  # the column must still exist
        WeightedSum(a=1, b=0)({"a": torch.ones(2)})
    # a non-zero weight still propagates -inf ("absent") as before
    absent = WeightedSum(a=1, b=1e-9)({"a": torch.ones(2), "b": torch.tensor([-INF, 0.0])})
    assert absent.tolist() == [-INF, 1.0]


# -- 4. the inferred category target -----------------------------------------------------------
def test_coverage_without_preference_gives_every_present_category_mass():
    from recsys_mt.rerank.coverage import inferred_preference

    scores, cats = torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0, 0, 1])
    assert CategoryCoverage(1.0, gamma=1.0)(scores, 2, categories=cats).tolist() == [0, 2]
    assert CategoryCoverage(1.0, gamma=1.0, mode="calibrated")(
        scores, 2, categories=cats
    ).tolist() == [0, 2]
    # min-max relevance [1, 0.5, 0]: p_rel = [1, 0], counts [2/3, 1/3] -> p = [5/6, 1/6]
    rel = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    valid = torch.ones(1, 3, dtype=torch.bool)
    p = inferred_preference(cats.unsqueeze(0), rel, valid, 2)
    assert p[0].tolist() == pytest.approx([5 / 6, 1 / 6])
    # uncategorised candidates do not count; a row without categories stays all zero
    p = inferred_preference(torch.tensor([[-1, 1, -1], [-1, -1, -1]]), rel.repeat(2, 1), valid, 2)
    assert p.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    ref = xquad_reference(scores.numpy(), 2, cats.numpy(), lambda_=1.0, gamma=1.0)
    assert ref.tolist() == [0, 2]


@pytest.mark.parametrize("normalize", ["minmax", "softmax", None])
@pytest.mark.parametrize("seed", range(3))
def test_pure_hard_xquad_covers_every_present_category_first(seed, normalize):
    g = torch.Generator().manual_seed(seed)
    b, n, k = 300, 10, 8
    scores = torch.randint(-3, 4, (b, n), generator=g).double()  # many ties and row minima
    n_cat = torch.randint(1, 8, (b, 1), generator=g)
    categories = (torch.rand(b, n, generator=g, dtype=torch.float64) * n_cat).long()
    categories[torch.rand(b, n, generator=g) < 0.15] = -1  # some uncategorised candidates
    mask = torch.rand(b, n, generator=g) > 0.2
    rr = CategoryCoverage(1.0, gamma=1.0, normalize=normalize)
    out = rr(scores, k, mask=mask, categories=categories)
    expected = per_user(
        xquad_reference,
        scores,
        k,
        mask=mask,
        categories=categories,
        lambda_=1.0,
        gamma=1.0,
        normalize=normalize,
    )
    assert np.array_equal(out.numpy(), expected)
    for row, cats, valid in zip(out.tolist(), categories.tolist(), mask.tolist()):
        present = {c for c, ok in zip(cats, valid) if ok and c >= 0}
        assert len(present) <= k
        first = [cats[i] for i in row[: len(present)]]
        assert sorted(first) == sorted(present), (row, cats, valid)


# -- 6. inputs a method does not read; non-numeric inputs --------------------------------------
def test_unused_inputs_are_ignored_and_read_ones_must_be_numeric():
    scores = torch.tensor([0.3, 0.9, 0.5])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    names = np.array(["a", "b", "a"])
    for rr in [MMR(0.5), DPP(0.5)]:
        expected = rr(scores, 2, item_vectors=vectors)
        got = rr(scores, 2, item_vectors=vectors, categories=names, user_category_pref="x")
        assert torch.equal(got, expected), rr
    cats = torch.tensor([0, 1, 0])
    expected = CategoryCoverage(0.5)(scores, 2, categories=cats)
    got = CategoryCoverage(0.5)(scores, 2, categories=cats, item_vectors=names, catalog="x")
    assert torch.equal(got, expected)
    with pytest.raises(TypeError, match="categories must be a numeric tensor or array"):
        CategoryCoverage(0.5)(scores, 2, categories=names)
    with pytest.raises(TypeError, match="user_category_pref must be a numeric"):
        CategoryCoverage(0.5)(scores, 2, categories=cats, user_category_pref=np.array(["a"]))
    with pytest.raises(TypeError, match="item_vectors must be a numeric"):
        MMR(0.5)(scores, 2, item_vectors=np.array([["x", "y"]] * 3))
    with pytest.raises(TypeError, match="catalog must be a numeric"):
        DPP(0.5)(scores, 2, item_ids=torch.tensor([0, 1, 0]), catalog=np.array([["x"]] * 2))
    with pytest.raises(TypeError, match="scores must be a numeric"):
        relevance_order(np.array(["1", "2"]), 1)
    with pytest.raises(TypeError, match="mask must be a numeric"):
        relevance_order(scores, 1, mask=np.array(["yes", "no", "yes"]))
    with pytest.raises(ValueError, match="categories must have shape"):  # still checked if read
        CategoryCoverage(0.5)(scores, 2, categories=torch.tensor([0, 1]))


# -- minor: MMR's first pick -------------------------------------------------------------------
def test_mmr_first_pick_is_the_most_relevant_item_for_every_lambda():
    scores = torch.tensor([0.1, 0.9, 0.5])
    vectors = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    for lam in (0.0, 0.3, 0.7, 1.0):
        assert MMR(lam)(scores, 1, item_vectors=vectors).tolist() == [1], lam
        ref = mmr_reference(scores.numpy(), 1, vectors.numpy(), lambda_=lam)
        assert ref.tolist() == [1], lam
    # pure diversity after it: item 2 is orthogonal to item 1, item 0 nearly parallel
    assert MMR(0.0)(scores, 3, item_vectors=vectors).tolist() == [1, 2, 0]
    for incremental in (False, True):
        ref = mmr_reference(
            scores.numpy(), 3, vectors.numpy(), lambda_=0.0, incremental=incremental
        )
        assert ref.tolist() == [1, 2, 0]
    # masked / -inf candidates are never the first pick; ties go to the lowest index
    batch = torch.tensor([[0.9, 0.9, 0.1], [5.0, -INF, 7.0]])
    mask = torch.tensor([[False, True, True], [True, True, True]])
    out = MMR(0.0)(batch, 1, mask=mask, item_vectors=vectors.expand(2, 3, 2))
    assert out.tolist() == [[1], [2]]
