"""Fresh models: Schema.update grows vocabularies, MultiTaskModel.grow grows the tables."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from _text_tower_helpers import _write_tiny_bert

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data

N_NEW = 10


def make_schema(**item_kw) -> rm.Schema:
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id", **item_kw),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Dense("age", nan="mean"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=10),
        ],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
        min_groups=None,  # new items must get rows however few users met them
    )


@pytest.fixture(scope="module")
def world():
    """Period 1 without the last ``N_NEW`` items, period 2 with all items; a model trained on
    period 1 (one epoch)."""
    df = make_funnel_data(
        n_users=80, n_items=60, n_categories=5, n_impressions=4000, seed=2
    ).impressions
    new_items = sorted(df["item_id"].unique())[-N_NEW:]
    p1 = df[~df["item_id"].isin(new_items)].reset_index(drop=True)
    schema = make_schema()
    frame = schema.fit_transform(p1)
    torch.manual_seed(0)
    model = rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=2, expert_dims=(16,)))
    rm.Trainer(max_epochs=1, progress_bar=False, device="cpu").fit(model, frame, frame)
    return model, schema, p1, df, new_items


def grown(world, **kw):
    model, schema, _, df, _ = world
    model = copy.deepcopy(model)
    new_schema, growth = schema.update(df)
    model.grow(new_schema, **kw)
    return model, new_schema, growth


# ----------------------------------------------------------------------------- schema side
def test_update_appends_exactly_the_new_ids_and_leaves_the_schema_alone(world):
    _, schema, p1, df, new_items = world
    before = schema.to_dict()
    new_schema, growth = schema.update(df)
    assert schema.to_dict() == before  # the fitted schema is not modified
    old_vocab, vocab = schema.vocabulary("item_id"), new_schema.vocabulary("item_id")
    assert vocab[: len(old_vocab)] == old_vocab
    assert sorted(vocab[len(old_vocab) :]) == sorted(int(i) for i in new_items)
    assert growth.added == {"user_id": 0, "item_id": N_NEW, "category": 0}
    assert growth.new_ids("item_id") == range(len(old_vocab) + 2, len(old_vocab) + 2 + N_NEW)
    old_ids = p1["item_id"].to_numpy()
    np.testing.assert_array_equal(
        new_schema.encode_ids("item_id", old_ids), schema.encode_ids("item_id", old_ids)
    )
    assert (schema.encode_ids("item_id", new_items) == rm.OOV_ID).all()
    assert sorted(new_schema.encode_ids("item_id", new_items)) == list(growth.new_ids("item_id"))
    assert new_schema.dense_stats_ == schema.dense_stats_
    assert new_schema.vocab_size("hist_items") == new_schema.vocab_size("item_id")
    again, growth2 = new_schema.update(df)  # nothing new the second time
    assert growth2.total_added == 0 and again == new_schema


def frame_of(ids, **extra):
    return pd.DataFrame({"item": ids, **extra})


def test_min_freq_and_max_vocab_apply_to_the_new_values():
    schema = rm.Schema([rm.Sparse("item", column="item", min_freq=2, max_vocab=4)])
    schema.fit(frame_of(["a", "a", "b", "b", "c"]))  # c is below min_freq
    assert schema.vocabulary("item") == ["a", "b"]
    new_schema, growth = schema.update(frame_of(["c", "d", "d", "e", "e", "e", "f", "f", "c"]))
    # c (2x, now known enough), d (2x), e (3x), f (2x): room for 2, the most frequent win
    assert new_schema.vocabulary("item") == ["a", "b", "c", "e"]
    assert growth.capped == {"item": 2} and growth.added == {"item": 2}
    full, growth = new_schema.update(frame_of(["g", "g", "g"]))
    assert full.vocabulary("item") == new_schema.vocabulary("item")
    assert growth.capped == {"item": 1} and growth.total_added == 0


def test_own_sequence_vocab_grows_shared_one_does_not_add_values():
    schema = rm.Schema(
        [
            rm.Sparse("item"),
            rm.Sequence("hist", vocab_from="item"),
            rm.Sequence("tags"),
        ]
    )
    schema.fit(pd.DataFrame({"item": [1, 2], "hist": [[1], [2]], "tags": [["x"], ["y"]]}))
    new_schema, growth = schema.update(
        pd.DataFrame({"item": [3, 1], "hist": [[9, 8], [3]], "tags": [["z", "x"], None]})
    )
    assert new_schema.vocabulary("item") == [1, 2, 3]  # 9 and 8 appear in histories only
    assert new_schema.vocabulary("tags") == ["x", "y", "z"]
    assert growth.added == {"item": 1, "tags": 1}
    encoded = new_schema.transform(pd.DataFrame({"item": [3], "hist": [[3, 9]], "tags": [["z"]]}))
    assert encoded["seq/hist"][0, :2].tolist() == [4, rm.OOV_ID]
    assert encoded["seq/tags"][0, 0].item() == 4


def test_hashed_features_do_not_grow_and_anonymised_ones_do():
    key = b"k" * 16
    schema = rm.Schema(
        [
            rm.Sparse("user", hash_buckets=8),
            rm.Sparse("item", hash_key=key, anonymize=True),
        ]
    )
    schema.fit(pd.DataFrame({"user": ["u1", "u2"], "item": ["a", "b"]}))
    new_schema, growth = schema.update(pd.DataFrame({"user": ["u3"], "item": ["cherry"]}))
    assert growth.hashed == ["user"] and growth.added == {"item": 1}
    assert new_schema.vocab_size("user") == schema.vocab_size("user") == 10
    ids = new_schema.encode_ids("item", ["a", "b", "cherry", "zz"])
    assert ids.tolist() == [2, 3, 4, rm.OOV_ID]
    assert "cherry" not in new_schema.to_json()  # tokens, not raw ids, are stored


def test_update_validates_before_building(world):
    _, schema, _, df, _ = world
    before = schema.to_dict()
    with pytest.raises(rm.SchemaError, match="missing column.*'price'"):
        schema.update(df.drop(columns=["price"]))
    with pytest.raises(rm.SchemaError, match="column 'item_id' holds str ids"):
        schema.update(df.assign(item_id=df["item_id"].astype(str)))
    with pytest.raises(rm.SchemaError, match="sequence column 'hist_items'"):
        schema.update(df.assign(hist_items=[{"a": 1}] * len(df)))
    assert schema.to_dict() == before
    with pytest.raises(RuntimeError, match="not fitted"):
        make_schema().update(df)


# ----------------------------------------------------------------------------- model side
def test_grow_adds_rows_keeps_old_rows_and_starts_new_rows_from_oov(world):
    model, schema, _, _, new_items = world
    g, new_schema, growth = grown(world)
    old_enc, enc = model.encoders[0], g.encoders[0]
    for (d, old_t), new_t in zip(zip(old_enc.dims, old_enc.tables), enc.tables):
        added = sum(growth.added[n] for n, (dim, _) in enc._owner_offsets.items() if dim == d)
        assert new_t.shape == (old_t.shape[0] + added, d)
    for name in ("user_id", "item_id", "category"):
        known = torch.arange(schema.vocab_size(name))
        assert torch.equal(enc.embedding_of(name, known), old_enc.embedding_of(name, known))
    fresh = torch.as_tensor(new_schema.encode_ids("item_id", new_items))
    oov = old_enc.embedding_of("item_id", torch.tensor([rm.OOV_ID]))
    assert torch.equal(enc.embedding_of("item_id", fresh), oov.expand(N_NEW, -1))
    assert g.schema is new_schema and model.schema is schema


def test_predictions_unchanged_right_after_growth(world):
    model, schema, p1, df, new_items = world
    g, new_schema, _ = grown(world)
    has_new = torch.as_tensor(df["item_id"].isin(new_items).to_numpy().copy())
    new_frame, old_frame = new_schema.transform(df), schema.transform(df)
    # rows with new ids now use their own ids, not the OOV id ...
    assert (new_frame["sparse"][has_new, 1] >= schema.vocab_size("item_id")).all()
    assert (old_frame["sparse"][has_new, 1] == rm.OOV_ID).all()
    assert (new_frame["seq/hist_items"] >= schema.vocab_size("item_id")).any()
    # ... and every row, old ids only or not, scores bit-identically
    pd.testing.assert_frame_equal(g.predict(new_frame), model.predict(old_frame), check_exact=True)
    old_only = p1.iloc[:300]
    pd.testing.assert_frame_equal(g.predict(old_only), model.predict(old_only), check_exact=True)


def test_growing_again_shifts_offsets_and_keeps_every_row(world):
    _, _, _, df, _ = world
    g, schema2, _ = grown(world)
    later = df.iloc[:200].copy()
    later.loc[later.index[:50], "user_id"] = 10_000  # a new user: item_id's offset shifts
    later.loc[later.index[50:60], "item_id"] = 20_000
    enc = g.encoders[0]
    names = ("user_id", "item_id")
    before = {n: enc.embedding_of(n, torch.arange(schema2.vocab_size(n))) for n in names}
    old_pred = g.predict(schema2.transform(later))
    schema3, growth = schema2.update(later)
    assert growth.added == {"user_id": 1, "item_id": 1, "category": 0}
    offsets = dict(enc._owner_offsets)
    g.grow(schema3)
    assert enc._owner_offsets["item_id"][1] == offsets["item_id"][1] + 1
    for name, rows in before.items():
        assert torch.equal(enc.embedding_of(name, torch.arange(len(rows))), rows)
    pd.testing.assert_frame_equal(g.predict(later), old_pred, check_exact=True)


def test_noise_moves_only_the_new_rows(world):
    model, schema, _, _, new_items = world
    g, new_schema, _ = grown(world, noise_std=0.01, seed=3)
    enc, old_enc = g.encoders[0], model.encoders[0]
    known = torch.arange(schema.vocab_size("item_id"))
    assert torch.equal(enc.embedding_of("item_id", known), old_enc.embedding_of("item_id", known))
    fresh = enc.embedding_of(
        "item_id", torch.as_tensor(new_schema.encode_ids("item_id", new_items))
    )
    oov = old_enc.embedding_of("item_id", torch.tensor([rm.OOV_ID]))
    diff = (fresh - oov).detach()
    assert 0.005 < diff.std().item() < 0.02
    assert not torch.equal(fresh[0], fresh[1])


def test_continued_training_learns_a_planted_new_item(world):
    model, schema, _, df, new_items = world
    star = new_items[0]
    p2 = df.copy()
    p2.loc[p2["item_id"] == star, "click"] = 1  # the new item is always clicked
    is_star = torch.as_tensor((p2["item_id"] == star).to_numpy().copy())
    g, new_schema, _ = grown(world)
    frame = new_schema.transform(p2)

    def gap(m, f):  # mean CTR logit of the new item's rows minus that of the others
        z = m.predict_logits(f)[:, 0]
        return (z[is_star].mean() - z[~is_star].mean()).item()

    assert gap(g, frame) == pytest.approx(gap(model, schema.transform(p2)), abs=1e-6)
    torch.manual_seed(0)
    trainer = rm.Trainer(max_epochs=2, batch_size=256, progress_bar=False, device="cpu", lr=1e-2)
    trainer.fit(g, frame, None)
    stale = gap(model, schema.transform(p2))  # never saw the item: scores it as the OOV row
    learned = gap(g, frame)
    assert learned - stale > 0.4, (learned, stale)  # about 0.8 with this seed


def test_grow_refuses_mismatched_schemas_and_unknown_encoders(world):
    model, schema, p1, df, _ = world
    g = copy.deepcopy(model)
    schema = g.schema
    tables = [t.detach().clone() for t in g.encoders[0].tables]
    refit = make_schema().fit(df)  # ids renumbered in another order
    with pytest.raises(ValueError, match="vocabulary 'item_id' does not start with the old"):
        g.grow(refit)
    other = make_schema(dim=8).fit(p1)
    with pytest.raises(ValueError, match="features differ"):
        g.grow(other)
    with pytest.raises(TypeError, match="must be a recsys_mt Schema"):
        g.grow(schema.to_dict())
    with pytest.raises(ValueError, match="noise_std"):
        g.grow(schema.update(df)[0], noise_std=-1.0)
    assert g.schema is schema
    assert all(torch.equal(a, b) for a, b in zip(tables, g.encoders[0].tables))

    class Constant(rm.Encoder):
        def build(self, schema):
            self.out_dim = 1

        def forward(self, batch):
            return batch["sparse"][:, :1].float() * 0

    custom = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), Constant()])
    with pytest.raises(NotImplementedError, match=r"encoder 1 \(Constant\).*grow\(old_schema"):
        custom.grow(schema.update(df)[0])
    assert custom.schema is schema


def test_grown_model_round_trips_through_save_pretrained(world, tmp_path):
    model, schema, _, df, _ = world
    g, new_schema, _ = grown(world, noise_std=0.02, seed=1)
    g.save_pretrained(tmp_path / "m")
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m", schema=new_schema)
    assert loaded.schema == new_schema
    pd.testing.assert_frame_equal(loaded.predict(df), g.predict(df), check_exact=True)
    with pytest.raises(rm.CheckpointError, match="vocabulary of 'item_id'"):
        rm.MultiTaskModel.from_pretrained(tmp_path / "m", schema=schema)


@pytest.mark.filterwarnings("ignore::recsys_mt.OOVWarning")
def test_text_towers_grow_and_learn_the_new_items_texts(tmp_path, monkeypatch):
    """An item-keyed tower's item -> text map grows with the vocabulary: rows that carry their
    text score exactly as before; once a frame brings a new item's text, a row of that item
    without text (and a history holding it) reads it; the grown map round-trips."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _write_tiny_bert(tmp_path / "bert", ["red", "blue", "shirt", "good"])
    df = pd.DataFrame(
        {
            "item_id": ["a", "b", "a", "c", "c"],
            "hist": [[], ["a"], ["a", "b"], ["b"], ["a"]],
            "title": ["red shirt", "blue shirt", "red shirt", "good shirt", "good shirt"],
            "query": ["red", "blue", "good", "red", "blue"],
            "click": [1, 0, 1, 0, 1],
        }
    )
    features = [
        rm.Sparse("item_id", dim=4),
        rm.Sequence("hist", vocab_from="item_id", max_len=3),
        rm.Text("title", key="item_id"),
        rm.Text("query"),
    ]
    schema = rm.Schema(features, tasks=[rm.Task("ctr", "click")], min_groups=None)
    schema.fit(df.iloc[:3])
    new_schema, growth = schema.update(df)
    assert growth.added == {"item_id": 1}
    torch.manual_seed(0)
    towers = [
        rm.BertTextTower(path, feature="title", history="hist", max_length=8, progress_bar=False),
        rm.BertTextTower(path, feature="query", max_length=8, progress_bar=False),
    ]
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), *towers])
    model.eval()
    with_text = df.iloc[3:]  # the new item "c", with its title
    no_text = pd.DataFrame(
        {"item_id": ["c"], "hist": [["c"]], "title": [None], "query": ["red"], "click": [0]}
    )
    before = model.predict_logits(with_text)
    before_no_text = model.predict_logits(no_text)
    assert model.grow(new_schema) == {"item_id": 1}
    title = model.encoders[1]
    assert title.item_rows.shape[0] == new_schema.vocab_size("item_id")
    c = new_schema.encode_ids("item_id", ["c"])[0]
    assert int(title.item_rows[c]) == 0  # no text yet: scored as while "c" was unknown
    torch.testing.assert_close(model.predict_logits(no_text), before_no_text, rtol=0, atol=0)
    # rows with their own text: bit for bit as before; preparing them teaches c -> its title
    torch.testing.assert_close(model.predict_logits(with_text), before, rtol=0, atol=0)
    assert title.texts[int(title.item_rows[c])] == "good shirt"
    filled = model.predict_logits(no_text)
    assert not torch.equal(filled, before_no_text)
    spelled = no_text.assign(title=["good shirt"])
    torch.testing.assert_close(filled, model.predict_logits(spelled), rtol=0, atol=0)
    model.save_pretrained(tmp_path / "grown")
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "grown")
    assert loaded.encoders[1].item_rows.shape[0] == new_schema.vocab_size("item_id")
    torch.testing.assert_close(loaded.predict_logits(no_text), filled, rtol=0, atol=0)
