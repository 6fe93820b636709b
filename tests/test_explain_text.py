"""model.explain through a BertTextTower with a query (and a history) of text features.

Each Text feature gets its own column (the query too, with or without a history), a history
credits nothing to rows where it is empty, attributions add up to logit − baseline logit, and
the baseline logit is the model's own output for an input without information, as
docs/explain.md defines it: with ``baseline="padding"`` one value for every row, with ``"oov"``
one per set of empty histories.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _text_tower_helpers import WORDS, make_df
from test_explain import completeness_tolerance
from test_text_tower import train_steps

import recsys_mt as rm

pytest.importorskip("captum")
pytest.importorskip("transformers")

FEATURES = ["user_id", "item_id", "hist", "title", "query"]


def _frame() -> pd.DataFrame:
    df = make_df(n=160, missing_every=6)
    rng = np.random.default_rng(1)
    df["query"] = [" ".join(rng.choice(WORDS, 2)) if i % 5 else None for i in range(len(df))]
    df["hist"] = [
        list(df["item_id"].iloc[max(0, i - 3) : i]) if i % 4 else [] for i in range(len(df))
    ]
    return df


def _model(path: str, df: pd.DataFrame, history: bool) -> rm.MultiTaskModel:
    from recsys_mt.encoders.text import BertTextTower

    feats = [rm.Sparse("user_id", dim=4), rm.Sparse("item_id", dim=4)]
    if history:
        feats.append(rm.Sequence("hist", vocab_from="item_id", max_len=4))
    feats += [rm.Text("title", key="item_id"), rm.Text("query")]
    schema = rm.Schema(feats, tasks=[rm.Task("ctr", label="click")]).fit(df)
    torch.manual_seed(0)
    tower = BertTextTower(
        path,
        "title",
        projection_dim=8,
        history="hist" if history else None,
        query="query",
        progress_bar=False,
    )
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), tower])
    train_steps(model, model.prepare(schema.transform(df)), steps=2)
    return model


@pytest.fixture(scope="module")
def towers(tiny_bert):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        df = _frame()
        yield df, _model(tiny_bert, df, history=True), _model(tiny_bert, df, history=False)


def _missing(model: rm.MultiTaskModel) -> torch.Tensor:
    return model.encoders[1].missing.detach()


def test_history_and_query_tower_credits_each_text_feature(towers):
    df, model, _ = towers
    assert _missing(model).abs().max() > 0  # trained: the missing-text vector is not zeros
    rows = df.iloc[:40]
    out = model.explain(rows, task="ctr", n_steps=64)
    assert list(out.columns[:5]) == FEATURES
    ratio = out["delta"].abs() / completeness_tolerance(out)
    assert (ratio <= 1).all(), ratio.max()
    total = out[FEATURES].sum(axis=1)
    np.testing.assert_allclose(total, out["logit"] - out["baseline_logit"] + out["delta"])
    enc = out["encoder/IDEmbedding"] + out["encoder/BertTextTower"]
    np.testing.assert_allclose(enc, total, atol=1e-9)
    empty = rows["hist"].map(len).eq(0).to_numpy()
    assert empty.any() and not empty.all()
    assert (out.loc[empty, "hist"] == 0.0).all()  # an empty history moves nothing
    assert out.loc[~empty, "hist"].abs().max() > 1e-5
    no_query = rows["query"].isna().to_numpy()
    assert no_query.any()
    assert (out.loc[no_query, "query"].abs() < 1e-7).all()  # the missing query is the baseline
    assert out.loc[~no_query, "query"].abs().max() > 1e-4
    assert out["title"].abs().max() > 1e-4


def test_query_tower_without_history_is_explained(towers):
    df, _, model = towers
    rows = df.iloc[:24]
    out = model.explain(rows, task="ctr", n_steps=64)
    assert list(out.columns[:4]) == ["user_id", "item_id", "title", "query"]
    assert "hist" not in out.columns
    ratio = out["delta"].abs() / completeness_tolerance(out)
    assert (ratio <= 1).all(), ratio.max()
    assert out["query"].abs().max() > 1e-4 and out["title"].abs().max() > 1e-4
    np.testing.assert_allclose(out["encoder/BertTextTower"], out["title"] + out["query"])


def _no_information(rows: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """``rows`` as docs/explain.md defines their baseline input: unseen ids (``"oov"``; each
    history keeps its length) or missing ids and empty histories (``"padding"``), no title
    (an unseen item has no known one) and no query."""
    out = rows.copy()
    if baseline == "oov":
        out["user_id"] = 10**6
        out["item_id"] = [f"unseen {i}" for i in range(len(out))]
        if "hist" in out:
            out["hist"] = [[f"unseen h{i}"] * len(h) for i, h in enumerate(out["hist"])]
    else:
        out["user_id"] = pd.array([None] * len(out), dtype="Int64")
        out["item_id"] = None
        if "hist" in out:
            out["hist"] = [[] for _ in range(len(out))]
    out["title"] = None
    out["query"] = None
    return out


@pytest.mark.filterwarnings("ignore::recsys_mt.OOVWarning")
@pytest.mark.parametrize("baseline", ["oov", "padding"])
def test_baseline_logit_is_the_output_for_an_input_without_information(towers, baseline):
    df, model, plain = towers
    rows = df.iloc[:40]
    out = model.explain(rows, task="ctr", n_steps=8, baseline=baseline)
    blank = _no_information(rows, baseline)
    want = model.predict_logits(blank)[:, 0].double().numpy()
    np.testing.assert_allclose(out["baseline_logit"], want, atol=1e-5)
    empty = rows["hist"].map(len).eq(0).to_numpy()
    base = out["baseline_logit"].to_numpy()
    if baseline == "padding":  # one baseline logit for every row
        assert np.ptp(base) < 1e-6
    else:  # one per set of empty histories: the OOV rows of a history pool to the OOV row
        assert np.ptp(base[empty]) < 1e-6 and np.ptp(base[~empty]) < 1e-6
        assert abs(base[empty][0] - base[~empty][0]) > 1e-6
    explained = plain.explain(rows, task="ctr", n_steps=8, baseline=baseline)
    assert np.ptp(explained["baseline_logit"].to_numpy()) < 1e-6  # no history: one value
    blank = _no_information(rows.drop(columns=["hist"]), baseline)
    want = plain.predict_logits(blank)[:, 0].double().numpy()
    np.testing.assert_allclose(explained["baseline_logit"], want, atol=1e-5)
