"""Silent wrong results fixed: the 'mean' NaN fill without scaling, uncertainty weighting with a
zero task weight, and task / joint column name clashes."""

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm


def test_nan_mean_without_scaling_fills_the_training_mean():
    df = pd.DataFrame({"x": [1.0, 3.0, np.nan, 8.0], "y": [0.0, 2.0, 4.0, np.nan]})
    schema = rm.Schema(
        [rm.Dense("x", transform="none", nan="mean"), rm.Dense("y", nan="mean")]
    ).fit(df)
    dense = schema.transform(df)["dense"].numpy()
    assert dense[2, 0] == pytest.approx(4.0)  # mean of 1, 3, 8 (not 0)
    np.testing.assert_allclose(dense[[0, 1, 3], 0], [1.0, 3.0, 8.0])
    assert dense[3, 1] == pytest.approx(0.0)  # standardised: the mean is 0
    again = rm.Schema.from_json(schema.to_json())
    np.testing.assert_array_equal(again.transform(df)["dense"].numpy(), dense)


def test_uncertainty_weighting_ignores_a_zero_weight_task():
    tasks = [rm.Task("ctr", "click"), rm.Task("cvr", "buy", given="ctr", weight=0.0)]
    bal = rm.UncertaintyWeighting()
    bal.build(tasks)
    opt = torch.optim.SGD(bal.parameters(), lr=0.5)
    for _ in range(200):
        loss = bal({"ctr": torch.tensor(0.3), "cvr": torch.tensor(0.7)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    s_ctr, s_cvr = bal.log_vars.detach().tolist()
    assert s_cvr == 0.0  # untouched: no loss term to balance
    assert s_ctr == pytest.approx(np.log(2 * 0.3), abs=1e-3)  # the optimum log(2 L) of the other


def test_task_and_joint_column_names_must_not_clash():
    with pytest.raises(ValueError, match="joint-probability column 'ctcvr'"):
        rm.Schema(
            [rm.Sparse("item_id")],
            tasks=[
                rm.Task("ctr", "click"),
                rm.Task("cvr", "buy", given="ctr"),
                rm.Task("ctcvr", "other"),
            ],
        )
    with pytest.raises(ValueError, match="both predict label 'click'"):
        rm.Schema([rm.Sparse("item_id")], tasks=[rm.Task("ctr", "click"), rm.Task("ctr2", "click")])
    # the same label under different parents is a different question: allowed
    rm.Schema(
        [rm.Sparse("item_id")],
        tasks=[rm.Task("ctr", "click"), rm.Task("a", "buy", given="ctr"), rm.Task("b", "buy")],
    )


@pytest.mark.parametrize(
    "values, message",
    [
        (pd.Series([1, "1", 2], dtype=object), "mixes numeric and str ids"),
        (pd.Series([b"a", b"b"], dtype=object), "bytes ids"),
        (pd.Series([2**63 + 5, 3], dtype=np.uint64), "above 2\\^63 - 1"),
        (pd.Series([2.0**63, 1.0]), "magnitude >= 2\\^63"),
    ],
)
def test_ambiguous_id_columns_are_refused_naming_the_column(values, message):
    df = pd.DataFrame({"item_id": values, "click": [1] + [0] * (len(values) - 1)})
    schema = rm.Schema([rm.Sparse("item_id")], tasks=[rm.Task("ctr", "click")])
    with pytest.raises(rm.SchemaError, match=f"column 'item_id'.*{message}"):
        schema.fit(df)
    assert not schema.is_fitted  # nothing half-changed


def test_predict_rejects_bad_batch_size_empty_frames_and_missing_devices(tmp_path):
    df = pd.DataFrame({"item_id": [1, 2, 3, 4], "click": [1, 0, 1, 0]})
    schema = rm.Schema([rm.Sparse("item_id")], tasks=[rm.Task("ctr", "click")]).fit(df)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(4,), tower_dims=(4,)))
    frame = schema.transform(df)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            model.predict(frame, batch_size=bad)
    with pytest.raises(ValueError, match="0 rows"):
        model.predict(frame.subset(torch.arange(0)))
    model.save_pretrained(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            rm.MultiTaskModel.from_pretrained(tmp_path, map_location="cuda")
    with pytest.raises(ValueError, match="not a device"):
        rm.MultiTaskModel.from_pretrained(tmp_path, map_location="gpu0")


def test_resume_from_another_architecture_changes_nothing(tmp_path):
    df = pd.DataFrame({"item_id": np.arange(200) % 20, "click": (np.arange(200) % 3 == 0) * 1})
    schema = rm.Schema([rm.Sparse("item_id")], tasks=[rm.Task("ctr", "click")]).fit(df)
    frame = schema.transform(df)
    torch.manual_seed(0)
    small = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,), tower_dims=(4,)))
    ckpt = rm.ModelCheckpoint(tmp_path)
    rm.Trainer(max_epochs=1, progress_bar=False, callbacks=[ckpt]).fit(small, frame)
    torch.manual_seed(1)
    other = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(4,)))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(
        ValueError, match="another architecture.*shape mismatch.*nothing was changed"
    ):
        rm.Trainer(max_epochs=2, progress_bar=False).fit(other, frame, resume_from=ckpt.last_path)
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
