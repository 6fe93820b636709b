"""``Schema.fit`` from DataFrame chunks and Parquet files: one pass, bounded memory, and the
schema a fit on the whole frame gives (vocabularies exactly, dense statistics to 1e-12)."""

import json
import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data import SchemaError

KEY = b"streaming-fit-test-key"
N = 3000


def make_df(n=N, seed=0):
    rng = np.random.default_rng(seed)
    items = np.array([f"i{k}" for k in range(150)], dtype=object)
    popular = rng.zipf(1.6, n) % len(items)  # skewed counts, with ties among the rare ones
    user = rng.integers(0, 300, n).astype(float)  # float ids: whole numbers and NaN
    user[rng.random(n) < 0.03] = np.nan
    item = items[popular]
    item[rng.random(n) < 0.02] = None
    price = rng.lognormal(3, 1, n)
    price[rng.random(n) < 0.05] = np.nan
    age = rng.normal(40, 12, n)
    age[rng.random(n) < 0.05] = np.nan
    score = rng.normal(2, 1, n)
    score[rng.random(n) < 0.05] = np.nan
    click = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "user_id": user,
            "item_id": item,
            "shop": rng.choice(list("abcdefghij"), n, p=np.arange(10, 0, -1) / 55),
            "price": price,
            "age": age,
            "score": score,
            "qty": rng.integers(0, 9, n),
            "hist": [
                None if i % 13 == 0 else items[rng.integers(0, 60, rng.integers(0, 6))].tolist()
                for i in range(n)
            ],
            "tags": [
                None if i % 11 == 0 else rng.integers(0, 80, rng.integers(0, 4)).tolist()
                for i in range(n)
            ],
            "title": rng.choice(["red shoe", "blue hat", None], n),
            "click": click,
            "purchase": click * rng.integers(0, 2, n),
        }
    )


def make_schema(oov_warn_rate=None):
    return rm.Schema(
        [
            rm.Sparse("user_id", max_vocab=50, min_freq=2),
            rm.Sparse("item_id", min_freq=3),
            rm.Sparse("shop", max_vocab=6),
            rm.Sparse("shop_hashed", column="shop", hash_buckets=7),
            rm.Sparse("user_keyed", column="user_id", hash_buckets=31, hash_key=KEY),
            rm.Sparse("item_anon", column="item_id", anonymize=True, hash_key=KEY, max_vocab=40),
            rm.Dense("price", "log1p", nan="mean"),
            rm.Dense("age", "none", nan="mean"),
            rm.Dense("score", nan="zero"),
            rm.Dense("qty", "none", nan="zero"),
            rm.Sequence("hist", vocab_from="item_id", max_len=5),
            rm.Sequence("tags", max_len=4, min_freq=2, max_vocab=30),
            rm.Text("title"),
        ],
        tasks=[rm.Task("cvr", "purchase", given="ctr"), rm.Task("ctr", "click")],
        oov_warn_rate=oov_warn_rate,
    )


def chunks(df, size):
    return (df.iloc[i : i + size] for i in range(0, len(df), size))


def assert_same_fit(got, want, df):
    """Equal schema.json (dense statistics to 1e-12 relative) and equal tensors of ``df``."""
    g, w = json.loads(got.to_json()), json.loads(want.to_json())
    g_stats, w_stats = g.pop("dense_stats"), w.pop("dense_stats")
    assert g == w
    assert list(g["vocabularies"]) == list(w["vocabularies"])
    assert list(g_stats) == list(w_stats)
    for name, stats in w_stats.items():
        assert list(g_stats[name]) == list(stats)
        for k, v in stats.items():
            assert math.isclose(g_stats[name][k], v, rel_tol=1e-12), (name, k, g_stats[name][k], v)
    a, b = got.transform(df), want.transform(df)
    assert a.keys() == b.keys()
    for k in b.keys():
        assert torch.equal(a[k], b[k]), k
    assert a.meta == b.meta


@pytest.fixture(scope="module")
def df():
    return make_df()


@pytest.fixture(scope="module")
def fitted(df):
    return make_schema().fit(df)


def test_fixture_exercises_trimming_and_hashing(fitted):
    assert len(fitted.vocabulary("user_id")) == 50  # max_vocab cuts through equal counts
    assert len(fitted.vocabulary("shop")) == 6
    assert fitted.vocabulary("item_anon") is None and fitted.vocab_size("shop_hashed") == 9
    assert len(fitted.vocabulary("tags")) == 30


@pytest.mark.parametrize("size", [7, 100, 1000])
def test_chunks_fit_the_schema_of_the_whole_frame(df, fitted, size):
    got = make_schema().fit(chunks(df, size), progress_bar=False)
    assert_same_fit(got, fitted, df)


def test_list_of_chunks_with_empty_ones(df, fitted):
    parts = [df.iloc[:0], *chunks(df, 1100), df.iloc[:0]]
    assert_same_fit(make_schema().fit(parts, progress_bar=False), fitted, df)


def test_read_csv_chunks_whose_dtypes_differ(tmp_path):
    """The first CSV chunk's item ids are all missing (read as float): it has no say on the
    kind, as in the whole file (read as str)."""
    data = make_df(1200, seed=1)[["user_id", "item_id", "price", "age", "click"]]
    data.loc[:399, "item_id"] = None
    path = tmp_path / "events.csv"
    data.to_csv(path, index=False)

    def schema():
        return rm.Schema(
            [
                rm.Sparse("user_id", max_vocab=40),
                rm.Sparse("item_id", min_freq=2),
                rm.Dense("price", "log1p", nan="mean"),
                rm.Dense("age", "none", nan="mean"),
            ],
            tasks=[rm.Task("ctr", "click")],
            oov_warn_rate=None,
        )

    whole = pd.read_csv(path)
    want = schema().fit(whole)
    got = schema().fit(pd.read_csv(path, chunksize=400), progress_bar=False)
    assert want.vocabularies_["item_id"].kind == "str"
    assert_same_fit(got, want, whole)


def write_files(df, root, sizes=((1200, 250), (1000, 300), (800, 100))):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    files, start = [], 0
    for i, (n, group) in enumerate(sizes):
        folder = root / (f"part{i}" if i else "")
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(df.iloc[start : start + n], preserve_index=False)
        pq.write_table(table, folder / f"{i}.parquet", row_group_size=group)
        files.append(folder / f"{i}.parquet")
        start += n
    return files


def test_parquet_files_fit_the_schema_of_the_whole_frame(df, fitted, tmp_path, capsys):
    files = write_files(df, tmp_path)
    got = make_schema().fit(tmp_path, chunk_rows=256)  # directory, progress bar on
    assert_same_fit(got, fitted, df)
    err = capsys.readouterr().err
    assert "Schema.fit" in err and f"{N}/{N}" in err
    got = make_schema().fit([str(f) for f in files], progress_bar=False, chunk_rows=999)
    assert_same_fit(got, fitted, df)
    one = make_schema().fit(files[0], progress_bar=False)
    assert_same_fit(one, make_schema().fit(df.iloc[:1200]), df)


def test_bad_chunk_is_named_and_changes_nothing(df):
    schema = make_schema().fit(df)
    before = schema.to_json()

    def broken(i, edit):
        parts = list(chunks(df, 100))
        parts[i] = edit(parts[i].copy())
        return parts

    def bad_label(c):
        c["click"] = c["click"].where(c.index % 7 != 0, 2)
        return c

    def int_items(c):
        c["item_id"] = np.arange(len(c))
        return c

    cases = [
        (2, lambda c: c.drop(columns="price"), r"chunk 2 \(rows 200 to 299\): missing column"),
        (3, bad_label, r"chunk 3 \(rows 300 to 399\): label column 'click' .* must hold 0/1"),
        (4, lambda c: c.drop(columns=["click", "purchase"]), "chunk 4 .* lacks the label"),
        (5, int_items, "chunk 5 .*'item_id' holds int ids but earlier chunks hold str ids"),
    ]
    for i, edit, match in cases:
        with pytest.raises(SchemaError, match=match):
            schema.fit(broken(i, edit), progress_bar=False)
        assert schema.to_json() == before


def test_bad_parquet_file_is_named_and_changes_nothing(df, fitted, tmp_path):
    files = write_files(df.drop(columns="age"), tmp_path, sizes=((N, 500),))
    schema = make_schema().fit(df)
    with pytest.raises(SchemaError, match=rf"{files[0].name} \(rows 0 to .*missing .*'age'"):
        schema.fit(files[0], progress_bar=False)
    assert schema == fitted


def test_inputs_that_are_not_data():
    schema = make_schema()
    for data in (3, {"user_id": [1]}, np.zeros((3, 2))):
        with pytest.raises(TypeError, match="Schema.fit takes a pandas DataFrame"):
            schema.fit(data)
    with pytest.raises(TypeError, match="chunk 1 is a dict"):
        schema.fit([make_df(10), {"user_id": [1]}], progress_bar=False)
    with pytest.raises(SchemaError, match="no rows"):
        schema.fit(iter([]), progress_bar=False)
    with pytest.raises(TypeError, match="expected a pandas DataFrame"):
        schema.fit_transform(chunks(make_df(10), 5))
    assert not schema.is_fitted


def test_features_that_need_every_row_raise_before_reading(df):
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.FunnelStats("shop_rates", entity="shop")],
        tasks=[rm.Task("ctr", "click")],
    )

    def never():
        raise AssertionError("read a chunk")
        yield

    with pytest.raises(NotImplementedError, match=r"FunnelStats\('shop_rates'\)"):
        schema.fit(never())
    assert not schema.is_fitted


def test_memory_is_bounded_by_distinct_values_not_rows():
    rows, size = 200_000, 2_000
    items = np.array([f"item{k}" for k in range(500)], dtype=object)

    def stream(n_chunks):
        for c in range(n_chunks):
            rng = np.random.default_rng(c)
            yield pd.DataFrame(
                {
                    "user_id": rng.integers(0, 1000, size),
                    "item_id": items[rng.integers(0, len(items), size)],
                    "price": rng.lognormal(3, 1, size),
                    "age": rng.normal(40, 12, size),
                    "click": rng.integers(0, 2, size),
                }
            )

    def schema():
        return rm.Schema(
            [
                rm.Sparse("user_id"),
                rm.Sparse("item_id"),
                rm.Dense("price", "log1p"),
                rm.Dense("age"),
            ],
            tasks=[rm.Task("ctr", "click")],
        )

    chunk = next(stream(1))
    whole = int(chunk.memory_usage(deep=True).sum()) * (rows // size)
    schema().fit(stream(2), progress_bar=False)  # imports and caches outside the trace
    tracemalloc.start()
    try:
        fitted = schema().fit(stream(rows // size), progress_bar=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fitted.vocab_size("user_id") == 1000 + 2 and fitted.vocab_size("item_id") == 500 + 2
    assert peak < whole / 10, (peak, whole)


def test_shared_vocabulary_kind_is_checked_once_known():
    """``vocab_from`` ids met while the Sparse column is all missing are checked later."""

    def schema():
        return rm.Schema(
            [rm.Sparse("item_id"), rm.Sequence("hist", vocab_from="item_id", max_len=3)]
        )

    def frame(items, hist):
        return pd.DataFrame({"item_id": pd.Series(items, dtype=object), "hist": hist})

    good = [frame([None, None], [["a"], ["b", "a"]]), frame(["b", None], [None, ["c"]])]
    want = schema().fit(pd.concat(good, ignore_index=True))
    assert schema().fit(good, progress_bar=False) == want
    bad = [frame([None, None], [[1], [2]]), frame(["b", "a"], [None, None])]
    match = "sequence column 'hist' holds int ids but 'item_id' has str ids"
    with pytest.raises(SchemaError, match=match):
        schema().fit(pd.concat(bad, ignore_index=True))
    with pytest.raises(SchemaError, match="chunk 1 .*" + match):
        schema().fit(bad, progress_bar=False)
    never = [frame([None], [[1]]), frame([None], [[2]])]
    with pytest.raises(SchemaError, match=match):
        schema().fit(pd.concat(never, ignore_index=True))
    with pytest.raises(SchemaError, match=match):
        schema().fit(never, progress_bar=False)


def test_vector_statistics_stream_like_the_whole_frame():
    rng = np.random.default_rng(5)
    n = 2_500
    vecs = [rng.normal(3.0, 2.0, 6) * (k % 7 + 1) for k in range(n)]
    for k in range(0, n, 97):
        vecs[k] = None  # missing: no say in the statistics
    frame = pd.DataFrame(
        {
            "item_id": rng.integers(0, 50, n),
            "emb": vecs,
            "raw": vecs,
            "click": rng.integers(0, 2, n),
        }
    )
    frame["raw"] = [v if v is not None else [0.5] * 6 for v in vecs]

    def schema():
        return rm.Schema(
            [
                rm.Sparse("item_id"),
                rm.Vector("emb", dim=6, normalize="standard", nan="zero"),
                rm.Vector("raw", dim=6, normalize="l2"),
            ],
            tasks=[rm.Task("ctr", "click")],
        )

    want = schema().fit(frame)
    got = schema().fit(chunks(frame, 333))
    a, b = got.vector_stats_["emb"], want.vector_stats_["emb"]
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-12)
    np.testing.assert_allclose(a["std"], b["std"], rtol=1e-12)
    assert set(got.vector_stats_) == {"emb"}
    x, y = got.transform(frame), want.transform(frame)
    torch.testing.assert_close(x["vec/emb"], y["vec/emb"], rtol=1e-6, atol=1e-6)
    assert torch.equal(x["vec/raw"], y["vec/raw"])
    bad = frame.copy()
    bad.at[1500, "raw"] = [1.0, 2.0]
    with pytest.raises(SchemaError, match=r"chunk 4 .*raw"):
        schema().fit(chunks(bad, 333))
