"""Privacy: keyed hashing (secret keys never saved, checked at load) and anonymised
vocabularies (no raw ids at rest, identical encodings)."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recsys_mt as rm
from recsys_mt.data import SchemaError
from recsys_mt.model.persistence import load_pretrained

KEY = bytes(range(32))
OTHER = b"another secret"


def make_df(n=40, seed=0):
    rng = np.random.default_rng(seed)
    users = [f"user-{u:06d}" for u in rng.integers(0, 12, n)]
    items = (9_876_543_210 + rng.integers(0, 9, n)).tolist()
    hist = [list(9_876_543_210 + rng.integers(0, 12, rng.integers(0, 4))) for _ in range(n)]
    click = rng.integers(0, 2, n)
    return pd.DataFrame({"user_id": users, "item_id": items, "hist": hist, "click": click})


def blake_bucket(value, key, n):
    digest = hashlib.blake2b(str(value).encode(), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "little") % n + 2


def encodings(frame):
    return {k: frame[k] for k in frame.keys()}


# ----------------------------------------------------------------------------- keyed hashing
def test_keyed_buckets_are_blake2b_of_the_value_modulo_the_buckets():
    df = make_df()
    keyed = rm.Schema([rm.Sparse("user_id", hash_buckets=50, hash_key=KEY)]).fit(df)
    ids = keyed.transform(df).column("user_id").tolist()
    assert ids == [blake_bucket(u, KEY, 50) for u in df.user_id]
    plain = rm.Schema([rm.Sparse("user_id", hash_buckets=50)]).fit(df)
    assert plain.transform(df).column("user_id").tolist() != ids  # not the public hash
    other = rm.Schema([rm.Sparse("user_id", hash_buckets=50, hash_key=OTHER)]).fit(df)
    assert other.transform(df).column("user_id").tolist() != ids
    ints = pd.DataFrame({"item_id": [7, None, 7, 123]})
    s = rm.Schema([rm.Sparse("item_id", hash_buckets=8, hash_key="text key")]).fit(ints)
    expect = blake_bucket(7, b"text key", 8), blake_bucket(123, b"text key", 8)
    assert s.transform(ints).column("item_id").tolist() == [expect[0], 0, expect[0], expect[1]]


def test_keys_are_never_written_and_must_be_passed_to_load(tmp_path):
    df = make_df()
    s = rm.Schema(
        [
            rm.Sparse("user_id", hash_buckets=64, hash_key=KEY),
            rm.Sparse("item_id", anonymize=True, hash_key=OTHER),
        ],
        tasks=[rm.Task("ctr", "click")],
    )
    frame = s.fit_transform(df)
    s.to_json(tmp_path / "schema.json")
    raw = (tmp_path / "schema.json").read_bytes()
    for secret in (KEY, OTHER):
        assert secret not in raw and secret.hex().encode() not in raw
    assert "user_id" in repr(s.feature("user_id")) and "hash_key" not in repr(s.feature("user_id"))
    specs = json.loads(raw)["features"]
    assert [f["keyed"] for f in specs] == [True, True] and "hash_key" not in specs[0]
    with pytest.raises(SchemaError, match=r"\['user_id', 'item_id'\] hash with a secret hash_key"):
        rm.Schema.from_json(tmp_path / "schema.json")
    with pytest.raises(SchemaError, match=r"\['item_id'\] hash with a secret"):
        rm.Schema.from_json(tmp_path / "schema.json", keys={"user_id": KEY})
    with pytest.raises(SchemaError, match="key given for feature 'item_id' is not the one"):
        rm.Schema.from_json(tmp_path / "schema.json", keys=KEY)  # one key for both: wrong
    with pytest.raises(SchemaError, match=r"keys given for feature\(s\) \['hist'\]"):
        rm.Schema.from_json(tmp_path / "schema.json", keys={"user_id": KEY, "hist": KEY})
    loaded = rm.Schema.from_json(tmp_path / "schema.json", keys={"user_id": KEY, "item_id": OTHER})
    assert loaded == s
    again = loaded.transform(df)
    for k, v in encodings(frame).items():
        assert torch.equal(v, again[k]), k


def test_key_and_anonymize_arguments_are_checked():
    with pytest.raises(ValueError, match="anonymize=True needs a secret hash_key"):
        rm.Sparse("user_id", anonymize=True)
    with pytest.raises(ValueError, match="hash_key is used with hash_buckets= or anonymize"):
        rm.Sparse("user_id", hash_key=KEY)
    with pytest.raises(ValueError, match="1 to 64 bytes"):
        rm.Sparse("user_id", hash_buckets=4, hash_key=b"x" * 65)
    with pytest.raises(TypeError, match="bytes or str"):
        rm.Sparse("user_id", hash_buckets=4, hash_key=1234)


# ----------------------------------------------------------------------------- anonymised ids
def pair(**kw):
    def build(anon):
        extra = {"anonymize": True, "hash_key": KEY} if anon else {}
        return rm.Schema(
            [
                rm.Sparse("user_id", min_freq=2, **extra),
                rm.Sparse("item_id", max_vocab=6, **extra),
                rm.Sequence("hist", vocab_from="item_id", max_len=3),
            ],
            tasks=[rm.Task("ctr", "click")],
            **kw,
        )

    return build(False), build(True)


def test_anonymised_vocabularies_encode_bit_identically_and_store_no_raw_ids(tmp_path):
    train, test = make_df(seed=0), make_df(seed=1)
    test.loc[0, "user_id"], test.loc[1, "item_id"] = None, None
    plain, anon = pair()
    a, b = plain.fit_transform(train), anon.fit_transform(train)
    for k, v in encodings(a).items():
        assert torch.equal(v, b[k]), k
    with pytest.warns(rm.OOVWarning):
        c = plain.transform(test)
    with pytest.warns(rm.OOVWarning):
        d = anon.transform(test)
    for k, v in encodings(c).items():
        assert torch.equal(v, d[k]), k
    assert c.meta["oov_counts"] == d.meta["oov_counts"]
    anon.to_json(tmp_path / "schema.json")
    raw = (tmp_path / "schema.json").read_text(encoding="utf-8")
    for value in set(train.user_id) | {str(v) for v in train.item_id}:
        assert value not in raw
    assert anon.vocabulary("user_id") is None and plain.vocabulary("user_id") is not None
    assert anon.vocab_size("item_id") == plain.vocab_size("item_id")
    loaded = rm.Schema.from_json(tmp_path / "schema.json", keys=KEY)
    with pytest.warns(rm.OOVWarning, match="hist"):
        e = loaded.transform(test.head(5), labels=False)
    assert torch.equal(e["seq/hist"], c["seq/hist"][:5])
    ids = list(test.item_id[:5]) + [123]
    assert anon.encode_ids("item_id", ids).tolist() == plain.encode_ids("item_id", ids).tolist()
    assert anon.encode_ids("hist", ids).tolist() == c["sparse"][:5, 1].tolist() + [1]


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.lists(st.one_of(st.none(), st.text(max_size=3)), min_size=1, max_size=30),
    st.lists(st.one_of(st.none(), st.text(max_size=3)), min_size=1, max_size=30),
)
def test_anonymised_ids_equal_plain_ids_on_random_values(train, test):
    def schema(**kw):
        return rm.Schema([rm.Sparse("x", min_freq=2, **kw)], oov_warn_rate=None)

    plain = schema().fit(pd.DataFrame({"x": train}))
    anon = schema(anonymize=True, hash_key=KEY).fit(pd.DataFrame({"x": train}))
    new = pd.DataFrame({"x": test})
    assert torch.equal(plain.transform(new)["sparse"], anon.transform(new)["sparse"])


def test_from_pretrained_takes_the_keys(tmp_path):
    df = make_df()
    schema = rm.Schema(
        [rm.Sparse("user_id", anonymize=True, hash_key=KEY, dim=4), rm.Sparse("item_id", dim=4)],
        tasks=[rm.Task("ctr", "click")],
    ).fit(df)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.SharedBottom(bottom_dims=(4,), tower_dims=(4,)))
    before = model.predict(df)
    model.save_pretrained(tmp_path / "m")
    assert KEY not in (tmp_path / "m" / "schema.json").read_bytes()
    with pytest.raises(SchemaError, match=r"\['user_id'\] hash with a secret hash_key"):
        rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    given = rm.Schema.from_json(tmp_path / "m" / "schema.json", keys=KEY)
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m", schema=given)  # its keys
    pd.testing.assert_frame_equal(before, loaded.predict(df), check_exact=True)
    direct = load_pretrained(rm.MultiTaskModel, tmp_path / "m", schema_keys={"user_id": KEY})
    pd.testing.assert_frame_equal(before, direct.predict(df), check_exact=True)
