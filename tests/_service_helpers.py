"""Helpers shared by the FastAPI service tests (tests/test_service*.py): training the small
models of the ``world`` fixture (tests/conftest.py), request bodies, and the answers a
Recommender gives for them."""

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm


def _train(data, seed, extra=()):
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=10),
            *extra,
        ],
        tasks=[rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")],
    )
    frame = schema.fit_transform(data.impressions)
    torch.manual_seed(seed)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(32,), tower_dims=(16,)))
    rm.Trainer(max_epochs=1, progress_bar=False, device="cpu", seed=seed).fit(model, frame)
    return model


def _body(users, candidates, k=None):
    out = {"users": []}
    for row, cand in zip(users.itertuples(), candidates):
        age = None if np.isnan(row.age) else float(row.age)
        features = {"user_id": int(row.user_id), "age": age, "hist_items": list(row.hist_items)}
        out["users"].append({"features": features, "candidates": [int(c) for c in cand]})
    if k is not None:
        out["k"] = k
    return out


def _expected(model_dir, catalog, users, candidates, k, **kwargs):
    model = rm.MultiTaskModel.from_pretrained(model_dir)
    return rm.Recommender(model, catalog).recommend(users, candidates, k=k, **kwargs)


def _as_frame(answer):
    rows = []
    for res in answer["results"]:
        for it in res["items"]:
            rows.append(
                {
                    "user": res["user"],
                    "rank": it["rank"],
                    "item": it["item"],
                    "score": it["score"],
                    **it["probabilities"],
                    "category": it["category"],
                }
            )
    return pd.DataFrame(rows)


def _candidates(catalog, n_users, seed):
    rng = np.random.default_rng(seed)
    ids = catalog.item_id.to_numpy()
    return [rng.choice(ids, size=int(rng.integers(5, 40)), replace=False) for _ in range(n_users)]


def _check_equal(got, want):
    assert list(got.columns) == list(want.columns)
    assert got[["user", "rank", "item", "category"]].equals(
        want[["user", "rank", "item", "category"]].reset_index(drop=True)
    )
    for col in ("score", "ctr", "cvr", "ctcvr"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-5, atol=1e-7)
