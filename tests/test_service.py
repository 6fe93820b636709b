"""The FastAPI service: endpoints, answers equal to Recommender, fusion and re-ranking, a
missing category, new users, scoring failures and timeouts, bad arguments to create_app.

Request validation is tested in test_service_validation.py, hot swap and concurrency in
test_service_concurrency.py; the saved models come from the ``world`` fixture
(tests/conftest.py), helpers from tests/_service_helpers.py.
"""

import sys
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
from _service_helpers import _as_frame, _body, _candidates, _check_equal, _expected

import recsys_mt as rm
from recsys_mt.serving.service_state import SwapError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from recsys_mt.serving import create_app  # noqa: E402


def test_health_and_recommend_equal_recommender(world):
    root, catalog, users = world
    app = create_app(root / "v1", catalog, default_k=4)
    cands = _candidates(catalog, len(users), seed=0)
    with TestClient(app) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok"
        assert health["catalog_items"] == len(catalog) == 80
        assert health["model"]["version"] == 1
        assert health["model"]["directory"] == str(root / "v1")
        assert health["model"]["predict_columns"] == ["ctr", "cvr", "ctcvr"]
        assert health["request_fields"] == ["user_id", "age", "hist_items"]
        for k in (None, 1, 7, 100):  # None: default_k; 100: more than any candidate list
            r = client.post("/recommend", json=_body(users, cands, k))
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["model_version"] == 1
            assert [res["user"] for res in answer["results"]] == users.user_id.tolist()
            want = _expected(root / "v1", catalog, users, [list(c) for c in cands], k or 4)
            _check_equal(_as_frame(answer), want)
        scoring = client.get("/health").json()["scoring"]
        assert scoring["users"] == 4 * len(users) and scoring["calls"] == 4  # one call each
    assert users.age.isna().any()  # a null age was sent and filled as the model fills NaN


def test_a_missing_category_in_the_catalog_is_json_null(world):
    root, catalog, users = world
    gaps = catalog.assign(category=catalog["category"].astype(float))
    gaps.loc[gaps.index[:40], "category"] = np.nan  # the first 40 items lack a category
    ids = gaps.item_id.tolist()
    with TestClient(create_app(root / "v1", gaps, default_k=10)) as client:
        r = client.post("/recommend", json=_body(users.head(2), [ids[:20], ids[30:50]]))
    assert r.status_code == 200, r.text
    got = {it["item"]: it["category"] for res in r.json()["results"] for it in res["items"]}
    known = dict(zip(ids, gaps["category"]))
    assert any(v is None for v in got.values()) and any(v is not None for v in got.values())
    for item, cat in got.items():
        assert (cat is None) == bool(np.isnan(known[item])), item
        if cat is not None:
            assert cat == known[item]


def test_new_users_are_counted_in_health_not_warned_per_request(world):
    root, catalog, users = world
    new = users.head(3).assign(user_id=[10**6, 10**6 + 1, 10**6 + 2])  # never seen at fit
    ids = catalog.item_id.tolist()
    with TestClient(create_app(root / "v1", catalog, default_k=5)) as client:
        assert client.get("/health").json()["model"]["oov"]["pairs"] == 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                r = client.post("/recommend", json=_body(new, [ids[:10], ids[10:30], ids[5:9]]))
                assert r.status_code == 200, r.text
        assert not [w for w in caught if issubclass(w.category, rm.data.OOVWarning)]
        oov = client.get("/health").json()["model"]["oov"]
    assert oov["pairs"] == 3 * (10 + 20 + 4)
    assert oov["share"]["user_id"] == 1.0  # every scored pair had an unknown user
    model = rm.MultiTaskModel.from_pretrained(root / "v1")
    cands = pd.Series(ids[:10] + ids[10:30] + ids[5:9])
    unknown_items = (model.schema.encode_ids("item_id", cands) == 1).mean()
    assert oov["share"]["item_id"] == pytest.approx(unknown_items) and unknown_items < 0.5
    # a Recommender used directly still warns, as Schema.transform does
    rec = rm.serving.Recommender(model, catalog)
    with pytest.warns(rm.data.OOVWarning, match="user_id"):
        rec.recommend(new, [ids[:10], ids[10:30], ids[5:9]], k=3)
    assert rec.oov.snapshot()["share"]["user_id"] == 1.0


def test_fusion_and_reranker_are_applied(world):
    root, catalog, users = world
    fusion, reranker = rm.WeightedProduct(ctr=1.0, cvr=1.0, price=1.0), rm.MMR(0.5)
    app = create_app(root / "v1", catalog, fusion=fusion, reranker=reranker)
    cands = _candidates(catalog, 4, seed=1)
    with TestClient(app) as client:
        answer = client.post("/recommend", json=_body(users.head(4), cands, 5)).json()
    want = _expected(
        root / "v1",
        catalog,
        users.head(4),
        [list(c) for c in cands],
        5,
        fusion=fusion,
        reranker=reranker,
    )
    _check_equal(_as_frame(answer), want)


def test_model_object_and_bad_arguments(world):
    root, catalog, users = world
    model = rm.MultiTaskModel.from_pretrained(root / "v1")
    client = TestClient(create_app(model, catalog.assign(item_id=catalog.item_id)))
    health = client.get("/health").json()
    assert health["model"]["directory"] is None
    with pytest.raises(ValueError, match="max_candidates must be an int >= 1"):
        create_app(model, catalog, max_candidates=0)
    with pytest.raises(KeyError, match="no item_key column 'sku'"):
        create_app(model, catalog, item_key="sku")
    with pytest.raises(SwapError, match="no model directory"):
        create_app(root / "absent", catalog)


def test_missing_fastapi_names_the_extra(world, monkeypatch):
    root, catalog, _ = world
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(ImportError, match=r"pip install recsys-mt\[serve\]"):
        create_app(root / "v1", catalog)


def test_scoring_failure_is_a_400_and_a_slow_answer_a_503(world):
    root, catalog, users = world
    body = _body(users.head(1), _candidates(catalog, 1, seed=7), 3)
    nan_app = create_app(root / "v1", catalog, fusion=lambda obj: obj["ctr"] * float("nan"))
    with TestClient(nan_app) as client:
        r = client.post("/recommend", json=body)
    assert r.status_code == 400
    assert r.json()["error"].startswith("the request cannot be scored: the fused score of item")

    def slow(obj):
        threading.Event().wait(1.0)
        return obj["ctr"]

    slow_app = create_app(root / "v1", catalog, fusion=slow, timeout_s=0.2)
    with TestClient(slow_app) as client:
        r = client.post("/recommend", json=body)
        assert r.status_code == 503 and "no answer within 0.2 s" in r.json()["error"]
        assert client.get("/health").json()["status"] == "ok"  # the loop was never blocked
