"""rm.refresh: folding a newer labelled period into a trained model.

New users of the validation period are unknown to the fitted model; after a refresh their own
propensity is learned and scored on a later period, the calibration fitted by ``fit`` is kept,
and bad input changes nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data import SchemaError
from recsys_mt.metrics import auc

pytestmark = pytest.mark.filterwarnings("ignore::recsys_mt.OOVWarning")  # new users, by design


def period(users: np.ndarray, rows_per_user: int, bias: np.ndarray, seed: int) -> pd.DataFrame:
    """``rows_per_user`` rows per user; click ~ Bernoulli(σ(user bias + item bias − 0.3))."""
    g = np.random.default_rng(seed)
    user = np.repeat(users, rows_per_user)
    item = g.integers(0, 60, len(user))
    item_bias = np.linspace(-1.0, 1.0, 60)
    p = 1 / (1 + np.exp(-(bias[user] + item_bias[item] - 0.3)))
    click = (g.random(len(user)) < p).astype(np.float32)
    return pd.DataFrame({"user_id": user, "item_id": item, "click": click})


@pytest.fixture(scope="module")
def world():
    bias = np.random.default_rng(0).normal(0.0, 1.5, 200)  # strong personal propensities
    train = period(np.arange(0, 120), 40, bias, seed=1)
    val = pd.concat(
        [period(np.arange(120, 200), 30, bias, 2), period(np.arange(0, 40), 5, bias, 3)]
    )
    test = period(np.arange(120, 200), 20, bias, seed=4)  # the validation period's new users
    schema = rm.Schema(
        [rm.Sparse("user_id", dim=8), rm.Sparse("item_id", dim=8)],
        tasks=[rm.Task("ctr", "click")],
        min_groups=None,
    )
    frame = schema.fit_transform(train)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(32,)))
    trainer = rm.Trainer(max_epochs=8, lr=1e-2, seed=0, progress_bar=False, device="cpu")
    trainer.fit(model, frame, schema.transform(val))
    return model, schema, train, val.reset_index(drop=True), test


def test_refresh_learns_the_new_periods_users_and_keeps_the_calibration(world):
    model, schema, train, val, test = world
    before = auc(test["click"].to_numpy(), model.predict(test)["ctr"].to_numpy())
    calibration = model.calibration.clone()
    growth = rm.refresh(model, train, val, epochs=2, lr=1e-2, seed=0, progress_bar=False)
    assert growth.added == {"user_id": 80, "item_id": 0}
    assert model.schema is not schema and model.schema.vocab_size("user_id") == 202
    after = auc(test["click"].to_numpy(), model.predict(test)["ctr"].to_numpy())
    # before: every test user is unknown, only the item speaks; after: their own propensity
    assert after > before + 0.1, (before, after)  # measured: 0.618 -> 0.796
    assert torch.equal(model.calibration, calibration)


def test_bad_input_changes_nothing(world):
    model, schema, train, val, _ = world
    fresh = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(32,)))
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        rm.refresh(fresh, train, val, epochs=0)
    with pytest.raises(ValueError, match="not max_epochs"):
        rm.refresh(fresh, train, val, max_epochs=3)
    with pytest.raises(TypeError, match="new must be a pandas DataFrame"):
        rm.refresh(fresh, train, schema.transform(val))
    with pytest.raises(SchemaError, match="item_id"):
        rm.refresh(fresh, train, val.drop(columns=["item_id"]))
    with pytest.raises(SchemaError, match="click"):
        rm.refresh(fresh, train.drop(columns=["click"]), val)
    assert fresh.schema is schema
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_training_rows_keep_their_leakage_safe_funnel_statistics(world, monkeypatch):
    """With FunnelStats, the refresh trains on the training rows' out-of-fold values (never
    their own labels), exactly as fit_transform encoded them, and on the new rows' values from
    the training tables."""
    _, _, train, val, _ = world
    schema = rm.Schema(
        [
            rm.Sparse("user_id", dim=8),
            rm.Sparse("item_id", dim=8),
            rm.FunnelStats("item_stats", entity="item_id"),
        ],
        tasks=[rm.Task("ctr", "click")],
        min_groups=None,
    )
    fitted = schema.fit_transform(train)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,)))
    seen = []
    monkeypatch.setattr(rm.Trainer, "fit", lambda self, m, frame, *a, **k: seen.append(frame))
    rm.refresh(model, train, val, epochs=1)
    dense = seen[0]["dense"]
    assert torch.equal(dense[: len(train)], fitted["dense"])
    assert torch.equal(dense[len(train) :], schema.transform(val)["dense"])
    assert not torch.equal(dense[: len(train)], schema.transform(train)["dense"])  # in-sample
