"""``Schema(min_groups=k)``: a Sparse value keeps its own id only when the fit rows show it with
at least ``k`` distinct groups (users); the same rule at fit, in a streaming fit and in
``Schema.update``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import recsys_mt as rm
from recsys_mt.data import SchemaError


def frame() -> pd.DataFrame:
    # item "wide": 4 users; "alias": 1 user (3 rows); "pair": 2 users; zip "z1": 3 users
    rows = [
        (1, "wide", "z1"), (2, "wide", "z1"), (3, "wide", "z1"), (4, "wide", "z2"),
        (5, "alias", "z3"), (5, "alias", "z3"), (5, "alias", "z3"),
        (1, "pair", "z1"), (2, "pair", "z1"), (None, "pair", "z9"),
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "zip"])
    df["user_id"] = df["user_id"].astype("Int64")
    df["click"] = 1
    return df


def schema(**kw) -> rm.Schema:
    return rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id"), rm.Sparse("zip")],
        tasks=[rm.Task("ctr", "click")],
        **kw,
    )


def test_values_seen_with_fewer_groups_map_to_oov():
    s = schema(min_groups=3).fit(frame())
    assert s.vocabulary("item_id") == ["wide"]  # "pair": 2 users (a missing user counts none)
    assert s.vocabulary("zip") == ["z1"]
    assert s.vocabulary("user_id") == [1, 2, 3, 4, 5]  # the group column's own: never filtered
    ids = s.encode_ids("item_id", ["wide", "alias", "pair"])
    assert ids.tolist() == [2, 1, 1]  # OOV id 1, like an unseen value
    s2 = schema(min_groups=2).fit(frame())
    assert s2.vocabulary("item_id") == ["wide", "pair"] and s2.vocabulary("zip") == ["z1"]


def test_off_switches_keep_every_value():
    for s in (
        schema(min_groups=None),
        schema(min_groups=1),
        schema(min_groups=3, group=None),
    ):
        s.fit(frame())
        assert s.vocabulary("item_id") == ["wide", "alias", "pair"]
    hashed = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id", hash_buckets=16)], min_groups=3
    ).fit(frame())
    assert hashed.vocab_size("item_id") == 16 + 2  # nothing to filter in a hashed feature


def test_min_freq_and_max_vocab_apply_to_what_remains():
    df = frame()
    s = rm.Schema([rm.Sparse("user_id"), rm.Sparse("item_id", min_freq=4)], min_groups=2).fit(df)
    assert s.vocabulary("item_id") == ["wide"]  # "pair": 2 users but 3 rows < 4


def test_default_is_ten_groups_and_survives_json():
    assert schema().min_groups == 10
    s = schema(min_groups=3).fit(frame())
    back = rm.Schema.from_json(s.to_json())
    assert back.min_groups == 3 and back.vocabulary("item_id") == ["wide"]
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="min_groups must be"):
            schema(min_groups=bad)


def test_streaming_fit_equals_in_memory_fit():
    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 60, n),
            "item_id": rng.zipf(1.6, n) % 400,
            "zip": rng.integers(0, 60, n) // 2,
            "click": rng.integers(0, 2, n),
        }
    )
    df.loc[rng.random(n) < 0.05, "user_id"] = -1
    df["user_id"] = df["user_id"].where(df["user_id"] >= 0)  # some missing groups
    whole = schema(min_groups=4).fit(df)
    chunks = [df.iloc[i : i + 250] for i in range(0, n, 250)]
    streamed = schema(min_groups=4).fit(chunks, progress_bar=False)
    for name in ("item_id", "zip", "user_id"):
        assert streamed.vocabulary(name) == whole.vocabulary(name), name
    kept = set(whole.vocabulary("item_id"))
    users = df.dropna(subset=["user_id"]).groupby("item_id")["user_id"].nunique()
    assert kept == set(users.index[users >= 4])  # exactly the values with 4+ users
    assert 0 < len(kept) < df["item_id"].nunique()


def test_update_grows_only_values_with_enough_groups():
    s = schema(min_groups=2).fit(frame())
    new = pd.DataFrame(
        {
            "user_id": pd.array([7, 8, 9, 9, 9], dtype="Int64"),
            "item_id": ["fresh", "fresh", "solo", "solo", "alias"],
            "zip": ["z1", "z1", "z1", "z1", "z1"],
            "click": 1,
        }
    )
    grown, growth = s.update(new)
    assert grown.vocabulary("item_id") == ["wide", "pair", "fresh"]
    assert growth.added["item_id"] == 1
    # "alias" stays out: the update frame shows it with one user too
    assert grown.encode_ids("item_id", ["alias", "solo"]).tolist() == [1, 1]


def test_missing_group_column_is_named():
    df = frame().drop(columns=["user_id"])
    s = rm.Schema([rm.Sparse("item_id")], group="user_id", min_groups=2)
    with pytest.raises(SchemaError, match="user_id"):
        s.fit(df)


def test_a_feature_a_text_is_keyed_on_keeps_every_value():
    df = frame().assign(title=lambda d: "title of " + d["item_id"])
    s = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("zip"),
            rm.Text("title", key="item_id"),
        ],
        min_groups=3,
    ).fit(df)
    assert s.vocabulary("item_id") == ["wide", "alias", "pair"]  # texts are looked up by id
    assert s.vocabulary("zip") == ["z1"]  # still filtered


def test_oov_warning_names_the_group_filter():
    s = schema(min_groups=3).fit(frame())
    new = frame().assign(user_id=pd.array([1] * 10, dtype="Int64"))
    with pytest.warns(rm.OOVWarning, match=r"Values of \['item_id'\] seen with fewer than"):
        s.transform(new)
