"""The FastAPI service's request validation: every malformed request is a 422 whose error
names the field, malformed JSON included. Saved models from the ``world`` fixture
(tests/conftest.py)."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from recsys_mt.serving import create_app  # noqa: E402


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
