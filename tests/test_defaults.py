"""The library's defaults: trained OOV rows, the funnel-aware early-stopping monitor, calibration
after fit."""

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data import OOV_ID


def frame_df(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    item = rng.integers(0, 50, n)
    click = (rng.random(n) < 0.2 + 0.4 * (item % 2)).astype(int)
    buy = click * (rng.random(n) < 0.5)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 40, n),
            "item_id": item,
            "click": click,
            "purchase": buy,
        }
    )


def schema(df):
    return rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id")],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    ).fit(df)


def test_oov_rows_receive_gradient_in_training_and_not_in_eval():
    df = frame_df()
    s = schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(s, head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,)))
    emb = model.encoders[0]
    assert emb.id_dropout == 0.1
    batch = s.transform(df).take(torch.arange(2048))
    assert not (batch["sparse"] == OOV_ID).any()  # every id is known: only dropout reaches OOV
    oov_rows = [emb._owner_offsets[n][1] + OOV_ID for n in ("user_id", "item_id")]
    model.train()
    model.training_step(batch)["loss"].backward()
    grad = emb.tables[0].grad
    for row in oov_rows:
        assert grad[row].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.eval()  # no dropout at inference: predictions are deterministic
    model.training_step(batch)["loss"].backward()
    for row in oov_rows:
        assert emb.tables[0].grad[row].abs().sum() == 0
    assert torch.equal(model(batch), model(batch))


def test_early_stopping_auto_monitor_and_calibration_after_fit():
    df = frame_df()
    s = schema(df)
    train, val = s.transform(df.iloc[:2400]), s.transform(df.iloc[2400:])
    torch.manual_seed(0)
    model = rm.MultiTaskModel(s, head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,)))
    assert model.default_monitor == "val/auc_mean"
    stop = rm.EarlyStopping()
    trainer = rm.Trainer(max_epochs=3, batch_size=256, progress_bar=False, callbacks=[stop])
    trainer.fit(model, train, val)
    assert stop.monitor == "val/auc_mean" and stop.mode == "max"
    row = trainer.history[-1]
    assert row["val/auc_mean"] == pytest.approx((row["val/ctr_auc"] + row["val/cvr_auc"]) / 2)
    assert model.calibrated and model.calibration_method == "platt"
    assert model.training  # fit leaves the model in training mode, as before
    # the map is what calibrate() fits on the same frames (the training rows give the rates)
    again, weight = model.calibration.clone(), model.rate_prior.weight.clone()
    assert model.rate_prior.columns == ["item_id", None]  # the item's click rate helps CTR
    table = model.rate_prior.table(0).clone()
    model.calibrate(val, method="platt", prior_from=train)
    torch.testing.assert_close(model.calibration, again)
    torch.testing.assert_close(model.rate_prior.weight, weight)
    torch.testing.assert_close(model.rate_prior.table(0), table)
    model.calibrate(val, method="platt")  # without the training rows: the plain map
    assert not model.rate_prior.active and model.rate_prior.table(0) is None
    # without a validation frame, or with auto_calibrate=None, nothing is calibrated
    torch.manual_seed(0)
    plain = rm.MultiTaskModel(s, head=rm.SharedBottom(bottom_dims=(16,)), auto_calibrate=None)
    rm.Trainer(max_epochs=1, progress_bar=False).fit(plain, train, val)
    assert not plain.calibrated
    torch.manual_seed(0)
    no_val = rm.MultiTaskModel(s, head=rm.SharedBottom(bottom_dims=(16,)))
    rm.Trainer(max_epochs=1, progress_bar=False).fit(no_val, train)
    assert not no_val.calibrated


def test_auto_calibrate_survives_save_load_and_bad_values_fail(tmp_path):
    df = frame_df(n=500)
    s = schema(df)
    model = rm.MultiTaskModel(s, auto_calibrate="temperature")
    model.save_pretrained(tmp_path)
    assert rm.MultiTaskModel.from_pretrained(tmp_path).auto_calibrate == "temperature"
    with pytest.raises(ValueError, match="auto_calibrate"):
        rm.MultiTaskModel(s, auto_calibrate="isotonic")
    with pytest.raises(ValueError, match="id_dropout"):
        rm.IDEmbedding(id_dropout=1.0)


def test_explicit_monitor_is_kept():
    stop = rm.EarlyStopping("val/loss")
    assert stop.monitor == "val/loss" and stop.mode == "min"
    with pytest.raises(ValueError, match="mode"):
        rm.EarlyStopping(mode="up")


def test_concurrent_predicts_on_a_model_in_training_mode_agree():
    """Prediction never runs with id dropout on, even while other threads predict: predict
    switches the model to eval mode and does not switch it back."""
    import threading

    df = frame_df()
    s = schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(s, head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,)))
    frame = s.transform(df)
    expected = model.predict(frame, batch_size=256)
    assert not model.training
    model.train()  # as a model is after training steps
    results: list = []

    def run():
        for _ in range(5):
            results.append(model.predict(frame, batch_size=256))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 30
    for r in results:
        pd.testing.assert_frame_equal(r, expected)
