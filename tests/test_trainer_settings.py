"""Trainer and model settings that would have no effect, or be silently converted, are refused
with an error naming them: warmup_steps / min_lr_ratio with a scheduler that ignores them,
non-integer seed / warmup_steps, a non-bool shuffle, an infinite weight_decay, a
counterfactual_weight without a counterfactual, and optimizer_kwargs the optimiser does not
take; options that miss the sparse-embedding optimiser are warned about.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _trainer_helpers import LogReg, make_frame, trainer

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.train import Callback, build_optimizer, build_scheduler
from recsys_mt.train.settings import check_settings
from recsys_mt.train.sparse_optim import RowSparseAdam

#: check_settings' arguments at the Trainer's defaults.
DEFAULTS = dict(
    max_epochs=10,
    batch_size=1024,
    grad_accum_steps=1,
    log_every_n_steps=50,
    eval_batch_size=None,
    num_threads=None,
    lr=1e-3,
    weight_decay=0.0,
    grad_clip_norm=None,
    sparse_embeddings="auto",
    data_on_device="auto",
    optimizer="adamw",
    scheduler=None,
    warmup_steps=0,
    min_lr_ratio=0.0,
)


def check(**kw):
    check_settings(**{**DEFAULTS, **kw})


class LRs(Callback):
    """The first group's learning rate at every optimiser step."""

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, model, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _fit_lrs(**kw):
    frame, _ = make_frame(512)
    lrs = LRs()
    trainer(max_epochs=1, batch_size=64, lr=0.1, callbacks=[lrs], **kw).fit(LogReg(), frame)
    return lrs.lrs


@pytest.fixture(scope="module")
def funnel():
    torch.set_num_threads(1)
    tr, va, _ = make_funnel_data(n_users=100, n_items=80, n_impressions=2000).split()
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id")],
        tasks=[rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")],
    )
    return schema, schema.fit_transform(tr)


# --------------------------------------------------------------------------- schedules


def test_warmup_without_scheduler_warms_up_to_a_constant_rate():
    lrs = _fit_lrs(warmup_steps=4)
    assert lrs[:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert lrs[-1] == pytest.approx(0.1)
    assert _fit_lrs() == pytest.approx([0.1] * 8)  # no warm-up: no scheduler at all


def test_warmup_with_a_callable_scheduler_is_refused():
    def constant(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    with pytest.raises(ValueError, match="warmup_steps=10 is used by the named schedulers"):
        trainer(scheduler=constant, warmup_steps=10)
    with pytest.raises(ValueError, match="callable scheduler must do its own warm-up"):
        build_scheduler(constant, torch.optim.SGD([torch.zeros(1)], lr=1.0), 10, warmup_steps=3)
    assert _fit_lrs(scheduler=constant) == pytest.approx([0.1] * 8)


@pytest.mark.parametrize("scheduler", [None, "linear_warmup", "callable"])
def test_min_lr_ratio_needs_a_decaying_scheduler(scheduler):
    if scheduler == "callable":
        scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # noqa: E731
    with pytest.raises(ValueError, match="min_lr_ratio=0.1 is the final rate of the 'cosine'"):
        trainer(scheduler=scheduler, min_lr_ratio=0.1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(scheduler="cosine", warmup_steps=2, min_lr_ratio=0.1),
        dict(scheduler="linear", warmup_steps=0, min_lr_ratio=0.5),
        dict(scheduler="linear_warmup", warmup_steps=3),
        dict(scheduler=None),
    ],
)
def test_documented_schedules_still_work(kw):
    lrs = _fit_lrs(**kw)
    assert len(lrs) == 8 and all(0 < lr <= 0.1 for lr in lrs)
    if kw.get("warmup_steps"):
        assert lrs[0] == pytest.approx(0.1 / kw["warmup_steps"])
    if kw["scheduler"] in ("cosine", "linear"):
        assert lrs[-1] < 0.1


# --------------------------------------------------------------------------- types and ranges


def test_wrong_types_and_ranges_are_named():
    with pytest.raises(TypeError, match="warmup_steps must be an integer, got 1.5"):
        trainer(scheduler="cosine", warmup_steps=1.5)
    with pytest.raises(TypeError, match="warmup_steps must be an integer"):
        trainer(scheduler="cosine", warmup_steps=True)
    with pytest.raises(TypeError, match="min_lr_ratio must be a number"):
        trainer(scheduler="cosine", min_lr_ratio="0.1")
    for bad in (float("inf"), float("nan"), -0.1):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
            trainer(weight_decay=bad)
    with pytest.raises(TypeError, match="shuffle must be True or False, got 'no'"):
        check(shuffle="no")
    with pytest.raises(TypeError, match="seed must be an integer, got 1.7"):
        check(seed=1.7)
    with pytest.raises(TypeError, match="seed must be an integer"):
        check(seed=False)
    check(shuffle=False, seed=7, weight_decay=0.01)


def test_trainer_refuses_a_non_bool_shuffle_and_a_float_seed():
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        trainer(shuffle="no")
    with pytest.raises(TypeError, match="seed must be an integer"):
        trainer(seed=1.7)


# --------------------------------------------------------------------------- counterfactual


def test_counterfactual_weight_needs_a_counterfactual(funnel):
    schema, _ = funnel
    with pytest.raises(ValueError, match="counterfactual_weight=5.0 has no effect"):
        rm.MultiTaskModel(schema, counterfactual=None, counterfactual_weight=5.0)
    with pytest.raises(ValueError, match="counterfactual_weight must be > 0"):
        rm.MultiTaskModel(schema, counterfactual="ips", counterfactual_weight=0.0)
    with pytest.raises(ValueError, match="counterfactual_weight must be finite"):
        rm.MultiTaskModel(schema, counterfactual="dr", counterfactual_weight=float("inf"))
    assert rm.MultiTaskModel(schema).counterfactual_weight == 0.1
    assert (
        rm.MultiTaskModel(
            schema, counterfactual="ips", counterfactual_weight=5
        ).counterfactual_weight
        == 5.0
    )


# --------------------------------------------------------------------------- optimizer_kwargs


def test_optimizer_kwargs_are_checked_against_the_optimizer():
    with pytest.raises(ValueError, match=r"\['momentum'\] are not arguments of torch.optim.AdamW"):
        check(optimizer_kwargs={"momentum": 0.9})
    with pytest.raises(ValueError, match="cannot set 'lr': use Trainer\\(lr=...\\)"):
        check(optimizer="sgd", optimizer_kwargs={"lr": 0.1})
    with pytest.raises(ValueError, match="cannot set 'params'"):
        check(optimizer_kwargs={"params": []})
    with pytest.raises(ValueError, match="cannot set 'weight_decay'"):
        check(optimizer="adam", optimizer_kwargs={"weight_decay": 0.1})
    with pytest.raises(ValueError, match="not valid for torch.optim.SGD"):
        check(optimizer="sgd", optimizer_kwargs={"nesterov": True})  # needs momentum
    with pytest.raises(ValueError, match="a callable optimizer builds its optimiser itself"):
        check(optimizer=lambda groups: None, optimizer_kwargs={"betas": (0.8, 0.9)})
    with pytest.raises(TypeError, match="optimizer_kwargs must be a dict"):
        check(optimizer_kwargs=[("betas", (0.8, 0.9))])
    check(optimizer="sgd", optimizer_kwargs={"momentum": 0.9, "nesterov": True})
    check(optimizer_kwargs={"betas": (0.8, 0.99), "amsgrad": True, "fused": False})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optimizer_kwargs={"momentum": 0.9}), "'momentum'] are not arguments"),
        (dict(optimizer_kwargs={"lr": 0.1}), "cannot set 'lr'"),
    ],
)
def test_fit_names_a_bad_optimizer_kwarg(kw, match):
    frame, _ = make_frame(256)
    with pytest.raises(ValueError, match=match):
        trainer(**kw).fit(LogReg(), frame)


def test_trainer_refuses_bad_optimizer_kwargs_before_fit():
    with pytest.raises(ValueError, match="'momentum'] are not arguments"):
        trainer(optimizer_kwargs={"momentum": 0.9})


def _groups():
    dense = torch.nn.Parameter(torch.zeros(3))
    table = torch.nn.Parameter(torch.zeros(5, 2))
    return [
        {"params": [dense], "sparse": False, "lr": 0.1, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": [table], "sparse": True, "lr": 0.1, "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def test_options_that_miss_the_sparse_optimiser_are_warned_about():
    with pytest.warns(UserWarning, match=r"optimizer_kwargs \['momentum'\] apply to the dense"):
        opt = build_optimizer(_groups(), "sgd", 0.1, {"momentum": 0.9})
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0]
    with pytest.warns(UserWarning, match=r"\['amsgrad'\].*RowSparseAdam, which takes betas, eps"):
        build_optimizer(_groups(), "adam", 0.1, {"amsgrad": True, "eps": 1e-6})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = build_optimizer(_groups(), "adamw", 0.1, {"betas": (0.8, 0.9), "fused": False})
        assert isinstance(opt.optimizers[1], RowSparseAdam)
        assert [g["betas"] for g in opt.param_groups] == [(0.8, 0.9)] * 2
        build_optimizer(_groups(), "sgd", 0.1, {"momentum": 0})  # torch's default: no effect
        build_optimizer(_groups()[:1], "sgd", 0.1, {"momentum": 0.9})  # no sparse group


def test_fit_warns_when_momentum_misses_the_sparse_embeddings(funnel):
    schema, train = funnel
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema)
    t = rm.Trainer(
        max_epochs=1,
        batch_size=512,
        optimizer="sgd",
        optimizer_kwargs={"momentum": 0.9},
        device="cpu",
        progress_bar=False,
    )
    with pytest.warns(UserWarning, match=r"\['momentum'\] apply to the dense parameters only"):
        t.fit(model, train)
    assert t._sparse_resolved
    assert {g["momentum"] for g in t.optimizer.param_groups} == {0.9, 0}
