"""A small calibrated model with a rate prior, shared by the rate-prior and lifecycle tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm


def frames():
    """Users, items with their own purchase rates, a weak category; a temporal-like split."""
    g = np.random.default_rng(3)
    n = 9000
    items = g.integers(0, 40, n)
    item_cvr = np.linspace(0.05, 0.9, 40)
    df = pd.DataFrame(
        {
            "user_id": g.integers(0, 300, n),
            "item_id": items,
            "category": items % 4,
            "click": (g.random(n) < 0.5).astype(int),
        }
    )
    df["buy"] = ((g.random(n) < item_cvr[items]) & (df["click"] == 1)).astype(int)
    schema = rm.Schema(
        [rm.Sparse("user_id", dim=8), rm.Sparse("item_id", dim=8), rm.Sparse("category", dim=4)],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "buy", given="ctr")],
        min_groups=None,
    )
    train = schema.fit_transform(df.iloc[:6000])
    return schema, train, schema.transform(df.iloc[6000:7500]), schema.transform(df.iloc[7500:])


def fit_calibrated():
    """``(model, schema, train, val, test)``: one epoch on :func:`frames`, calibrated on val
    (the item's rate is stacked for the cvr task)."""
    schema, train, val, test = frames()
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,)))
    rm.Trainer(max_epochs=1, batch_size=512, progress_bar=False).fit(model, train, val)
    return model, schema, train, val, test
