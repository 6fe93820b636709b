"""Tests of the Trainer's loggers and progress bar: CSVLogger columns and header rewrites,
TensorBoardLogger (and the install hint without it), a silent run without the bar.

Toy models from tests/_trainer_helpers.py.
"""

from __future__ import annotations

import csv
import os
import sys

import pytest
from _trainer_helpers import LogReg, make_frame, trainer

from recsys_mt.train import CSVLogger, TensorBoardLogger

# --------------------------------------------------------------------------- loggers / progress


def test_csv_logger_writes_expected_columns(tmp_path):
    frame, _ = make_frame(512)
    t = trainer(max_epochs=2, log_every_n_steps=2, loggers=[CSVLogger(tmp_path)])
    t.fit(LogReg(), frame, frame)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
        header = rows[0].keys() if rows else []
    assert list(header)[:2] == ["epoch", "step"]
    expected = {"train/loss_step", "lr", "train/loss", "train/loss/ctr", "val/loss", "val/auc"}
    assert expected <= set(header)
    epoch_rows = [r for r in rows if r["train/loss"]]
    step_rows = [r for r in rows if r["train/loss_step"]]
    assert [int(r["epoch"]) for r in epoch_rows] == [0, 1]
    assert len(step_rows) == 4  # 8 optimiser steps, every 2nd logged
    assert (tmp_path / "hparams.json").exists()


def test_csv_logger_rewrites_header_for_new_keys(tmp_path):
    log = CSVLogger(tmp_path)
    log.log_metrics({"epoch": 0, "a": 1.5}, step=1)
    log.log_metrics({"epoch": 0, "b": 2.0}, step=2)
    log.log_metrics({"epoch": 1, "a": 3.0, "b": 4.0}, step=3)
    text = (tmp_path / "metrics.csv").read_text().splitlines()
    assert text == ["epoch,step,a,b", "0,1,1.5,", "0,2,,2.0", "1,3,3.0,4.0"]
    again = CSVLogger(tmp_path)  # a resumed run appends under the existing header
    again.log_metrics({"epoch": 2, "a": 5.0}, step=4)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[-1] == "2,4,5.0,"


def test_tensorboard_logger(tmp_path, monkeypatch):
    log = TensorBoardLogger(tmp_path / "tb")
    log.log_metrics({"train/loss": 0.5, "epoch": 0}, step=1)
    log.finalize()
    assert any(name.startswith("events.out") for name in os.listdir(tmp_path / "tb"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"recsys-mt\[tensorboard\]"):
        TensorBoardLogger(tmp_path / "tb2").log_metrics({"x": 1.0}, step=0)


def test_progress_bar_off_is_silent(capfd):
    frame, _ = make_frame(512)
    trainer(max_epochs=2, progress_bar=False).fit(LogReg(), frame, frame)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    trainer(max_epochs=1, progress_bar=True).fit(LogReg(), frame, frame)
    out, err = capfd.readouterr()
    assert out == "" and "epoch 0" in err
