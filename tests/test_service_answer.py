"""The service reads answers as ``{column: array}`` (no per-request DataFrame): the same
values, JSON body and batch splitting as through the ``Recommender.recommend`` frame."""

import json
import threading
import warnings

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.serving.service import _answer
from recsys_mt.serving.service_batcher import Batcher

TASKS = [rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")]


class _Served:
    def __init__(self, rec):
        self.recommender = rec
        self.version = 3


def _world():
    d = make_funnel_data(n_users=40, n_items=50, n_categories=4, n_impressions=2000, seed=2)
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Dense("price", transform="log1p")],
        tasks=TASKS,
    )
    schema.fit(d.impressions)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,), tower_dims=(4,)))
    names = np.array(["shoes", "hats", None, "bags"], dtype=object)
    catalog = d.items[["item_id", "price"]].assign(
        label=pd.array(names[d.items.category.to_numpy() % 4], dtype="string[pyarrow]"),
        stock=d.items.price.astype(np.float32),
    )
    users = d.users[["user_id"]].head(5).reset_index(drop=True)
    return model, catalog, users


def test_columns_equal_recommend_frame_and_answer():
    model, catalog, users = _world()
    rec = rm.Recommender(model, catalog, category="label")
    ids = catalog.item_id.tolist()
    cands = [ids[i : i + 12 + i] for i in range(len(users) - 1)] + [ids]  # last: every item
    frame = rec.recommend(users, cands, k=len(ids), fusion="ctcvr")
    cols = rec._ranked_columns(users, cands, k=len(ids), fusion="ctcvr")
    pd.testing.assert_frame_equal(pd.DataFrame(cols), frame, check_exact=True)
    rows = [{"user_id": int(u)} for u in users.user_id]
    a, b = _answer(frame, rows, _Served(rec)), _answer(cols, rows, _Served(rec))
    assert repr(a) == repr(b)  # the same Python objects in both
    labels = [i["category"] for r in a["results"] for i in r["items"]]
    assert "hats" in labels and None in labels  # a missing label is JSON null, not NaN
    assert "null" in json.dumps(a, allow_nan=False)


def test_batcher_splits_column_answers_like_frames():
    model, catalog, users = _world()
    rec = rm.Recommender(model, catalog, category="label")
    ids = catalog.item_id.tolist()
    gate = threading.Event()
    outs = {}
    for as_columns in (False, True):

        def run(served, u, candidates, k, as_columns=as_columns):
            gate.wait(10)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                how = rec._ranked_columns if as_columns else rec.recommend
                return how(pd.concat(u, ignore_index=True), candidates, k=k)

        batcher = Batcher(run, max_batch_users=16)
        futures = [
            batcher.submit("m", [users.iloc[[i]]], [ids[i * 3 : i * 3 + 9]], 4)
            for i in range(len(users))
        ]
        gate.set()
        outs[as_columns] = [f.result(10) for f in futures]
        batcher.close()
        gate.clear()
    for frame, cols in zip(outs[False], outs[True]):
        pd.testing.assert_frame_equal(pd.DataFrame(cols), frame, check_exact=True)
