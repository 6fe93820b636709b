"""AITM head, behavioural calibrator and ESCM²-style counterfactual CVR risks."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_model import funnel_df as model_funnel_df

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.losses import behavioural_calibration, dr_cvr_loss, ips_cvr_loss
from recsys_mt.metrics import auc
from recsys_mt.registry import build, to_config
from recsys_mt.tasks.aitm import ait_attention


def sig(z):
    return 1 / (1 + math.exp(-z))


def bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# ---------------------------------------------------------------------------- AITM


def test_ait_attention_by_hand_with_identity_projections():
    head = rm.AITM(tower_dims=(2,))
    head.build(3, 2)  # no parents given: a chain 0 -> 1
    with torch.no_grad():
        head.transfer_weight.copy_(torch.eye(2)[None])
        head.transfer_bias.zero_()
        head.attn_weight.copy_(torch.cat([torch.eye(2)] * 3, dim=1)[None])  # h1 = h2 = h3 = id
        head.attn_bias.zero_()
    z_parent = torch.tensor([[[1.0, -2.0], [0.5, 0.5]]])  # [N=1, B=2, H=2]
    q = torch.tensor([[[0.3, 0.4], [-1.0, 2.0]]])
    got = head.ait(z_parent, q, torch.tensor([0]))
    assert got.shape == (1, 2, 2)
    expected = []
    for zp, qq in zip(z_parent[0].tolist(), q[0].tolist()):
        info = [max(v, 0.0) for v in zp]  # transfer = relu(identity)
        s_info = (info[0] ** 2 + info[1] ** 2) / math.sqrt(2)
        s_q = (qq[0] ** 2 + qq[1] ** 2) / math.sqrt(2)
        w_info = math.exp(s_info) / (math.exp(s_info) + math.exp(s_q))
        expected.append([w_info * a + (1 - w_info) * b for a, b in zip(info, qq)])
    torch.testing.assert_close(got[0], torch.tensor(expected))
    # the pure attention function: equal scores give the plain mean of the values
    h = torch.ones(1, 2, 1, 3)
    v = torch.tensor([[[[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]]]])
    torch.testing.assert_close(ait_attention(h, h, v), torch.full((1, 1, 3), 2.0))


def test_aitm_forward_matches_its_parts_on_a_tree():
    torch.manual_seed(0)
    parents = [None, 0, 0, 1]  # two children of task 0, a grandchild of task 1
    head = rm.AITM(tower_dims=(8, 4))
    head.build(5, 4, parents=parents)
    x = torch.randn(6, 5)
    logits = head(x)
    assert logits.shape == (6, 4)
    q = head.towers(x)  # [T, B, H]
    z = [q[0]]
    z.append(head.ait(z[0][None], q[1][None], torch.tensor([0]))[0])
    z.append(head.ait(z[0][None], q[2][None], torch.tensor([1]))[0])
    z.append(head.ait(z[1][None], q[3][None], torch.tensor([2]))[0])
    manual = head.out(torch.stack(z)).squeeze(-1).t()
    torch.testing.assert_close(logits, manual)


def test_aitm_config_and_errors():
    head = rm.AITM(tower_dims=(16, 8), activation="gelu", dropout=0.1)
    cfg = to_config(head, "head")
    assert cfg == {"type": "aitm", "tower_dims": [16, 8], "activation": "gelu", "dropout": 0.1}
    again = build("head", cfg)
    assert isinstance(again, rm.AITM) and again.to_config() == head.to_config()
    with pytest.raises(ValueError, match="tower_dims"):
        rm.AITM(tower_dims=())
    with pytest.raises(ValueError, match="activation"):
        rm.AITM(activation="tanh")
    with pytest.raises(ValueError, match="parent must be an earlier task"):
        rm.AITM().build(4, 2, parents=[1, None])
    with pytest.raises(ValueError, match="2 parents for 3 tasks"):
        rm.AITM().build(4, 3, parents=[None, 0])


def test_behavioural_calibration_zero_by_construction_and_by_hand():
    violating = torch.tensor([[0.2, 0.3, 0.1], [0.5, 0.4, 0.45]])
    # row 0: relu(0.3 - 0.2) + relu(0.1 - 0.3) = 0.1; row 1: 0 + relu(0.45 - 0.4) = 0.05
    got = behavioural_calibration(violating, [None, 0, 1])
    assert got.item() == pytest.approx((0.1 + 0.05) / 2, abs=1e-7)
    assert behavioural_calibration(violating, [None, None, None]).item() == 0.0
    assert behavioural_calibration(violating, [None, 0, 1], [True, True, False]).item() == (
        pytest.approx(0.05, abs=1e-7)
    )
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.AITM(tower_dims=(16, 8)))
    logits = torch.cat([model.predict_logits(df), torch.randn(50, 3) * 30])  # extremes too
    _, joint = model.probabilities(logits)
    assert behavioural_calibration(joint, model.parents).item() == 0.0


# ---------------------------------------------------------------------------- counterfactual

Z = torch.tensor([0.5, -1.0, 2.0, 0.3])
CTR = torch.tensor([0.5, 0.02, 0.8, 0.1])
CLICK = torch.tensor([1.0, 1.0, 0.0, 1.0])
BUY = torch.tensor([1.0, 0.0, float("nan"), 0.0])  # unobserved where not clicked
IMP = torch.tensor([0.0, 1.0, -0.5, 2.0])


def test_ips_loss_by_hand():
    got = ips_cvr_loss(Z, CTR, CLICK, BUY)
    # propensities clipped at 0.05: 0.5, 0.05, (unclicked), 0.1
    expected = (bce(sig(0.5), 1) / 0.5 + bce(sig(-1.0), 0) / 0.05 + bce(sig(0.3), 0) / 0.1) / 4
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # clipping: below the clip the propensity does not matter; a lower clip lets it through
    lower = CTR.clone()
    lower[1] = 0.001
    assert ips_cvr_loss(Z, lower, CLICK, BUY).item() == pytest.approx(expected, rel=1e-6)
    loose = ips_cvr_loss(Z, CTR, CLICK, BUY, clip=0.01).item()
    expected_loose = bce(sig(0.5), 1) / 0.5 + bce(sig(-1.0), 0) / 0.02 + bce(sig(0.3), 0) / 0.1
    assert loose == pytest.approx(expected_loose / 4, rel=1e-6)
    with pytest.raises(ValueError, match="clip"):
        ips_cvr_loss(Z, CTR, CLICK, BUY, clip=0.0)


def test_ips_gradient_only_through_clicked_rows_and_not_to_propensity():
    z = Z.clone().requires_grad_()
    ctr = CTR.clone().requires_grad_()
    ips_cvr_loss(z, ctr, CLICK, BUY).backward()
    assert ctr.grad is None  # the propensity is detached
    assert z.grad[2].item() == 0.0
    assert (z.grad[[0, 1, 3]] != 0).all()
    # d/dz of BCE(y, σ(z)) / p̂ / B = (σ(z) − y) / p̂ / B
    assert z.grad[1].item() == pytest.approx((sig(-1.0) - 0) / 0.05 / 4, rel=1e-6)


def test_dr_loss_and_imputation_loss_by_hand():
    dr, imp = dr_cvr_loss(Z, IMP, CTR, CLICK, BUY)
    p_hat = [0.5, 0.05, 0.8, 0.1]
    dr_terms, imp_terms = [], []
    for i in range(4):
        p, r_t = sig(Z[i].item()), sig(IMP[i].item())
        e_hat = -(r_t * math.log(p) + (1 - r_t) * math.log(1 - p))  # expected BCE under r̃
        o = CLICK[i].item()
        e = bce(p, BUY[i].item()) if o else 0.0
        dr_terms.append(e_hat + o * (e - e_hat) / p_hat[i])
        imp_terms.append(o * (e - e_hat) ** 2 / p_hat[i])
    assert dr.item() == pytest.approx(sum(dr_terms) / 4, rel=1e-6)
    assert imp.item() == pytest.approx(sum(imp_terms) / 4, rel=1e-6)


def test_dr_gradients_are_separated():
    z = Z.clone().requires_grad_()
    m = IMP.clone().requires_grad_()
    dr, imp = dr_cvr_loss(z, m, CTR, CLICK, BUY)
    dr.backward(retain_graph=True)
    assert m.grad is None  # the DR risk trains the CVR logit only
    assert z.grad[2].item() != 0.0  # ... on unclicked rows too, through the imputed error
    # unclicked row: d ê / dz = (σ(z) − r̃) / B
    assert z.grad[2].item() == pytest.approx((sig(2.0) - sig(-0.5)) / 4, rel=1e-5)
    z.grad = None
    imp.backward()
    assert z.grad is None  # the imputation loss trains the imputation only
    assert m.grad[2].item() == 0.0 and (m.grad[[0, 1, 3]] != 0).all()


# ---------------------------------------------------------------------------- model


def funnel_df(n=300, seed=0):
    return model_funnel_df(n, seed)  # user_id, item_id, price and the funnel labels


def funnel_schema(df, tasks=None):
    tasks = tasks or [
        rm.Task("ctr", "click"),
        rm.Task("cvr", "purchase", given="ctr"),
        rm.Task("repurchase", given="cvr"),
    ]
    return rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("price", transform="log1p")],
        tasks=tasks,
    ).fit(df)


def test_aitm_model_learns_planted_signal():
    data = make_funnel_data(
        n_users=40, n_items=40, n_categories=5, n_impressions=12_000, cvr_base=0.35, seed=3
    )
    train_df, test_df = data.split((0.75, 0.25), seed=0)
    s = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("price", transform="log1p")],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    )
    train = s.fit_transform(train_df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(s, head=rm.AITM(tower_dims=(32, 16)))
    rm.Trainer(max_epochs=6, batch_size=256, lr=5e-3, progress_bar=False, num_threads=1).fit(
        model, train
    )
    pred = model.predict(s.transform(test_df))
    assert auc(test_df.click.values, pred.ctr.values) > 0.7
    clicked = test_df.click.values == 1
    assert auc(test_df.purchase.values[clicked], pred.cvr.values[clicked]) > 0.65


@pytest.mark.parametrize("kind", ["ips", "dr"])
def test_counterfactual_model_trains_and_round_trips(kind, tmp_path):
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(
        schema, head=rm.AITM(tower_dims=(16, 8)), counterfactual=kind, counterfactual_weight=0.5
    )
    frame = schema.transform(df)
    batch = frame.take(torch.arange(64))
    fused, logits = model._forward(batch)
    plain = model.losses(logits, batch["labels"])
    reg = model.losses(logits, batch["labels"], fused)
    assert torch.equal(reg["ctr"], plain["ctr"])
    # the risk is added to both regularised children (cvr: propensity ctr; repurchase: ctcvr)
    q = torch.sigmoid(logits.detach()).cumprod(1)
    y = batch["labels"].cumprod(1)
    if kind == "ips":
        extra = 0.5 * ips_cvr_loss(logits[:, 1], q[:, 0], y[:, 0], batch["labels"][:, 1])
    else:
        imputed = model.counterfactual_reg.imputation(fused).squeeze(-1)
        d, i = dr_cvr_loss(logits[:, 1], imputed[0], q[:, 0], y[:, 0], batch["labels"][:, 1])
        extra = 0.5 * (d + i)
    torch.testing.assert_close(reg["cvr"], plain["cvr"] + extra)
    assert reg["repurchase"].item() > plain["repurchase"].item()
    out = model.training_step(batch)
    out["loss"].backward()
    if kind == "dr":
        assert all(p.grad is not None for p in model.counterfactual_reg.parameters())
    # validation keeps the fixed criterion: Σ weight · plain funnel loss
    metrics = model.validation_metrics(frame, 128)
    full_plain = model.losses(model.predict_logits(frame), frame["labels"])
    assert metrics["loss"] == pytest.approx(sum(float(v) for v in full_plain.values()), rel=1e-5)
    rm.Trainer(max_epochs=1, batch_size=64, progress_bar=False, num_threads=1).fit(model, frame)
    before = model.predict(frame)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["counterfactual"] == kind and cfg["counterfactual_weight"] == 0.5
    assert cfg["head"]["type"] == "aitm"
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    assert loaded.counterfactual == kind and loaded.counterfactual_weight == 0.5
    pd.testing.assert_frame_equal(before, loaded.predict(df), check_exact=True)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a.cpu(), b)


def test_counterfactual_option_errors():
    df = funnel_df()
    schema = funnel_schema(df)
    with pytest.raises(ValueError, match=r"counterfactual must be None or one of \('ips', 'dr'\)"):
        rm.MultiTaskModel(schema, counterfactual="ipw")
    with pytest.raises(ValueError, match="counterfactual_weight must be finite and >= 0"):
        rm.MultiTaskModel(schema, counterfactual="ips", counterfactual_weight=-1.0)
    with pytest.raises(TypeError, match="counterfactual_weight must be a number"):
        rm.MultiTaskModel(schema, counterfactual="dr", counterfactual_weight="0.1")
    df = df.assign(dwell=np.arange(len(df), dtype=float))
    no_child = funnel_schema(
        df, tasks=[rm.Task("ctr", "click"), rm.Task("dwell", loss="mse", given="ctr")]
    )
    with pytest.raises(ValueError, match=r"ctr \(bce, root\), dwell \(mse, given 'ctr'\)"):
        rm.MultiTaskModel(no_child, counterfactual="ips")


def test_mmoe_with_counterfactual_and_uncertainty_weighting():
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(
        schema,
        head=rm.MMoE(num_experts=2, expert_dims=(16,), tower_dims=(8,)),
        balancer=rm.UncertaintyWeighting(),
        counterfactual="dr",
    )
    out = model.training_step(schema.transform(df).take(torch.arange(64)))
    assert set(out) == {"loss", "loss/ctr", "loss/cvr", "loss/repurchase"}
    out["loss"].backward()
    assert model.balancer.log_vars.grad is not None
    assert all(p.grad is not None for p in model.parameters())
