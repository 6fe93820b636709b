"""Gradient-level and dynamic balancers: the algorithms on known gradients, then in a model."""

from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.losses import balance_gradients
from recsys_mt.losses.min_norm import cagrad_weights, min_norm_weights


class FakeTask:
    def __init__(self, name: str):
        self.name, self.weight, self.binary = name, 1.0, True


def built(balancer, names=("ctr", "cvr")):
    balancer.build([FakeTask(n) for n in names])
    return balancer


def weights(balancer, grads, losses=None):
    g = torch.tensor(grads, dtype=torch.float32)
    losses = losses or [1.0] * g.shape[0]
    per = {n: torch.tensor(v) for n, v in zip(balancer.task_names, losses)}
    return balancer.weights_from(per, g)


CONFLICT = [[1.0, 0.0], [-0.5, 1.0]]  # g1 · g2 = -0.5 < 0


def test_pcgrad_removes_conflicts_and_matches_the_two_task_formula():
    g = torch.tensor(CONFLICT)
    c = weights(built(rm.PCGrad()), CONFLICT)
    combined = c @ g
    g1, g2 = g
    expect = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
    torch.testing.assert_close(combined, expect)
    assert float(combined @ g1) >= -1e-6 and float(combined @ g2) >= -1e-6
    # no conflict: the plain sum
    c = weights(built(rm.PCGrad()), [[1.0, 0.0], [0.5, 1.0]])
    torch.testing.assert_close(c, torch.ones(2))


def test_pcgrad_three_tasks_have_no_conflict_with_any_task():
    g = torch.tensor([[1.0, 0.0, 0.2], [-0.8, 1.0, 0.0], [-0.3, -0.6, 1.0]])
    c = weights(built(rm.PCGrad(seed=3), ("a", "b", "c")), g.tolist())
    combined = c @ g
    assert all(float(combined @ gt) >= -1e-5 for gt in g)


def grid_min(gram, lower, steps=200):
    t = gram.shape[0]
    best = np.inf
    ticks = np.linspace(0, 1, steps + 1)
    for w in itertools.product(ticks, repeat=t - 1):
        if sum(w) > 1 + 1e-12:
            continue
        full = np.array([*w, 1 - sum(w)])
        if (full < lower - 1e-12).any():
            continue
        best = min(best, full @ gram @ full)
    return best


@pytest.mark.parametrize(
    "grads",
    [CONFLICT, [[2.0, 0.1], [0.3, 1.0]], [[1.0, 0.0, 0.0], [-0.4, 1.0, 0.3], [0.2, -0.7, 0.5]]],
)
def test_min_norm_solves_the_problem_against_a_grid(grads):
    g = np.array(grads)
    gram = g @ g.T
    w = min_norm_weights(gram)
    assert w.min() >= -1e-12 and abs(w.sum() - 1) < 1e-9
    assert w @ gram @ w <= grid_min(gram, np.zeros(len(g))) + 1e-9
    c = weights(built(rm.MGDA(normalize="none"), [f"t{i}" for i in range(len(g))]), grads)
    torch.testing.assert_close(c, torch.tensor(w, dtype=torch.float32), atol=1e-5, rtol=1e-5)


def test_mgda_normalisation_keeps_the_direction_of_the_normalised_problem():
    g = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    c = weights(built(rm.MGDA(normalize="l2")), g.tolist())
    # normalised gradients are orthonormal: equal weights on them, i.e. c ∝ 1 / ‖g_t‖
    torch.testing.assert_close(c, torch.tensor([0.2, 0.8]))


def test_pareto_weights_honour_their_bounds():
    g = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    free = min_norm_weights(g @ g.T)
    assert free[0] < 0.2  # the bound binds
    bal = built(rm.ParetoWeights(bounds={"a": 0.3, "c": 0.1}), ("a", "b", "c"))
    w = weights(bal, g.tolist()).numpy()
    assert w[0] >= 0.3 - 1e-7 and w[2] >= 0.1 - 1e-7 and abs(w.sum() - 1) < 1e-6
    lower = np.array([0.3, 0.0, 0.1])
    assert w @ (g @ g.T) @ w <= grid_min(g @ g.T, lower) + 1e-6
    w2 = weights(built(rm.ParetoWeights(bounds={"ctr": 0.2})), CONFLICT).numpy()
    assert w2[0] >= 0.2 - 1e-7


def test_cagrad_with_c_zero_is_the_average_gradient_and_c_helps_the_worst_task():
    c = weights(built(rm.CAGrad(c=0.0)), CONFLICT)
    torch.testing.assert_close(c, torch.full((2,), 0.5))
    g = torch.tensor([[1.0, 0.0], [-0.9, 0.3]])
    avg = g.mean(0)
    d = weights(built(rm.CAGrad(c=0.8)), g.tolist()) @ g
    worst = lambda v: min(float(v @ gt) for gt in g) / float(v.norm())  # noqa: E731
    assert worst(d) > worst(avg)
    w = cagrad_weights((g @ g.T).double().numpy(), 0.8)
    assert abs(w.sum() - 1) < 1e-9 and w.min() >= 0


def test_gradnorm_moves_towards_equal_weighted_gradient_norms():
    bal = built(rm.GradNorm(alpha=0.0))
    grads = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    per = {"ctr": torch.tensor(0.7), "cvr": torch.tensor(0.3)}
    opt = torch.optim.SGD(bal.parameters(), lr=0.05)
    gaps = []
    for _ in range(20):
        c = bal.weights_from(per, grads)
        gaps.append(abs(float(c[0] * 1.0 - c[1] * 4.0)))
        opt.zero_grad()
        bal.weights_loss(per, grads).backward()
        opt.step()
    assert gaps[-1] < 0.3 * gaps[0]
    assert abs(float(bal.weights_from(per, grads).sum()) - 2) < 1e-5


def test_dwa_weights_from_hand_computed_loss_ratios():
    bal = built(rm.DWA(temperature=2.0, period=2)).train()
    for losses in ([1.0, 2.0], [1.0, 2.0], [0.5, 1.8], [0.5, 1.8]):
        with torch.enable_grad():
            bal({"ctr": torch.tensor(losses[0]), "cvr": torch.tensor(losses[1])})
    r = torch.tensor([0.5 / 1.0, 1.8 / 2.0])
    expect = 2 * torch.softmax(r / 2.0, 0)
    torch.testing.assert_close(bal.current(), expect)  # the weights the next call applies
    fresh = built(rm.DWA())
    assert fresh.weights() == {"ctr": 1.0, "cvr": 1.0}


@functools.lru_cache(maxsize=4)
def funnel_df(n=300, seed=0):
    data = make_funnel_data(
        n_users=30, n_items=40, n_categories=5, n_impressions=n, hist_len=(0, 3), seed=seed
    )
    return data.impressions[["user_id", "item_id", "price", "click", "purchase"]]


def funnel_schema(df):
    return rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("price", transform="log1p")],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    ).fit(df)


BALANCERS = {
    "gradnorm": lambda: rm.GradNorm(),
    "dwa": lambda: rm.DWA(period=2),
    "pcgrad": lambda: rm.PCGrad(),
    "mgda": lambda: rm.MGDA(),
    "mgda_ub": lambda: rm.MGDA(grads="representation"),
    "cagrad": lambda: rm.CAGrad(),
    "pareto": lambda: rm.ParetoWeights(bounds={"ctr": 0.2}),
}


@pytest.mark.parametrize("make", BALANCERS.values(), ids=BALANCERS.keys())
def test_balancer_trains_a_model_and_round_trips(make, tmp_path):
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=2), balancer=make())
    trainer = rm.Trainer(
        max_epochs=2, batch_size=64, grad_accum_steps=2, progress_bar=False, seed=0
    )
    trainer.fit(model, schema.transform(df))
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())["balancer"]
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    assert type(loaded.balancer) is type(model.balancer)
    assert rm.registry.to_config(loaded.balancer, "balancer") == config
    pd.testing.assert_frame_equal(model.predict(df), loaded.predict(df))


def test_training_step_gives_the_combined_gradient_on_shared_parameters():
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(), balancer=rm.PCGrad())
    batch = schema.transform(df).take(torch.arange(64))
    model.train()
    torch.manual_seed(1)
    out = model.training_step(batch)
    out["loss"].backward()
    shared = model.shared_parameters()
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    model.zero_grad()
    torch.manual_seed(1)
    fused, logits = model._forward(batch)
    per = model.losses(logits, batch["labels"], fused)
    g = torch.stack(
        [
            torch.cat(
                [x.reshape(-1) for x in torch.autograd.grad(per[n], shared, retain_graph=True)]
            )
            for n in ("ctr", "cvr")
        ]
    )
    c = torch.stack([out["weight/ctr"], out["weight/cvr"]])
    torch.testing.assert_close(got, c @ g, rtol=1e-4, atol=1e-6)
    assert any(p is model.head.bottom.weights[0] for p in shared)


def test_window_of_one_micro_batch_equals_the_plain_step():
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, balancer=rm.MGDA(grads="representation")).train()
    batch = schema.transform(df).take(torch.arange(128))
    torch.manual_seed(2)
    plain = model.training_step(batch)
    torch.manual_seed(2)
    windowed = model.training_step(batch, window=model.loss_counts(batch).float())
    for key in ("loss", "weight/ctr", "weight/cvr"):
        torch.testing.assert_close(windowed[key], plain[key])
    model.eval()
    with torch.no_grad():  # outside training: the last weights, no gradients needed
        out = model.training_step(batch)
    assert "weight/ctr" not in out
    w = model.balancer.last
    torch.testing.assert_close(out["loss"], w[0] * out["loss/ctr"] + w[1] * out["loss/cvr"])


@rm.register("balancer", "test_inverse_norm")
class InverseGradNorm(rm.Balancer):
    needs_grads = "representation"

    def weights_from(self, losses, grads):  # grads [T, N]
        return 1.0 / grads.norm(dim=1).clamp_min(1e-8)

    def forward(self, losses):  # outside training
        return sum(losses.values())


def test_custom_gradient_balancer_plugs_in(tmp_path):
    df = funnel_df()
    schema = funnel_schema(df)
    model = rm.MultiTaskModel(schema, balancer=InverseGradNorm())
    out = model.training_step(schema.transform(df).take(torch.arange(32)))
    assert set(out) >= {"weight/ctr", "weight/cvr"}
    out["loss"].backward()
    rm.Trainer(max_epochs=1, batch_size=64, progress_bar=False).fit(model, schema.transform(df))
    model.save_pretrained(tmp_path / "m")
    assert isinstance(rm.MultiTaskModel.from_pretrained(tmp_path / "m").balancer, InverseGradNorm)


def test_bad_arguments_are_named():
    df = funnel_df(60)
    schema = funnel_schema(df)
    with pytest.raises(ValueError, match="bounds names unknown task"):
        rm.MultiTaskModel(schema, balancer=rm.ParetoWeights(bounds={"ctcvr": 0.1}))
    with pytest.raises(ValueError, match="StaticWeights names unknown task"):
        rm.MultiTaskModel(schema, balancer=rm.StaticWeights({"nope": 1.0}))
    with pytest.raises(ValueError, match="bounds sum"):
        rm.ParetoWeights(bounds={"ctr": 0.7, "cvr": 0.6})
    with pytest.raises(ValueError, match="CAGrad c"):
        rm.CAGrad(c=-0.1)
    with pytest.raises(ValueError, match="GradNorm alpha"):
        rm.GradNorm(alpha=-1)
    with pytest.raises(ValueError, match="DWA temperature"):
        rm.DWA(temperature=0)
    with pytest.raises(ValueError, match="normalize"):
        rm.MGDA(normalize="max")
    with pytest.raises(ValueError, match="grads must be one of"):
        rm.PCGrad(grads="all")

    class Wrong(rm.Balancer):
        needs_grads = "representation"

        def weights_from(self, losses, grads):
            return torch.ones(3)

    model = rm.MultiTaskModel(schema, balancer=Wrong())
    with pytest.raises(ValueError, match=r"expected a tensor of shape \(2,\)"):
        model.training_step(schema.transform(df).take(torch.arange(60)))


def test_shared_mode_without_dense_shared_parameters_is_explained():
    df = funnel_df(60)
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id")],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    ).fit(df)
    model = rm.MultiTaskModel(schema, head=rm.PLE(), balancer=rm.MGDA())
    with pytest.raises(ValueError, match="grads='representation'"):
        model.training_step(schema.transform(df).take(torch.arange(60)))
    fused = torch.randn(4, 3, requires_grad=True)
    per = {"ctr": (fused[:, 0] ** 2).mean(), "cvr": torch.tensor(2.0)}  # cvr: no gradient
    bal = built(rm.MGDA(grads="representation"))
    total, c = balance_gradients(bal, per, fused, list)
    assert c.shape == (2,) and total.requires_grad and bool(torch.isfinite(c).all())
