"""Masked losses under gradient accumulation: k micro-batches equal one big batch exactly.

Conditional supervision and regression children average over the rows whose parent is
positive. Weighting each micro-batch's masked *mean* by its rows is not the big batch's masked
mean; the trainer's window protocol (``loss_counts`` → ``training_step(batch, window=...)``)
must give exactly the big batch's gradient.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_trainer import needs_torchrun, run_two_ranks

import recsys_mt as rm
from recsys_mt.losses import funnel_counts, funnel_losses

PARENTS = [None, 0, 1, 0]
BINARY = [True, True, True, False]


def labels_and_logits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    click = (torch.rand(n, generator=g) < 0.3).float()
    buy = click * (torch.rand(n, generator=g) < 0.5).float()
    again = buy * (torch.rand(n, generator=g) < 0.5).float()
    dwell = click * torch.rand(n, generator=g) * 5
    return torch.stack([click, buy, again, dwell], 1), torch.randn(n, 4, generator=g)


@pytest.mark.parametrize("supervision", ["entire_space", "conditional"])
def test_shares_of_parts_add_up_to_the_whole(supervision):
    labels, logits = labels_and_logits(50)
    whole = torch.stack(funnel_losses(logits, labels, PARENTS, BINARY, supervision))
    parts = [slice(0, 7), slice(7, 30), slice(30, 50)]
    counts = sum(funnel_counts(labels[p], PARENTS, BINARY, supervision) for p in parts)
    assert counts.tolist() == funnel_counts(labels, PARENTS, BINARY, supervision).tolist()
    shares = sum(
        torch.stack(funnel_losses(logits[p], labels[p], PARENTS, BINARY, supervision, counts))
        for p in parts
    )
    torch.testing.assert_close(shares, whole, rtol=1e-6, atol=1e-7)
    # the rows-weighted means of the parts are not the whole for masked tasks
    naive = sum(
        torch.stack(funnel_losses(logits[p], labels[p], PARENTS, BINARY, supervision))
        * (p.stop - p.start)
        / 50
        for p in parts
    )
    masked = [t for t in range(4) if PARENTS[t] is not None and supervision == "conditional"]
    masked += [3]  # the regression child is masked in both modes
    assert all(abs(float(naive[t] - whole[t])) > 1e-3 for t in masked)


def frame_df(n: int = 256, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # clicks concentrated in part of the rows, so micro-batches hold very different numbers
    click = (rng.random(n) < np.where(np.arange(n) < n // 3, 0.8, 0.1)).astype(int)
    buy = click * (rng.random(n) < 0.5)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, n),
            "item_id": rng.integers(0, 30, n),
            "price": rng.lognormal(2, 1, n),
            "click": click,
            "purchase": buy,
            "repurchase": buy * (rng.random(n) < 0.5),
            "dwell": click * rng.random(n) * 3,
        }
    )


def build(balancer, supervision, counted=True):
    df = frame_df()
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("price", transform="log1p")],
        tasks=[
            rm.Task("ctr", "click"),
            rm.Task("cvr", "purchase", given="ctr"),
            rm.Task("repurchase", given="cvr"),
            rm.Task("dwell", given="ctr", loss="mse"),
        ],
    )
    frame = schema.fit_transform(df)
    torch.manual_seed(0)
    cls = rm.MultiTaskModel if counted else RowsWeighted
    model = cls(
        schema,
        encoders=[rm.IDEmbedding(id_dropout=0.0), rm.DenseEncoder()],
        head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,), dropout=0.0),
        supervision=supervision,
        balancer=balancer,
        auto_calibrate=None,
    )
    return model, frame


class RowsWeighted(rm.MultiTaskModel):
    """The model without the window protocol: the trainer weights micro-batch means by rows."""

    loss_counts = None


def fit(model, frame, batch_size, k):
    trainer = rm.Trainer(
        max_epochs=1,
        batch_size=batch_size,
        grad_accum_steps=k,
        optimizer="sgd",
        lr=0.5,
        shuffle=False,
        progress_bar=False,
        sparse_embeddings=False,
        device="cpu",
    )
    trainer.fit(model, frame)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer


@pytest.mark.parametrize("supervision", ["conditional", "entire_space"])
@pytest.mark.parametrize("balancer", [rm.StaticWeights, rm.UncertaintyWeighting])
def test_accumulated_masked_losses_equal_one_big_batch(supervision, balancer):
    big, frame = build(balancer(), supervision)
    acc, _ = build(balancer(), supervision)
    naive, _ = build(balancer(), supervision, counted=False)
    s_big, t_big = fit(big, frame, 64, 1)
    s_acc, t_acc = fit(acc, frame, 16, 4)
    s_naive, _ = fit(naive, frame, 16, 4)
    assert t_big.global_step == t_acc.global_step == 4
    for key in s_big:
        torch.testing.assert_close(s_acc[key], s_big[key], rtol=1e-5, atol=1e-6, msg=key)
    assert t_acc.history[0]["train/loss"] == pytest.approx(t_big.history[0]["train/loss"], 1e-5)
    # without the window protocol the masked tasks' gradients differ
    diff = max(float((s_naive[k] - s_big[k]).abs().max()) for k in s_big if "tower" in k)
    assert diff > 1e-4


_DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {src!r})
sys.path.insert(0, {tests!r})
import torch
import recsys_mt as rm
from test_loss_windows import build, fit_kwargs
from recsys_mt.train import distributed

model, frame = build(rm.UncertaintyWeighting(), "conditional")
seen = []
outputs = model.validation_outputs
model.validation_outputs = lambda f, bs: (seen.append(len(f)), outputs(f, bs))[1]
t = rm.Trainer(batch_size=32, **fit_kwargs({sparse}))
t.fit(model, frame, frame)
assert t.world_size == 2
assert bool(t._sparse_params) == {sparse}  # tables kept out of DDP, rows exchanged
val = {{k: v for k, v in t.history[-1].items() if k.startswith("val/")}}
torch.save({{"state": model.state_dict(), "loss": t.history[-1]["train/loss"], "val": val,
            "seen": seen}}, os.path.join({out!r}, f"rank{{t.rank}}.pt"))
distributed.cleanup()
"""


def fit_kwargs(sparse: bool = False) -> dict:
    """Settings of the DDP comparison; ``sparse``: row-sparse embedding gradients (exchanged
    as touched rows under DDP) with lazy Adam, else dense gradients with SGD."""
    return dict(
        max_epochs=2,
        grad_accum_steps=2,
        optimizer="adamw" if sparse else "sgd",
        lr=0.01 if sparse else 0.5,
        progress_bar=False,
        sparse_embeddings=sparse,
        device="cpu",
        seed=3,
    )


@pytest.mark.slow
@needs_torchrun
@pytest.mark.parametrize("sparse", [False, True])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, sparse):
    run_two_ranks(tmp_path, _DDP_SCRIPT, sparse=sparse)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    one, frame = build(rm.UncertaintyWeighting(), "conditional")
    t = rm.Trainer(batch_size=64, callbacks=[], **fit_kwargs(sparse))
    t.fit(one, frame, frame)
    for key, value in one.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert ranks[0]["loss"] == pytest.approx(t.history[-1]["train/loss"], rel=1e-4)
    # validation is sharded (each process scores half of the rows) and its metrics are those
    # of all rows, as in one process
    assert [r["seen"] for r in ranks] == [[len(frame) // 2] * 2] * 2
    single = {k: v for k, v in t.history[-1].items() if k.startswith("val/")}
    assert ranks[0]["val"].keys() == single.keys() and "val/ctr_auc" in single
    for key, value in single.items():
        for r in ranks:
            assert r["val"][key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key
