"""Tests of the Trainer's optimisation pieces: gradient clipping (dense and uncoalesced sparse
gradients), sparse embeddings with the row-sparse Adam, the cosine schedule with warm-up, and
callable optimizers and schedulers.

Toy models from tests/_trainer_helpers.py.
"""

from __future__ import annotations

import pytest
import torch
from _trainer_helpers import EmbModel, LogReg, emb_frame, make_frame, state, trainer
from torch import nn

from recsys_mt.train import Callback, CombinedOptimizer, clip_grad_norm_, grad_norm
from recsys_mt.train.optim import build_scheduler

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
