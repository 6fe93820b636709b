"""Regression tests for balancer defects: min-norm weights on tasks without observed rows,
PCGrad's order on resume, the weights DWA reports, and the validation of static weights."""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.losses.min_norm import min_norm_weights


@functools.lru_cache(maxsize=1)
def funnel():
    torch.set_num_threads(1)
    tr, va, _ = make_funnel_data(n_users=100, n_items=80, n_impressions=2000).split()
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("price", transform="log1p")],
        tasks=[
            rm.Task("ctr", label="click"),
            rm.Task("cvr", label="purchase", given="ctr"),
            rm.Task("repurchase", label="repurchase", given="cvr"),
        ],
    ).fit(tr)
    return tr, schema, schema.transform(tr), schema.transform(va)


def no_purchase_batch(size=32):
    tr, _, train, _ = funnel()
    rows = np.flatnonzero(tr["purchase"].to_numpy() == 0)[:size]
    return train.take(torch.as_tensor(rows))


class FakeTask:
    def __init__(self, name: str):
        self.name, self.weight, self.binary = name, 1.0, True


def built(balancer, names=("a", "b", "c")):
    balancer.build([FakeTask(n) for n in names])
    return balancer


# 1. min-norm balancers and tasks without observed rows

MIN_NORM = {
    "mgda": lambda: rm.MGDA(),
    "mgda_ub": lambda: rm.MGDA(grads="representation"),
    "mgda_l2": lambda: rm.MGDA(normalize="l2"),
    "pareto": lambda: rm.ParetoWeights(),
    "pareto_bound_on_empty": lambda: rm.ParetoWeights(bounds={"repurchase": 0.3}),
}


@pytest.mark.parametrize("make", MIN_NORM.values(), ids=MIN_NORM.keys())
def test_min_norm_balancers_give_no_weight_to_a_task_without_observed_rows(make):
    _, schema, _, _ = funnel()
    batch = no_purchase_batch()
    torch.manual_seed(0)
    model = rm.MultiTaskModel(
        schema, balancer=make(), supervision="conditional", auto_calibrate=None
    ).train()
    counts = model.loss_counts(batch)
    assert float(counts[3]) == 0 and float(counts[2]) > 0  # no purchase: repurchase unobserved
    out = model.training_step(batch)
    assert float(out["weight/repurchase"]) == 0.0
    assert float(out["weight/ctr"]) > 0 and float(out["weight/cvr"]) > 0
    assert abs(float(out["weight/ctr"] + out["weight/cvr"]) - 1.0) < 1e-5
    out["loss"].backward()
    grads = [p.grad for p in model.shared_parameters() if p.grad is not None]
    assert grads and any(bool((g != 0).any()) for g in grads)  # the step is not all zero


def test_mgda_with_conditional_chain_never_gets_an_all_zero_step():
    _, schema, train, _ = funnel()
    torch.manual_seed(0)
    model = rm.MultiTaskModel(
        schema, balancer=rm.MGDA(), supervision="conditional", auto_calibrate=None
    ).train()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=gen)
    for step in range(20):
        batch = train.take(order[step * 32 : (step + 1) * 32])
        out = model.training_step(batch)
        model.zero_grad()
        out["loss"].backward()
        norm = sum(float(p.grad.norm()) for p in model.shared_parameters() if p.grad is not None)
        assert norm > 0, f"step {step}: all-zero gradient, weights {model.balancer.weights()}"


def test_min_norm_weights_leave_inactive_tasks_out():
    gram = np.array([[1.0, 0.2, 0.0], [0.2, 2.0, 0.0], [0.0, 0.0, 0.0]])
    w = min_norm_weights(gram, active=np.array([True, True, False]))
    np.testing.assert_allclose(w, [*min_norm_weights(gram[:2, :2]), 0.0])
    np.testing.assert_allclose(min_norm_weights(gram), [0, 0, 1])  # the plain problem
    # a single active task takes everything; none active: all are (uniform on zeros)
    np.testing.assert_allclose(min_norm_weights(gram, active=[False, True, False]), [0, 1, 0])
    np.testing.assert_allclose(min_norm_weights(np.zeros((3, 3)), active=[0, 0, 0]), [1 / 3] * 3)


@pytest.mark.parametrize("make", [rm.MGDA, lambda: rm.MGDA(normalize="l2"), rm.ParetoWeights])
def test_min_norm_balancers_on_zero_gradient_rows(make):
    bal = built(make())
    losses = {"a": torch.tensor(0.7), "b": torch.tensor(0.5), "c": torch.tensor(0.0)}
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    c = bal.weights_from(losses, g)
    assert float(c[2]) == 0 and float(c[:2].min()) > 0
    zero = bal.weights_from({k: torch.tensor(0.0) for k in losses}, torch.zeros(3, 2))
    torch.testing.assert_close(zero, torch.full((3,), 1 / 3))  # all empty: uniform


# 2. PCGrad and resume


def test_pcgrad_resume_is_bit_identical(tmp_path):
    _, schema, train, val = funnel()

    def model():
        torch.manual_seed(0)
        return rm.MultiTaskModel(
            schema,
            balancer=rm.PCGrad(grads="representation"),
            supervision="conditional",
            auto_calibrate=None,
        )

    def trainer(epochs, **kw):
        return rm.Trainer(max_epochs=epochs, batch_size=64, lr=5e-2, progress_bar=False, **kw)

    straight = model()
    trainer(3).fit(straight, train, val)
    first = model()
    trainer(1, callbacks=[rm.ModelCheckpoint(str(tmp_path), save_best=False)]).fit(
        first, train, val
    )
    resumed = model()
    trainer(3).fit(resumed, train, val, resume_from=os.path.join(tmp_path, "last.ckpt"))
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the balancer keeps no state of its own: the weights file is unchanged by it
    assert not [k for k in a if k.startswith("balancer.")]
    straight.save_pretrained(tmp_path / "m")
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    assert isinstance(loaded.balancer, rm.PCGrad) and loaded.balancer.seed == 0


def test_pcgrad_order_depends_on_seed_and_gradients_only():
    g = torch.tensor([[1.0, 0.0, 0.2], [-0.8, 1.0, 0.0], [-0.3, -0.6, 1.0]])
    losses = {n: torch.tensor(1.0) for n in "abc"}
    one, two = built(rm.PCGrad(seed=3)), built(rm.PCGrad(seed=3))
    first = one.weights_from(losses, g)
    one.weights_from(losses, g * 2)  # another step in between does not change the next order
    torch.testing.assert_close(one.weights_from(losses, g), first, rtol=0, atol=0)
    torch.testing.assert_close(two.weights_from(losses, g), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="PCGrad seed"):
        rm.PCGrad(seed=-1)


# 3. DWA reports the weights it applied


def test_dwa_weights_are_those_of_the_last_training_call():
    bal = built(rm.DWA(temperature=2.0, period=2), ("ctr", "cvr")).train()
    assert bal.weights() == {"ctr": 1.0, "cvr": 1.0}
    seq = ([1.0, 2.0], [1.0, 2.0], [0.5, 1.8], [0.5, 1.8], [0.4, 1.7])
    applied = []
    for losses in seq:
        per = {"ctr": torch.tensor(losses[0]), "cvr": torch.tensor(losses[1])}
        with torch.enable_grad():
            total = bal(per)
        w = bal.weights()
        applied.append([w["ctr"], w["cvr"]])
        assert math.isclose(float(total), w["ctr"] * losses[0] + w["cvr"] * losses[1], rel_tol=1e-6)
    # the fourth call completes the second period: its own weights are still ones
    np.testing.assert_allclose(applied[3], [1.0, 1.0])
    expect = 2 * torch.softmax(torch.tensor([0.5 / 1.0, 1.8 / 2.0]) / 2.0, 0)
    np.testing.assert_allclose(applied[4], expect.tolist(), rtol=1e-6)
    before = bal.weights()
    bal.eval()
    bal({"ctr": torch.tensor(9.0), "cvr": torch.tensor(9.0)})  # evaluation changes nothing
    assert bal.weights() == before


def test_uncertainty_weights_are_those_of_the_last_training_call():
    bal = built(rm.UncertaintyWeighting(), ("ctr", "cvr")).train()
    opt = torch.optim.SGD(bal.parameters(), lr=0.5)
    total = bal({"ctr": torch.tensor(2.0), "cvr": torch.tensor(0.1)})
    total.backward()
    opt.step()
    assert bal.weights() == {"ctr": 1.0, "cvr": 1.0}  # applied before the step moved s


# 4. static weights are validated


@pytest.mark.parametrize(
    ("weight", "error"),
    [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError)]
    + [("2", TypeError), (True, TypeError), (None, TypeError)],
)
def test_static_weights_and_task_weight_are_validated(weight, error):
    with pytest.raises(error, match="'cvr'"):
        rm.StaticWeights({"cvr": weight})
    with pytest.raises(error, match="'cvr'"):
        rm.Task("cvr", weight=weight)


def test_valid_weights_are_stored_as_floats():
    assert rm.StaticWeights({"cvr": np.float32(2)}).given == {"cvr": 2.0}
    task = rm.Task("cvr", weight=np.int64(3))
    assert task.weight == 3.0 and type(task.weight) is float
    assert rm.Task("ctr", weight=0).weight == 0.0
