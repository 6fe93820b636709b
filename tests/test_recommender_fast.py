"""Recommender fast scoring: rows gathered from the encoded catalog and users frame give the
pair frame's probabilities bit for bit."""

import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.frame_layout import encoded_parts
from recsys_mt.data.synthetic import make_funnel_data

TASKS = [rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")]


def _emb(item_ids: pd.Series) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    table = rng.normal(size=(int(item_ids.max()) + 1, 4))
    return list(table[item_ids.to_numpy()])


@pytest.fixture(scope="module")
def data():
    d = make_funnel_data(n_users=60, n_items=80, n_categories=6, n_impressions=3000, seed=3)
    df = d.impressions.assign(emb=_emb(d.impressions.item_id))
    catalog = d.items[["item_id", "category", "price"]].assign(emb=_emb(d.items.item_id))
    users = d.users[["user_id", "age", "hist_items"]].head(6).reset_index(drop=True)
    # a same-named user column the catalog overrides (values no item has)
    users["category"] = np.arange(100, 106)
    users.loc[2, "age"] = np.nan  # Dense(nan="mean") fills it
    return df, catalog, users


def _model(df: pd.DataFrame, features: list) -> rm.MultiTaskModel:
    schema = rm.Schema(features, tasks=TASKS)
    schema.fit(df)
    torch.manual_seed(0)
    return rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(16,), tower_dims=(8,)))


@pytest.fixture(scope="module")
def model(data):
    df = data[0]
    return _model(
        df,
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.FunnelStats("item_stats", entity="item_id"),
            rm.FunnelStats("user_stats", entity="user_id", counts=False),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=10),
            rm.Vector("emb", dim=4, normalize="l2"),
        ],
    )


def _both(model, catalog):
    fast = rm.Recommender(model, catalog)
    slow = rm.Recommender(model, catalog, fast_scoring=False)
    return fast, slow


def _assert_same_scores(fast, slow, users, candidates):
    positions, mask = fast._candidate_positions(candidates, len(users))
    a = fast.score(users, positions, mask)
    b = slow.score(users, positions, mask)
    assert sorted(a) == sorted(b) == sorted(fast.model.predict_columns())
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert fast._pairs.reason is None and fast._pairs._items is not None  # fast path taken
    return a


def test_encoded_parts_cover_the_frame_and_name_their_inputs(model, data):
    df, _, _ = data
    schema = model.schema
    head = df.head(50).reset_index(drop=True)
    frame = schema.transform(head, labels=False)
    parts = encoded_parts(schema)
    keys = {p.key for p in parts}
    assert keys == set(frame.keys())
    for key in ("sparse", "dense"):
        idx = sorted(p.index for p in parts if p.key == key)
        assert idx == list(range(frame[key].shape[1]))
    # changing one input column changes exactly the parts that name it
    changed = head.assign(user_id=head.user_id.to_numpy()[::-1].copy())
    other = schema.transform(changed, labels=False)
    for p in parts:
        a = frame[p.key] if p.index is None else frame[p.key][:, p.index]
        b = other[p.key] if p.index is None else other[p.key][:, p.index]
        assert torch.equal(a, b) == ("user_id" not in p.inputs), p


def test_shared_candidates_with_repeats_equal_pair_path(model, data):
    _, catalog, users = data
    fast, slow = _both(model, catalog)
    ids = catalog.item_id.tolist()
    shared = ids[:30] + ids[3:6]  # repeats are masked out
    scores = _assert_same_scores(fast, slow, users, shared)
    assert (scores["ctcvr"][:, 30:] == 0).all() and (scores["ctcvr"][:, :30] > 0).all()
    # and equal to predicting a hand-built DataFrame of the pairs
    pairs = users.drop(columns="category").merge(catalog.head(30), how="cross")
    direct = model.predict(model.schema.transform(pairs, labels=False))
    for name in direct.columns:
        want = torch.tensor(direct[name].to_numpy(np.float32)).view(len(users), 30)
        assert torch.equal(scores[name][:, :30], want), name
    pd.testing.assert_frame_equal(
        fast.recommend(users, shared, k=8), slow.recommend(users, shared, k=8)
    )


def test_ragged_lists_and_whole_catalog_equal_pair_path(model, data):
    _, catalog, users = data
    fast, slow = _both(model, catalog)
    ids = catalog.item_id.tolist()
    ragged = [ids[:3], ids[10:40], ids[5:6], ids[:50] + ids[:2], [], ids[60:70]]
    _assert_same_scores(fast, slow, users, ragged)
    _assert_same_scores(fast, slow, users, None)
    fusion = rm.WeightedProduct(ctr=1.0, cvr=1.0, price=1.0)
    pd.testing.assert_frame_equal(
        fast.recommend(users, ragged, k=5, fusion=fusion),
        slow.recommend(users, ragged, k=5, fusion=fusion),
    )


def test_catalog_column_overrides_user_column(model, data):
    _, catalog, users = data
    fast, _ = _both(model, catalog)
    positions, mask = fast._candidate_positions(catalog.item_id.tolist()[:10], len(users))
    a = fast.score(users, positions, mask)
    b = fast.score(users.drop(columns="category"), positions, mask)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_new_users_warn_and_score_like_pair_path(model, data):
    _, catalog, users = data
    fast, slow = _both(model, catalog)
    new = users.assign(user_id=users.user_id + 10_000)
    with pytest.warns(rm.data.OOVWarning, match="user_id"):
        a = fast.recommend(new, k=4)
    with pytest.warns(rm.data.OOVWarning, match="user_id"):
        b = slow.recommend(new, k=4)
    pd.testing.assert_frame_equal(a, b)
    # the gathered frame reports the pair frame's OOV shares (one shared list: same weights)
    positions, mask = fast._candidate_positions(catalog.item_id.tolist()[:20], len(new))
    rows_u, rows_c = torch.nonzero(mask, as_tuple=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gathered = fast._pairs.encode(new, rows_u, positions[rows_u, rows_c])
        pair = slow._pair_frame(new, positions, rows_u, rows_c)
    assert gathered.meta["oov_rates"] == pytest.approx(pair.meta["oov_rates"])
    assert gathered.meta["oov_rates"]["user_id"] == 1.0
    for f in model.schema.sparse:
        assert gathered.meta["oov_counts"][f.name] == pair.meta["oov_counts"][f.name]


def test_bad_users_raise_the_pair_path_error(model, data):
    _, catalog, users = data
    fast, slow = _both(model, catalog)
    for bad in (users.drop(columns="age"), users.assign(hist_items=[[[1]]] * len(users))):
        with pytest.raises(rm.SchemaError) as fe:
            fast.recommend(bad, k=3)
        with pytest.raises(rm.SchemaError) as se:
            slow.recommend(bad, k=3)
        assert str(fe.value) == str(se.value)
    assert fast._pairs.reason is None  # a bad request does not switch the fast path off


def test_crossed_entity_falls_back_to_pair_frame(data):
    df, catalog, users = data
    model = _model(
        df,
        [
            rm.Sparse("item_id"),
            rm.FunnelStats("uc", entity=["user_id", "category"]),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=5),
        ],
    )
    fast, slow = _both(model, catalog)
    assert "uc" in fast._pairs.reason
    positions, mask = fast._candidate_positions(None, len(users))
    a, b = fast.score(users, positions, mask), slow.score(users, positions, mask)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_concurrent_calls_match_sequential(model, data):
    _, catalog, users = data
    rec = rm.Recommender(model, catalog)  # catalog encoded at construction, then only read
    ids = catalog.item_id.tolist()
    jobs = [
        (users.iloc[i : i + 2].reset_index(drop=True), ids[i * 7 : i * 7 + 40]) for i in range(5)
    ]
    seq = [rm.Recommender(model, catalog, fast_scoring=False).recommend(u, c, k=6) for u, c in jobs]
    got: dict[int, pd.DataFrame] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs) * 2)

    def work(i: int, u: pd.DataFrame, c: list) -> None:
        try:
            start.wait()
            for _ in range(3):
                got[i] = rec.recommend(u, c, k=6)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=(i % len(jobs), *jobs[i % len(jobs)]))
        for i in range(len(jobs) * 2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for i, expected in enumerate(seq):
        pd.testing.assert_frame_equal(got[i], expected)


def test_catalog_that_does_not_encode_falls_back(model, data):
    _, catalog, users = data
    broken = catalog.copy()
    broken.loc[5, "price"] = np.nan  # Dense("price") refuses NaN: only pairs with item 5 fail
    fast, slow = _both(model, broken)
    others = [i for i in broken.item_id.tolist() if i != broken.item_id[5]][:20]
    a = fast.recommend(users, others, k=5)
    assert fast._pairs.reason == "the catalog as a whole does not encode"
    pd.testing.assert_frame_equal(a, slow.recommend(users, others, k=5))
    with pytest.raises(rm.SchemaError, match="price"):
        fast.recommend(users, [broken.item_id[5]], k=1)
