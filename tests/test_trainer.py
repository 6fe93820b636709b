"""Tests of recsys_mt.train: the Trainer loop, callbacks, loggers, checkpoints, optimisers.

All models here are toy ``nn.Module``s implementing the trainer protocol (``training_step``,
``validation_metrics``, optionally ``param_groups``) on a synthetic logistic-regression frame.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys_mt.data.frame import TensorFrame
from recsys_mt.train import (
    Callback,
    CombinedOptimizer,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    TensorBoardLogger,
    Trainer,
    clip_grad_norm_,
    grad_norm,
)
from recsys_mt.train.callbacks import resolve_mode
from recsys_mt.train.optim import build_scheduler

SRC = Path(__file__).resolve().parents[1] / "src"

# --------------------------------------------------------------------------- fixtures / toys


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Rank-based ROC AUC (continuous scores, so ties are negligible)."""
    scores, labels = scores.flatten().double().cpu(), labels.flatten().double().cpu()
    ranks = torch.empty_like(scores)
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def make_frame(n: int = 2000, d: int = 8, seed: int = 0):
    """A logistic-regression data set; returns (frame, true logits)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    logits = x @ w + 0.3
    y = torch.bernoulli(torch.sigmoid(logits), generator=g)
    return TensorFrame({"dense": x, "labels": y[:, None]}), logits


class LogReg(nn.Module):
    """Logistic regression with optional input dropout."""

    def __init__(self, d: int = 8, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(x))

    def training_step(self, batch):
        logits = self(batch["dense"])
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        return {"loss": loss, "loss/ctr": loss.detach()}

    def validation_metrics(self, frame, batch_size):
        device = self.linear.weight.device
        logits = torch.cat([self(b["dense"].to(device)).float() for b in frame.batches(batch_size)])
        labels = frame["labels"].to(device)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return {"loss": float(loss), "auc": auc(logits, labels)}


class EmbModel(nn.Module):
    """An id embedding + linear head; embedding tables flagged sparse in param_groups."""

    def __init__(self, n_ids: int = 100, dim: int = 4):
        super().__init__()
        self.emb = nn.Embedding(n_ids, dim)
        self.head = nn.Linear(dim, 1)

    def param_groups(self, sparse: bool):
        self.emb.sparse = sparse
        return [
            {"params": [self.emb.weight], "sparse": True, "lr_scale": 2.0},
            {"params": list(self.head.parameters())},
        ]

    def training_step(self, batch):
        logits = self.head(self.emb(batch["ids"]))
        return {"loss": F.binary_cross_entropy_with_logits(logits, batch["labels"])}

    def validation_metrics(self, frame, batch_size):
        logits = self.head(self.emb(frame["ids"].to(self.head.weight.device)))
        labels = frame["labels"].to(logits.device)
        return {"loss": float(F.binary_cross_entropy_with_logits(logits, labels))}


def emb_frame(n: int = 512, touched: int = 20) -> TensorFrame:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, touched, (n,), generator=g)
    labels = (ids % 2).float()[:, None]
    return TensorFrame({"ids": ids, "labels": labels})


def trainer(**kw) -> Trainer:
    kw.setdefault("device", "cpu")
    kw.setdefault("progress_bar", False)
    kw.setdefault("batch_size", 128)
    kw.setdefault("max_epochs", 3)
    return Trainer(**kw)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float | None = None) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol is None:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_learns_known_signal(precision):
    frame, logits = make_frame(6000, seed=0)
    train, val = frame.subset(slice(0, 4000)), frame.subset(slice(4000, None))
    true_auc = auc(logits[4000:], val["labels"])
    torch.manual_seed(0)
    model = LogReg()
    t = trainer(max_epochs=4, lr=0.05, precision=precision)
    t.fit(model, train, val)
    assert len(t.history) == 4
    last = t.history[-1]
    assert {"epoch", "step", "train/loss", "train/loss/ctr", "val/loss", "val/auc", "lr"} <= set(
        last
    )
    assert last["val/auc"] > true_auc - 0.01
    assert t.history[-1]["train/loss"] < t.history[0]["train/loss"]
    assert t.callback_metrics == last
    assert t.global_step == 4 * 32 and t.current_epoch == 3
    assert t.validate(model, val)["val/auc"] == pytest.approx(last["val/auc"])


def test_validate_returns_prefixed_metrics():
    frame, _ = make_frame(300)
    out = trainer().validate(LogReg(), frame)
    assert set(out) == {"val/loss", "val/auc"}


# --------------------------------------------------------------------------- configuration errors


def test_precision_16_mixed_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="16-mixed.*CUDA"):
        Trainer(device="cpu", precision="16-mixed")


def test_precision_and_device_validation():
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer(device="cpu", precision="64")
    with pytest.raises(ValueError, match="unknown device"):
        Trainer(device="tpu")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Trainer(device="cpu", optimizer="lamb")
    with pytest.raises(ValueError, match="scheduler must be"):
        Trainer(device="cpu", scheduler="step")
    with pytest.raises(ValueError, match="grad_accum_steps"):
        Trainer(device="cpu", grad_accum_steps=0)
    assert Trainer(device="cpu", precision="auto").precision == "32"
    assert Trainer(device="cpu", precision=32).precision == "32"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            Trainer(device="cuda")


def test_empty_train_frame_is_a_clear_error():
    empty = TensorFrame({"dense": torch.zeros(0, 8), "labels": torch.zeros(0, 1)})
    with pytest.raises(ValueError, match="empty"):
        trainer().fit(LogReg(), empty)


def test_non_finite_loss_raises_before_the_step():
    class Exploding(LogReg):
        calls = 0

        def training_step(self, batch):
            out = super().training_step(batch)
            Exploding.calls += 1
            if Exploding.calls == 4:
                out["loss"] = out["loss"] * float("nan")
            return out

    frame, _ = make_frame(1024)
    model = Exploding()
    with pytest.raises(FloatingPointError, match=r"epoch 0, optimizer step 3 \(batch 3"):
        trainer(batch_size=128).fit(model, frame)
    assert all(torch.isfinite(p).all() for p in model.parameters())


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
    with pytest.raises(KeyError, match="no validation frame"):
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


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("n, small, k", [(40, 16, 4), (64, 8, 4)])
def test_grad_accumulation_equals_one_big_batch(optimizer, n, small, k):
    frame, _ = make_frame(n)
    torch.manual_seed(0)
    init = LogReg()
    a, b = LogReg(), LogReg()
    a.load_state_dict(init.state_dict())
    b.load_state_dict(init.state_dict())
    ta = trainer(max_epochs=1, batch_size=small, grad_accum_steps=k, lr=0.1, optimizer=optimizer)
    tb = trainer(max_epochs=1, batch_size=small * k, lr=0.1, optimizer=optimizer)
    ta.fit(a, frame)
    tb.fit(b, frame)
    assert ta.global_step == tb.global_step == -(-n // (small * k))
    assert_same(state(a), state(b), atol=1e-6)
    assert ta.history[0]["train/loss"] == pytest.approx(tb.history[0]["train/loss"], abs=1e-6)


# --------------------------------------------------------------------------- clipping / sparse


class NormRecorder(Callback):
    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, model, optimizer):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.norms.append(float(grad_norm(params)))


def test_clip_grad_norm_matches_torch_on_dense():
    torch.manual_seed(0)
    p1, p2 = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4))
    q1, q2 = nn.Parameter(p1.detach().clone()), nn.Parameter(p2.detach().clone())
    for p, q in ((p1, q1), (p2, q2)):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    mine = clip_grad_norm_([p1, p2], 0.5)
    ref = torch.nn.utils.clip_grad_norm_([q1, q2], 0.5)
    torch.testing.assert_close(mine, ref)
    torch.testing.assert_close(p1.grad, q1.grad)
    torch.testing.assert_close(p2.grad, q2.grad)


def test_clip_grad_norm_handles_uncoalesced_sparse_grads():
    emb = nn.Embedding(10, 3, sparse=True)
    lin = nn.Linear(3, 1)
    lin(emb(torch.tensor([1, 1, 2, 7]))).pow(2).sum().backward()
    assert emb.weight.grad.is_sparse and not emb.weight.grad.is_coalesced()
    dense = [emb.weight.grad.to_dense(), lin.weight.grad.clone(), lin.bias.grad.clone()]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in dense]))
    total = clip_grad_norm_(list(emb.parameters()) + list(lin.parameters()), 1e-3)
    torch.testing.assert_close(total, expected)
    after = grad_norm(list(emb.parameters()) + list(lin.parameters()))
    assert float(after) <= 1e-3 * (1 + 1e-4)
    coef = 1e-3 / (float(expected) + 1e-6)
    torch.testing.assert_close(emb.weight.grad.to_dense(), dense[0] * coef)


def test_clipping_bounds_global_norm_in_training():
    frame, _ = make_frame(512)
    rec = NormRecorder()
    trainer(max_epochs=1, lr=0.1, grad_clip_norm=0.01, callbacks=[rec]).fit(LogReg(), frame)
    assert len(rec.norms) == 4 and max(rec.norms) <= 0.01 * (1 + 1e-4)


def test_sparse_embeddings_row_sparse_adam_touches_only_seen_rows():
    frame = emb_frame(512, touched=20)
    torch.manual_seed(0)
    model = EmbModel(100)
    before = state(model)
    rec = NormRecorder()
    t = trainer(max_epochs=3, lr=0.05, grad_clip_norm=0.5, callbacks=[rec])
    t.fit(model, frame, frame)
    assert isinstance(t.optimizer, CombinedOptimizer)
    assert [type(o).__name__ for o in t.optimizer.optimizers] == ["AdamW", "RowSparseAdam"]
    assert t.optimizer.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.1)  # lr_scale 2
    after = state(model)
    assert torch.equal(after["emb.weight"][20:], before["emb.weight"][20:])
    assert (after["emb.weight"][:20] != before["emb.weight"][:20]).any(dim=1).all()
    assert max(rec.norms) <= 0.5 * (1 + 1e-4)
    assert t.history[-1]["val/loss"] < t.history[0]["val/loss"]
    assert model.emb.sparse


def test_sparse_embeddings_off_uses_one_dense_optimizer():
    frame = emb_frame(256)
    model = EmbModel(100)
    t = trainer(max_epochs=1, sparse_embeddings=False)
    t.fit(model, frame)
    assert isinstance(t.optimizer, torch.optim.AdamW) and not model.emb.sparse


# ------------------------------------------------------------------------- schedulers / optimizers


def test_cosine_schedule_with_warmup():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler("cosine", opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_callable_optimizer_and_scheduler():
    frame, _ = make_frame(256)
    seen = {}

    def make_opt(groups):
        seen["groups"] = groups
        return torch.optim.SGD(groups, lr=0.5, momentum=0.9)

    def make_sched(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    t = trainer(max_epochs=1, batch_size=64, optimizer=make_opt, scheduler=make_sched)
    t.fit(LogReg(), frame)
    assert seen["groups"][0]["sparse"] is False
    assert isinstance(t.optimizer, torch.optim.SGD)
    assert t.history[0]["lr"] == pytest.approx(1e-3 * 0.5**4)  # groups carry lr=1e-3


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


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fit_on_cuda_mixed_precision(precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    frame, logits = make_frame(6000, seed=0)
    train, val = frame.subset(slice(0, 4000)), frame.subset(slice(4000, None))
    true_auc = auc(logits[4000:], val["labels"])
    torch.manual_seed(0)
    model = LogReg(dropout=0.1)
    t = Trainer(
        device="cuda",
        precision=precision,
        max_epochs=4,
        batch_size=128,
        lr=0.05,
        grad_clip_norm=1.0,
        progress_bar=False,
    )
    t.fit(model, train, val)
    assert model.linear.weight.device.type == "cuda"
    assert (t.scaler is not None) == (precision == "16-mixed")
    assert t.history[-1]["val/auc"] > true_auc - 0.02
    sparse = Trainer(device="cuda", precision=precision, max_epochs=2, progress_bar=False)
    emb = EmbModel(100)
    sparse.fit(emb, emb_frame(512), emb_frame(512))
    assert isinstance(sparse.optimizer, CombinedOptimizer)


# --------------------------------------------------------------------------- torchrun


_DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {src!r})
sys.path.insert(0, {tests!r})
import torch
from test_trainer import LogReg, make_frame
from recsys_mt.train import Trainer, distributed

frame, _ = make_frame(1000)
torch.manual_seed(0)
model = LogReg(dropout=0.2)
t = Trainer(device="cpu", max_epochs=2, batch_size=64, lr=0.05, grad_accum_steps=2,
            progress_bar=True, callbacks=[])
t.fit(model, frame, frame)
assert t.world_size == 2
torch.save({{"state": model.state_dict(), "history": t.history}},
           os.path.join({out!r}, f"rank{{t.rank}}.pt"))
distributed.cleanup()
"""


needs_torchrun = pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun not found",
)


def run_two_ranks(
    tmp_path: Path, script: str, timeout: int = 240, **fields: object
) -> subprocess.CompletedProcess:
    """Write ``script`` (formatted with ``src``, ``tests``, ``out`` = ``tmp_path`` and
    ``fields``) and run it under ``torchrun --standalone --nproc_per_node=2``; asserts success."""
    path = tmp_path / "ddp_fit.py"
    tests = str(Path(__file__).parent)
    path.write_text(
        textwrap.dedent(script.format(src=str(SRC), tests=tests, out=str(tmp_path), **fields))
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun) if torchrun.exists() else "torchrun"]
    cmd += ["--standalone", "--nproc_per_node=2", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
@needs_torchrun
def test_torchrun_two_ranks_end_identical(tmp_path):
    proc = run_two_ranks(tmp_path, _DDP_SCRIPT, timeout=180)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert_same(r0["state"], r1["state"])
    assert [h["train/loss"] for h in r0["history"]] == [h["train/loss"] for h in r1["history"]]
    assert r0["history"][-1]["val/auc"] == r1["history"][-1]["val/auc"]
    assert proc.stderr.count("epoch 0") >= 1  # rank 0's bar
