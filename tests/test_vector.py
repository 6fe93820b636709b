"""Vector features: validation, normalisation, schema.json, the encoder, save / load, Parquet."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import recsys_mt as rm

DIM = 8


def make_df(n=300, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 40, n),
            "emb": list(vecs),
            "click": rng.integers(0, 2, n),
        }
    )


def make_schema(**kw):
    return rm.Schema(
        [rm.Sparse("user_id"), rm.Vector("emb", dim=DIM, **kw)], tasks=[rm.Task("ctr", "click")]
    )


def with_cell(df, row, value):
    df = df.copy()
    df["emb"] = df["emb"].astype(object)
    df.at[row, "emb"] = value
    return df


# ----------------------------------------------------------------------------- spec
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dim": 0}, "dim must be an int >= 1"),
        ({"dim": 2.5}, "dim must be an int >= 1"),
        ({"dim": 4, "normalize": "max"}, "normalize must be None, 'l2' or 'standard'"),
        ({"dim": 4, "nan": "mean"}, "nan must be 'error' or 'zero'"),
    ],
)
def test_spec_validates_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        rm.Vector("emb", **kw)


# ----------------------------------------------------------------------------- encoding
def test_cells_of_every_form_encode_alike():
    df = make_df(50)
    want = make_schema().fit_transform(df)["vec/emb"]
    assert want.dtype == torch.float32 and want.shape == (50, DIM)
    assert torch.equal(want, torch.from_numpy(np.stack(df["emb"])))
    forms = {
        "lists": df["emb"].map(lambda v: v.tolist()),
        "tuples": df["emb"].map(tuple),
        "float64": df["emb"].map(lambda v: v.astype(np.float64)),
        "mixed": pd.Series([v if i % 2 else v.tolist() for i, v in enumerate(df["emb"])]),
    }
    schema = make_schema().fit(df)
    for name, col in forms.items():
        got = schema.transform(df.assign(emb=col))["vec/emb"]
        assert torch.equal(got, want), name
    ints = df.assign(emb=[[1, 2, 3, 4, 5, 6, 7, 8]] * 50)
    assert schema.transform(ints)["vec/emb"][0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert torch.equal(schema.transform(df).column("emb"), want)
    pa = pytest.importorskip("pyarrow")
    arrow = df["emb"].map(np.ndarray.tolist).astype(pd.ArrowDtype(pa.list_(pa.float32())))
    assert torch.equal(schema.transform(df.assign(emb=arrow))["vec/emb"], want)


@pytest.mark.parametrize("stage", ["fit", "transform"])
def test_wrong_length_names_column_row_and_lengths(stage):
    bad = with_cell(make_df(), 17, [0.5] * (DIM - 1))
    schema = make_schema()
    if stage == "transform":
        schema.fit(make_df())
    with pytest.raises(rm.SchemaError) as e:
        schema.fit(bad) if stage == "fit" else schema.transform(bad)
    msg = str(e.value)
    assert "'emb'" in msg and "row 17" in msg and f"length {DIM - 1}" in msg
    assert f"expected length {DIM}" in msg
    assert not schema.is_fitted or stage == "transform"


@pytest.mark.parametrize(
    "cell, match",
    [
        ("abcdefgh", r"holds str 'abcdefgh' at row 5; each cell must be a list"),
        (3.5, r"holds float 3.5 at row 5"),
        ({"a": 1}, r"holds dict"),
        (np.zeros((2, DIM // 2)), r"holds ndarray"),
        ([[1.0, 2.0]] * DIM, r"holds list \[1.0, 2.0\] at row 5, position 0"),
        (["x"] + [1.0] * (DIM - 1), r"holds str 'x' at row 5, position 0"),
        ([1.0] * (DIM - 1) + [np.inf], r"holds inf at row 5, position 7"),
        ([1.0] * (DIM - 1) + [1e39], r"1e\+39 at row 5, position 7, beyond the float32 range"),
    ],
)
def test_bad_cells_are_named(cell, match):
    schema = make_schema(nan="zero").fit(make_df())
    with pytest.raises(rm.SchemaError, match=match):
        schema.transform(with_cell(make_df(), 5, cell))


def test_scalar_column_is_refused():
    df = make_df().assign(emb=1.0)
    with pytest.raises(rm.SchemaError, match="'emb'.*has dtype float64"):
        make_schema().fit(df)


def test_nan_policy_error_names_the_row():
    schema = make_schema().fit(make_df())
    for cell, held in [(None, "a missing vector"), (np.nan, "a missing vector")]:
        with pytest.raises(rm.SchemaError, match=f"holds {held} at row 9 .*nan='zero'"):
            schema.transform(with_cell(make_df(), 9, cell))
    inner = [0.0] * DIM
    inner[3] = np.nan
    with pytest.raises(rm.SchemaError, match="holds NaN at position 3 at row 9"):
        schema.transform(with_cell(make_df(), 9, inner))
    with pytest.raises(rm.SchemaError, match="row 9"):
        make_schema().fit(with_cell(make_df(), 9, None))


def test_nan_policy_zero_gives_zeros_and_a_presence_flag():
    df = make_df(20)
    inner = [1.0] * DIM
    inner[0] = None
    df = with_cell(with_cell(with_cell(df, 2, None), 5, np.nan), 7, inner)
    frame = make_schema(nan="zero").fit_transform(df)
    x, present = frame["vec/emb"], frame["vec_present/emb"]
    assert present.dtype == torch.float32 and present.shape == (20,)
    assert torch.nonzero(present == 0).flatten().tolist() == [2, 5, 7]
    assert (x[[2, 5, 7]] == 0).all()
    assert torch.equal(x[0], torch.from_numpy(df["emb"][0]))
    assert "vec_present/emb" not in make_schema().fit_transform(make_df(20))


def test_all_missing_column_with_zero_policy():
    df = make_df(10).assign(emb=np.nan)
    frame = make_schema(nan="zero", normalize="standard").fit_transform(df)
    assert (frame["vec/emb"] == 0).all() and (frame["vec_present/emb"] == 0).all()


def test_l2_normalisation_by_hand():
    df = make_df(4).assign(emb=[[3.0, 4.0] + [0.0] * (DIM - 2), [0.0] * DIM, [2.0] * DIM, None])
    x = make_schema(normalize="l2", nan="zero").fit_transform(df)["vec/emb"]
    assert x[0, :2].tolist() == [0.6000000238418579, 0.800000011920929]
    assert (x[0, 2:] == 0).all()
    assert (x[1] == 0).all() and (x[3] == 0).all()  # zero and missing vectors stay zero
    assert torch.allclose(x[2], torch.full((DIM,), 2.0 / (2.0 * DIM**0.5)))
    assert torch.allclose(x[2].norm(), torch.tensor(1.0))


def test_standard_normalisation_by_hand():
    rows = [[1.0] * DIM, [3.0] * DIM, [5.0, 2.0] + [3.0] * (DIM - 2), None]
    df = make_df(4).assign(emb=rows)
    schema = make_schema(normalize="standard", nan="zero")
    x = schema.fit_transform(df)["vec/emb"]
    stats = schema.vector_stats_["emb"]
    assert stats["mean"][:3] == [3.0, 2.0, 7.0 / 3.0]  # present rows only
    assert stats["std"][1] == pytest.approx(np.sqrt(2.0 / 3.0))
    assert x[0, 0].item() == pytest.approx((1.0 - 3.0) / np.sqrt(8.0 / 3.0))
    assert x[2, 1].item() == pytest.approx(0.0)
    assert (x[3] == 0).all()  # a missing vector: zeros (the training mean)
    const = make_df(3).assign(emb=[[2.0] * DIM] * 3)
    schema = make_schema(normalize="standard")
    assert (schema.fit_transform(const)["vec/emb"] == 0).all()
    assert schema.vector_stats_["emb"]["std"] == [1.0] * DIM  # constant dims: std 1


def test_standardised_beyond_float32_is_an_error():
    schema = make_schema(normalize="standard").fit(make_df(3).assign(emb=[[0.0] * DIM] * 3))
    schema.vector_stats_["emb"]["std"] = [1e-45] * DIM
    with pytest.raises(rm.SchemaError, match="after standardising"):
        schema.transform(make_df(3))


# ----------------------------------------------------------------------------- schema.json
def test_schema_json_round_trip(tmp_path):
    df = make_df()
    for kw in ({}, {"normalize": "l2"}, {"normalize": "standard", "nan": "zero"}):
        schema = make_schema(**kw).fit(df)
        schema.to_json(tmp_path / "schema.json")
        loaded = rm.Schema.from_json(tmp_path / "schema.json")
        assert loaded == schema and loaded.feature("emb") == schema.feature("emb")
        a, b = schema.transform(df), loaded.transform(df)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a.keys())
    unfitted = make_schema(normalize="standard")
    assert rm.Schema.from_json(unfitted.to_json()) == unfitted
    plain = rm.Schema([rm.Sparse("user_id")]).fit(df)
    assert "vector_stats" not in plain.to_dict()  # schemas without vectors keep their layout


def edited(schema, edit):
    d = json.loads(schema.to_json())
    edit(d)
    return json.dumps(d)


def test_hand_edited_schema_json_is_a_clear_error():
    schema = make_schema(normalize="standard").fit(make_df())

    def set_dim(value):
        return lambda d: d["features"][1].__setitem__("dim", value)

    with pytest.raises(rm.SchemaError, match=r"vector_stats\['emb'\]\.mean: expected 16 numbers"):
        rm.Schema.from_json(edited(schema, set_dim(16)))
    with pytest.raises(rm.SchemaError, match=r"features\[1\]\.dim: expected int, got str"):
        rm.Schema.from_json(edited(schema, set_dim("8")))
    with pytest.raises(rm.SchemaError, match=r"features\[1\]: .*dim must be an int >= 1"):
        rm.Schema.from_json(edited(schema, set_dim(0)))
    with pytest.raises(rm.SchemaError, match=r"features\[1\]: missing key\(s\) \['dim'\]"):
        rm.Schema.from_json(edited(schema, lambda d: d["features"][1].pop("dim")))
    with pytest.raises(rm.SchemaError, match=r"vector_stats\['emb'\]\.std: expected .* > 0"):
        rm.Schema.from_json(
            edited(schema, lambda d: d["vector_stats"]["emb"]["std"].__setitem__(0, -1.0))
        )
    with pytest.raises(rm.SchemaError, match=r"vector_stats: missing key\(s\) \['emb'\]"):
        rm.Schema.from_json(edited(schema, lambda d: d.__setitem__("vector_stats", {})))
    l2 = make_schema(normalize="l2").fit(make_df())
    stray = edited(l2, lambda d: d["vector_stats"].__setitem__("emb", {"mean": [], "std": []}))
    with pytest.raises(rm.SchemaError, match=r"vector_stats: unknown key\(s\) \['emb'\]"):
        rm.Schema.from_json(stray)
    # a wrong dim without statistics to contradict it: the data then names both lengths
    wrong = rm.Schema.from_json(edited(l2, set_dim(16)))
    with pytest.raises(rm.SchemaError, match="length 8 at row 0, expected length 16"):
        wrong.transform(make_df())


# ----------------------------------------------------------------------------- model
def planted(n, seed):
    """Clicks that depend only on the vectors: click = 1 iff v·w > 0 (w fixed)."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=DIM)
    vecs = rng.normal(size=(n, DIM))
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 100, n),
            "emb": list(vecs),
            "click": (vecs @ w > 0).astype(int),
        }
    )


def test_model_learns_a_signal_planted_only_in_the_vectors():
    schema = make_schema(normalize="standard")
    train = schema.fit_transform(planted(4000, 0))
    test_df = planted(1000, 1)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema)  # default encoders: IDEmbedding + VectorEncoder
    assert [type(e).__name__ for e in model.encoders] == ["IDEmbedding", "VectorEncoder"]
    rm.Trainer(max_epochs=4, batch_size=256, lr=5e-3, progress_bar=False, num_threads=1).fit(
        model, train
    )
    auc = roc_auc_score(test_df["click"], model.predict(test_df)["ctr"])
    assert auc > 0.8


def test_save_load_gives_bit_identical_predictions(tmp_path):
    df = with_cell(make_df(400), 3, None)
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Vector("emb", dim=DIM, normalize="standard", nan="zero"),
            rm.Vector("img", dim=3, normalize="l2", column="emb3"),
        ],
        tasks=[rm.Task("ctr", "click")],
    )
    df["emb3"] = [np.arange(3.0) + i for i in range(len(df))]
    frame = schema.fit_transform(df)
    torch.manual_seed(0)
    encoders = [
        rm.IDEmbedding(),
        rm.VectorEncoder(["emb"], proj_dim=4),
        rm.VectorEncoder(features="img"),
    ]
    model = rm.MultiTaskModel(schema, encoders=encoders)
    assert [e.out_dim for e in model.encoders[1:]] == [4, 3]
    rm.Trainer(max_epochs=1, batch_size=64, progress_bar=False, num_threads=1).fit(model, frame)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["encoders"][1] == {"type": "vector", "features": ["emb"], "proj_dim": 4}
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.predict_logits(frame), model.predict_logits(frame))
    assert loaded.predict(df).equals(model.predict(df))
    other = rm.Schema.from_dict(schema.to_dict())
    other.vector_stats_["emb"]["mean"] = [0.0] * DIM
    with pytest.raises(rm.CheckpointError, match="vector_stats"):
        rm.MultiTaskModel.from_pretrained(tmp_path, schema=other)


def test_vector_encoder_errors():
    schema = make_schema().fit(make_df())
    with pytest.raises(ValueError, match=r"\['img'\] are not Vector features"):
        rm.MultiTaskModel(schema, encoders=[rm.VectorEncoder(["img"])])
    with pytest.raises(ValueError, match="proj_dim must be None or an int >= 1"):
        rm.VectorEncoder(proj_dim=0)
    with pytest.raises(ValueError, match="lists a name twice"):
        rm.VectorEncoder(["emb", "emb"])
    no_vectors = rm.Schema([rm.Sparse("user_id")], tasks=[rm.Task("ctr", "click")])
    with pytest.raises(ValueError, match="no Vector features"):
        rm.MultiTaskModel(no_vectors.fit(make_df()), encoders=[rm.VectorEncoder()])


# ----------------------------------------------------------------------------- Parquet
def test_parquet_streaming_equals_transform(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    df = with_cell(with_cell(make_df(700), 11, None), 650, [1.0] * (DIM - 1) + [None])
    schema = make_schema(normalize="standard", nan="zero").fit(df)
    want = schema.transform(df)
    table = pa.Table.from_pandas(df, preserve_index=False)
    fixed = table.set_column(1, "emb", table.column("emb").cast(pa.list_(pa.float32(), DIM)))
    pq.write_table(table.slice(0, 400), tmp_path / "a.parquet", row_group_size=128)  # list<float>
    pq.write_table(fixed.slice(400), tmp_path / "b.parquet", row_group_size=100)  # fixed size
    src = rm.ParquetSource(tmp_path, schema, batch_size=96, shuffle=False)
    batches = list(src.batches())
    got = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    for key in ("vec/emb", "vec_present/emb", "sparse", "labels"):
        assert torch.equal(got[key], want[key]), key
    empty = src.empty_batch()
    assert empty["vec/emb"].shape == (0, DIM) and empty["vec_present/emb"].shape == (0,)


def test_parquet_column_types_are_checked(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    df = make_df(50)
    schema = make_schema().fit(df)
    table = pa.Table.from_pandas(df, preserve_index=False)
    bad = {
        "strings": (pa.array([["a"] * DIM] * 50), r"Arrow type list<.*string>"),
        "scalars": (pa.array(np.ones(50)), r"Arrow type double"),
        "size": (pa.array([[1.0] * 4] * 50, pa.list_(pa.float32(), 4)), "lists of 4 values"),
    }
    for name, (column, match) in bad.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table.set_column(1, "emb", column), path)
        with pytest.raises(ValueError, match=f"{name}.parquet: column 'emb'.*{match}"):
            rm.ParquetSource(path, schema)
