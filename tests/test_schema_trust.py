"""Schema trust: bad cells and values raise errors naming the column (and row) before any state
changes, hand-edited ``schema.json`` files fail naming the field, and OOV ids are counted."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import recsys_mt as rm
from recsys_mt.data import OOVWarning, SchemaError


def frame(**cols):
    base = {
        "user_id": [1, 2, 3, 1],
        "item_id": ["a", "b", "a", "c"],
        "price": [1.0, 2.0, 3.0, 4.0],
        "hist": [[1, 2], [], None, [3]],
        "click": [1, 0, 1, 0],
        "purchase": [1, 0, 0, 0],
    }
    base.update(cols)
    return pd.DataFrame(base)


def schema(**dense):
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Dense("price", **dense),
            rm.Sequence("hist", max_len=2),
        ],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
        min_groups=None,  # a handful of users: every item would be an alias of one
    )


def assert_refused(df, match, **dense):
    """``fit`` and ``transform`` raise ``SchemaError`` matching ``match``; nothing changes."""
    s = schema(**dense)
    with pytest.raises(SchemaError, match=match):
        s.fit(df)
    assert not s.is_fitted
    s.fit(frame())
    before = s.to_json()
    with pytest.raises(SchemaError, match=match):
        s.transform(df)
    with pytest.raises(SchemaError, match=match):
        s.fit(df)  # a refit on bad rows keeps the previous state
    assert s.to_json() == before


# ----------------------------------------------------------------------------- raw crashes
@pytest.mark.parametrize(
    "cell, match",
    [
        ([[1, 2], [3, 4]], r"'hist' holds a nested list .* at row 1"),
        ([[1, 2], [3]], r"'hist' holds a nested list .* at row 1"),
        ([1, [2, 3]], r"'hist' holds a nested list .* at row 1, position 1"),
        ({1: 2}, r"'hist' must hold lists .*row 1 holds dict"),
        ({1, 2}, r"'hist' must hold lists .*row 1 holds set"),
        (np.zeros((2, 2), dtype=int), r"'hist' holds a nested list .* at row 1"),
        ([{"a": 1}], r"'hist' holds a nested dict .* at row 1, position 0"),
        ([1, "a"], r"'hist' mixes numeric and str ids at row 1"),
        ([b"x"], r"'hist' holds bytes ids .*row 1"),
        ("abc", r"'hist' must hold lists .*row 1 holds str"),
    ],
)
def test_bad_sequence_cells_name_the_column_and_row(cell, match):
    hist = pd.Series([[1], cell, None, []], dtype=object)
    assert_refused(frame(hist=hist), match)


def test_sequence_rows_mixing_id_types_are_refused():
    hist = pd.Series([[1, 2], ["a"], None, []], dtype=object)
    assert_refused(frame(hist=hist), r"'hist' mixes numeric ids \(row 0\) and str ids \(row 1\)")


def test_sequence_cells_may_be_tuples_arrays_or_missing():
    hist = pd.Series([(1, 2), np.array([3]), pd.NA, np.nan], dtype=object)
    s = schema().fit(frame(hist=hist))
    assert s.transform(frame(hist=hist))["seq/hist"].tolist() == [[2, 3], [4, 0], [0, 0], [0, 0]]


@pytest.mark.parametrize(
    "values, match",
    [
        (pd.Series(["a", [1], "b", "c"], dtype=object), r"'item_id' holds a nested list .*row 1"),
        (pd.Series(["a", {"k": 1}, "b", "c"], dtype=object), r"'item_id' holds a nested dict"),
        (pd.Series(["a", b"b", "c", "d"], dtype=object), r"'item_id' holds bytes ids .*row 1"),
    ],
)
def test_sparse_cells_must_be_scalars(values, match):
    assert_refused(frame(item_id=values), match)


def test_nullable_boolean_and_integer_ids_encode():
    df = frame(user_id=pd.Series([True, None, False, True], dtype="boolean"))
    s = schema().fit(df)
    assert s.transform(df).column("user_id").tolist() == [2, 0, 3, 2]
    df = frame(user_id=pd.Series([7, None, 8, 7], dtype="Int64"))
    assert schema().fit_transform(df).column("user_id").tolist() == [2, 0, 3, 2]


@pytest.mark.parametrize(
    "values, dense, match",
    [
        (
            [1.0, 1e39, 3.0, 4.0],
            {},
            r"dense column 'price' holds 1e\+39 at row 1, beyond the float32",
        ),
        ([1.0, -4e38, 3.0, 4.0], {"transform": "none"}, r"'price' holds -4e\+38 at row 1"),
        ([np.nan, 2.0, 1e300, 4.0], {"nan": "mean"}, r"'price' holds 1e\+300 at row 2"),
        ([np.nan, 2.0, 1e300, 4.0], {}, r"'price' holds NaN at row 0"),  # nan policy first
    ],
)
def test_dense_values_beyond_float32_are_refused(values, dense, match):
    assert_refused(frame(price=values), match, **dense)


def test_dense_values_beyond_float32_after_standardising_are_refused():
    s = schema().fit(frame(price=[1.0, 1.0 + 1e-9, 1.0, 1.0]))  # std ~ 4e-10
    with pytest.raises(SchemaError, match="'price' holds .* at row 3 after standardising"):
        s.transform(frame(price=[1.0, 2.0, 3.0, 3e30]))
    # log1p tames huge values: allowed
    dense = schema(transform="log1p").fit_transform(frame(price=[1.0, 1e300, 5.0, 1e39]))["dense"]
    assert torch.isfinite(dense).all()


def test_regression_labels_beyond_float32_and_complex_dense_are_refused():
    df = pd.DataFrame({"x": [1.0, 2.0], "dwell": [1.0, 1e40]})
    s = rm.Schema([rm.Dense("x")], tasks=[rm.Task("dwell", loss="mse")])
    with pytest.raises(SchemaError, match=r"label column 'dwell' \(task 'dwell'\) holds 1e\+40"):
        s.fit(df)
    with pytest.raises(SchemaError, match="dense column 'x' has dtype complex128"):
        rm.Schema([rm.Dense("x")]).fit(pd.DataFrame({"x": [1 + 2j, 3j]}))


def test_duplicate_columns_and_unhashable_groups_are_refused():
    df = pd.concat([frame(), frame()[["price"]]], axis=1)
    assert_refused(df, r"several columns named \['price'\]")
    s = rm.Schema([rm.Dense("price")], group="basket")
    bad = frame(basket=[[1], [2], [1], [3]])
    with pytest.raises(SchemaError, match="group column 'basket'"):
        s.fit_transform(bad)


# ----------------------------------------------------------------------------- schema.json
def fitted_dict():
    s = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Dense("price"),
            rm.Sequence("hist", max_len=2),
            rm.FunnelStats("fs", "user_id", folds=2),
        ],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
        min_groups=None,
    )
    s.fit(frame())
    return json.loads(s.to_json())


def edit(path, value=None, delete=False):
    def apply(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        if delete:
            del d[last]
        else:
            d[last] = value(d[last]) if callable(value) else value

    return apply


HAND_EDITS = [
    (edit(["features", 2, "dim"], "16"), r"features\[2\]: unknown key"),
    (edit(["features", 0, "dim"], "16"), r"features\[0\]\.dim: expected int, got str '16'"),
    (edit(["features", 0, "dim"], 0), r"features\[0\]: Sparse\('user_id'\): dim must be >= 1"),
    (edit(["features", 0, "colour"], "red"), r"features\[0\]: unknown key\(s\) \['colour'\]"),
    (edit(["features", 0, "name"], delete=True), r"features\[0\]: missing key\(s\) \['name'\]"),
    (edit(["features", 1, "kind"], "sparce"), r"features\[1\]\.kind: unknown feature kind"),
    (edit(["features", 0, "hash_key"], "s3cret"), r"features\[0\]\.hash_key: secret keys are"),
    (edit(["features"], lambda f: f + [f[0]]), "duplicate feature names"),
    (edit(["tasks", 0, "loss"], "hinge"), r"tasks\[0\]: Task\('ctr'\): loss must be one of"),
    (edit(["tasks", 1, "weight"], None), r"tasks\[1\]\.weight: expected finite number"),
    (edit(["format_version"], 2), "format_version: unsupported version 2"),
    (edit(["features"], delete=True), r"top level: missing key\(s\) \['features'\]"),
    (edit(["extra"], 1), r"top level: unknown key\(s\) \['extra'\]"),
    (edit(["group"], 3), r"group: expected str or null, got int 3"),
    (
        edit(["vocabularies", "item_id", "values"], lambda v: v + [v[0]]),
        r"vocabularies\['item_id'\]\.values\[3\]: duplicate value 'a' \(also at \[0\]\)",
    ),
    (
        edit(["vocabularies", "user_id", "values"], lambda v: v[:1] + ["2"] + v[2:]),
        r"vocabularies\['user_id'\]\.values\[1\]: expected a int id, got str '2'",
    ),
    (edit(["vocabularies", "user_id", "values"], 3), r"\['user_id'\]\.values: expected a list"),
    (edit(["vocabularies", "hist"], delete=True), r"vocabularies: missing key\(s\) \['hist'\]"),
    (edit(["vocabularies", "user_id", "kind"], "float"), r"\['user_id'\]\.kind: expected 'int'"),
    (edit(["vocabularies", "user_id", "buckets"], 8), r"\['user_id'\]\.buckets: must be null"),
    (edit(["dense_stats", "price", "std"], 0.0), r"dense_stats\['price'\]\.std: expected a fin"),
    (edit(["dense_stats", "price"], delete=True), r"dense_stats: missing key\(s\) \['price'\]"),
    (edit(["dense_stats"], None), "dense_stats: expected an object, got NoneType"),
    (
        edit(["funnel_stats", "fs", "entity", "values", 0], lambda v: v + [v[0]]),
        r"funnel_stats\['fs'\]\.entity\.values\[0\]\[3\]: duplicate value 1",
    ),
    (
        edit(["funnel_stats", "fs", "num", "ctr"], lambda v: v[:-1]),
        r"funnel_stats\['fs'\]\.num\['ctr'\]: expected 3 finite numbers",
    ),
    (edit(["funnel_stats", "fs", "prior"], delete=True), r"\['fs'\]: missing key\(s\) \['prior'\]"),
    (edit(["funnel_stats"], {}), r"funnel_stats: missing key\(s\) \['fs'\]"),
]


@pytest.mark.parametrize("mutate, match", HAND_EDITS)
def test_hand_edited_schema_json_names_the_field(mutate, match):
    d = fitted_dict()
    mutate(d)
    with pytest.raises(SchemaError, match=match):
        rm.Schema.from_json(json.dumps(d))


def test_schema_json_syntax_errors_and_repeated_keys_are_named(tmp_path):
    with pytest.raises(SchemaError, match="not JSON"):
        rm.Schema.from_json('{"format_version": 1,')
    text = json.dumps(fitted_dict(), indent=1).replace('"dim": 16,', '"dim": 16, "dim": 8,', 1)
    (tmp_path / "schema.json").write_text(text, encoding="utf-8")
    with pytest.raises(SchemaError, match="the key 'dim' appears twice"):
        rm.Schema.from_json(tmp_path / "schema.json")


def test_schema_json_from_before_oov_and_keys_still_loads():
    d = fitted_dict()
    del d["oov_warn_rate"], d["min_groups"]
    for f in d["features"]:
        f.pop("keyed", None)
        f.pop("anonymize", None)
    loaded = rm.Schema.from_dict(d)
    assert loaded.oov_warn_rate == 0.5 and loaded.vocabulary("item_id") == ["a", "b", "c"]
    assert loaded.min_groups is None  # fit before the group filter existed: none on update


# ----------------------------------------------------------------------------- OOV counts
def test_transform_counts_oov_per_feature_and_warns_once_above_the_rate():
    s = schema().fit(frame())
    new = frame(
        user_id=[9, 8, 1, None], item_id=["a", "b", "z", "a"], hist=[[7, 8, 1], [], None, [None]]
    )
    with pytest.warns(OOVWarning) as record:
        out = s.transform(new)
    assert out.meta["oov_counts"] == {"user_id": 2, "item_id": 1, "hist": 2}
    assert out.meta["oov_rates"] == pytest.approx(
        {"user_id": 2 / 3, "item_id": 0.25, "hist": 2 / 3}
    )
    assert len(record) == 1
    message = str(record[0].message)
    assert "['user_id', 'hist']" in message and "item_id" not in message
    assert issubclass(OOVWarning, UserWarning) and rm.OOVWarning is OOVWarning


def test_oov_warning_threshold_is_configurable_and_fit_transform_is_quiet():
    df = frame()
    new = frame(user_id=[9, 8, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = schema().fit_transform(df)  # training rows: counted, not warned about
        assert f.meta["oov_counts"] == {"user_id": 0, "item_id": 0, "hist": 0}
        quiet = rm.Schema(
            schema().features, schema().tasks, oov_warn_rate=None, min_groups=None
        ).fit(df)
        assert quiet.transform(new).meta["oov_counts"]["user_id"] == 2
        lax = rm.Schema(schema().features, schema().tasks, oov_warn_rate=0.5, min_groups=None).fit(
            df
        )
        lax.transform(new)  # 50 % is not above 0.5
    strict = rm.Schema(schema().features, schema().tasks, oov_warn_rate=0.0, min_groups=None).fit(
        df
    )
    with pytest.warns(OOVWarning, match="user_id"):
        strict.transform(new)
    assert rm.Schema.from_json(strict.to_json()).oov_warn_rate == 0.0
    with pytest.raises(ValueError, match="oov_warn_rate must be in"):
        rm.Schema([rm.Dense("x")], oov_warn_rate=2)
