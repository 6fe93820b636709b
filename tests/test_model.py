"""MultiTaskModel: funnel losses by hand, heads, custom plug-ins, save / load."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import recsys_mt as rm
from recsys_mt.losses import funnel_losses


def bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def sig(z):
    return 1 / (1 + math.exp(-z))


LOGITS = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.4, -0.2], [1.2, 0.1, 0.3]])
# ctr, cvr (given ctr), repurchase (given cvr)
LABELS = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
PARENTS = [None, 0, 1]


def test_entire_space_loss_by_hand():
    got = funnel_losses(LOGITS, LABELS, PARENTS, [True] * 3, "entire_space")
    p = [[sig(z) for z in row] for row in LOGITS.tolist()]
    ctr = np.mean([bce(p[i][0], LABELS[i, 0].item()) for i in range(3)])
    # joint probability vs joint label on every row
    ctcvr = np.mean(
        [bce(p[i][0] * p[i][1], LABELS[i, 0].item() * LABELS[i, 1].item()) for i in range(3)]
    )
    rep = np.mean([bce(p[i][0] * p[i][1] * p[i][2], 0.0) for i in range(3)])
    assert [round(float(x), 6) for x in got] == [round(ctr, 6), round(ctcvr, 6), round(rep, 6)]


def test_conditional_loss_by_hand():
    got = funnel_losses(LOGITS, LABELS, PARENTS, [True] * 3, "conditional")
    p = [[sig(z) for z in row] for row in LOGITS.tolist()]
    ctr = np.mean([bce(p[i][0], LABELS[i, 0].item()) for i in range(3)])
    cvr = np.mean([bce(p[i][1], LABELS[i, 1].item()) for i in (0, 2)])  # clicked rows only
    rep = bce(p[0][2], 0.0)  # the one purchased row
    assert [round(float(x), 6) for x in got] == [round(ctr, 6), round(cvr, 6), round(rep, 6)]


def test_regression_task_is_masked_by_parent():
    logits = torch.tensor([[0.0, 3.0], [0.0, 5.0]])
    labels = torch.tensor([[1.0, 2.0], [0.0, 100.0]])
    got = funnel_losses(logits, labels, [None, 0], [True, False], "entire_space")
    assert float(got[1]) == pytest.approx((3.0 - 2.0) ** 2)


def test_entire_space_stable_for_extreme_logits():
    logits = torch.tensor([[-60.0, -60.0], [60.0, 60.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    losses = funnel_losses(logits, labels, [None, 0], [True, True], "entire_space")
    total = sum(losses)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()


def test_uncertainty_weighting_standard_form():
    tasks = [rm.Task("a"), rm.Task("b", loss="mse")]
    bal = rm.UncertaintyWeighting()
    bal.build(tasks)
    with torch.no_grad():
        bal.log_vars.copy_(torch.tensor([0.5, -1.0]))
    la, lb = torch.tensor(0.7), torch.tensor(2.0)
    expected = math.exp(-0.5) * 0.7 + 0.25 + 0.5 * math.exp(1.0) * 2.0 - 0.5
    assert bal({"a": la, "b": lb}).item() == pytest.approx(expected, rel=1e-6)


def funnel_df(n=400, seed=0):
    rng = np.random.default_rng(seed)
    click = (rng.random(n) < 0.4).astype(int)
    buy = click * (rng.random(n) < 0.5)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, n),
            "item_id": rng.integers(0, 30, n),
            "category": rng.integers(0, 5, n),
            "price": rng.lognormal(2, 1, n),
            "hist": [list(rng.integers(0, 30, rng.integers(0, 6))) for _ in range(n)],
            "click": click,
            "purchase": buy,
            "repurchase": buy * (rng.random(n) < 0.5),
        }
    )


def funnel_schema(df):
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=4),
            rm.Dense("price", transform="log1p"),
            rm.Sequence("hist", vocab_from="item_id"),
        ],
        tasks=[
            rm.Task("ctr", "click"),
            rm.Task("cvr", "purchase", given="ctr"),
            rm.Task("repurchase", given="cvr"),
        ],
    ).fit(df)


@pytest.mark.parametrize("head", [rm.SharedBottom(), rm.MMoE(num_experts=3), rm.PLE(num_levels=2)])
def test_heads_predict_funnel(head):
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=head)
    pred = model.predict(schema.transform(df))
    assert list(pred.columns) == ["ctr", "cvr", "repurchase", "ctcvr", "repurchase_joint"]
    assert np.allclose(pred.ctcvr, pred.ctr * pred.cvr, rtol=1e-5)
    assert np.allclose(pred.repurchase_joint, pred.ctcvr * pred.repurchase, rtol=1e-5)
    assert ((pred.values > 0) & (pred.values < 1)).all()
    out = model.training_step(schema.transform(df).take(torch.arange(32)))
    out["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "balancer" not in n)


def test_sparse_and_dense_gradients_agree():
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema)
    batch = schema.transform(df).take(torch.arange(64))
    model.param_groups(sparse=False)
    torch.manual_seed(5)  # the same id-dropout draws in both passes
    model.training_step(batch)["loss"].backward()
    dense = [p.grad.clone() for p in model.encoders[0].tables]
    model.zero_grad(set_to_none=True)
    model.param_groups(sparse=True)
    torch.manual_seed(5)
    model.training_step(batch)["loss"].backward()
    for g, p in zip(dense, model.encoders[0].tables):
        assert p.grad.is_sparse
        torch.testing.assert_close(p.grad.to_dense(), g)


def test_save_load_predicts_bit_identically(tmp_path):
    df = funnel_df()
    schema = funnel_schema(df)
    torch.manual_seed(1)
    model = rm.MultiTaskModel(schema, head=rm.PLE(), balancer=rm.UncertaintyWeighting())
    with torch.no_grad():  # move weights away from init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    frame = schema.transform(df)
    before = model.predict(frame)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
        "schema.json",
    ]
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    after = loaded.predict(rm.Schema.from_json(tmp_path / "m" / "schema.json").transform(df))
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["head"]["type"] == "ple"


def test_checkpoint_schema_mismatch_is_clear(tmp_path):
    df = funnel_df()
    schema = funnel_schema(df)
    rm.MultiTaskModel(schema).save_pretrained(tmp_path / "m")
    other = funnel_schema(funnel_df(n=300, seed=5))
    with pytest.raises(rm.CheckpointError, match="vocabulary of"):
        rm.MultiTaskModel.from_pretrained(tmp_path / "m", schema=other)
    # weights from a different architecture
    rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=2)).save_pretrained(tmp_path / "m2")
    cfg = json.loads((tmp_path / "m2" / "config.json").read_text())
    cfg["head"]["num_experts"] = 5
    (tmp_path / "m2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(rm.CheckpointError, match="shape mismatch"):
        rm.MultiTaskModel.from_pretrained(tmp_path / "m2")
    with pytest.raises(rm.CheckpointError, match="not a recsys_mt checkpoint: config.json missing"):
        rm.MultiTaskModel.from_pretrained(tmp_path)


@rm.register("head", "test_linear_head")
class LinearHead(rm.Head):
    """A user's own head: one linear layer per task."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def build(self, in_dim, num_tasks):
        self.lin = nn.Linear(in_dim, num_tasks)

    def forward(self, x):
        return self.lin(x) * self.scale

    def to_config(self):
        return {"scale": self.scale}


def test_custom_head_plugs_in_and_round_trips(tmp_path):
    df = funnel_df()
    schema = funnel_schema(df)
    model = rm.MultiTaskModel(schema, head=LinearHead(scale=0.5))
    pred = model.predict(df)
    model.save_pretrained(tmp_path)
    again = rm.MultiTaskModel.from_pretrained(tmp_path)
    assert isinstance(again.head, LinearHead) and again.head.scale == 0.5
    pd.testing.assert_frame_equal(pred, again.predict(df), check_exact=True)


def test_unregistered_head_cannot_be_saved(tmp_path):
    class Anon(rm.Head):
        def build(self, in_dim, num_tasks):
            self.lin = nn.Linear(in_dim, num_tasks)

        def forward(self, x):
            return self.lin(x)

    df = funnel_df()
    model = rm.MultiTaskModel(funnel_schema(df), head=Anon())
    with pytest.raises(TypeError, match="not a registered head"):
        model.save_pretrained(tmp_path)


def test_model_validation_errors():
    df = funnel_df()
    schema = funnel_schema(df)
    with pytest.raises(ValueError, match="not fitted"):
        rm.MultiTaskModel(rm.Schema([rm.Sparse("a")], tasks=[rm.Task("y")]))
    with pytest.raises(ValueError, match="supervision"):
        rm.MultiTaskModel(schema, supervision="esmm")
    with pytest.raises(ValueError, match="unknown task"):
        rm.MultiTaskModel(schema, balancer=rm.StaticWeights({"ctcvr": 2.0}))


def test_evaluate_respects_the_funnel():
    df = funnel_df()
    schema = funnel_schema(df)
    model = rm.MultiTaskModel(schema)
    table = model.evaluate(df)
    rows = table.set_index(["task", "metric"])["rows"]
    assert rows["ctr", "auc"] == len(df)
    assert rows["cvr", "auc"] == df.click.sum()  # CVR on clicked rows
    assert rows["repurchase", "auc"] == df.purchase.sum()
    assert rows["ctcvr", "auc"] == len(df)  # joint on all rows
    assert {"auc", "gauc", "logloss", "calibration"} <= set(table.metric)


def test_unique_inverse_matches_torch_unique():
    from recsys_mt.encoders.sparse_embedding import unique_inverse

    ids = torch.randint(0, 50, (37, 5))
    u, inv = unique_inverse(ids)
    u2, inv2 = torch.unique(ids, return_inverse=True)
    assert torch.equal(u, u2) and torch.equal(inv, inv2)


def test_row_sparse_adam_updates_only_seen_rows_like_adam():
    from recsys_mt.train.sparse_optim import RowSparseAdam

    torch.manual_seed(0)
    w_dense = nn.Parameter(torch.randn(10, 3))
    w_sparse = nn.Parameter(w_dense.detach().clone())
    ids = torch.tensor([[1, 4], [4, 7]])
    from recsys_mt.encoders.sparse_embedding import row_sparse_embedding

    dense_opt = torch.optim.Adam([w_dense], lr=0.1)
    sparse_opt = RowSparseAdam([w_sparse], lr=0.1)
    for _ in range(3):
        for opt, w, emb in (
            (dense_opt, w_dense, lambda w: w[ids]),
            (sparse_opt, w_sparse, lambda w: row_sparse_embedding(w, ids)),
        ):
            opt.zero_grad()
            (emb(w) ** 2).sum().backward()
            opt.step()
    seen = torch.tensor([1, 4, 7])
    # rows seen every step follow Adam exactly; unseen rows never move
    torch.testing.assert_close(w_sparse[seen], w_dense[seen])
    unseen = torch.tensor([0, 2, 3, 5, 6, 8, 9])
    torch.manual_seed(0)
    assert torch.equal(w_sparse[unseen], torch.randn(10, 3)[unseen])
