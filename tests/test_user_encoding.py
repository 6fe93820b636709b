"""The user-row fast path (``UserRowEncoder``) gives exactly the tensors ``Schema.transform``
gives, or steps aside (``None``) wherever the general path would raise or differ."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.frame_layout import encode_rows
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.serving.pair_encoding import PairEncoder, _owned
from recsys_mt.serving.service_schema import user_fields, users_frame

TASKS = [rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")]

SCHEMAS = {
    "vocab": lambda: rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=5),
        ],
        tasks=TASKS,
    ),
    "hashed": lambda: rm.Schema(
        [
            rm.Sparse("user_id", hash_buckets=37),
            rm.Sparse("item_id"),
            rm.Dense("age", transform="none", nan="zero"),
            rm.Dense("age_std", column="age", nan="mean"),
            rm.Dense("age_log", column="age", transform="log1p", nan="zero"),
            rm.Sequence("hist_items", max_len=3, min_freq=2),
        ],
        tasks=TASKS,
        group=None,
    ),
    "keyed": lambda: rm.Schema(
        [
            rm.Sparse("user_id", anonymize=True, hash_key="k" * 16),
            rm.Sparse("item_id", hash_buckets=101, hash_key="j" * 16),
            rm.Dense("age", nan="error"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=4),
        ],
        tasks=TASKS,
    ),
}


@pytest.fixture(scope="module")
def data():
    d = make_funnel_data(n_users=50, n_items=60, n_categories=5, n_impressions=2500, seed=5)
    catalog = d.items[["item_id", "category", "price"]]
    return d.impressions.fillna({"age": 30.0}), catalog


@pytest.fixture(scope="module", params=sorted(SCHEMAS))
def model(request, data):
    schema = SCHEMAS[request.param]()
    schema.fit(data[0])
    torch.manual_seed(0)
    return rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,), tower_dims=(4,)))


def _cell(rng, known: np.ndarray):
    """A sequence cell: usually a usual one, sometimes an odd one."""
    r = rng.random()
    n = int(rng.integers(0, 12))
    ids = np.where(rng.random(n) < 0.7, rng.choice(known, n), rng.integers(-5, 10**6, n))
    if r < 0.1:
        return None
    if r < 0.2:
        return []
    if r < 0.25:
        return np.asarray([])  # what the service makes of an empty JSON list
    if r < 0.6:
        return np.asarray(ids, dtype=np.int64)
    if r < 0.9:
        return [int(v) for v in ids]
    odd = [
        np.nan,
        [str(v) for v in ids] or ["a"],
        [[1, 2]],
        [True, False],
        np.asarray(ids, dtype=np.int32),
        np.asarray(ids, dtype=np.float64),
        (1, 2),
        "12",
        [1, "2"],
        np.zeros((1, 2), dtype=np.int64),
        [2**70],
    ]
    return odd[int(rng.integers(len(odd)))]


def _users(rng, known_users: np.ndarray, known_items: np.ndarray) -> pd.DataFrame:
    b = int(rng.integers(1, 7))
    uid = np.where(rng.random(b) < 0.6, rng.choice(known_users, b), rng.integers(-3, 10**7, b))
    age = rng.normal(35, 20, b)
    age[rng.random(b) < 0.25] = np.nan
    users = pd.DataFrame({"user_id": uid.astype(np.int64), "age": age})
    users["hist_items"] = pd.Series([_cell(rng, known_items) for _ in range(b)], dtype=object)
    r = rng.random()
    if r < 0.05:
        users.loc[0, "age"] = np.inf
    elif r < 0.1:
        users.loc[0, "age"] = -3.0  # log1p refuses it
    elif r < 0.13:
        users.loc[0, "age"] = 1e39  # beyond float32
    elif r < 0.18:
        users["age"] = users["age"].fillna(1).astype(np.int64)
    elif r < 0.22:
        users["user_id"] = users["user_id"].astype(str)
    elif r < 0.25:
        users["user_id"] = users["user_id"].astype("Int64")
    elif r < 0.28:
        users["age"] = users["age"].astype(object)
    return users


def _general(pe: PairEncoder, users: pd.DataFrame):
    side = {c: users[c].array for c in pe._user_cols}
    zeros = np.zeros(len(users), dtype=np.intp)
    side.update({c: v.take(zeros) for c, v in pe._fill.items()})
    frame = encode_rows(pe.schema, pd.DataFrame(side, copy=False))
    seqs = {
        f.name: (frame.meta["oov_counts"][f.name], frame.meta["oov_rates"][f.name])
        for f in pe.schema.sequences
    }
    return _owned(frame, pe._user_parts), seqs


def test_fast_user_rows_equal_schema_transform(model, data):
    _, catalog = data
    schema = model.schema
    pe = PairEncoder(model, catalog)
    assert pe.reason is None and pe._fast.reason is None and pe._items is not None
    rng = np.random.default_rng(11)
    known_users = data[0].user_id.unique()
    known_items = catalog.item_id.to_numpy()
    taken = 0
    for _ in range(400):
        users = _users(rng, known_users, known_items)
        fast = pe._fast.encode(users)
        try:
            want, want_seqs = _general(pe, users)
        except Exception:
            assert fast is None, users  # the general path raises: the fast path steps aside
            continue
        if fast is None:
            continue
        taken += 1
        got, got_seqs = fast
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            assert torch.equal(got[key], want[key]), (key, users)
            assert got[key].is_contiguous()
        user_seqs = {p.feature for p in pe._user_parts if p.key.startswith("seq/")}
        assert got_seqs == {k: v for k, v in want_seqs.items() if k in user_seqs}
    assert taken > 80  # many frames take the fast path
    assert schema is model.schema


def test_recommend_equals_pair_path_over_random_users(model, data):
    _, catalog = data
    fast = rm.Recommender(model, catalog)
    slow = rm.Recommender(model, catalog, fast_scoring=False)
    rng = np.random.default_rng(12)
    known_users = data[0].user_id.unique()
    ids = catalog.item_id.to_numpy()
    for _ in range(60):
        users = _users(rng, known_users, ids)
        cands = [rng.choice(ids, int(rng.integers(1, 30))).tolist() for _ in range(len(users))]
        outs = []
        for rec in (fast, slow):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    outs.append(rec.recommend(users, cands, k=5))
                except Exception as e:
                    outs.append((type(e), str(e)))
        if isinstance(outs[0], pd.DataFrame):
            pd.testing.assert_frame_equal(outs[0], outs[1], check_exact=True)
        else:
            assert outs[0] == outs[1]
    assert fast._pairs.reason is None


def test_service_rows_take_the_fast_path_and_match(model, data):
    _, catalog = data
    fields = user_fields(model.schema, catalog.columns)
    rec = rm.Recommender(model, catalog)
    slow = rm.Recommender(model, catalog, fast_scoring=False)
    rng = np.random.default_rng(13)
    ids = catalog.item_id.to_numpy()
    rows = []
    for i in range(8):
        row = {"user_id": int(rng.integers(0, 80)), "hist_items": None}
        if i % 3:
            row["hist_items"] = [int(v) for v in rng.choice(ids, i * 2)]
        if i % 4 != 1:
            row["age"] = None if i == 2 and model.schema.feature("age").nan != "error" else 30.5
        else:
            row["age"] = 41.0
        rows.append(row)
    users = users_frame(fields, rows)
    assert rec._pairs._fast.encode(users) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = rec.recommend(users, [ids[:20].tolist()] * len(rows), k=7)
        b = slow.recommend(users, [ids[:20].tolist()] * len(rows), k=7)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_unusual_schemas_disable_the_fast_path(data):
    df, catalog = data
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.FunnelStats("us", entity="user_id")],
        tasks=TASKS,
    )
    schema.fit(df)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,), tower_dims=(4,)))
    pe = PairEncoder(model, catalog)
    assert pe.reason is None and "FunnelStats" in pe._fast.reason
    str_users = df.assign(user_id=df.user_id.astype(str))
    schema = rm.Schema([rm.Sparse("user_id"), rm.Sparse("item_id")], tasks=TASKS)
    schema.fit(str_users)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(8,), tower_dims=(4,)))
    pe = PairEncoder(model, catalog)
    assert "str ids" in pe._fast.reason
    assert PairEncoder(model, catalog, fast_users=False)._fast is None


def test_catalog_encoded_at_construction(model, data):
    _, catalog = data
    rec = rm.Recommender(model, catalog)
    assert rec._pairs._items is not None  # no first call needed
