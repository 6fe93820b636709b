"""model.explain: integrated-gradients attributions that add up to logit − baseline logit.

Completeness is checked for every task (and a joint output) on a model with sparse ids, an
attention-pooled history, dense columns and a vector with a presence flag, and on a tiny random
BERT text tower; a planted signal must get the attribution mass; a row equal to the baseline
gets zeros; bad input is refused; the model's parameters and modes are left as they were.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.model.explain import explain

pytest.importorskip("captum")

FEATURES = ["user_id", "item_id", "category", "price", "age", "hist_items", "img"]
ENCODERS = ["encoder/IDEmbedding", "encoder/DenseEncoder", "encoder/VectorEncoder"]


def completeness_tolerance(out: pd.DataFrame, column: str = "logit") -> np.ndarray:
    """|delta| allowed per row: 1% of the largest |output − baseline| among the rows plus 2% of
    the row's own (the quadrature error of 64 Gauss-Legendre points through ReLU kinks; it
    shrinks as n_steps grows). Leaving out any one feature's attribution would exceed it."""
    change = (out[column] - out[f"baseline_{column}"]).abs().to_numpy()
    return 0.01 * change.max() + 0.02 * change + 1e-6


@pytest.fixture(scope="module")
def trained():
    data = make_funnel_data(n_users=60, n_items=50, n_categories=5, n_impressions=2000, seed=3)
    df = data.impressions.copy()
    rng = np.random.default_rng(0)
    df["img"] = [rng.normal(size=4) if i % 9 else None for i in range(len(df))]
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=8),
            rm.Vector("img", dim=4, normalize="l2", nan="zero"),
        ],
        tasks=[
            rm.Task("ctr", "click"),
            rm.Task("cvr", "purchase", given="ctr"),
            rm.Task("repurchase", given="cvr"),
        ],
    )
    frame = schema.fit_transform(df)
    torch.manual_seed(0)
    encoders = [rm.IDEmbedding(lr_scale=10), rm.DenseEncoder(), rm.VectorEncoder()]
    model = rm.MultiTaskModel(
        schema, encoders=encoders, head=rm.MMoE(num_experts=2, expert_dims=(32,))
    )
    rm.Trainer(max_epochs=2, lr=1e-2, progress_bar=False, device="cpu").fit(model, frame, frame)
    return model, schema, df


@pytest.mark.parametrize("task", ["ctr", "cvr", "repurchase", "ctcvr"])
def test_attributions_add_up_to_logit_minus_baseline(trained, task):
    model, _, df = trained
    rows = df.iloc[100:124]
    out = model.explain(rows, task=task, n_steps=64, batch_size=16)
    assert list(out.columns) == FEATURES + ENCODERS + ["baseline_logit", "logit", "delta"]
    assert out.index.equals(rows.index)
    if task != "ctcvr":
        j = model.schema.task_names.index(task)
        want = model.predict_logits(rows)[:, j].double().numpy()
        np.testing.assert_allclose(out["logit"], want, atol=1e-5)
    gap = (out["logit"] - out["baseline_logit"]).abs()
    assert gap.max() > 0.1  # something to explain
    assert (out[FEATURES].abs().max() > 1e-5).all()  # every feature moves some row
    total = out[FEATURES].sum(axis=1)
    np.testing.assert_allclose(total, out["logit"] - out["baseline_logit"] + out["delta"])
    ratio = out["delta"].abs() / completeness_tolerance(out)
    assert (ratio <= 1).all(), ratio.max()
    np.testing.assert_allclose(out[ENCODERS].sum(axis=1), total, atol=1e-9)
    np.testing.assert_allclose(out["encoder/VectorEncoder"], out["img"], atol=1e-12)
    np.testing.assert_allclose(out["encoder/DenseEncoder"], out["price"] + out["age"], atol=1e-12)


def test_more_steps_close_the_gap_and_padding_baseline_is_complete_too(trained):
    model, _, df = trained
    rows = df.iloc[:16]
    coarse = model.explain(rows, task="cvr", n_steps=4)
    fine = model.explain(rows, task="cvr", n_steps=64)
    assert fine["delta"].abs().mean() < coarse["delta"].abs().mean()
    np.testing.assert_allclose(fine["logit"], coarse["logit"])
    pad = model.explain(rows, task="ctr", baseline="padding", target="probability", n_steps=32)
    assert {"baseline_probability", "probability"} <= set(pad.columns)
    assert (pad["probability"].between(0, 1)).all()
    assert (pad["delta"].abs() <= completeness_tolerance(pad, "probability")).all()
    oov = model.explain(rows, task="ctr", n_steps=4)
    assert not np.allclose(oov["baseline_logit"], pad["baseline_probability"].apply(_logit))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


@pytest.mark.filterwarnings("ignore::recsys_mt.OOVWarning")
def test_a_row_equal_to_the_baseline_gets_zero_attributions(trained):
    model, schema, df = trained
    stats = schema.dense_stats_["price"]
    row = df.iloc[:2].copy()
    row["user_id"] = 10**6  # unseen: the OOV id, as are the history entries
    row["item_id"] = 10**6 + 1
    row["category"] = 10**6 + 2
    row["hist_items"] = [[10**6 + 3, 10**6 + 4], [10**6 + 5]]
    row["price"] = np.expm1(stats["mean"])  # standardised log1p value 0: the training mean
    row["age"] = np.nan  # nan="mean": the training mean
    row["img"] = None  # nan="zero": the zero vector with presence flag 0
    out = model.explain(row, task="cvr")
    assert (out[FEATURES + ENCODERS].abs().to_numpy() < 1e-6).all()
    np.testing.assert_allclose(out["logit"], out["baseline_logit"], atol=1e-5)
    np.testing.assert_allclose(out["delta"], 0.0, atol=1e-5)
    # the padding baseline: missing ids and empty histories (its zero vectors pool exactly
    # like an empty history, so the model's own logit for such a row is the baseline logit)
    missing = row.copy()
    for col in ("user_id", "item_id", "category"):
        missing[col] = pd.array([None, None], dtype="Int64")
    missing["hist_items"] = [[], []]
    pad = model.explain(missing, task="ctr", baseline="padding")
    assert (pad[FEATURES + ENCODERS].abs().to_numpy() < 1e-6).all()
    np.testing.assert_allclose(pad["logit"], pad["baseline_logit"], atol=1e-5)
    assert (
        abs(pad["baseline_logit"].iloc[0] - model.explain(row, task="ctr")["logit"].iloc[0]) > 1e-4
    )
    changed = row.copy()
    changed["price"] = np.expm1(stats["mean"] + 2 * stats["std"])
    moved = model.explain(changed, task="cvr")
    others = [f for f in FEATURES if f != "price"]
    assert (moved[others].abs().to_numpy() < 1e-6).all()
    np.testing.assert_allclose(moved["price"], moved["logit"] - moved["baseline_logit"], atol=5e-4)
    assert moved["price"].abs().min() > 1e-4


def test_planted_signal_gets_the_attribution_mass():
    rng = np.random.default_rng(1)
    n = 2000
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, n),
            "item_id": rng.integers(0, 10, n),
            "noise": rng.normal(size=n),
            "price": rng.normal(size=n),
        }
    )
    good_item = df["item_id"] % 2 == 0  # clicks depend on the item only
    df["click"] = (rng.random(n) < np.where(good_item, 0.8, 0.1)).astype(int)
    cheap = df["price"] < 0  # purchases after a click depend on the price only
    df["purchase"] = df["click"] * (rng.random(n) < np.where(cheap, 0.9, 0.1)).astype(int)
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("noise"), rm.Dense("price")],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    )
    frame = schema.fit_transform(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(
        schema,
        encoders=[rm.IDEmbedding(lr_scale=10), rm.DenseEncoder()],
        head=rm.MMoE(num_experts=2, expert_dims=(32,)),
        supervision="conditional",
    )
    rm.Trainer(max_epochs=3, lr=1e-2, progress_bar=False, device="cpu").fit(model, frame, frame)
    rows = df.iloc[:100]
    feats = ["user_id", "item_id", "noise", "price"]
    ctr = model.explain(rows, task="ctr", n_steps=16, encoders=False)[feats].abs().mean()
    cvr = model.explain(rows, task="cvr", n_steps=16, encoders=False)[feats].abs().mean()
    ctr, cvr = ctr / ctr.sum(), cvr / cvr.sum()
    assert ctr.idxmax() == "item_id" and ctr["item_id"] > 0.6, ctr
    assert cvr.idxmax() == "price" and cvr["price"] > 0.45, cvr


def test_explaining_leaves_parameters_and_grads_alone_and_the_model_in_eval_mode(trained):
    model, _, df = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.head.eval()  # a mixed state: every module ends in eval mode, as after predict
    for p in model.parameters():
        p.grad = None
    first = model.explain(df.iloc[:10], task="ctr")
    second = model.explain(df.iloc[:10], task="ctr")  # id dropout off: deterministic
    pd.testing.assert_frame_equal(first, second)
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "_lookup" not in vars(model.encoders[0])
    want = model.predict_logits(df.iloc[:50])
    torch.testing.assert_close(model.predict_logits(df.iloc[:50]), want, rtol=0, atol=0)


def test_other_threads_score_and_explain_with_the_model_while_it_explains(trained):
    """The explanation's routed id lookups stay in its own thread: a concurrent predict gets
    exactly the plain logits and a concurrent explain exactly its lone result."""
    model, _, df = trained
    model.eval()
    rows, other = df.iloc[:120], df.iloc[200:216]
    want_logits = model.predict_logits(rows)
    want_alone = model.explain(other, task="cvr", n_steps=8)
    failures: list[str] = []
    done = threading.Event()

    def score() -> None:
        try:
            while not done.is_set():
                got = model.predict_logits(rows, batch_size=16)
                if not torch.equal(got, want_logits):
                    failures.append("predict differs")
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            failures.append(repr(e))

    def explain_other() -> None:
        try:
            for _ in range(3):
                got = model.explain(other, task="cvr", n_steps=8)
                if not got.equals(want_alone):
                    failures.append("explain differs")
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    workers = [threading.Thread(target=score), threading.Thread(target=explain_other)]
    for w in workers:
        w.start()
    try:
        mine = model.explain(rows, task="ctr", n_steps=16, batch_size=8)
    finally:
        workers[1].join()
        done.set()
        workers[0].join()
    assert failures == []
    np.testing.assert_allclose(mine["logit"], want_logits[:, 0].double().numpy(), atol=1e-5)


def test_bad_input_is_refused_before_anything_runs(trained, monkeypatch):
    model, schema, df = trained
    rows = df.iloc[:5]
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*'ctr'.*'ctcvr'"):
        model.explain(rows, task="nope")
    with pytest.raises(ValueError, match="target must be one of"):
        model.explain(rows, target="odds")
    with pytest.raises(ValueError, match="baseline must be one of"):
        model.explain(rows, baseline="zeros")
    with pytest.raises(ValueError, match="n_steps must be an int >= 2"):
        model.explain(rows, n_steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        model.explain(rows, batch_size=0)
    with pytest.raises(ValueError, match="0 rows"):
        model.explain(rows.iloc[:0])
    with pytest.raises(ValueError, match="price"):
        model.explain(rows.drop(columns=["price"]))
    frame = schema.transform(rows)
    del frame.tensors["seq/hist_items"]
    with pytest.raises(ValueError, match="'seq/hist_items'.*hist_items"):
        explain(model, frame)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"recsys-mt\[explain\]"):
        model.explain(rows)


def test_an_encoder_explain_cannot_see_through_is_named(trained):
    _, schema, df = trained

    class Constant(rm.Encoder):
        def build(self, schema):
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.out_dim = 1

        def forward(self, batch):
            return self.w.expand(batch["sparse"].shape[0], 1)

    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), Constant()])
    with pytest.raises(TypeError, match="encoder 1 \\(Constant\\)"):
        model.explain(df.iloc[:3])


def test_text_tower_attributions_add_up(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from _text_tower_helpers import _write_tiny_bert, make_df
    from test_text_tower import train_steps

    from recsys_mt.encoders.text import BertTextTower

    path = _write_tiny_bert(tmp_path / "bert")
    df = make_df(n=160, missing_every=6)
    df["hist_items"] = [list(df["item_id"].iloc[max(0, i - 3) : i]) for i in range(len(df))]
    schema = rm.Schema(
        [
            rm.Sparse("user_id", dim=4),
            rm.Sparse("item_id", dim=4),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=4),
            rm.Text("title", key="item_id"),
        ],
        tasks=[rm.Task("ctr", label="click")],
    ).fit(df)
    torch.manual_seed(0)
    tower = BertTextTower(
        path, feature="title", projection_dim=8, history="hist_items", progress_bar=False
    )
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), tower])
    frame = model.prepare(schema.transform(df))
    train_steps(model, frame, steps=2)
    rows = df.iloc[:24].copy()
    rows.loc[rows.index[-1], ["item_id", "title"]] = ["an unseen item", None]
    out = model.explain(rows, task="ctr", n_steps=64)
    feats = ["user_id", "item_id", "hist_items", "title"]
    assert list(out.columns[:4]) == feats
    assert "encoder/BertTextTower" in out.columns
    ratio = out["delta"].abs() / completeness_tolerance(out)
    assert (ratio <= 1).all(), ratio.max()
    assert out["title"].abs().max() > 1e-4
    # a row whose item has no known text sits at the missing-text vector: no title attribution
    no_text = model.prepare(schema.transform(rows))["text_row/title"] == 0
    assert no_text.any()
    assert (out.loc[no_text.numpy(), "title"].abs() < 1e-7).all()


def test_a_feature_named_like_an_output_column_is_refused():
    df = pd.DataFrame(
        {"user_id": [1, 2, 3, 1], "delta": [0.1, 0.2, 0.3, 0.4], "click": [0, 1, 0, 1]}
    )
    schema = rm.Schema([rm.Sparse("user_id"), rm.Dense("delta")], tasks=[rm.Task("ctr", "click")])
    model = rm.MultiTaskModel(schema.fit(df))
    with pytest.raises(ValueError, match="feature name 'delta' clashes"):
        model.explain(df)
