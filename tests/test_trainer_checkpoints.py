"""Tests of the Trainer's early stopping and checkpoints: EarlyStopping restores the best
weights (and resolves its mode, and names a missing key), a resumed run is bit-identical to an
uninterrupted one, and a checkpoint holds plain data only.

Toy models from tests/_trainer_helpers.py.
"""

from __future__ import annotations

import pytest
import torch
from _trainer_helpers import LogReg, assert_same, make_frame, state, trainer

from recsys_mt.train import Callback, EarlyStopping, ModelCheckpoint
from recsys_mt.train.callbacks import resolve_mode

# --------------------------------------------------------------------------- early stopping


class Scripted(LogReg):
    """Trains normally; its validation loss follows a script, whatever the weights."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)
        self.calls = 0

    def validation_metrics(self, frame, batch_size):
        value = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return {"loss": value, "auc": 1.0 - value}


class Snapshots(Callback):
    def __init__(self):
        self.states = {}

    def on_train_epoch_end(self, trainer, model):
        self.states[trainer.current_epoch] = state(model)


@pytest.mark.parametrize(
    "script, patience, stop_epoch",
    [([0.5, 0.3, 0.4, 0.45, 0.5, 0.6, 0.7], 2, 3), ([0.5, 0.3, 0.4, 0.45], 10, None)],
)
def test_early_stopping_restores_best_weights(script, patience, stop_epoch):
    frame, _ = make_frame(512)
    model = Scripted(script)
    snaps = Snapshots()
    es = EarlyStopping("val/loss", patience=patience)
    t = trainer(max_epochs=len(script), lr=0.05, callbacks=[es, snaps])
    t.fit(model, frame, frame)
    assert es.best_epoch == 1 and es.best_score == pytest.approx(0.3)
    last_epoch = stop_epoch if stop_epoch is not None else len(script) - 1
    assert es.stopped_epoch == stop_epoch
    assert t.current_epoch == last_epoch and len(t.history) == last_epoch + 1
    assert_same(state(model), snaps.states[1])
    assert not torch.equal(
        snaps.states[1]["linear.weight"], snaps.states[last_epoch]["linear.weight"]
    )


def test_early_stopping_mode_auto_and_missing_key():
    assert resolve_mode("val/ctr_auc", "auto") == "max"
    assert resolve_mode("val/ndcg@10", "auto") == "max"
    assert resolve_mode("val/loss", "auto") == "min"
    frame, _ = make_frame(256)
    es = EarlyStopping("val/gauc_typo")
    with pytest.raises(KeyError, match=r"val/gauc_typo.*available keys: .*val/auc"):
        trainer(callbacks=[es]).fit(Scripted([0.5]), frame, frame)
    with pytest.raises(ValueError, match="no validation frame"):  # before the first epoch
        trainer(callbacks=[EarlyStopping("val/loss")]).fit(LogReg(), frame)


# --------------------------------------------------------------------------- checkpoints / resume


class Interrupt(Callback):
    """Simulates a crash at the start of an epoch (after the previous checkpoint)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, model):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def _resume_setup(tmp_path, name, max_epochs, scheduler, extra=()):
    ckpt = ModelCheckpoint(tmp_path / name, monitor="val/auc")
    es = EarlyStopping("val/loss", patience=50)
    t = trainer(
        max_epochs=max_epochs,
        batch_size=64,
        lr=0.02,
        weight_decay=0.01,
        scheduler=scheduler,
        warmup_steps=5,
        callbacks=[ckpt, es, *extra],
    )
    return t, ckpt


@pytest.mark.parametrize("how", ["interrupted", "shorter_run"])
def test_resume_is_bit_identical(tmp_path, how):
    frame, _ = make_frame(700)
    train, val = frame.subset(slice(0, 500)), frame.subset(slice(500, None))
    scheduler = "cosine" if how == "interrupted" else None

    torch.manual_seed(1)
    full_model = LogReg(dropout=0.3)
    full, _ = _resume_setup(tmp_path, "full", 4, scheduler)
    full.fit(full_model, train, val)

    torch.manual_seed(1)
    first_model = LogReg(dropout=0.3)
    if how == "interrupted":
        first, ckpt = _resume_setup(tmp_path, "part", 4, scheduler, extra=[Interrupt(2)])
        with pytest.raises(KeyboardInterrupt):
            first.fit(first_model, train, val)
    else:
        first, ckpt = _resume_setup(tmp_path, "part", 2, scheduler)
        first.fit(first_model, train, val)

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed_model = LogReg(dropout=0.3)
    resumed, _ = _resume_setup(tmp_path, "resumed", 4, scheduler)
    resumed.fit(resumed_model, train, val, resume_from=ckpt.last_path)

    assert_same(state(resumed_model), state(full_model))
    assert resumed.global_step == full.global_step
    assert len(resumed.history) == 4
    for a, b in zip(resumed.history, full.history):
        assert {k: v for k, v in a.items() if not k.startswith("time/")} == {
            k: v for k, v in b.items() if not k.startswith("time/")
        }
    # EarlyStopping restored the same best epoch in both runs
    assert resumed.callbacks[1].best_epoch == full.callbacks[1].best_epoch


def test_checkpoint_is_plain_data(tmp_path):
    frame, _ = make_frame(300)
    t = trainer(max_epochs=1, scheduler="linear", callbacks=[EarlyStopping("val/auc")])
    t.fit(LogReg(dropout=0.1), frame, frame)
    path = tmp_path / "x.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == t.global_step
    assert {"model", "optimizer", "scheduler", "rng", "callbacks", "history"} <= set(ckpt)
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    assert "EarlyStopping" in ckpt["callbacks"]
    assert ckpt["callbacks"]["EarlyStopping"]["best_state"] is not None

    class Bad(Callback):
        def state_dict(self):
            return {"obj": object()}

    t2 = trainer(max_epochs=1, callbacks=[Bad()])
    t2.fit(LogReg(), frame)
    with pytest.raises(TypeError, match="checkpoints may hold only"):
        t2.save_checkpoint(tmp_path / "bad.ckpt")
