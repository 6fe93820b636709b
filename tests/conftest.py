"""Fixtures shared by several test files (their helpers are in tests/_*_helpers.py).

- ``hf_offline``, ``tiny_bert``: the BertTextTower tests (test_text_tower*.py) keep Hugging
  Face offline (requested with ``pytestmark = pytest.mark.usefixtures("hf_offline")``) and use a
  tiny random BERT written to a temp folder, once per module.
- ``world``: the FastAPI service tests (test_service*.py): three small saved models, a catalog
  and request users, built once per session (no test changes them).

A test file's own fixture of the same name takes precedence over these.
"""

from __future__ import annotations

import pytest
from _service_helpers import _train
from _text_tower_helpers import _write_tiny_bert

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data


@pytest.fixture
def hf_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
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
