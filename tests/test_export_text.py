"""Text towers in the ONNX export, and the query-aware text tower (query + relevance).

A tiny random BERT (hidden 32, 2 layers) over the words of the synthetic titles is written to a
temp folder; every model here has every encoder kind: ids (sparse, a history with mean and
attention pooling), dense, a precomputed vector and a text tower with history and query.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _text_tower_helpers import _write_tiny_bert

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.encoders.text import BertTextTower
from recsys_mt.encoders.text_output import relevance
from recsys_mt.serving.export import exported_text_rows

pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def data():
    data = make_funnel_data(n_users=60, n_items=40, n_categories=5, n_impressions=1200, seed=3)
    df = data.impressions.copy()
    rng = np.random.default_rng(0)
    df["img"] = [rng.normal(size=4) for _ in range(len(df))]
    names = data.items.set_index("item_id")["category_name"]
    df["query"] = [
        None if k % 9 == 0 else f"{names[i]} {w}"
        for k, (i, w) in enumerate(zip(df["item_id"], rng.choice(["cheap", "best", ""], len(df))))
    ]
    df.loc[df.index[::11], "title"] = None  # the item's known title fills these rows
    return df


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, data):
    words = sorted({w.lower() for t in data["title"].dropna() for w in t.split()})
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), [*words, "cheap", "best"])


def make_schema():
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=6),
            rm.Vector("img", dim=4),
            rm.Text("title", key="item_id"),
            rm.Text("query"),
        ],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    )


def train_model(path, df, trainable):
    schema = make_schema()
    frame = schema.fit_transform(df)
    torch.manual_seed(0)
    tower = BertTextTower(
        path,
        feature="title",
        projection_dim=8,
        history="hist_items",
        query="query",
        trainable=trainable,
        max_length=16,
        progress_bar=False,
    )
    encoders = [rm.IDEmbedding(), rm.DenseEncoder(), rm.VectorEncoder(), tower]
    model = rm.MultiTaskModel(schema, encoders=encoders, head=rm.MMoE(num_experts=2))
    rm.Trainer(max_epochs=1, batch_size=256, progress_bar=False, device="cpu").fit(
        model, frame, frame
    )
    assert model.calibrated
    return model, schema, tower


@pytest.fixture(scope="module")
def frozen(tiny_bert, data):
    return train_model(tiny_bert, data, "frozen")


def onnx_probs(path, frame):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: frame[i.name].numpy() for i in sess.get_inputs()}
    return sess.run(["conditional", "joint"], feed), set(feed)


@pytest.mark.parametrize("trainable", ["frozen", "top_k_layers"])
def test_onnx_matches_predict_with_a_text_tower(request, tiny_bert, data, tmp_path, trainable):
    if trainable == "frozen":
        model, schema, tower = request.getfixturevalue("frozen")
    else:
        model, schema, tower = train_model(tiny_bert, data, trainable)
    out = tmp_path / "exp"
    path = rm.export_onnx(model, out, schema.transform(data.head(4)))  # not prepared: export does
    spec = json.loads((out / "export.json").read_text())
    names = {i["name"] for i in spec["inputs"]}
    assert {"text_row/title", "text_row/query", "seq/hist_items", "vec/img", "dense"} <= names
    assert not any(n.startswith("text/") for n in names)  # per-frame codes are not inputs
    assert spec["text_tables"] == {"title": "text_title.json"}
    table = json.loads((out / "text_title.json").read_text())
    assert table["texts"] == tower.texts and table["features"] == ["title", "query"]
    for n in (1, 5, 300):
        rows = data.iloc[-n:]
        frame = model.prepare(schema.transform(rows))
        (cond, joint), fed = onnx_probs(path, frame)
        assert fed == names
        want = model.predict(frame)
        np.testing.assert_allclose(cond[:, 0], want["ctr"], atol=1e-5)
        np.testing.assert_allclose(cond[:, 1], want["cvr"], atol=1e-5)
        np.testing.assert_allclose(joint[:, 1], want["ctcvr"], atol=1e-5)
        # a caller without Python maps raw texts to rows with the JSON beside the graph
        item_ids = frame.column("item_id").numpy()
        got = exported_text_rows(out, "title", list(rows["title"]), item_ids)
        np.testing.assert_array_equal(got, frame["text_row/title"].numpy())
        got = exported_text_rows(out, "query", list(rows["query"]))
        np.testing.assert_array_equal(got, frame["text_row/query"].numpy())


def test_unknown_texts_map_to_the_missing_row(frozen, data, tmp_path):
    model, schema, tower = frozen
    out = tmp_path / "exp"
    path = rm.export_onnx(model, out, model.prepare(schema.transform(data.head(3))))
    texts = ["never seen query", None, tower.texts[1]]
    np.testing.assert_array_equal(exported_text_rows(out, "query", texts), [0, 0, 1])
    with pytest.raises(KeyError, match="'colour'"):
        exported_text_rows(out, "colour", texts)
    # the exported graph scores an unknown query as a missing one, as torch does for row 0
    rows = data.head(3).assign(query=[None] * 3)
    frame = model.prepare(schema.transform(rows))
    (cond, _), _ = onnx_probs(path, frame)
    np.testing.assert_allclose(cond[:, 0], model.predict(frame)["ctr"], atol=1e-5)


def test_query_output_is_text_query_and_their_relevance(tiny_bert, data):
    schema = make_schema().fit(data)
    torch.manual_seed(0)
    tower = BertTextTower(tiny_bert, feature="title", query="query", progress_bar=False)
    rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), tower])
    frame = tower.prepare(schema.transform(data.head(50)))
    d = tower.text_dim
    assert tower.out_dim == 3 * d + 2
    titles = [tower.texts[r] for r in frame["text_row/title"].tolist()]
    queries = list(data["query"].head(50))
    with torch.no_grad():
        out = tower(frame.take(slice(0, 50)))
        title, query = tower.encode_texts(titles), tower.encode_texts(queries)
        base = BertTextTower(tiny_bert, feature="title", projection_dim=None, progress_bar=False)
        rm.MultiTaskModel(schema, encoders=[base])
        raw_title, raw_query = base.encode_texts(titles), base.encode_texts(queries)
    cosine = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(out[:, :d], title)
    torch.testing.assert_close(out[:, d : 2 * d], query)
    present = torch.tensor([isinstance(q, str) for q in queries])  # missing: pooled zeros
    want = torch.where(present, cosine(raw_query, raw_title, dim=-1), 0.0)
    torch.testing.assert_close(out[:, 2 * d], want)
    torch.testing.assert_close(out[:, 2 * d + 1], cosine(query, title, dim=-1))
    torch.testing.assert_close(out[:, 2 * d + 2 :], query * title)
    # both features share one table: each distinct text once
    distinct = set(data["query"].head(50).dropna()) | set(data["title"].head(50).dropna())
    assert len(tower.texts) - 1 == len(distinct - {""})


def test_relevance_of_a_zero_vector_is_zero_with_finite_gradient():
    q = torch.zeros(2, 3, requires_grad=True)
    t = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], requires_grad=True)
    r = relevance(q, t)
    assert r.shape == (2, 5) and torch.equal(r[:, :2], torch.zeros(2, 2))
    r.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(t.grad).all()
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    units = (torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]]))
    r = relevance(a, b, units)
    assert r[0, 0].item() == pytest.approx(0.6) and r[0, 1].item() == pytest.approx(24 / 25)
    torch.testing.assert_close(r[0, 2:], torch.tensor([12.0, 12.0]))


def test_query_tower_saves_and_loads_bit_identically(frozen, data, tmp_path):
    model, schema, tower = frozen
    frame = model.prepare(schema.transform(data.tail(200)))
    want = model.predict(frame)
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["encoders"][3]["query"] == "query"
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ckpt")
    got = loaded.predict(loaded.prepare(schema.transform(data.tail(200))))
    for col in want.columns:
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy())
    assert loaded.encoders[3].query == "query" and loaded.encoders[3].base is None


def test_query_must_be_a_row_level_text(tiny_bert, data):
    schema = make_schema().fit(data)
    with pytest.raises(ValueError, match="another Text feature"):
        BertTextTower(tiny_bert, feature="title", query="title")
    for bad in ("price", "nope"):
        tower = BertTextTower(tiny_bert, feature="title", query=bad, progress_bar=False)
        with pytest.raises(ValueError, match=f"query '{bad}' must be a row-level Text"):
            rm.MultiTaskModel(schema, encoders=[tower])
    keyed = BertTextTower(tiny_bert, feature="query", query="title", progress_bar=False)
    with pytest.raises(ValueError, match="query 'title' must be a row-level Text"):
        rm.MultiTaskModel(schema, encoders=[keyed])
    tower = BertTextTower(tiny_bert, feature="title", query="query", progress_bar=False)
    rm.MultiTaskModel(schema, encoders=[tower])
    batch = tower.prepare(schema.transform(data.head(4))).take(slice(0, 4))
    del batch["text_row/query"]
    with pytest.raises(KeyError, match="text_row/query"):
        tower(batch)
