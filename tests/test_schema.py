"""Schema: vocabularies, OOV, hashing, dense transforms, labels, validation, JSON round trip."""

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data import OOV_ID, PAD_ID, SchemaError


def make_df(n=12, seed=0):
    rng = np.random.default_rng(seed)
    click = (np.arange(n) % 2).astype(int)
    purchase = click * (np.arange(n) % 4 == 1)
    return pd.DataFrame(
        {
            "user_id": np.arange(n) % 4,
            "item_id": np.array(["a", "b", "c"] * (n // 3)),
            "price": rng.uniform(1, 100, n),
            "hist": [[1, 2, 3][: i % 4] for i in range(n)],
            "title": ["red shoe", None, "blue hat"] * (n // 3),
            "click": click,
            "purchase": purchase,
        }
    )


def make_schema(**kw):
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id", **kw),
            rm.Dense("price", transform="log1p"),
            rm.Sequence("hist", max_len=2),
            rm.Text("title"),
        ],
        tasks=[rm.Task("cvr", "purchase", given="ctr"), rm.Task("ctr", "click")],
        min_groups=None,  # a handful of users: every item would be an alias of one
    )


def test_fit_transform_shapes_and_ids():
    df = make_df()
    schema = make_schema()
    frame = schema.fit_transform(df)
    assert schema.task_names == ["ctr", "cvr"]  # parents first
    assert frame["sparse"].dtype == torch.int64 and frame["sparse"].shape == (12, 2)
    # first-appearance order: user 0 -> id 2, user 1 -> id 3, ...
    assert frame.column("user_id")[:4].tolist() == [2, 3, 4, 5]
    assert schema.vocab_size("item_id") == 3 + 2
    assert frame["labels"].shape == (12, 2)
    assert torch.equal(frame.column("ctr"), torch.tensor(df.click.values, dtype=torch.float32))
    # standardised log1p price has mean 0, std 1 on the training data
    x = frame.column("price").double()
    assert abs(x.mean().item()) < 1e-6 and abs(x.std(unbiased=False).item() - 1) < 1e-5
    # sequences keep the last max_len entries, left-aligned, 0-padded
    seq = frame["seq/hist"]
    assert seq.shape == (12, 2)
    vocab = schema.vocabulary("hist")
    ids = {v: i + 2 for i, v in enumerate(vocab)}
    assert seq[0].tolist() == [0, 0]
    assert seq[1].tolist() == [ids[1], 0]
    assert seq[3].tolist() == [ids[2], ids[3]]  # [1, 2, 3] -> last two
    # text: index into distinct strings, missing -> ""
    texts = frame.meta["texts"]["title"]
    assert texts[frame["text/title"][1]] == ""
    assert texts[frame["text/title"][0]] == "red shoe"


def test_unseen_ids_map_to_oov_and_missing_to_pad():
    df = make_df()
    schema = make_schema()
    schema.fit(df)
    test = df.head(3).copy()
    test["item_id"] = ["zzz", None, "a"]
    frame = schema.transform(test)
    assert frame.column("item_id").tolist() == [OOV_ID, PAD_ID, 2]


def test_min_freq_and_max_vocab():
    df = pd.DataFrame({"x": ["a"] * 5 + ["b"] * 3 + ["c"] * 1, "y": [0, 1] * 4 + [0]})
    s = rm.Schema([rm.Sparse("x", min_freq=2)], tasks=[rm.Task("y")]).fit(df)
    assert s.vocabulary("x") == ["a", "b"]
    assert s.transform(df).column("x").tolist()[-1] == OOV_ID
    s = rm.Schema([rm.Sparse("x", max_vocab=1)], tasks=[rm.Task("y")]).fit(df)
    assert s.vocabulary("x") == ["a"]


def test_hashing_is_stable_and_in_range():
    df = pd.DataFrame({"x": np.arange(1000) * 7919, "y": np.zeros(1000, dtype=int)})
    s = rm.Schema([rm.Sparse("x", hash_buckets=64)], tasks=[rm.Task("y")]).fit(df)
    ids = s.transform(df).column("x")
    assert ids.min() >= 2 and ids.max() <= 65
    assert s.vocab_size("x") == 66
    assert len(set(ids.tolist())) > 50  # spreads over buckets
    # same value -> same bucket across a JSON round trip, unseen values hash too (no OOV)
    s2 = rm.Schema.from_json(s.to_json())
    assert torch.equal(s2.transform(df).column("x"), ids)
    new = pd.DataFrame({"x": [123456789], "y": [0]})
    assert s2.transform(new).column("x").item() >= 2


def test_json_round_trip(tmp_path):
    df = make_df()
    schema = make_schema()
    frame = schema.fit_transform(df)
    path = tmp_path / "schema.json"
    schema.to_json(path)
    loaded = rm.Schema.from_json(path)
    assert loaded == schema
    other = loaded.transform(df)
    for k in frame.keys():
        assert torch.equal(frame[k], other[k]), k


def test_nan_policies():
    df = make_df()
    df.loc[2, "price"] = np.nan
    with pytest.raises(SchemaError, match="'price'.*NaN.*row 2"):
        make_schema().fit(df)
    s = rm.Schema([rm.Dense("price", nan="mean")], tasks=[]).fit(df)
    assert s.transform(df).column("price")[2].item() == 0.0
    s = rm.Schema([rm.Dense("price", nan="zero", transform="none")], tasks=[]).fit(df)
    assert s.transform(df).column("price")[2].item() == 0.0


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop(columns=["price"]), r"missing column\(s\) \['price'\]"),
        (lambda d: d.assign(price=["x"] * len(d)), "dense column 'price' has dtype"),
        (lambda d: d.assign(click=2), r"'click' of binary task 'ctr' must hold 0/1; found \[2.0\]"),
        (lambda d: d.assign(purchase=1, click=0), "parent task 'ctr' is 0"),
        (lambda d: d.assign(price=-5.0), "needs values > -1 for log1p"),
        (lambda d: d.assign(price=np.inf), "inf"),
        (lambda d: d.assign(hist="abc"), "sequence column 'hist' must hold lists"),
        (lambda d: d.assign(item_id=1.5), "non-integer float ids"),
        (lambda d: d.iloc[:0], "empty"),
        (lambda d: d.drop(columns=["purchase"]), r"missing label column\(s\) \['purchase'\]"),
    ],
)
def test_bad_input_raises_before_state_changes(mutate, match):
    df = make_df()
    schema = make_schema()
    with pytest.raises(SchemaError, match=match):
        schema.fit(mutate(df))
    assert not schema.is_fitted  # nothing learned from the bad frame
    schema.fit(df)
    before = schema.to_json()
    with pytest.raises(SchemaError, match=match):
        schema.transform(mutate(df))
    assert schema.to_json() == before


def test_dtype_mismatch_at_transform():
    df = make_df()
    schema = make_schema().fit(df)
    with pytest.raises(SchemaError, match="'user_id' holds str ids but the schema was fit on int"):
        schema.transform(df.assign(user_id=df.user_id.astype(str)))


def test_nan_child_label_allowed_where_parent_is_zero():
    df = make_df()
    df["purchase"] = df["purchase"].astype(float)
    df.loc[df.click == 0, "purchase"] = np.nan
    frame = make_schema().fit_transform(df)
    assert frame.column("cvr")[df.click.values == 0].sum() == 0
    df.loc[1, "purchase"] = np.nan  # click == 1 there
    with pytest.raises(SchemaError, match="NaN at row 1 where its parent task 'ctr' is 1"):
        make_schema().fit(df)


def test_task_chain_validation():
    with pytest.raises(ValueError, match="given='nope', which is not a task"):
        rm.Schema([rm.Sparse("a")], tasks=[rm.Task("x", given="nope")])
    with pytest.raises(ValueError, match="cycle"):
        rm.Schema([rm.Sparse("a")], tasks=[rm.Task("x", given="y"), rm.Task("y", given="x")])
    with pytest.raises(ValueError, match="duplicate task names"):
        rm.Schema([rm.Sparse("a")], tasks=[rm.Task("x"), rm.Task("x")])
    with pytest.raises(ValueError, match="duplicate feature names"):
        rm.Schema([rm.Sparse("a"), rm.Dense("a")])
    with pytest.raises(ValueError, match="vocab_from='b', which is not a Sparse"):
        rm.Schema([rm.Sparse("a"), rm.Sequence("h", vocab_from="b")])


def test_sequence_shares_vocabulary():
    df = pd.DataFrame(
        {"item_id": [10, 20, 30, 10], "hist": [[10], [20, 99], [], None], "y": [0, 1, 0, 1]}
    )
    s = rm.Schema(
        [rm.Sparse("item_id"), rm.Sequence("hist", vocab_from="item_id", max_len=3)],
        tasks=[rm.Task("y")],
    )
    f = s.fit_transform(df)
    assert f["seq/hist"].tolist() == [[2, 0, 0], [3, OOV_ID, 0], [0, 0, 0], [0, 0, 0]]


def test_loader_covers_each_row_once_and_shards():
    df = make_df(n=30)
    frame = make_schema().fit_transform(df)
    loader = rm.BatchLoader(frame, batch_size=7, shuffle=True, seed=3)
    seen = torch.cat(
        [b["group"] * 0 + b["sparse"][:, 0] * 0 + torch.arange(len(b["group"])) for b in loader]
    )
    assert len(seen) == 30 and len(loader) == 5
    frame["row"] = torch.arange(30)
    rows = [
        torch.cat(
            [b["row"] for b in rm.BatchLoader(frame, 4, shuffle=True, seed=1, rank=r, world_size=3)]
        )
        for r in range(3)
    ]
    assert all(len(r) == 10 for r in rows)
    assert sorted(torch.cat(rows).tolist()) == list(range(30))
    a = torch.cat([b["row"] for b in rm.BatchLoader(frame, 4, shuffle=True, seed=1)])
    loader = rm.BatchLoader(frame, 4, shuffle=True, seed=1)
    loader.set_epoch(1)
    b = torch.cat([x["row"] for x in loader])
    assert sorted(a.tolist()) == sorted(b.tolist()) and not torch.equal(a, b)
