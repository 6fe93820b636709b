"""Recommender and service inputs that used to rank silently wrong or fail obscurely: a fusion
of the wrong shape, preference columns against category values, candidate and k mistakes,
service arguments, ids beyond int64, the OOV counts after a swap, an export example of another
schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm


@pytest.fixture(scope="module")
def served(world):
    root, catalog, users = world
    return rm.MultiTaskModel.from_pretrained(root / "v1"), catalog, users


def test_a_fusion_of_the_wrong_shape_is_refused(served):
    model, catalog, users = served
    rec = rm.Recommender(model, catalog)
    for bad in (lambda o: o["ctr"][:, :1], lambda o: o["ctr"].sum()):
        with pytest.raises(ValueError, match=r"fusion returned shape .*\[1, 3\]"):
            rec.recommend(users.head(1), [1, 2, 3], k=3, fusion=bad)


def test_preference_columns_are_the_catalogs_category_values(served):
    model, catalog, users = served
    shuffled = catalog.sample(frac=1.0, random_state=0).reset_index(drop=True)
    rec = rm.Recommender(model, shuffled)
    top = int(shuffled["category"].max())
    assert list(rec.category_index) == list(range(top + 1))
    pref = torch.zeros(1, top + 1)
    pref[0, top] = 1.0  # this user only likes the last category
    out = rec.recommend(
        users.head(1), None, k=3, reranker=rm.CategoryCoverage(1.0), user_category_pref=pref
    )
    assert out["category"].iloc[0] == top
    # string categories: columns follow the sorted values, listed in category_index
    named = shuffled.assign(label="c" + shuffled["category"].astype(str))
    rec = rm.Recommender(model, named, category="label")
    assert list(rec.category_index) == sorted(named["label"].unique())
    pref = torch.zeros(1, len(rec.category_index))
    pref[0, rec.category_index.get_loc(f"c{top}")] = 1.0
    out = rec.recommend(
        users.head(1), None, k=3, reranker=rm.CategoryCoverage(1.0), user_category_pref=pref
    )
    assert out["category"].iloc[0] == f"c{top}"


def test_missing_categories_come_back_as_ints_and_none(served):
    model, catalog, users = served
    holed = catalog.assign(category=catalog["category"].astype(float))
    holed.loc[0, "category"] = np.nan
    rec = rm.Recommender(model, holed)
    out = rec.recommend(users.head(1), list(holed["item_id"].head(3)), k=3)
    cats = dict(zip(out["item"], out["category"]))
    assert cats[holed["item_id"].iloc[0]] is None
    assert all(isinstance(c, int) for i, c in cats.items() if i != holed["item_id"].iloc[0])


def test_candidate_and_k_mistakes_are_named(served):
    model, catalog, users = served
    rec = rm.Recommender(model, catalog)
    lists = np.array([[1, 2], [3, 4]])
    two = users.head(2)
    pd.testing.assert_frame_equal(
        rec.recommend(two, lists, k=2), rec.recommend(two, [[1, 2], [3, 4]], k=2)
    )
    for empty in ([], np.array([], dtype=np.int64)):
        with pytest.raises(ValueError, match="candidate list is empty"):
            rec.recommend(two, empty, k=2)
    with pytest.raises(TypeError, match="k must be an int"):
        rec.recommend(two, [1, 2], k="2")


def test_service_arguments_are_checked_at_construction(world):
    root, catalog, _ = world
    pytest.importorskip("fastapi")
    from recsys_mt.serving import create_app

    for kwargs, error, match in (
        ({"fusion": "ctcrv"}, KeyError, "ctcrv"),
        ({"reranker": "mmr"}, TypeError, "reranker"),
        ({"timeout_s": "5"}, ValueError, "timeout_s"),
        ({"timeout_s": 0}, ValueError, "timeout_s"),
    ):
        with pytest.raises(error, match=match):
            create_app(root / "v1", catalog, **kwargs)


def test_huge_ids_get_a_json_error_and_a_swap_starts_its_oov_counts_at_zero(world):
    root, catalog, users = world
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from recsys_mt.serving import create_app

    features = {"user_id": 2**63, "age": 30.0, "hist_items": [1]}
    body = {"users": [{"features": features, "candidates": [1, 2, 3]}]}
    with TestClient(create_app(root / "v1", catalog), raise_server_exceptions=False) as c:
        r = c.post("/recommend", json=body)
        assert r.status_code == 400 and "user_id" in r.json()["error"]
        features["user_id"] = 1
        assert c.post("/recommend", json=body).status_code == 200
        assert c.get("/health").json()["model"]["oov"]["pairs"] == 3
        c.app.state.models.swap(root / "v2")  # answers the last request as its probe
        health = c.get("/health").json()["model"]
        assert health["version"] == 2 and health["oov"]["pairs"] == 0


def test_an_export_example_of_another_schema_is_named_before_any_folder(served, tmp_path):
    pytest.importorskip("onnx")
    model, _, _ = served
    other = rm.Schema([rm.Sparse("user_id"), rm.Sparse("item_id")], tasks=[rm.Task("ctr", "click")])
    df = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "click": [0, 1]})
    with pytest.raises(ValueError, match="seq/hist_items"):
        rm.export_onnx(model, tmp_path / "out", other.fit(df).transform(df))
    assert not (tmp_path / "out").exists()
