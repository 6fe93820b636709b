"""ONNX export of the scoring graph: onnxruntime gives the probabilities predict gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def trained():
    data = make_funnel_data(n_users=80, n_items=60, n_categories=5, n_impressions=4000, seed=2)
    df = data.impressions.copy()
    rng = np.random.default_rng(0)
    df["img"] = [rng.normal(size=6) for _ in range(len(df))]
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=10),
            rm.Vector("img", dim=6, normalize="l2"),
        ],
        tasks=[
            rm.Task("ctr", "click"),
            rm.Task("cvr", "purchase", given="ctr"),
            rm.Task("repurchase", given="cvr"),
        ],
    )
    frame = schema.fit_transform(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=2, expert_dims=(32,)))
    rm.Trainer(max_epochs=1, progress_bar=False, device="cpu").fit(model, frame, frame)
    assert model.calibrated  # the exported graph must carry the calibration map
    assert model.rate_prior.active  # ... and the rate tables of its prior
    return model, schema, df, frame


def run_onnx(path, frame, names):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: frame[i.name].numpy() for i in sess.get_inputs()}
    assert sorted(feed) == sorted(names)
    return sess.run(["conditional", "joint"], feed)


def test_onnx_matches_predict_for_every_batch_size(trained, tmp_path):
    model, schema, df, frame = trained
    path = rm.export_onnx(model, tmp_path / "exp", frame.subset(slice(0, 5)))
    spec = json.loads((tmp_path / "exp" / "export.json").read_text())
    names = [i["name"] for i in spec["inputs"]]
    assert {"sparse", "dense", "seq/hist_items", "vec/img"} <= set(names)
    assert spec["tasks"] == ["ctr", "cvr", "repurchase"]
    reloaded = rm.Schema.from_json(tmp_path / "exp" / "schema.json")
    for n in (1, 7, 600):
        rows = df.iloc[:n]
        encoded = reloaded.transform(rows)
        cond, joint = run_onnx(path, encoded, names)
        want = model.predict(schema.transform(rows))
        np.testing.assert_allclose(cond[:, 0], want["ctr"], atol=1e-5)
        np.testing.assert_allclose(cond[:, 1], want["cvr"], atol=1e-5)
        np.testing.assert_allclose(joint[:, 1], want["ctcvr"], atol=1e-5)
        np.testing.assert_allclose(joint[:, 2], want["repurchase_joint"], atol=1e-5)


def test_preparing_encoder_without_export_module_and_bad_example_are_refused(trained, tmp_path):
    model, _, _, frame = trained

    class Preparing(rm.Encoder):
        def prepare(self, frame):
            return frame

    model_with_text = type("M", (), {"encoders": [Preparing()]})()
    with pytest.raises(NotImplementedError, match="Preparing cannot be exported"):
        rm.export_onnx(model_with_text, tmp_path, frame)
    with pytest.raises(ValueError, match="non-empty TensorFrame"):
        rm.export_onnx(model, tmp_path, frame.subset(slice(0, 0)))
