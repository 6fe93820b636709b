"""Tests of recsys_mt.train.Trainer: the loop learns a known signal, configuration errors,
gradient accumulation, mixed precision on CUDA and two ranks under torchrun.

All models here are toy ``nn.Module``s implementing the trainer protocol (``training_step``,
``validation_metrics``, optionally ``param_groups``) on a synthetic logistic-regression frame;
they live in tests/_trainer_helpers.py. Early stopping and checkpoints are tested in
test_trainer_checkpoints.py, clipping, sparse embeddings, optimisers and schedulers in
test_trainer_optim.py, loggers and the progress bar in test_trainer_logging.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _trainer_helpers import (
    EmbModel,
    LogReg,
    assert_same,
    auc,
    emb_frame,
    make_frame,
    state,
    trainer,
)

from recsys_mt.data.frame import TensorFrame
from recsys_mt.train import CombinedOptimizer, Trainer

SRC = Path(__file__).resolve().parents[1] / "src"


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
from _trainer_helpers import LogReg, make_frame
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
