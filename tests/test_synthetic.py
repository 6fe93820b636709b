"""Tests for ``recsys_mt.data.synthetic``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from recsys_mt.data.synthetic import (
    CATEGORY_NOUNS,
    HIGH_QUALITY_WORDS,
    LOW_QUALITY_WORDS,
    FunnelData,
    make_funnel_data,
)

LABELS = ["click", "purchase", "repurchase"]
TRUTH = ["true_ctr", "true_cvr", "true_repurchase", "true_ctcvr"]


@pytest.fixture(scope="module")
def data() -> FunnelData:
    return make_funnel_data(seed=0)


@pytest.fixture(scope="module")
def small() -> FunnelData:
    return make_funnel_data(n_users=200, n_items=150, n_impressions=5000, seed=3)


def test_columns_and_dtypes(data: FunnelData) -> None:
    df = data.impressions
    expected = {
        "user_id": np.int64,
        "item_id": np.int64,
        "category": np.int64,
        "price": np.float64,
        "age": np.float64,
        "timestamp": np.int64,
        "click": np.int64,
        "purchase": np.int64,
        "repurchase": np.int64,
        "true_ctr": np.float64,
        "true_cvr": np.float64,
        "true_repurchase": np.float64,
        "true_ctcvr": np.float64,
    }
    for col, dtype in expected.items():
        assert df[col].dtype == dtype, col
    assert {"hist_items", "title"} <= set(df.columns)
    assert len(df) == 200_000
    assert df["user_id"].between(0, 1999).all()
    assert df["item_id"].between(0, 999).all()
    assert isinstance(df["title"].iloc[0], str)
    assert isinstance(df["hist_items"].iloc[0], list)


def test_rows_agree_with_catalog(data: FunnelData) -> None:
    df, items, users = data.impressions, data.items, data.users
    assert list(items["item_id"]) == list(range(len(items)))
    assert list(users["user_id"]) == list(range(len(users)))
    iid = df["item_id"].to_numpy()
    np.testing.assert_array_equal(df["category"].to_numpy(), items["category"].to_numpy()[iid])
    np.testing.assert_array_equal(df["price"].to_numpy(), items["price"].to_numpy()[iid])
    assert (df["title"].to_numpy() == items["title"].to_numpy()[iid]).all()
    np.testing.assert_array_equal(
        df["age"].to_numpy(), users["age"].to_numpy()[df["user_id"].to_numpy()]
    )
    assert (items["price"] > 0).all()
    assert items["category"].between(0, 19).all()
    assert items["category"].nunique() == 20
    assert {"quality", "title", "category", "price"} <= set(items.columns)


def test_price_is_category_dependent(data: FunnelData) -> None:
    log_price = np.log(data.items["price"])
    by_cat = log_price.groupby(data.items["category"]).mean()
    assert by_cat.max() - by_cat.min() > 1.0


def test_timestamps_strictly_increasing(data: FunnelData) -> None:
    ts = data.impressions["timestamp"].to_numpy()
    assert (np.diff(ts) > 0).all()


def test_deterministic_given_seed() -> None:
    kw = dict(n_users=100, n_items=80, n_categories=7, n_impressions=3000)
    a = make_funnel_data(**kw, seed=11)
    b = make_funnel_data(**kw, seed=11)
    c = make_funnel_data(**kw, seed=12)
    pd.testing.assert_frame_equal(a.impressions, b.impressions)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert not a.impressions["true_ctr"].equals(c.impressions["true_ctr"])
    assert not a.items["title"].equals(c.items["title"])


def test_funnel_consistency(data: FunnelData) -> None:
    df = data.impressions
    for col in LABELS:
        assert set(np.unique(df[col])) <= {0, 1}
    assert (df["purchase"] <= df["click"]).all()
    assert (df["repurchase"] <= df["purchase"]).all()
    for col in TRUTH:
        assert df[col].between(0.0, 1.0).all()
    np.testing.assert_allclose(df["true_ctcvr"], df["true_ctr"] * df["true_cvr"])


def test_base_rates_in_range(data: FunnelData) -> None:
    df = data.impressions
    clicked = df["click"] == 1
    bought = df["purchase"] == 1
    assert 0.10 <= df["click"].mean() <= 0.20
    assert 0.15 <= df.loc[clicked, "purchase"].mean() <= 0.30
    assert 0.25 <= df.loc[bought, "repurchase"].mean() <= 0.40


def _assert_mean_matches(labels: pd.Series, probs: pd.Series) -> None:
    p = probs.to_numpy()
    se = math.sqrt(float(np.sum(p * (1 - p)))) / len(p)
    assert abs(labels.mean() - p.mean()) < 4.5 * se, (labels.mean(), p.mean(), se)


def test_labels_follow_true_probabilities(data: FunnelData) -> None:
    df = data.impressions
    clicked = df["click"] == 1
    bought = df["purchase"] == 1
    _assert_mean_matches(df["click"], df["true_ctr"])
    _assert_mean_matches(df.loc[clicked, "purchase"], df.loc[clicked, "true_cvr"])
    _assert_mean_matches(df.loc[bought, "repurchase"], df.loc[bought, "true_repurchase"])
    _assert_mean_matches(df["purchase"], df["true_ctcvr"])
    # calibration within probability bins, not only on average
    bins = pd.qcut(df["true_ctr"], 5, labels=False)
    for _, g in df.groupby(bins):
        _assert_mean_matches(g["click"], g["true_ctr"])


def test_intercepts_hit_requested_bases() -> None:
    d = make_funnel_data(
        n_users=300,
        n_items=200,
        n_impressions=20_000,
        ctr_base=0.3,
        cvr_base=0.5,
        repurchase_base=0.1,
        seed=5,
    )
    df = d.impressions
    assert df["true_ctr"].mean() == pytest.approx(0.3, abs=1e-6)
    w = df["true_ctr"]
    assert np.average(df["true_cvr"], weights=w) == pytest.approx(0.5, abs=1e-6)
    w2 = df["true_ctcvr"]
    assert np.average(df["true_repurchase"], weights=w2) == pytest.approx(0.1, abs=1e-6)


def test_oracle_aucs_in_range(data: FunnelData) -> None:
    df = data.impressions
    clicked = df["click"] == 1
    bought = df["purchase"] == 1
    aucs = {
        "ctr": roc_auc_score(df["click"], df["true_ctr"]),
        "cvr": roc_auc_score(df.loc[clicked, "purchase"], df.loc[clicked, "true_cvr"]),
        "rep": roc_auc_score(df.loc[bought, "repurchase"], df.loc[bought, "true_repurchase"]),
    }
    for name, auc in aucs.items():
        assert 0.70 <= auc <= 0.85, (name, auc)


def test_interaction_zero_removes_affinity_signal() -> None:
    kw = dict(n_users=300, n_items=200, n_impressions=20_000, noise=0.0, targeted_frac=0.0, seed=2)
    with_aff = make_funnel_data(**kw)
    without = make_funnel_data(**kw, interaction=0.0)

    def corr_with_affinity(d: FunnelData) -> float:
        u = d.info["user_vectors"][d.impressions["user_id"].to_numpy()]
        v = d.info["item_vectors"][d.impressions["item_id"].to_numpy()]
        aff = np.einsum("nd,nd->n", u, v)
        logit = np.log(d.impressions["true_ctr"] / (1 - d.impressions["true_ctr"]))
        return float(np.corrcoef(aff, logit)[0, 1])

    assert corr_with_affinity(with_aff) > 0.3
    assert abs(corr_with_affinity(without)) < 0.1


def test_consumables_repurchase_more(data: FunnelData) -> None:
    df = data.impressions
    cons = df["category"].isin(data.info["consumable_categories"])
    assert cons.any() and (~cons).any()
    assert df.loc[cons, "true_repurchase"].mean() > df.loc[~cons, "true_repurchase"].mean() + 0.1


def test_titles_carry_quality_signal(data: FunnelData) -> None:
    items = data.items
    words = items["title"].str.split()
    has_high = words.apply(lambda ws: any(w in HIGH_QUALITY_WORDS for w in ws))
    has_low = words.apply(lambda ws: any(w in LOW_QUALITY_WORDS for w in ws))
    q = items["quality"]
    assert 0.05 < has_high.mean() < 0.6 and 0.05 < has_low.mean() < 0.6
    assert q[has_high].mean() > q[~has_high].mean() + 0.5
    assert q[has_low].mean() < q[~has_low].mean() - 0.5
    # informative but not perfect: some low-quality items still look premium
    assert (q[has_high] < 0).any()
    # titles rarely repeat, and the category noun is in the title
    assert items["title"].nunique() >= 0.95 * len(items)
    for title, cat in zip(items["title"], items["category"]):
        nouns = CATEGORY_NOUNS[cat % len(CATEGORY_NOUNS)][0]
        assert title.split()[-1] in nouns
    sneakers = items.loc[items["category"] == 3, "title"]
    assert sneakers.str.contains("sneakers|trainers").all()


def test_many_categories() -> None:
    d = make_funnel_data(n_users=50, n_items=400, n_categories=70, n_impressions=1000, seed=1)
    assert d.items["category"].nunique() == 70
    assert d.items["title"].nunique() >= 0.95 * 400


def test_history_valid_and_informative(data: FunnelData) -> None:
    users = data.users
    lengths = users["hist_items"].apply(len)
    assert lengths.between(5, 30).all()
    assert lengths.min() < lengths.max()
    all_ids = np.concatenate(users["hist_items"].apply(np.asarray).to_list())
    assert all_ids.min() >= 0 and all_ids.max() < len(data.items)
    assert users["hist_items"].apply(lambda h: len(set(h)) == len(h)).all()
    # impressions carry the user's history
    df = data.impressions
    for row in df.sample(50, random_state=0).itertuples():
        assert row.hist_items == users["hist_items"].iloc[row.user_id]
    # history items have higher affinity with the user than random items
    U, V = data.info["user_vectors"], data.info["item_vectors"]
    A = U @ V.T
    hist_aff = np.mean([A[u, h].mean() for u, h in enumerate(users["hist_items"])])
    assert hist_aff > A.mean() + 0.5 * A.std()


def test_custom_hist_len() -> None:
    d = make_funnel_data(n_users=40, n_items=10, n_impressions=500, hist_len=(0, 10), seed=4)
    lengths = d.users["hist_items"].apply(len)
    assert lengths.between(0, 10).all()
    d = make_funnel_data(n_users=20, n_items=30, n_impressions=200, hist_len=(3, 3), seed=4)
    assert (d.users["hist_items"].apply(len) == 3).all()


def test_impressions_mix_affinities(data: FunnelData) -> None:
    U, V = data.info["user_vectors"], data.info["item_vectors"]
    df = data.impressions
    aff = np.einsum("nd,nd->n", U[df["user_id"]], V[df["item_id"]])
    assert aff.std() > 0.5 * (U @ V.T).std()
    assert (aff < 0).mean() > 0.1 and (aff > 0).mean() > 0.5


def test_age_nan_fraction(data: FunnelData) -> None:
    assert data.users["age"].isna().sum() == 20
    assert 0.001 < data.impressions["age"].isna().mean() < 0.04
    age = data.users["age"].dropna()
    assert age.between(16, 80).all()
    d0 = make_funnel_data(n_users=100, n_items=50, n_impressions=1000, age_nan_frac=0.0)
    assert not d0.impressions["age"].isna().any()
    d1 = make_funnel_data(n_users=100, n_items=50, n_impressions=1000, age_nan_frac=0.5)
    assert d1.users["age"].isna().sum() == 50


def test_tiny_sizes() -> None:
    d = make_funnel_data(
        n_users=1, n_items=1, n_categories=1, n_impressions=1, hist_len=(0, 1), latent_dim=1
    )
    assert len(d.impressions) == 1
    assert d.impressions["item_id"].iloc[0] == 0
    assert d.users["hist_items"].iloc[0] in ([], [0])


@pytest.mark.parametrize("by", ["random", "time"])
def test_split(small: FunnelData, by: str) -> None:
    df = small.impressions
    parts = small.split((0.8, 0.1, 0.1), seed=1, by=by)
    assert len(parts) == 3
    assert [len(p) for p in parts] == [4000, 500, 500]
    stamps = [set(p["timestamp"]) for p in parts]
    assert not (stamps[0] & stamps[1]) and not (stamps[0] & stamps[2])
    assert not (stamps[1] & stamps[2])
    assert set().union(*stamps) == set(df["timestamp"])
    for p in parts:
        assert list(p.columns) == list(df.columns)
        assert list(p.index) == list(range(len(p)))
    if by == "time":
        assert parts[0]["timestamp"].max() < parts[1]["timestamp"].min()
        assert parts[1]["timestamp"].max() < parts[2]["timestamp"].min()
    else:
        again = small.split((0.8, 0.1, 0.1), seed=1, by=by)
        other = small.split((0.8, 0.1, 0.1), seed=2, by=by)
        pd.testing.assert_frame_equal(parts[1], again[1])
        assert set(other[1]["timestamp"]) != stamps[1]
        # a random split is not a time split
        assert parts[0]["timestamp"].max() > parts[1]["timestamp"].min()


def test_split_two_parts(small: FunnelData) -> None:
    a, b = small.split((0.5, 0.5))
    assert len(a) + len(b) == len(small.impressions)
    assert abs(len(a) - len(b)) <= 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fractions": (0.8, 0.3)},
        {"fractions": (1.0, 0.0)},
        {"fractions": (-0.2, 1.2)},
        {"fractions": ()},
        {"fractions": "abc"},
        {"by": "user"},
    ],
)
def test_split_bad_arguments(small: FunnelData, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        small.split(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_users": 0},
        {"n_items": 0},
        {"n_categories": 0},
        {"n_impressions": 0},
        {"n_users": 2.5},
        {"n_users": True},
        {"latent_dim": 0},
        {"seed": -1},
        {"hist_len": (5,)},
        {"hist_len": (10, 5)},
        {"hist_len": (-1, 5)},
        {"hist_len": (5, 2000)},
        {"ctr_base": 0.0},
        {"ctr_base": 1.0},
        {"cvr_base": 1.5},
        {"repurchase_base": -0.1},
        {"repurchase_base": float("nan")},
        {"noise": -1.0},
        {"interaction": float("inf")},
        {"age_nan_frac": 1.5},
        {"targeted_frac": -0.1},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    params = dict(n_users=20, n_items=50, n_impressions=100)
    params.update(kwargs)
    with pytest.raises(ValueError):
        make_funnel_data(**params)
