"""What `predict` reads from its input: the rows' index, never their labels, and only ids the
model's vocabulary holds (a frame of a grown schema is named, not an IndexError in torch)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from test_model import funnel_df, funnel_schema

import recsys_mt as rm


@pytest.fixture(scope="module")
def trained():
    df = funnel_df(400)
    schema = funnel_schema(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(16,)))
    rm.Trainer(max_epochs=1, progress_bar=False).fit(model, schema.transform(df))
    return model, schema, funnel_df(200, seed=1)


def test_predictions_keep_the_dataframes_index(trained):
    model, _, test = trained
    subset = test[test["price"] > test["price"].median()]  # index 0, 2, 7, ...: not a range
    out = model.predict(subset)
    assert out.index.equals(subset.index)
    want = model.predict(subset.reset_index(drop=True))
    np.testing.assert_array_equal(out.to_numpy(), want.to_numpy())
    assigned = subset.assign(p=out["ctr"])  # pandas aligns on the index: no NaN, no shift
    assert not assigned["p"].isna().any()
    np.testing.assert_array_equal(assigned["p"].to_numpy(), want["ctr"].to_numpy())
    # a TensorFrame has no index: a plain range
    assert model.predict(model.schema.transform(subset)).index.equals(pd.RangeIndex(len(subset)))


def test_predict_never_reads_labels(trained):
    model, _, test = trained
    want = model.predict(test)
    unknown = test.assign(click=np.nan, purchase=np.nan, repurchase=np.nan)  # not observed yet
    pd.testing.assert_frame_equal(model.predict(unknown), want, check_exact=True)
    no_labels = test.drop(columns=["click", "purchase"])  # only some label columns present
    pd.testing.assert_frame_equal(model.predict(no_labels), want, check_exact=True)
    with pytest.raises(rm.SchemaError, match="click"):  # evaluate does need them
        model.evaluate(unknown)


def test_a_frame_of_a_grown_schema_is_named_until_the_model_grows(trained):
    model, schema, test = trained
    new = test.assign(user_id=test["user_id"] + 1000)
    grown, _ = schema.update(new)
    assert grown.vocab_size("user_id") > schema.vocab_size("user_id")
    frame = grown.transform(new)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'user_id' holds id \d+.*model.grow\(new_schema\)"):
        model.predict(frame)
    with pytest.raises(ValueError, match="'user_id' holds id"):
        model.evaluate(frame)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a frame without the history tensor the model reads
    other = rm.Schema([f for f in schema.features if f.name != "hist"], tasks=schema.tasks)
    with pytest.raises(ValueError, match=r"no 'seq/hist' tensor for feature\(s\) hist"):
        model.predict(other.fit(test).transform(test))
    model_copy = copy.deepcopy(model)
    model_copy.grow(grown)
    out = model_copy.predict(frame)
    assert len(out) == len(new) and np.isfinite(out.to_numpy()).all()


def test_fit_refuses_frames_of_a_grown_schema_before_training(trained):
    model, schema, test = trained
    new = test.assign(user_id=test["user_id"] + 1000)
    grown, _ = schema.update(new)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"fit \(training frame\): feature 'user_id' holds id"):
        rm.Trainer(max_epochs=1, progress_bar=False).fit(model, grown.transform(new))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
