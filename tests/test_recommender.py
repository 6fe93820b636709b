"""Recommender facade: score -> fuse -> re-rank -> top-k, as a tidy DataFrame."""

import threading

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data


@pytest.fixture(scope="module")
def setup():
    data = make_funnel_data(n_users=60, n_items=80, n_categories=6, n_impressions=8000, seed=3)
    df = data.impressions
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=10),
        ],
        tasks=[rm.Task("ctr", label="click"), rm.Task("cvr", label="purchase", given="ctr")],
    )
    train = schema.fit_transform(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(32,), tower_dims=(16,)))
    rm.Trainer(max_epochs=1, progress_bar=False).fit(model, train)
    catalog = data.items[["item_id", "category", "price"]]
    users = data.users[["user_id", "age", "hist_items"]].head(5)
    return model, schema, catalog, users


def test_recommend_matches_direct_scoring(setup):
    model, schema, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    out = rec.recommend(users, k=7)
    assert list(out.columns) == ["user", "rank", "item", "score", "ctr", "cvr", "ctcvr", "category"]
    assert len(out) == 5 * 7
    for uid, g in out.groupby("user"):
        assert g["rank"].tolist() == list(range(1, 8))
        assert g.item.is_unique
        assert (np.diff(g.score.to_numpy()) <= 0).all()  # plain top-k: sorted by fused score
        # the default fusion is the joint probability; check against scoring every item directly
        u = users[users.user_id == uid].iloc[0]
        pairs = catalog.assign(user_id=uid, age=u.age, hist_items=[u.hist_items] * len(catalog))
        direct = model.predict(schema.transform(pairs))
        best = catalog.item_id.to_numpy()[np.argsort(-direct.ctcvr.to_numpy(), kind="stable")[:7]]
        assert g.item.tolist() == best.tolist()
        np.testing.assert_allclose(g.score, np.sort(direct.ctcvr.to_numpy())[::-1][:7], rtol=1e-6)


def test_ragged_candidates_fusion_and_k_larger_than_list(setup):
    model, _, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    ids = catalog.item_id.tolist()
    cands = [ids[:3], ids[10:30], ids[5:6], ids[:40], ids[40:45]]
    out = rec.recommend(users, cands, k=10, fusion=rm.WeightedProduct(ctr=1.0, cvr=1.0, price=1.0))
    sizes = out.groupby("user").size().reindex(users.user_id).tolist()
    assert sizes == [3, 10, 1, 10, 5]  # k > candidates returns them all, never padding
    for uid, cand in zip(users.user_id, cands):
        assert set(out[out.user == uid].item) <= set(cand)
    price = dict(zip(catalog.item_id, catalog.price))
    np.testing.assert_allclose(out.score, out.ctr * out.cvr * out.item.map(price), rtol=1e-4)


def test_mmr_reranker_diversifies_categories(setup):
    model, _, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    plain = rec.recommend(users, k=10)
    diverse = rec.recommend(users, k=10, reranker=rm.CategoryCoverage(lambda_=0.9))
    n_plain = plain.groupby("user").category.nunique().mean()
    n_div = diverse.groupby("user").category.nunique().mean()
    assert n_div >= n_plain and n_div > 1


def test_thread_safe_concurrent_calls(setup):
    model, _, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    expected = rec.recommend(users, k=5, reranker=rm.MMR(0.5))
    results = [None] * 4

    def run(i):
        results[i] = rec.recommend(users, k=5, reranker=rm.MMR(0.5))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        pd.testing.assert_frame_equal(r, expected)


def test_bad_requests(setup):
    model, _, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    with pytest.raises(KeyError, match="not in the catalog"):
        rec.recommend(users, [[999999]] * len(users), k=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        rec.recommend(users, k=0)
    with pytest.raises(ValueError, match="candidate lists for 5 users"):
        rec.recommend(users, [[1], [2]], k=3)
    with pytest.raises(ValueError, match="duplicate"):
        rm.Recommender(model, pd.concat([catalog, catalog.head(1)]))


def test_candidate_ids_are_matched_exactly_in_one_lookup(setup):
    model, _, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    ids = catalog["item_id"].tolist()
    a, b = int(ids[0]), int(ids[1])
    # a float id is never truncated onto an integer id, a string never matches a number
    for bad in (a + 0.5, str(a)):
        with pytest.raises(KeyError, match="not in the catalog") as err:
            rec.recommend(users.head(2), [[a, b], [b, bad]], k=2)
        assert repr(bad) in str(err.value)
    # numpy integers, Python ints and ragged lists give the same lists as one list per call
    lists = [[a, b], [np.int64(b)], [b, a, int(ids[2])]]
    got = rec.recommend(users.head(3), lists, k=2)
    for i, cand in enumerate(lists):
        alone = rec.recommend(users.iloc[[i]], [cand], k=2)
        mine = got[got["user"] == users["user_id"].iloc[i]]
        assert mine["item"].tolist() == alone["item"].tolist()
        np.testing.assert_array_equal(mine["score"].to_numpy(), alone["score"].to_numpy())


def test_duplicate_candidates_are_ranked_once(setup):
    model, _, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    ids = catalog.item_id.tolist()
    shared = [ids[0], ids[1], ids[1], ids[2], ids[0]]
    out = rec.recommend(users, candidates=shared, k=5)
    for _, g in out.groupby("user"):
        assert sorted(g.item.tolist()) == sorted(ids[:3])  # k > distinct candidates: all, once
    ragged = [[ids[3], ids[3]], [ids[4], ids[5], ids[4]]] + [[ids[6]]] * (len(users) - 2)
    out = rec.recommend(users, candidates=ragged, k=3)
    assert out.groupby("user").item.apply(lambda s: s.is_unique).all()
    assert out.groupby("user").size().tolist()[:2] == [1, 2]


def test_missing_catalog_value_in_the_fusion_names_the_item(setup):
    model, _, catalog, users = setup
    holes = catalog.assign(margin=np.linspace(0.1, 0.5, len(catalog)))  # not a model feature
    holes.loc[holes.index[4], "margin"] = np.nan
    bad_item = int(holes.item_id.iloc[4])
    rec = rm.Recommender(model, holes)
    fusion = rm.WeightedSum(ctr=1.0, margin=0.1)
    with pytest.raises(ValueError, match=rf"item {bad_item} for user row 0 .*\['margin'\]"):
        rec.recommend(users, k=5, fusion=fusion)
    # the default fusion does not read the margin: the hole is harmless there
    assert len(rec.recommend(users, k=5)) == 25
    # leaving the item out of the candidates works
    others = [i for i in holes.item_id if i != bad_item]
    out = rec.recommend(users, [others] * len(users), k=5, fusion=fusion)
    assert bad_item not in set(out.item)


def test_recommend_stream_equals_recommend_per_chunk(setup, tmp_path):
    model, _, catalog, users = setup
    rec = rm.Recommender(model, catalog)
    whole = rec.recommend(users, k=4)
    streamed = pd.concat(list(rec.recommend_stream(users, k=4, chunk_rows=2)), ignore_index=True)
    pd.testing.assert_frame_equal(streamed, whole)
    chunks = [users.iloc[:3], users.iloc[3:]]
    assert pd.concat(list(rec.recommend_stream(chunks, k=4)), ignore_index=True).equals(whole)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(users, preserve_index=False), tmp_path / "u.parquet")
    from_files = pd.concat(list(rec.recommend_stream(tmp_path, k=4, chunk_rows=2)))
    pd.testing.assert_frame_equal(from_files.reset_index(drop=True), whole)
    with pytest.raises(ValueError, match="per-user candidate lists"):
        next(rec.recommend_stream(users, [[1, 2]] * len(users)))
