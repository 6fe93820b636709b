"""Tests for recsys_mt.metrics: classification (AUC, GAUC, log loss, calibration) and the
streaming metrics (reference values from sklearn or computed by hand). Ranking and diversity
metrics are tested in test_metrics_ranking.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from recsys_mt.metrics import (
    StreamingAUC,
    StreamingGAUC,
    StreamingLogLoss,
    auc,
    calibration_ratio,
    gauc,
    logloss,
    mse,
    rmse,
)

# --------------------------------------------------------------------------- classification


@st.composite
def _binary_data(draw):
    n = draw(st.integers(2, 60))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    if len(set(y)) < 2:
        y[0], y[1] = 0, 1
    # few distinct score values -> many ties
    s = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    w = draw(st.none() | st.lists(st.floats(0.1, 5.0, allow_nan=False), min_size=n, max_size=n))
    return np.array(y), np.array(s, dtype=float) / 3.0, None if w is None else np.array(w)


@settings(max_examples=150, deadline=None)
@given(_binary_data())
def test_auc_matches_sklearn_hypothesis(data):
    y, s, w = data
    assert auc(y, s, sample_weight=w) == pytest.approx(
        roc_auc_score(y, s, sample_weight=w), abs=1e-9
    )


def test_auc_matches_sklearn_random_ties_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    s = rng.integers(0, 50, 5000) / 7.0  # heavy ties
    w = rng.uniform(0.0, 3.0, 5000)
    assert abs(auc(y, s) - roc_auc_score(y, s)) < 1e-9
    assert abs(auc(y, s, w) - roc_auc_score(y, s, sample_weight=w)) < 1e-9
    # all scores tied -> 0.5
    assert auc(y, np.zeros(5000)) == pytest.approx(0.5, abs=1e-12)


def test_auc_hand_example():
    # pos 0.35 beats neg 0.1 only; pos 0.8 beats both -> 3/4. A tie counts 1/2.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def _gauc_reference(y, s, g, weight):
    num = den = 0.0
    for grp in np.unique(g):
        sel = g == grp
        if len(np.unique(y[sel])) < 2:
            continue
        wt = sel.sum() if weight == "impressions" else 1.0
        num += wt * roc_auc_score(y[sel], s[sel])
        den += wt
    return num / den


@pytest.mark.parametrize("weight", ["impressions", "uniform"])
def test_gauc_matches_per_group_sklearn_loop(weight):
    rng = np.random.default_rng(1)
    n = 3000
    g = rng.integers(0, 120, n) * 13 - 500  # non-contiguous, negative ids
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 10, n) / 10.0  # ties within groups
    got = gauc(y, s, g, weight=weight)
    assert got == pytest.approx(_gauc_reference(y, s, g, weight), abs=1e-9)
    # rows shuffled -> same value; torch input -> same value
    p = rng.permutation(n)
    assert gauc(y[p], s[p], g[p], weight=weight) == pytest.approx(got, abs=1e-12)
    assert gauc(torch.tensor(y), torch.tensor(s), torch.tensor(g), weight=weight) == got


def test_gauc_string_groups_and_skipped_groups():
    y = np.array([0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.9, 0.8, 0.2, 0.5, 0.3, 0.4])
    g = np.array(["a", "a", "b", "b", "b", "c", "c"])  # group c is all positive -> skipped
    # a: AUC 1 (2 rows); b: AUC 0 (3 rows) -> impressions (2*1 + 3*0)/5, uniform 0.5
    assert gauc(y, s, g) == pytest.approx(0.4)
    assert gauc(y, s, g, weight="uniform") == pytest.approx(0.5)


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    p = rng.uniform(0, 1, 1000)
    p[:5] = [0.0, 1.0, 1e-12, 1 - 1e-12, 0.5]
    w = rng.uniform(0.5, 2.0, 1000)
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    assert logloss(y, p, eps=eps) == pytest.approx(log_loss(y, pc), abs=1e-10)
    assert logloss(y, p, sample_weight=w) == pytest.approx(
        log_loss(y, pc, sample_weight=w), abs=1e-10
    )


def test_calibration_mse_rmse():
    # mean p = 1.5/4 = 0.375, positive rate 0.25 -> 1.5
    assert calibration_ratio([0, 1, 0, 0], [0.5, 0.5, 0.25, 0.25]) == pytest.approx(1.5)
    assert mse([1.0, 2.0], [1.0, 4.0]) == pytest.approx(2.0)
    assert rmse([1.0, 1.0], [4.0, -2.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no positives"):
        calibration_ratio([0, 0], [0.1, 0.2])


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "one class"),
        ([0, 0], [0.1, 0.2], "one class"),
        ([0, 1, 0], [0.1, float("nan"), 0.2], "NaN"),
        ([0, 1, 0], [0.1, 0.2], "same length"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "binary"),
    ],
)
def test_auc_bad_input(y, s, match):
    with pytest.raises(ValueError, match=match):
        auc(y, s)


def test_other_bad_input():
    with pytest.raises(ValueError, match="both positive and negative"):
        gauc([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 3])
    with pytest.raises(ValueError, match="same length"):
        gauc([0, 1], [0.1, 0.2], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        logloss([0, 1], [0.5, float("nan")])
    with pytest.raises(ValueError, match="same length"):
        logloss([0, 1], [0.5])
    with pytest.raises(ValueError, match="weight"):
        gauc([0, 1], [0.1, 0.2], [1, 1], weight="clicks")


def test_classification_torch_equals_numpy():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = rng.integers(0, 20, 500) / 19.0
    g = rng.integers(0, 30, 500)
    yt, st_, gt = torch.tensor(y), torch.tensor(s, dtype=torch.float32), torch.tensor(g)
    s32 = s.astype(np.float32)
    assert auc(y, s32) == auc(yt, st_)
    assert gauc(y, s32, g) == gauc(yt, st_, gt)
    assert logloss(y, s32) == logloss(yt, st_)
    # bool labels and a tensor with grad are accepted
    assert auc(torch.tensor(y, dtype=torch.bool), st_.clone().requires_grad_()) == auc(y, s32)


# --------------------------------------------------------------------------- streaming


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(6)
    n = 2000
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 30, n) / 29.0
    g = rng.integers(0, 100, n)
    w = rng.uniform(0.5, 2, n)
    m_auc, m_wauc, m_gauc, m_ll = (
        StreamingAUC(),
        StreamingAUC(),
        StreamingGAUC(),
        StreamingLogLoss(),
    )
    for lo in range(0, n, 300):
        sl = slice(lo, lo + 300)
        m_auc.update(torch.tensor(y[sl]), torch.tensor(s[sl]))
        m_wauc.update(y[sl], s[sl], w[sl])
        m_gauc.update(y[sl], s[sl], torch.tensor(g[sl]))
        m_ll.update(y[sl], s[sl])
    assert m_auc.compute() == pytest.approx(auc(y, s), abs=1e-12)
    assert m_wauc.compute() == pytest.approx(auc(y, s, w), abs=1e-12)
    assert m_gauc.compute() == pytest.approx(gauc(y, s, g), abs=1e-12)
    assert m_ll.compute() == pytest.approx(logloss(y, s), abs=1e-12)

    # merging two "ranks" (objects or state dicts) equals one-shot
    a, b = StreamingGAUC(), StreamingGAUC()
    a.update(y[:1000], s[:1000], g[:1000])
    b.update(y[1000:], s[1000:], g[1000:])
    assert a.merge(b.state()).compute() == pytest.approx(gauc(y, s, g), abs=1e-12)
    la, lb = StreamingLogLoss(), StreamingLogLoss()
    la.update(y[:700], s[:700])
    lb.update(y[700:], s[700:])
    assert la.merge(lb).compute() == pytest.approx(logloss(y, s), abs=1e-12)

    m_auc.reset()
    with pytest.raises(ValueError, match="before any update"):
        m_auc.compute()
