"""The FastAPI service: endpoints, request validation, answers equal to Recommender, hot swap."""

import sys
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.serving.service_batcher import Batcher
from recsys_mt.serving.service_state import SwapError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from recsys_mt.serving import create_app  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = make_funnel_data(n_users=60, n_items=80, n_categories=6, n_impressions=2500, seed=3)
    root = tmp_path_factory.mktemp("models")
    _train(data, 0).save_pretrained(root / "v1")
    _train(data, 1).save_pretrained(root / "v2")
    data.impressions["brand"] = data.impressions["item_id"] % 7  # a column the catalog lacks
    _train(data, 2, extra=[rm.Sparse("brand")]).save_pretrained(root / "needs_brand")
    catalog = data.items[["item_id", "category", "price"]]
    users = data.users[["user_id", "age", "hist_items"]].head(12).reset_index(drop=True)
    return root, catalog, users


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


def _user(**features):
    base = {"user_id": 1, "age": 30.0, "hist_items": [1, 2]}
    base.update(features)
    return {k: v for k, v in base.items() if v != "DROP"}


BAD = [
    (
        {"users": [{"features": _user(agee=3), "candidates": [1]}]},
        "users[0].features.agee",
        "Extra inputs",
    ),
    (
        {"users": [{"features": _user(user_id="7"), "candidates": [1]}]},
        "users[0].features.user_id",
        "valid integer",
    ),
    (
        {"users": [{"features": _user(age=True), "candidates": [1]}]},
        "users[0].features.age",
        "valid number",
    ),
    (
        {"users": [{"features": _user(age="30"), "candidates": [1]}]},
        "users[0].features.age",
        "valid number",
    ),
    (
        {"users": [{"features": _user(user_id="DROP"), "candidates": [1]}]},
        "users[0].features.user_id",
        "Field required",
    ),
    (
        {"users": [{"features": _user(hist_items=[[1]]), "candidates": [1]}]},
        "users[0].features.hist_items[0]",
        "valid integer",
    ),
    ({"users": [{"features": _user(), "candidates": []}]}, "users[0].candidates", "at least 1"),
    (
        {"users": [{"features": _user(), "candidates": list(range(1, 31))}]},
        "users[0].candidates",
        "at most 20",
    ),
    (
        {"users": [{"features": _user(), "candidates": ["1"]}]},
        "users[0].candidates[0]",
        "valid integer",
    ),
    ({"users": [{"features": _user(), "candidates": [1]}], "k": 0}, "k", "greater than or equal"),
    ({"users": [{"features": _user(), "candidates": [1]}], "k": 2.5}, "k", "valid integer"),
    ({"users": [{"features": _user(), "candidates": [1]}], "top": 3}, "top", "Extra inputs"),
    (
        {"users": [{"features": _user(), "candidates": [1], "extra": 1}]},
        "users[0].extra",
        "Extra inputs",
    ),
    ({"users": []}, "users", "at least 1"),
    ({"users": [{"features": _user(), "candidates": [1]}] * 4}, "users", "at most 3"),
    ({"candidates": [1]}, "users", "Field required"),
    (
        {"users": [{"features": _user(), "candidates": [1, 99999]}]},
        "users[0].candidates",
        "[99999] are not in the catalog",
    ),
]


@pytest.mark.parametrize("body, field, message", BAD)
def test_validation_errors_name_the_field(world, body, field, message):
    root, catalog, _ = world
    app = create_app(root / "v1", catalog, max_candidates=20, max_users=3)
    client = TestClient(app)
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error.startswith(field + ":") or f"; {field}:" in error, error
    assert message in error


def test_malformed_json_is_a_422(world):
    root, catalog, _ = world
    client = TestClient(create_app(root / "v1", catalog))
    r = client.post(
        "/recommend", content=b'{"users": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert "JSON" in r.json()["error"]


def test_hot_swap_under_concurrent_requests(world):
    root, catalog, users = world
    app = create_app(root / "v1", catalog, admin_token=TOKEN, workers=2, max_batch_users=8)
    per_thread = [_candidates(catalog, 2, seed=10 + t) for t in range(6)]
    bodies = [_body(users.iloc[2 * t : 2 * t + 2], c, 5) for t, c in enumerate(per_thread)]
    want = {
        v: [
            _expected(root / v, catalog, users.iloc[2 * t : 2 * t + 2], [list(x) for x in c], 5)
            for t, c in enumerate(per_thread)
        ]
        for v in ("v1", "v2")
    }
    assert not np.allclose(want["v1"][0].score, want["v2"][0].score)  # models tell apart
    answers: list[list] = [[] for _ in bodies]
    before_swap = threading.Barrier(len(bodies) + 1)
    swapped = threading.Event()

    def client_thread(t, client):
        for i in range(30):
            sent_after_swap = swapped.is_set()
            r = client.post("/recommend", json=bodies[t])
            answers[t].append((r.status_code, r.json(), sent_after_swap))
            if i == 2:
                before_swap.wait(timeout=60)  # every thread has requests in flight around it
            if swapped.is_set() and sum(a[2] for a in answers[t]) >= 3:
                return

    with TestClient(app) as client:
        threads = [threading.Thread(target=client_thread, args=(t, client)) for t in range(6)]
        for th in threads:
            th.start()
        before_swap.wait(timeout=60)
        r = client.post("/admin/reload", json={"model_dir": str(root / "v2")}, headers=AUTH)
        swapped.set()
        for th in threads:
            th.join(timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == 2
        assert client.get("/health").json()["model"]["directory"] == str(root / "v2")
    for t, got in enumerate(answers):
        assert all(status == 200 for status, _, _ in got)
        versions = [a["model_version"] for _, a, _ in got]
        assert versions == sorted(versions)  # never back to the old model
        assert versions[0] == 1 and versions[-1] == 2  # requests sent after the swap: new model
        assert all(a["model_version"] == 2 for _, a, after in got if after)
        for _, a, _ in got:  # each answer comes wholly from the model it names
            _check_equal(_as_frame(a), want[f"v{a['model_version']}"][t])


def test_bad_reload_keeps_the_old_model(world, tmp_path):
    root, catalog, users = world
    app = create_app(root / "v1", catalog, admin_token=TOKEN)
    body = _body(users.head(2), _candidates(catalog, 2, seed=5), 3)
    with TestClient(app) as client:
        first = client.post("/recommend", json=body).json()
        cases = [
            ({"model_dir": str(tmp_path / "missing")}, 400, "no model directory"),
            ({"model_dir": str(tmp_path)}, 400, "config.json missing"),
            ({"model_dir": str(root / "needs_brand")}, 400, "added ['brand']"),
            ({"path": "x"}, 422, "model_dir"),
        ]
        for payload, status, message in cases:
            r = client.post("/admin/reload", json=payload, headers=AUTH)
            assert r.status_code == status
            assert message in r.json()["error"]
        r = client.post("/admin/reload", json={"model_dir": str(root / "v2")})
        assert r.status_code == 401  # no token
        with pytest.raises(SwapError, match="added \\['brand'\\]"):
            app.state.models.swap(root / "needs_brand")
        assert client.get("/health").json()["model"]["version"] == 1
        assert client.post("/recommend", json=body).json() == first
        assert app.state.models.swap(root / "v2").version == 2  # the Python hot swap
        assert client.post("/recommend", json=body).json()["model_version"] == 2


def test_reload_endpoint_needs_a_token(world):
    root, catalog, _ = world
    client = TestClient(create_app(root / "v1", catalog))
    assert client.post("/admin/reload", json={"model_dir": str(root / "v2")}).status_code == 404


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


def test_batcher_isolates_a_failing_request():
    gate = threading.Event()

    def run(served, users, candidates, k):
        gate.wait(10)
        if (users["user_id"] < 0).any():
            raise ValueError("negative user id")
        rows = [
            (u, r + 1) for u, c in zip(users.user_id, candidates) for r in range(min(k, len(c)))
        ]
        return pd.DataFrame(rows, columns=["user", "rank"])

    batcher = Batcher(run, max_batch_users=16)
    futures = [
        batcher.submit("m", pd.DataFrame({"user_id": [u]}), [[1, 2, 3][: 1 + u % 3]], 2)
        for u in (0, 1, -5, 2)
    ]
    gate.set()
    got = []
    for f in futures:
        try:
            got.append(f.result(10)["user"].tolist())
        except ValueError as e:
            got.append(str(e))
    batcher.close()
    assert got == [[0], [1, 1], "negative user id", [2, 2]]


def test_recommender_concurrent_calls_with_different_inputs(world):
    root, catalog, users = world
    rec = rm.Recommender(rm.MultiTaskModel.from_pretrained(root / "v1"), catalog)
    inputs = [(users.iloc[[t, t + 6]], _candidates(catalog, 2, seed=t), 2 + t) for t in range(6)]
    want = [rec.recommend(u, [list(c) for c in cs], k=k) for u, cs, k in inputs]
    got = [None] * len(inputs)

    def run(t):
        u, cs, k = inputs[t]
        for _ in range(5):
            got[t] = rec.recommend(u, [list(c) for c in cs], k=k)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(len(inputs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for g, w in zip(got, want):
        pd.testing.assert_frame_equal(g, w)


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
