"""Post-hoc calibration (temperature / Platt), ECE, reliability curves and their plot."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.calibration import calibration_curve

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.metrics import ece, plot_reliability, reliability_curve
from recsys_mt.model import apply_calibration, fit_calibration
from recsys_mt.model.calibration import fit_scaling, observed_rows

# --------------------------------------------------------------------------- pure functions


def _bernoulli_logits(n=100_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(z)).double()
    return z, y


def test_temperature_recovers_a_known_scale():
    z, y = _bernoulli_logits()
    params, skipped = fit_calibration((3 * z)[:, None], y[:, None], [None], [True])
    assert skipped == {}
    assert params[0, 0].item() == pytest.approx(1 / 3, rel=0.05)
    assert params[0, 1].item() == 0.0


def test_platt_recovers_scale_and_shift():
    z, y = _bernoulli_logits(seed=1)
    a, b = fit_scaling(2 * z - 1, y, fit_bias=True)
    assert a == pytest.approx(0.5, rel=0.05)
    assert b == pytest.approx(0.5, abs=0.05)


def test_child_task_is_fitted_on_the_parents_positive_rows_only():
    z, y = _bernoulli_logits(n=20_000, seed=2)
    parent = (torch.arange(len(z)) % 3 == 0).double()
    child_logits = torch.where(parent == 1, 2 * z, torch.full_like(z, 50.0))  # junk off-funnel
    logits = torch.stack([torch.zeros_like(z), child_logits], 1)
    labels = torch.stack([parent, y * parent], 1)
    params, _ = fit_calibration(logits, labels, [None, 0], [True, True], method="platt")
    sel = parent == 1
    assert observed_rows(labels, [None, 0])[:, 1].equal(sel)
    assert tuple(params[1].tolist()) == fit_scaling(2 * z[sel], y[sel], fit_bias=True)
    assert params[1, 0].item() == pytest.approx(0.5, rel=0.1)


def test_identity_for_regression_small_and_one_class_tasks():
    z, y = _bernoulli_logits(n=400, seed=3)
    logits = torch.stack([z, z, z, 5 * z], 1)
    labels = torch.stack([y, torch.zeros_like(y), y, z + 1], 1)
    params, skipped = fit_calibration(
        logits, labels, [None, None, 0, None], [True, True, True, False], "platt", min_rows=300
    )
    assert params[1].tolist() == [1.0, 0.0] and params[3].tolist() == [1.0, 0.0]
    assert params[2].tolist() == [1.0, 0.0]  # fewer than 300 positive parents
    assert set(skipped) == {1, 2}
    assert "one class" in skipped[1] and "min_rows=300" in skipped[2]
    out = apply_calibration(logits.float(), params.float())
    assert torch.equal(out[:, 1:], logits.float()[:, 1:])  # identity columns bit-exact
    params, skipped = fit_calibration(logits, labels, [None] * 4, [True] * 3 + [False], "none")
    assert params.tolist() == [[1.0, 0.0]] * 4 and skipped == {}


def test_calibration_function_errors():
    z, y = _bernoulli_logits(n=100)
    with pytest.raises(ValueError, match="method must be one of"):
        fit_calibration(z[:, None], y[:, None], [None], [True], method="isotonic")
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        fit_calibration(z, y, [None], [True])
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_calibration(torch.full((100, 1), float("nan")), y[:, None], [None], [True])
    with pytest.raises(ValueError, match=r"\[T, 2\]"):
        apply_calibration(z[:, None], torch.ones(2, 2))


# --------------------------------------------------------------------------- metrics


def test_ece_by_hand():
    y, p = [0, 1, 1, 1], [0.2, 0.4, 0.7, 0.9]
    # bins [0, .5] and (.5, 1]: |0.5 - 0.3| * 2/4 + |1.0 - 0.8| * 2/4
    assert ece(y, p, n_bins=2) == pytest.approx(0.2)
    # right-closed bins: 0.5 lands in the first bin -> |1/3 - 0.4| * 3/4 + |1 - 0.9| / 4
    assert ece([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9], n_bins=2) == pytest.approx(0.075)
    # quantile edges [0.1, 0.25, 0.4]: |0 - 0.15| * 2/4 + |0.5 - 0.35| * 2/4
    assert ece([0, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], 2, "quantile") == pytest.approx(0.15)
    assert ece(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])) == 0.0
    assert ece([0, 1], [0.5, 0.5], n_bins=1) == 0.0


def test_reliability_curve_by_hand_and_against_sklearn():
    mean_pred, frac_pos, counts = reliability_curve(
        [0, 1, 1, 0, 1], [0.05, 0.1, 0.15, 0.95, 0.85], n_bins=4
    )  # bins [0, .25] and (.75, 1]; the two empty middle bins are dropped
    np.testing.assert_allclose(mean_pred, [0.1, 0.9])
    np.testing.assert_allclose(frac_pos, [2 / 3, 0.5])
    assert counts.tolist() == [3, 2] and counts.dtype == np.int64
    rng = np.random.default_rng(0)
    p = rng.random(3000) ** 2
    y = (rng.random(3000) < p).astype(int)
    for strategy in ("uniform", "quantile"):
        got_pred, got_pos, n = reliability_curve(y, p, 10, strategy)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
        np.testing.assert_allclose(got_pred, prob_pred)
        np.testing.assert_allclose(got_pos, prob_true)
        assert n.sum() == 3000
        expected = np.sum(np.abs(got_pos - got_pred) * n) / 3000
        assert ece(y, p, 10, strategy) == pytest.approx(expected)
    t_pred, _, t_n = reliability_curve(torch.tensor(y), torch.tensor(p), 10)
    assert isinstance(t_pred, torch.Tensor) and t_n.dtype == torch.int64


@pytest.mark.parametrize(
    "args, match",
    [
        (([0, 1], [0.5]), "same length"),
        (([0, 1], [0.5, 1.5]), r"in \[0, 1\]"),
        (([0, 1], [-0.1, 0.5]), r"in \[0, 1\]"),
        (([0, 1], [0.5, float("nan")]), "NaN"),
        (([0, 2], [0.5, 0.5]), "binary"),
        (([], []), "empty"),
        (([0, 1], [0.5, 0.5], 0), "n_bins"),
        (([0, 1], [0.5, 0.5], 10, "kmeans"), "strategy"),
    ],
)
def test_calibration_metric_errors(args, match):
    for fn in (ece, reliability_curve):
        with pytest.raises(ValueError, match=match):
            fn(*args)


def test_plot_reliability_returns_axes():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    p = rng.random(500) * 0.3
    y = (rng.random(500) < p).astype(int)
    ax = plot_reliability(y, {"raw": np.clip(p * 2, 0, 1), "calibrated": torch.tensor(p)})
    assert isinstance(ax, mpl.axes.Axes)
    assert len(ax.lines) == 3  # the diagonal and one curve per entry
    assert "ECE" in ax.get_legend().get_texts()[1].get_text()
    _, own = plt.subplots()
    assert plot_reliability({"a": y}, {"a": p}, n_bins=5, ax=own) is own
    with pytest.raises(ValueError, match="non-empty"):
        plot_reliability(y, {})
    with pytest.raises(ValueError, match="no labels for"):
        plot_reliability({"a": y}, {"b": p})
    plt.close("all")


def test_plot_reliability_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install recsys-mt\[plot\]"):
        plot_reliability([0, 1], {"a": [0.2, 0.8]})


# --------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def trained():
    """A small model trained on synthetic funnel data, then made 3x over-confident."""
    data = make_funnel_data(
        n_users=150, n_items=150, n_categories=8, n_impressions=24_000, seed=5, ctr_base=0.25
    )
    train_df, val_df, test_df = data.split((0.5, 0.25, 0.25), seed=5)
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Sparse("category")],
        tasks=[
            rm.Task("ctr", label="click"),
            rm.Task("cvr", label="purchase", given="ctr"),
            rm.Task("repurchase", given="cvr"),
        ],
    )
    train = schema.fit_transform(train_df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(32,), tower_dims=(16,)))
    rm.Trainer(max_epochs=2, batch_size=512, lr=5e-3, progress_bar=False, seed=0).fit(model, train)
    with torch.no_grad():  # every tower's output layer (weights and bias) times 3
        for p in model.head.towers.out.parameters():
            p.mul_(3.0)
    return model, schema.transform(val_df), schema.transform(test_df), test_df


def _table(model, frame):
    return model.evaluate(frame).set_index(["task", "metric"])["value"]


def test_calibration_fixes_an_overconfident_model(trained):
    model, val, test, _ = trained
    model.calibrate(val, method="none")
    assert not model.calibrated and model.calibration_method is None
    batch = test.take(torch.arange(64))
    model.eval()  # no id dropout: forward is deterministic
    raw_logits, raw_loss = model(batch), model.training_step(batch)["loss"]
    before = _table(model, test)
    model.calibrate(val)  # temperature
    after = _table(model, test)
    assert model.calibrated and "calibration='temperature'" in repr(model)
    assert model.calibration[:2, 0].tolist() == pytest.approx([1 / 3, 1 / 3], rel=0.25)
    assert (model.calibration[:, 1] == 0).all()
    for task in ("ctr", "cvr"):
        assert after[task, "logloss"] < before[task, "logloss"] - 0.02
        assert after[task, "ece"] < 0.5 * before[task, "ece"]
        assert after[task, "auc"] == before[task, "auc"]  # rankings are untouched
    assert after["ctcvr", "ece"] < before["ctcvr", "ece"]
    assert after["ctcvr", "logloss"] < before["ctcvr", "logloss"]
    # forward and training never see the calibration
    assert torch.equal(model(batch), raw_logits)
    assert torch.equal(model.training_step(batch)["loss"], raw_loss)
    assert torch.equal(model.predict_logits(test), model.predict_logits(test, calibrated=False))
    pred = model.predict(test)
    assert np.allclose(pred.ctcvr, pred.ctr * pred.cvr, rtol=1e-5)
    np.testing.assert_allclose(
        pred.ctr,
        torch.sigmoid(model.predict_logits(test)[:, 0] * model.calibration[0, 0]),
        rtol=1e-6,
    )
    platt = _table(model.calibrate(val, method="platt"), test)
    assert platt["ctr", "logloss"] < before["ctr", "logloss"] - 0.02
    # a·z + b keeps the order; in float32, two logits a few ulps apart may become one
    # probability, a tie worth ~1e-7 of AUC
    assert platt["ctr", "auc"] == pytest.approx(before["ctr", "auc"], abs=1e-6)


def test_calibration_round_trips_and_old_checkpoints_load(trained, tmp_path):
    model, val, test, test_df = trained
    model.calibrate(val, method="platt")
    pred = model.predict(test)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["calibration"] == "platt"
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    assert loaded.calibrated and loaded.calibration_method == "platt"
    assert torch.equal(loaded.calibration, model.calibration)
    pd.testing.assert_frame_equal(pred, loaded.predict(test_df), check_exact=True)
    # a checkpoint written before calibration existed: no buffer, no config key
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))
    del state["calibration"]
    save_file(state, str(weights), metadata={"format": "pt"})
    del cfg["calibration"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    old = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    assert not old.calibrated and old.calibration_method is None
    raw = model.probabilities(model.predict_logits(test))[0].numpy()
    np.testing.assert_array_equal(old.predict(test)[["ctr", "cvr", "repurchase"]].values, raw)
    # a strict load_state_dict of old weights (e.g. a trainer checkpoint) also works
    model.load_state_dict(state)
    assert not model.calibrated


def test_calibrate_errors_and_warnings(trained):
    model, val, _, test_df = trained
    with pytest.raises(ValueError, match="calibrate needs labels"):
        model.calibrate(test_df.drop(columns=["click", "purchase", "repurchase"]))
    with pytest.raises(ValueError, match="method must be one of"):
        model.calibrate(val, method="isotonic")
    n_buy = int(val["labels"][:, 1].sum())
    with pytest.warns(UserWarning, match=r"'repurchase' \(\d+ observed rows < min_rows"):
        model.calibrate(val, min_rows=n_buy + 1)
    assert model.calibration[2].tolist() == [1.0, 0.0]
    assert model.calibration[0, 0] != 1.0
