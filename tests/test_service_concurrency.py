"""The FastAPI service under concurrency: a hot swap under concurrent requests, a bad reload
that keeps the old model, the admin token, the batcher isolating a failing request, and
concurrent Recommender calls. Saved models from the ``world`` fixture (tests/conftest.py),
helpers from tests/_service_helpers.py."""

import threading

import numpy as np
import pandas as pd
import pytest
from _service_helpers import _as_frame, _body, _candidates, _check_equal, _expected

import recsys_mt as rm
from recsys_mt.serving.service_batcher import Batcher
from recsys_mt.serving.service_state import SwapError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from recsys_mt.serving import create_app  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
