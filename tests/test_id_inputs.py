"""Id inputs that used to be misread: ids above 2^53 beside missing list elements (in memory and
from Parquet), string time columns, all-missing id columns, object columns of ints and
categoricals. Each test pins the concrete ids or the error that names the column."""

import numpy as np
import pandas as pd
import pytest

import recsys_mt as rm
from recsys_mt.data import SchemaError

B = 2**60  # ids above 2^53: float64 reads B + 1 and B + 2 both as B


def ctr_schema(*features, **kw):
    return rm.Schema(list(features), tasks=[rm.Task("ctr", "click")], min_groups=None, **kw)


def big_ids_frame(hist):
    return pd.DataFrame({"item_id": [B + i for i in range(40)], "hist": hist, "click": [0, 1] * 20})


# ----------------------------------------------------------------------------- big sequence ids
def test_sequence_ids_above_2_53_stay_exact_beside_a_missing_element():
    df = big_ids_frame([[B + 1, B + 2]] * 40)
    shared = ctr_schema(rm.Sparse("item_id"), rm.Sequence("hist", vocab_from="item_id", max_len=3))
    shared.fit(df)
    gappy = df.assign(hist=[[B + 1, None]] + [[B + 1, B + 2]] * 39)
    seq = shared.transform(gappy)["seq/hist"]
    assert seq[0].tolist() == [3, 0, 0]  # the missing element is padding
    assert seq[1].tolist() == [3, 4, 0]  # as without the None
    assert seq[1:].tolist() == shared.transform(df)["seq/hist"][1:].tolist()
    for missing in (np.nan, pd.NA):
        cells = [[B + 2, missing]] + [[B + 1, B + 2]] * 39
        assert shared.transform(df.assign(hist=cells))["seq/hist"][0].tolist() == [4, 0, 0]
    own = ctr_schema(rm.Sparse("item_id"), rm.Sequence("hist", max_len=3)).fit(gappy)
    assert own.vocabulary("hist") == [B + 1, B + 2]
    assert own.transform(gappy)["seq/hist"][:2].tolist() == [[2, 0, 0], [2, 3, 0]]


def test_sequence_cells_of_different_dtypes_keep_big_ids_exact():
    df = big_ids_frame([[B + 1, B + 2]] * 40)
    s = ctr_schema(rm.Sparse("item_id"), rm.Sequence("hist", vocab_from="item_id", max_len=3))
    s.fit(df)
    cells = [
        np.array([B + 1, B + 2]),  # int64
        np.array([2.0, np.nan]),  # float64 in another row: ints must not go through float
        np.array([B + 3], dtype=np.uint64),  # uint64 beside int64: numpy would pick float64
        [B + 4, 5.0],  # ints beside a small whole float in one cell
    ] * 10
    seq = s.transform(df.assign(hist=cells))["seq/hist"]
    assert seq[:4].tolist() == [[3, 4, 0], [1, 0, 0], [5, 0, 0], [6, 1, 0]]


def test_a_float_id_beyond_2_53_in_a_sequence_is_refused_naming_row_and_position():
    df = big_ids_frame([[B + 1, B + 2]] * 40)
    s = ctr_schema(rm.Sparse("item_id"), rm.Sequence("hist", vocab_from="item_id", max_len=3))
    s.fit(df)
    cells = [[B + 1, B + 2]] * 3 + [[B + 1, 2**60 + 1.0]] + [[B + 1]] * 36
    with pytest.raises(
        SchemaError, match=r"sequence column 'hist' .*float id .* row 3, position 1"
    ):
        s.transform(df.assign(hist=cells))
    floats = [np.array([B + 1.0])] * 40  # a float array: the ids were merged before we saw them
    with pytest.raises(SchemaError, match=r"'hist' .*float id .* row 0, position 0, beyond 2\^53"):
        s.transform(df.assign(hist=floats))


def test_parquet_list_int64_with_nulls_keeps_ids_exact(tmp_path):
    df = big_ids_frame([[B + 1, B + 2]] * 40)
    s = ctr_schema(rm.Sparse("item_id"), rm.Sequence("hist", vocab_from="item_id", max_len=3))
    s.fit(df)
    gappy = df.assign(hist=[[B + 1, None]] + [[B + 1, B + 2]] * 38 + [None])
    path = tmp_path / "gappy.parquet"
    gappy.to_parquet(path)
    src = rm.ParquetSource(path, s, batch_size=8, shuffle=False)
    seq = next(iter(src.batches(0)))["seq/hist"]
    assert seq[:3].tolist() == [[3, 0, 0], [3, 4, 0], [3, 4, 0]]
    arrow = pd.read_parquet(path, dtype_backend="pyarrow")  # Arrow list cells, in memory
    assert s.transform(arrow)["seq/hist"][:3].tolist() == seq[:3].tolist()
    own = ctr_schema(rm.Sparse("item_id"), rm.Sequence("hist", max_len=3))
    own.fit(str(path), progress_bar=False)
    assert own.vocabulary("hist") == [B + 1, B + 2]


# ----------------------------------------------------------------------------- time columns
def funnel_schema(time_column="day"):
    return ctr_schema(
        rm.Sparse("user_id"), rm.FunnelStats("u", "user_id", time_column=time_column, unseen_rate=0)
    )


def funnel_frame(day):
    return pd.DataFrame({"user_id": [7] * 4, "click": [1, 1, 1, 0], "day": day})


@pytest.mark.parametrize(
    "day",
    [
        ["9/1/2020", "9/2/2020", "10/1/2020", "11/1/2020"],
        pd.Series(["9/1/2020", "9/2/2020", "10/1/2020", "11/1/2020"], dtype="category"),
        pd.Series([1, "2", 3, 4], dtype=object),
        pd.Series([1, 2, 3, 4], dtype=object),
    ],
    ids=["str", "category", "mixed", "object_ints"],
)
def test_string_or_object_time_columns_are_refused_naming_the_column(day):
    s = funnel_schema()
    with pytest.raises(SchemaError, match=r"time column 'day' .*datetime64 or numeric"):
        s.fit_transform(funnel_frame(day))
    assert not s.is_fitted


def test_datetime_and_numeric_time_columns_order_by_time():
    days = pd.to_datetime(["2020-09-01", "2020-09-02", "2020-10-01", "2020-11-01"])
    want = funnel_schema().fit_transform(funnel_frame([0, 1, 2, 3]))["dense"]
    for day in (days, days.tz_localize("Europe/Paris"), [0.0, 1.0, 2.0, 3.0]):
        got = funnel_schema().fit_transform(funnel_frame(day))["dense"]
        assert got.tolist() == want.tolist()


# ----------------------------------------------------------------------------- all missing
def test_an_all_missing_id_column_encodes_as_missing_ids():
    df = pd.DataFrame(
        {"user_id": np.arange(40) % 5, "category": list("abcd") * 10, "click": [0, 1] * 20}
    )
    s = ctr_schema(rm.Sparse("user_id"), rm.Sparse("category")).fit(df)
    req = pd.DataFrame({"user_id": [1, 2], "category": [np.nan, np.nan]})
    assert s.transform(req)["sparse"].tolist() == [[3, 0], [4, 0]]
    req = pd.DataFrame({"user_id": pd.Series([None, None], dtype=object), "category": ["b", "z"]})
    assert s.transform(req)["sparse"].tolist() == [[0, 3], [0, 1]]
    with pytest.raises(SchemaError, match="column 'category' holds int ids but the schema"):
        s.transform(pd.DataFrame({"user_id": [1, 2], "category": [1.0, np.nan]}))


def test_an_all_missing_sequence_encodes_as_padding():
    df = pd.DataFrame({"u": [1, 2] * 4, "h": [["a", "b"]] * 8, "click": [0, 1] * 4})
    s = ctr_schema(rm.Sparse("u"), rm.Sequence("h", max_len=2)).fit(df)
    gaps = pd.DataFrame({"u": [1, 2], "h": [[None], [np.nan, None]]})
    assert s.transform(gaps)["seq/h"].tolist() == [[0, 0], [0, 0]]
    grown, growth = s.update(gaps)
    assert growth.added == {"u": 0, "h": 0}


def test_parquet_files_of_all_missing_lists_encode_as_padding(tmp_path):
    df = pd.DataFrame({"u": [1, 2] * 4, "h": [[1, 2]] * 8, "click": [0, 1] * 4})
    s = ctr_schema(rm.Sparse("u"), rm.Sequence("h", max_len=2)).fit(df)
    df.to_parquet(tmp_path / "a.parquet")
    df.assign(h=[[], None] * 4).to_parquet(tmp_path / "b.parquet")  # list<null>
    df.assign(h=[[None], [np.nan, None]] * 4).to_parquet(tmp_path / "c.parquet")
    for name in ("b", "c"):
        files = [tmp_path / "a.parquet", tmp_path / f"{name}.parquet"]
        src = rm.ParquetSource(files, s, batch_size=16, shuffle=False)
        seq = next(iter(src.batches(0)))["seq/h"]
        assert seq[:8].tolist() == [[2, 3]] * 8 and seq[8:].tolist() == [[0, 0]] * 8
        src = rm.ParquetSource(tmp_path / f"{name}.parquet", s, batch_size=8, shuffle=False)
        assert next(iter(src.batches(0)))["seq/h"].tolist() == [[0, 0]] * 8


# ----------------------------------------------------------------------------- object / category
def test_object_column_of_ints_is_int_ids():
    df = pd.DataFrame(
        {"user_id": pd.Series([1, 2, None, 4] * 10, dtype=object), "click": [0, 1] * 20}
    )
    df = df[df.user_id.notna()]  # still object dtype, all ints
    s = ctr_schema(rm.Sparse("user_id")).fit(df)
    assert s.vocabularies_["user_id"].kind == "int"
    assert s.vocabulary("user_id") == [1, 2, 4]
    ids = s.transform(df)["sparse"][:, 0].tolist()
    assert s.transform(df.astype({"user_id": "int64"}))["sparse"][:, 0].tolist() == ids
    assert ids[:3] == [2, 3, 4]
    mixed = pd.Series([1, 2.0, None, B + 1], dtype=object)  # whole floats beside ints: exact
    assert s.encode_ids("user_id", mixed).tolist() == [2, 3, 0, 1]
    assert s.encode_ids("user_id", [4, None]).tolist() == [4, 0]


def test_sequence_cell_with_na_is_not_read_as_str_ids():
    df = pd.DataFrame({"u": [1, 2] * 4, "h": [[1, 2]] * 8, "click": [0, 1] * 4})
    s = ctr_schema(rm.Sparse("u"), rm.Sequence("h", max_len=3)).fit(df)
    assert s.transform(df.assign(h=[[1, pd.NA]] * 8))["seq/h"][0].tolist() == [2, 0, 0]
    own = ctr_schema(rm.Sparse("u"), rm.Sequence("h", max_len=3))
    own.fit(df.assign(h=[[1, pd.NA], [2, None]] * 4))
    assert own.vocabularies_["h"].kind == "int" and own.vocabulary("h") == [1, 2]


@pytest.mark.parametrize(
    "values, match",
    [
        (["a", 1], r"column 'user_id' mixes numeric and str ids \(e\.g\. 1 at row 1 and 'a'"),
        ([1, 2.5], r"column 'user_id' holds non-integer float ids \(e\.g\. 2\.5 at row 1\)"),
        ([1, 2**64], r"column 'user_id' holds the id 18446744073709551616 at row 1, beyond int64"),
    ],
    ids=["str_and_int", "non_whole_float", "beyond_int64"],
)
def test_object_columns_that_are_not_ids_are_refused_clearly(values, match):
    df = pd.DataFrame({"user_id": pd.Series(values * 4, dtype=object), "click": [0, 1] * 4})
    with pytest.raises(SchemaError, match=match) as caught:
        ctr_schema(rm.Sparse("user_id")).fit(df)
    if not any(isinstance(v, str) for v in values):
        assert "str ids" not in str(caught.value)  # no claim of strings that are not there


def test_category_kind_follows_its_categories_at_fit_and_transform():
    cat = pd.DataFrame(
        {"user_id": pd.Series([1, 2, None, 1] * 2, dtype="category"), "click": [0, 1] * 4}
    )
    s = ctr_schema(rm.Sparse("user_id")).fit(cat)
    assert s.vocabularies_["user_id"].kind == "int" and s.vocabulary("user_id") == [1, 2]
    assert s.transform(cat)["sparse"][:4, 0].tolist() == [2, 3, 0, 2]
    assert s.transform(pd.DataFrame({"user_id": [2, 1, 9]}))["sparse"][:, 0].tolist() == [3, 2, 1]
    plain = ctr_schema(rm.Sparse("user_id")).fit(cat.astype({"user_id": "float64"}))
    assert plain.transform(cat)["sparse"].tolist() == s.transform(cat)["sparse"].tolist()
    text = cat.assign(user_id=pd.Series(list("abca") * 2, dtype="category"))
    assert ctr_schema(rm.Sparse("user_id")).fit(text).vocabularies_["user_id"].kind == "str"
    with pytest.raises(SchemaError, match="'user_id' holds str ids but the schema was fit on int"):
        s.transform(text)
    mixed = cat.assign(user_id=pd.Series([1, "a"] * 4, dtype="category"))
    with pytest.raises(SchemaError, match=r"'user_id' \(its categories\) mixes numeric and str"):
        ctr_schema(rm.Sparse("user_id")).fit(mixed)
