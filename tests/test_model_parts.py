"""Components and arguments a model is built from: a part owned by another model is refused
(building it again would wipe that model's weights), head arguments are checked when the head
is made, a failing custom grow leaves the model as it was, refresh names the frame and row."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest
import torch
from test_model import funnel_df, funnel_schema

import recsys_mt as rm


@pytest.fixture(scope="module")
def data():
    df = funnel_df(400)
    return df, funnel_schema(df)


def test_a_part_of_another_model_is_refused_and_nothing_is_rebuilt(data):
    df, schema = data
    head, balancer, encoder = rm.MMoE(num_experts=2), rm.UncertaintyWeighting(), rm.IDEmbedding()
    torch.manual_seed(0)
    first = rm.MultiTaskModel(schema, encoders=[encoder], head=head, balancer=balancer)
    rm.Trainer(max_epochs=1, progress_bar=False).fit(first, schema.transform(df))
    want = first.predict(df)
    for kwargs in ({"head": head}, {"balancer": balancer}, {"encoders": [encoder]}):
        with pytest.raises(ValueError, match="already belongs to another MultiTaskModel"):
            rm.MultiTaskModel(schema, **kwargs)
    pd.testing.assert_frame_equal(first.predict(df), want, check_exact=True)
    # a failed construction does not hold on to its parts; a dead model frees them
    fresh = rm.MMoE(num_experts=2)
    with pytest.raises(ValueError, match="supervision"):
        rm.MultiTaskModel(schema, head=fresh, supervision="typo")
    rm.MultiTaskModel(schema, head=fresh)
    del first
    gc.collect()
    rm.MultiTaskModel(schema, head=head)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: rm.SharedBottom(bottom_dims=()), "bottom_dims"),
        (lambda: rm.SharedBottom(bottom_dims=64), "bottom_dims"),
        (lambda: rm.MMoE(dropout=2.0), "dropout"),
        (lambda: rm.MMoE(expert_dims=(0,)), "expert_dims"),
        (lambda: rm.MMoE(num_experts=2.5), "num_experts"),
        (lambda: rm.PLE(num_shared_experts=-1), "num_shared_experts"),
        (lambda: rm.AITM(dropout=-0.5), "dropout"),
        (lambda: rm.AITM(tower_dims=()), "tower_dims"),
    ],
)
def test_bad_head_arguments_are_named_when_the_head_is_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


class Flaky(rm.Encoder):
    """An encoder whose grow fails (and changes nothing itself)."""

    def build(self, schema):
        self.out_dim = 1
        self.lin = torch.nn.Linear(1, 1)

    def forward(self, batch):
        return self.lin(batch["dense"][:, :1])

    def grow(self, old_schema, new_schema):
        raise RuntimeError("boom")


def test_a_failing_custom_grow_leaves_the_model_unchanged(data):
    df, schema = data
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), Flaky()])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grown, _ = schema.update(df.assign(user_id=df["user_id"] + 1000))
    with pytest.raises(RuntimeError, match="boom"):
        model.grow(grown)
    after = model.state_dict()
    assert model.schema is schema
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_refresh_names_the_frame_and_its_own_row(data):
    df, schema = data
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,)))
    rm.Trainer(max_epochs=1, progress_bar=False).fit(model, schema.transform(df))
    new = funnel_df(50, seed=1)
    bad = new.copy()
    bad.loc[3, "click"] = 5
    with pytest.raises(rm.SchemaError, match=r"refresh: new: .*row 3\b"):
        rm.refresh(model, df, bad)
    with pytest.raises(rm.SchemaError, match=r"refresh: new: .*purchase"):
        rm.refresh(model, df, new.drop(columns=["purchase"]))
    assert model.schema is schema and np.isfinite(model.predict(new).to_numpy()).all()
