"""Property tests: random frames through ``Schema.fit`` / ``transform`` and random edits of
``schema.json`` either succeed with sane outputs or raise a clear error naming the culprit."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import recsys_mt as rm
from recsys_mt.data import SchemaError

KEY = b"fuzz key"
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
ID_COLUMNS = ["u", "i", "k", "a"]
DENSE_COLUMNS = ["p", "q", "r"]
SEQ_COLUMNS = ["h", "hu", "ha"]
LABELS = ["click", "buy", "dwell"]
NAMES = ID_COLUMNS + DENSE_COLUMNS + SEQ_COLUMNS + LABELS


def make_schema():
    return rm.Schema(
        [
            rm.Sparse("u"),
            rm.Sparse("i", hash_buckets=8),
            rm.Sparse("k", hash_buckets=8, hash_key=KEY),
            rm.Sparse("a", anonymize=True, hash_key=KEY, min_freq=2),
            rm.Dense("p", nan="mean"),
            rm.Dense("q", transform="log1p", nan="zero"),
            rm.Dense("r", transform="none"),
            rm.Sequence("h", max_len=3),
            rm.Sequence("hu", vocab_from="u", max_len=2),
            rm.Sequence("ha", vocab_from="a", max_len=2),
        ],
        tasks=[
            rm.Task("ctr", "click"),
            rm.Task("cvr", "buy", given="ctr"),
            rm.Task("dwell", loss="mse"),
        ],
        group="u",
    )


# ----------------------------------------------------------------------------- strategies
def series(values, dtype=None):
    return pd.Series(values, dtype=dtype)


weird = st.one_of(
    st.none(),
    st.just(np.nan),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=3),
    st.booleans(),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sets(st.integers(0, 3), max_size=2),
)
huge_floats = st.sampled_from([0.0, 1.5, -2.0, np.nan, 1e39, -1e39, 3e38, 1e-300, 1e308, 5e-324])


def int_column(n):
    return st.sampled_from(INT_DTYPES).flatmap(
        lambda dt: st.lists(
            st.integers(int(np.iinfo(dt).min), int(np.iinfo(dt).max)), min_size=n, max_size=n
        ).map(lambda v: series(np.array(v, dtype=dt)))
    )


def anything(n):
    """Any column at all: numbers of every width, objects, nullable and categorical dtypes."""
    return st.one_of(
        int_column(n),
        st.lists(st.floats(), min_size=n, max_size=n).map(lambda v: series(v, "float64")),
        st.lists(huge_floats, min_size=n, max_size=n).map(series),
        st.lists(weird, min_size=n, max_size=n).map(lambda v: series(v, object)),
        st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=n, max_size=n).map(
            lambda v: series(v, "Int64")
        ),
        st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n).map(
            lambda v: series(v, "boolean")
        ),
        st.lists(st.sampled_from(["a", "b", None]), min_size=n, max_size=n).map(
            lambda v: series(v, "category")
        ),
        st.lists(st.text(max_size=3), min_size=n, max_size=n).map(series),
    )


def id_column(n, str_ids):
    if str_ids:
        texts = st.one_of(
            st.none(), st.sampled_from(["x", "", "é", "名", "nan"]), st.text(max_size=3)
        )
        return st.lists(texts, min_size=n, max_size=n).map(lambda v: series(v, object))
    small = st.integers(0, 4)
    return st.one_of(
        st.lists(small, min_size=n, max_size=n).map(series),
        st.lists(st.one_of(st.just(np.nan), small.map(float)), min_size=n, max_size=n).map(series),
        st.lists(st.one_of(st.none(), small), min_size=n, max_size=n).map(
            lambda v: series(v, "Int64")
        ),
        int_column(n),
    )


def dense_column(n, name):
    nan = st.just(np.nan)
    values = {
        "p": st.one_of(st.floats(-1e6, 1e6), nan, st.sampled_from([1e30, -1e-300, 5e-324])),
        "q": st.one_of(st.floats(-0.99, 1e300), nan),
        "r": st.floats(-1e30, 1e30),
    }[name]
    column = st.lists(values, min_size=n, max_size=n).map(series)
    return column if name == "q" else st.one_of(column, int_column(n))


def cells(str_ids):
    ids = st.sampled_from(["x", "y", "é", ""]) if str_ids else st.integers(0, 6)
    return st.one_of(
        st.none(),
        st.just(np.nan),
        st.just([]),
        st.lists(ids, max_size=5),
        st.lists(ids, max_size=3).map(tuple),
        st.lists(ids, max_size=3).map(np.array),
    )


bad_cell = st.one_of(
    st.lists(st.one_of(st.integers(0, 3), st.none(), st.floats(), st.text(max_size=1)), max_size=3),
    st.lists(st.lists(st.integers(0, 3), max_size=3), min_size=1, max_size=3),  # nested, ragged
    st.dictionaries(st.integers(0, 3), st.integers(), min_size=1, max_size=2),
    st.sets(st.integers(0, 3), max_size=3),
    st.just(np.zeros((2, 2), dtype=int)),
    st.text(max_size=3),
    st.integers(),
    st.binary(max_size=2),
    st.lists(st.binary(max_size=2), min_size=1, max_size=2),
    st.lists(st.integers(2**62, 2**65), max_size=2),
)


def seq_column(n, str_ids, bad=False):
    cell = st.one_of(cells(str_ids), bad_cell) if bad else cells(str_ids)
    return st.lists(cell, min_size=n, max_size=n).map(lambda v: series(v, object))


@st.composite
def labels(draw, n):
    click = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=float)
    buy = click * np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    if draw(st.booleans()):
        buy = np.where(click == 0, np.nan, buy)
    dwell = draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))
    return {"click": click, "buy": buy, "dwell": np.array(dwell, dtype=float)}


MODES = ["clean", "clean", "bad column", "bad cells", "missing column", "empty", "chaos"]


@st.composite
def frames(draw):
    """Well-formed frames, or ones with a column of anything, bad sequence cells, a missing
    column, no rows, or every column random; plus 0 to 2 extra columns of anything."""
    mode = draw(st.sampled_from(MODES))
    n = 0 if mode == "empty" else draw(st.integers(1, 8))
    u_str, a_str = draw(st.booleans()), draw(st.booleans())
    cols = {
        "u": draw(id_column(n, u_str)),
        "i": draw(id_column(n, draw(st.booleans()))),
        "k": draw(id_column(n, draw(st.booleans()))),
        "a": draw(id_column(n, a_str)),
        **{c: draw(dense_column(n, c)) for c in DENSE_COLUMNS},
        "h": draw(seq_column(n, draw(st.booleans()))),
        "hu": draw(seq_column(n, u_str)),
        "ha": draw(seq_column(n, a_str)),
        **draw(labels(n)),
    }
    if mode == "bad column":
        cols[draw(st.sampled_from(NAMES))] = draw(anything(n))
    elif mode == "bad cells":
        c = draw(st.sampled_from(SEQ_COLUMNS))
        cols[c] = draw(seq_column(n, draw(st.booleans()), bad=True))
    elif mode == "missing column":
        del cols[draw(st.sampled_from(NAMES))]
    elif mode == "chaos":
        cols = {c: draw(anything(n)) for c in NAMES}
    for j in range(draw(st.integers(0, 2))):
        cols[f"extra{j}"] = draw(anything(n))
    return pd.DataFrame(cols, index=range(n))


# ----------------------------------------------------------------------------- checks
def assert_clear(e: Exception) -> None:
    msg = str(e)
    assert isinstance(e, (ValueError, TypeError)), repr(e)
    assert any(repr(c) in msg for c in NAMES) or "empty" in msg, msg


def assert_sane(schema: rm.Schema, frame: rm.TensorFrame, n: int) -> None:
    assert len(frame) == n
    dense = frame["dense"].numpy()
    assert dense.dtype == np.float32 and dense.shape == (n, 3) and np.isfinite(dense).all()
    for j, name in enumerate(frame.meta["sparse"]):
        ids = frame["sparse"][:, j]
        assert ids.min() >= 0 and ids.max() < schema.vocab_size(name), name
    for f in schema.sequences:
        ids = frame[f"seq/{f.name}"]
        assert ids.shape == (n, f.max_len)
        assert ids.min() >= 0 and ids.max() < schema.vocab_size(f.name), f.name
    if "labels" in frame:
        y = frame["labels"].numpy()
        assert np.isfinite(y).all() and set(np.unique(y[:, :2])) <= {0.0, 1.0}
    counts, rates = frame.meta["oov_counts"], frame.meta["oov_rates"]
    assert set(counts) == {"u", "i", "k", "a", "h", "hu", "ha"}
    assert counts["i"] == counts["k"] == 0  # hashed: never out of vocabulary
    assert all(0 <= r <= 1 for r in rates.values())


def attempt(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - the property is about which errors
            assert_clear(e)
            return None


@SETTINGS
@given(frames(), frames())
def test_random_frames_encode_or_fail_clearly(train, test):
    schema = make_schema()
    frame = attempt(schema.fit_transform, train)
    event(f"fit {'ok' if frame is not None else 'refused'}")
    if frame is None:
        assert not schema.is_fitted  # a failed fit changes nothing
        return
    assert_sane(schema, frame, len(train))
    before = schema.to_json()
    same = attempt(schema.transform, train)  # the fit frame: encodes, FunnelStats aside
    assert same is not None
    assert_sane(schema, same, len(train))
    other = attempt(schema.transform, test)
    event(f"transform {'ok' if other is not None else 'refused'}")
    if other is not None:
        assert_sane(schema, other, len(test))
    assert schema.to_json() == before
    again = rm.Schema.from_json(before, keys=KEY)
    assert again == schema
    if other is not None:
        copy = attempt(again.transform, test)
        for key in other.keys():
            assert np.array_equal(copy[key].numpy(), other[key].numpy()), key


def fitted():
    df = pd.DataFrame(
        {
            "u": [1, 2, 3, 1],
            "i": ["a", "b", "a", "c"],
            "k": [5, 6, 7, 5],
            "a": ["x", "y", "x", "y"],
            "p": [1.0, 2.0, np.nan, 4.0],
            "q": [0.0, 1.0, 2.0, 3.0],
            "r": [1.0, 1.0, 2.0, 3.0],
            "h": [[1, 2], [], None, [3]],
            "hu": [[1], [2, 3], [], None],
            "ha": [["x"], ["y", "z"], [], None],
            "click": [1, 0, 1, 0],
            "buy": [1, 0, 0, 0],
            "dwell": [1.0, 2.0, 3.0, 4.0],
            "g": [0, 0, 1, 1],
        }
    )
    schema = make_schema()
    schema.features.append(rm.FunnelStats("fs", ["u", "i"], folds=2))
    schema = rm.Schema(schema.features, schema.tasks, group="u")
    schema.fit(df)
    return df, json.loads(schema.to_json())


DF, BASE = fitted()
replacement = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(),
    st.text(max_size=3),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=3),
    st.just({}),
    st.just({"x": 1}),
)


def paths(node, prefix=()):
    """Every (path, value) of a JSON tree."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for j, v in enumerate(node):
            yield from paths(v, (*prefix, j))


ALL_PATHS = [p for p, _ in paths(BASE) if p]


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), st.integers(0, 3), replacement), max_size=3))
def test_hand_edited_schema_json_loads_or_names_the_field(edits):
    d = json.loads(json.dumps(BASE))
    for path, action, value in edits:
        parent = d
        try:
            for step in path[:-1]:
                parent = parent[step]
            last = path[-1]
            if action == 0 and isinstance(parent, dict):
                del parent[last]  # a missing key
            elif action == 1 and isinstance(parent, dict):
                parent[f"{last}_typo"] = parent.pop(last)  # an unknown key
            elif action == 2 and isinstance(parent, list) and parent:
                parent.append(parent[0])  # a duplicate entry
            else:
                parent[last] = value  # a wrong type or value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the path
    try:
        schema = rm.Schema.from_dict(d, keys=KEY)
    except SchemaError as e:
        assert "schema.json" in str(e) or "key" in str(e), str(e)
        event("load refused")
        return
    except ValueError as e:  # pragma: no cover - should always be a SchemaError
        pytest.fail(f"raw ValueError: {e}")
    event("load ok")
    if schema.is_fitted:
        attempt(schema.transform, DF)  # edited but valid numbers: encodes or fails clearly
