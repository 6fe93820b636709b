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
