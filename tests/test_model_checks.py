"""A module whose output disagrees with what it declared gets an error naming it and both
shapes, at the first forward pass, instead of a raw matmul error deep inside the head."""

from __future__ import annotations

import json

import pytest
import torch
from test_model import funnel_df, funnel_schema
from torch import nn

import recsys_mt as rm


class LyingEncoder(rm.Encoder):
    """Declares 8 columns and returns 5."""

    def build(self, schema):
        self.out_dim = 8
        self.lin = nn.Linear(1, 5)

    def forward(self, batch):
        return self.lin(batch["dense"][:, :1])


class ShortHead(rm.Head):
    """Returns one logit fewer than there are tasks."""

    def build(self, in_dim, num_tasks):
        self.lin = nn.Linear(in_dim, num_tasks - 1)

    def forward(self, x):
        return self.lin(x)


class FlatEncoder(rm.Encoder):
    """Returns a [B] vector instead of [B, 1]."""

    def build(self, schema):
        self.out_dim = 1

    def forward(self, batch):
        return batch["dense"][:, 0]


def frame_and_schema():
    df = funnel_df(60)
    schema = funnel_schema(df)
    return schema, schema.transform(df)


def test_encoder_width_mismatch_names_the_encoder_and_both_shapes():
    schema, frame = frame_and_schema()
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), LyingEncoder()])
    with pytest.raises(ValueError, match=r"encoder 1 \(LyingEncoder\).*\(60, 5\).*\[60, 8\]"):
        model.predict(frame)


def test_encoder_returning_a_vector_is_named():
    schema, frame = frame_and_schema()
    model = rm.MultiTaskModel(schema, encoders=[FlatEncoder()])
    with pytest.raises(ValueError, match=r"encoder 0 \(FlatEncoder\) returned shape \(60,\)"):
        model.predict(frame)


def test_head_task_count_mismatch_names_the_head():
    schema, frame = frame_and_schema()
    model = rm.MultiTaskModel(schema, head=ShortHead())
    n_tasks = len(schema.tasks)
    with pytest.raises(
        ValueError, match=rf"the head \(ShortHead\).*\(60, {n_tasks - 1}\).*{n_tasks} tasks"
    ):
        model.predict(frame)
    # training hits the same check before any loss is computed
    with pytest.raises(ValueError, match="ShortHead"):
        rm.Trainer(max_epochs=1, progress_bar=False).fit(model, frame)


def test_well_behaved_modules_pass():
    schema, frame = frame_and_schema()
    model = rm.MultiTaskModel(schema)
    out = model.predict(frame)
    assert len(out) == 60 and torch.isfinite(torch.tensor(out.values)).all()


# --------------------------------------------------------------------------- config.json


def edited_checkpoint(tmp_path, edit):
    schema, _ = frame_and_schema()
    rm.MultiTaskModel(schema).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(colour="red"), r"unknown field\(s\) \['colour'\]"),
        (lambda c: c.pop("head"), "required field 'head' is missing"),
        (lambda c: c.update(encoders={"type": "id_embedding"}), "field 'encoders' must be list"),
        (lambda c: c.update(encoders=[]), "field 'encoders' is empty"),
        (lambda c: c.update(format_version="1"), "field 'format_version' must be int"),
        (lambda c: c.update(counterfactual_weight=True), "'counterfactual_weight' must be"),
        (lambda c: c["head"].update(type="nope"), r"field 'head' \('nope'\).*not registered"),
        (lambda c: c["head"].update(bogus=1), r"field 'head' \('mmoe'\).*bogus"),
        (lambda c: c["encoders"][0].pop("type"), r"'encoders\[0\]' must be an object"),
        (lambda c: c.update(supervision="sideways"), "not describe a valid model.*supervision"),
    ],
)
def test_hand_edited_config_names_the_field(tmp_path, edit, match):
    directory = edited_checkpoint(tmp_path, edit)
    with pytest.raises(rm.CheckpointError, match=match):
        rm.MultiTaskModel.from_pretrained(directory)


def test_config_that_is_not_json_names_the_file(tmp_path):
    schema, _ = frame_and_schema()
    rm.MultiTaskModel(schema).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{'encoders': [")
    with pytest.raises(rm.CheckpointError, match="config.json is not valid JSON"):
        rm.MultiTaskModel.from_pretrained(tmp_path)
