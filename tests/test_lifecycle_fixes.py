"""A fitted model stays a normal torch module: it fits again (early stopping restores weights
into it), loads state dicts, and a damaged weights file is a CheckpointError."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from _calibrated_helpers import fit_calibrated

import recsys_mt as rm


@pytest.fixture(scope="module")
def fitted():
    return fit_calibrated()


def test_after_fit_no_buffer_is_an_inference_tensor(fitted):
    model, *_ = fitted
    assert model.rate_prior.active  # the calibration installed a rate prior's tables too
    inference = [n for n, b in model.named_buffers() if b.is_inference()]
    assert not inference, inference
    model.load_state_dict(copy.deepcopy(model.state_dict()))  # copies into every buffer


def test_a_fitted_model_fits_again_with_early_stopping_and_is_recalibrated(fitted):
    model, _, train, val, test = fitted
    model = copy.deepcopy(model)
    before = model.calibration.clone()
    trainer = rm.Trainer(
        max_epochs=3, batch_size=512, progress_bar=False, callbacks=[rm.EarlyStopping()]
    )
    trainer.fit(model, train, val)  # EarlyStopping loads the best weights back at the end
    assert len(trainer.history) == 3
    assert not torch.equal(model.calibration, before)  # fitted anew on the retrained model
    assert not any(b.is_inference() for b in model.buffers())
    # calibrating by hand inside inference mode still installs loadable tensors
    with torch.inference_mode():
        model.calibrate(val, method="platt", prior_from=train)
    model.load_state_dict(copy.deepcopy(model.state_dict()))


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_weights_file_is_a_checkpoint_error(fitted, tmp_path, damage):
    model, *_ = fitted
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\xff" * 64}[damage]
    )
    with pytest.raises(rm.CheckpointError, match="model.safetensors"):
        rm.MultiTaskModel.from_pretrained(tmp_path / "m")


def test_a_checkpoint_of_a_calibrated_model_resumes_into_a_fresh_one(fitted, tmp_path):
    model, _, train, val, test = fitted
    model = copy.deepcopy(model)
    assert model.rate_prior.active
    ckpt = rm.ModelCheckpoint(tmp_path / "ck")
    rm.Trainer(max_epochs=1, batch_size=512, progress_bar=False, callbacks=[ckpt]).fit(
        model, train
    )  # no validation frame: the first fit's calibration and prior stay
    schema = model.schema
    fresh = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,)))
    assert not fresh.rate_prior.active
    trainer = rm.Trainer(max_epochs=1, batch_size=512, progress_bar=False)
    trainer.fit(fresh, train, resume_from=ckpt.last_path)  # nothing left to train: loads only
    assert fresh.rate_prior.columns == model.rate_prior.columns
    for (k, a), (k2, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    pd.testing.assert_frame_equal(fresh.predict(test), model.predict(test), check_exact=True)
    # a checkpoint of another architecture is refused and leaves the layout as it was
    other = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,), tower_dims=(8,)))
    with pytest.raises(ValueError, match="another architecture"):
        rm.Trainer(max_epochs=1, progress_bar=False).fit(other, train, resume_from=ckpt.last_path)
    assert not other.rate_prior.active


def test_a_val_monitor_without_a_validation_frame_is_refused_before_training(fitted, tmp_path):
    model, _, train, *_ = fitted
    model = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callbacks = [rm.EarlyStopping(), rm.ModelCheckpoint(tmp_path / "ck", monitor="val/loss")]
    for cb in callbacks:
        with pytest.raises(ValueError, match=r"monitors 'val/.*no validation frame"):
            rm.Trainer(max_epochs=1, batch_size=512, progress_bar=False, callbacks=[cb]).fit(
                model, train
            )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    trainer = rm.Trainer(
        max_epochs=1, batch_size=512, progress_bar=False, callbacks=[rm.EarlyStopping("train/loss")]
    )
    trainer.fit(model, train)  # a training metric needs no validation frame
    assert len(trainer.history) == 1


def test_calibrate_on_a_frame_it_cannot_fit_keeps_the_current_map(fitted):
    model, _, train, val, test = fitted
    model = copy.deepcopy(model)
    want = model.predict(test)
    no_clicks = val.subset(torch.nonzero(val.column("ctr") == 0).squeeze(1))
    with pytest.raises(rm.NothingToCalibrate, match="'ctr' \\(one class only"):
        model.calibrate(no_clicks, method="platt", prior_from=train)
    pd.testing.assert_frame_equal(model.predict(test), want, check_exact=True)
    assert model.calibration_method == "platt" and model.rate_prior.active
    # at the end of a fit the old map is stale: reset to the identity, with a warning
    with pytest.warns(UserWarning, match="reset to the identity"):
        rm.Trainer(max_epochs=1, batch_size=512, progress_bar=False).fit(model, train, no_clicks)
    assert not model.calibrated and model.calibration_method is None


def test_a_model_in_another_dtype_scores_and_keeps_its_dtype_through_save_load(fitted, tmp_path):
    model, _, train, val, test = fitted
    want = model.predict(test)
    half = copy.deepcopy(model).to(torch.bfloat16)
    got = half.predict(test)  # float inputs follow the model's dtype
    assert (got - want).abs().to_numpy().max() < 0.05
    double = copy.deepcopy(model).to(torch.float64)
    p64 = double.predict(test)
    double.save_pretrained(tmp_path / "m64")
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m64")
    assert next(loaded.parameters()).dtype == torch.float64
    pd.testing.assert_frame_equal(loaded.predict(test), p64, check_exact=True)
