"""Tests for recsys_mt.rerank's score fusion: WeightedSum / WeightedProduct on tensors and
DataFrames, zero and overflow handling, missing objectives, CallableFusion and the config
round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_mt.rerank import CallableFusion, Fusion, WeightedProduct, WeightedSum


# -- fusion ------------------------------------------------------------------------------------
def _frame():
    return pd.DataFrame(
        {
            "ctr": [0.1, 0.2, 0.0, 0.5],
            "cvr": [0.5, 0.1, 0.3, 0.0],
            "price": [10.0, 20.0, 5.0, 1.0],
        },
        index=["a", "b", "c", "d"],
    )


def gmv_fn(s):  # module-level so CallableFusion can serialise it
    return s["ctr"] * s["cvr"] * s["price"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_sum_and_product_on_tensors(dtype):
    g = torch.Generator().manual_seed(0)
    scores = {name: torch.rand(3, 5, generator=g, dtype=dtype) for name in ("ctr", "cvr", "price")}
    total = WeightedSum(ctr=1.0, cvr=2.0)(scores)
    assert total.dtype == dtype and total.shape == (3, 5)
    assert torch.allclose(total, scores["ctr"] + 2 * scores["cvr"])
    gmv = WeightedProduct(ctr=1, cvr=1, price=1)(scores)
    assert torch.allclose(gmv, scores["ctr"] * scores["cvr"] * scores["price"], rtol=1e-5)
    sharp = WeightedProduct(ctr=2.0, cvr=0.5)(scores)
    assert torch.allclose(sharp, scores["ctr"] ** 2 * scores["cvr"].sqrt(), rtol=1e-5)
    ints = WeightedSum(a=0.5)({"a": torch.tensor([1, 2])})
    assert ints.dtype.is_floating_point and ints.tolist() == [0.5, 1.0]


def test_fusion_on_dataframe_and_zero_handling():
    df = _frame()
    total = WeightedSum(ctr=1.0, price=0.1)(df)
    assert isinstance(total, pd.Series) and list(total.index) == list(df.index)
    np.testing.assert_allclose(total.to_numpy(), df.ctr + 0.1 * df.price)
    gmv = WeightedProduct(ctr=1, cvr=1, price=1)(df)
    np.testing.assert_allclose(gmv.to_numpy(), df.ctr * df.cvr * df.price, atol=1e-10)
    assert np.isfinite(gmv.to_numpy()).all()
    inv = WeightedProduct(ctr=-1.0)(df)  # zero with a negative exponent: floored, finite
    assert np.isfinite(inv.to_numpy()).all() and inv["c"] == pytest.approx(1e12)
    zeros = WeightedProduct(ctr=1, eps=1e-6)({"ctr": torch.zeros(3)})
    assert torch.isfinite(zeros).all() and torch.allclose(zeros, torch.full((3,), 1e-6))


def test_fusion_missing_objective_raises_keyerror():
    for fusion in [WeightedSum(ctr=1.0, gmv=1.0), WeightedProduct(ctr=1, gmv=1)]:
        with pytest.raises(KeyError, match="gmv") as info:
            fusion(_frame())
        assert "ctr" in str(info.value) and "price" in str(info.value)
        with pytest.raises(KeyError, match="gmv"):
            fusion({"ctr": torch.rand(2)})
    with pytest.raises(KeyError, match="available"):
        CallableFusion(lambda s: s["nope"])({"ctr": torch.rand(2)})


def test_callable_fusion_and_config_roundtrip():
    df = _frame()
    fused = CallableFusion(gmv_fn)
    np.testing.assert_allclose(fused(df).to_numpy(), df.ctr * df.cvr * df.price)
    t = {c: torch.tensor(df[c].to_numpy()) for c in df.columns}
    assert torch.allclose(fused(t), t["ctr"] * t["cvr"] * t["price"])
    with pytest.raises(ValueError):
        CallableFusion(lambda s: s["ctr"][:2])(t)
    with pytest.raises(ValueError):
        CallableFusion(lambda s: s["ctr"]).to_config()
    for fusion in [
        WeightedSum(ctr=1.0, cvr=2.5),
        WeightedProduct(ctr=1, price=0.5, eps=1e-9),
        fused,
    ]:
        config = json.loads(json.dumps(fusion.to_config()))
        back = Fusion.from_config(config, functions={fused.fn.__qualname__: fused.fn})
        assert type(back) is type(fusion)
        np.testing.assert_allclose(back(df).to_numpy(), fusion(df).to_numpy())
    with pytest.raises(ValueError):
        Fusion.from_config({"type": "nope"})
    with pytest.raises(ValueError, match="never import code"):
        Fusion.from_config(fused.to_config())
    with pytest.raises(ValueError):
        WeightedSum()
    with pytest.raises(ValueError):
        WeightedSum(ctr=float("nan"))
    with pytest.raises(ValueError):
        WeightedSum(a=1.0)({"a": torch.rand(2), "b": torch.rand(3)})
    assert WeightedSum({"p(click)": 2.0})({"p(click)": torch.ones(2)}).tolist() == [2.0, 2.0]


def test_fusions_saturate_overflow_of_finite_inputs_and_keep_infinite_ones():
    big = torch.finfo(torch.float32).max
    cols = {"a": torch.tensor([3e38, 3e38, 1.0]), "b": torch.tensor([3e38, -3e38, float("-inf")])}
    assert WeightedSum(a=1.0, b=1.0)(cols).tolist() == [big, 0.0, float("-inf")]
    assert WeightedSum(a=2.0, b=-2.0)(cols).tolist()[:2] == [0.0, big]
    assert WeightedProduct(a=2.0)(cols).tolist() == [big, big, 1.0]
