"""BertTextTower with bad input: missing, empty and over-long texts, bad model paths and
arguments, a tokenizer that does not match its model, history and item texts, and loading
offline without ever touching the network.

All tests use the tiny random BERT of the ``tiny_bert`` fixture (tests/conftest.py; helpers in
tests/_text_tower_helpers.py).
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
from _text_tower_helpers import build, make_df, make_schema

import recsys_mt as rm
from recsys_mt.encoders.text import BertTextTower

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("hf_offline")


# ----------------------------------------------------------------------------- bad input


def test_missing_text_uses_learned_missing_vector(tiny_bert):
    df = make_df(n=40)
    df["title"] = df["title"].astype(object)
    df.loc[0, "title"] = None
    df.loc[1, "title"] = np.nan
    df.loc[2, "title"] = ""
    df.loc[3, "title"] = "   "
    schema = rm.Schema([rm.Sparse("user_id"), rm.Text("title")], tasks=[rm.Task("ctr", "click")])
    model, tower, frame = build(tiny_bert, df, schema=schema)
    rows = frame["text_row/title"]
    assert rows[:4].tolist() == [0, 0, 0, 0] and bool((rows[4:] > 0).all())
    with torch.no_grad():
        tower.missing.fill_(0.5)
    out = tower(frame.take(slice(0, 8)))
    assert torch.equal(out[:4], torch.full((4, 8), 0.5))
    assert not torch.equal(out[4], out[0])
    model.training_step(frame.take(slice(0, 8)))["loss"].backward()
    assert tower.missing.grad is not None and tower.missing.grad.abs().sum() > 0


def test_missing_text_falls_back_to_the_items_known_text(tiny_bert):
    df = make_df(n=60, n_items=4)
    model, tower, _ = build(tiny_bert, df)
    item = df["item_id"].iloc[0]
    query = df.head(2).assign(title=[None, None], item_id=[item, "never seen"])
    frame = model.prepare(model.schema.transform(query))
    rows = frame["text_row/title"].tolist()
    assert tower.texts[rows[0]] == df["title"].iloc[0]
    assert rows[1] == 0  # an unknown item has no text: missing vector


def test_over_long_text_is_truncated(tiny_bert):
    df = make_df(n=20)
    long_a = " ".join(["good", "red", "dress"] * 200)
    long_b = long_a + " " + " ".join(["ugly"] * 300)  # differs only after max_length tokens
    df.loc[0, "title"], df.loc[1, "title"] = long_a, long_b
    model, tower, frame = build(tiny_bert, df, max_length=12, trainable="full")
    rows = frame["text_row/title"][:2]
    assert tower.token_lengths[rows].tolist() == [12, 12]
    model.eval()
    out = tower(frame.take(slice(0, 2)))
    torch.testing.assert_close(out[0], out[1])


def test_bad_model_paths_raise_clear_errors(tiny_bert, tmp_path):
    df = make_df(n=20)
    schema = make_schema().fit(df)

    def make(path):
        rm.MultiTaskModel(schema, encoders=[BertTextTower(path, progress_bar=False)])

    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        make(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*config.json"):
        make(str(tmp_path / "empty"))
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="gpt2.*not a BERT-family encoder"):
        make(str(tmp_path / "gpt2"))
    with pytest.raises(OSError, match="never downloads"):
        make("someone/not-a-cached-model")


def test_bad_arguments_and_schema_mismatch(tiny_bert):
    with pytest.raises(ValueError, match="pooling"):
        BertTextTower(tiny_bert, pooling="max")
    with pytest.raises(ValueError, match="trainable"):
        BertTextTower(tiny_bert, trainable="half")
    df = make_df(n=20)
    schema = make_schema().fit(df)
    with pytest.raises(ValueError, match="not a Text feature"):
        rm.MultiTaskModel(schema, encoders=[BertTextTower(tiny_bert, feature="user_id")])
    with pytest.raises(ValueError, match="not a Sequence"):
        rm.MultiTaskModel(schema, encoders=[BertTextTower(tiny_bert, history="user_id")])


def test_forward_without_prepare_says_what_to_do(tiny_bert):
    df = make_df(n=20)
    model, tower, _ = build(tiny_bert, df)
    raw = model.schema.transform(df)
    with pytest.raises(KeyError, match="prepare"):
        tower(raw.take(slice(0, 4)))


def test_offline_loading_with_network_disabled(tiny_bert, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the text tower tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    df = make_df(n=30)
    model, tower, frame = build(tiny_bert, df)
    assert model.predict(frame).shape == (30, 1)
    with pytest.raises(OSError, match="never downloads"):
        build("recsys-mt-tests/not-a-cached-model", df)


# ----------------------------------------------------------------------------- item texts


def test_history_profile_is_mean_of_item_text_vectors(tiny_bert):
    df = make_df(n=80, n_items=8)
    items = sorted(df["item_id"].unique())
    df["hist_items"] = [
        [items[1], items[2]] if k % 3 == 0 else ([items[3]] if k % 3 == 1 else [])
        for k in range(80)
    ]
    schema = make_schema(history=True).fit(df)
    model, tower, frame = build(tiny_bert, df, schema=schema, history="hist_items")
    assert tower.out_dim == 16
    model.eval()
    with torch.no_grad():
        out = tower(frame.take(slice(0, 3)))
        title = dict(zip(df["item_id"], df["title"]))
        vec = tower.encode_texts([title[items[1]], title[items[2]], title[items[3]]])
    torch.testing.assert_close(out[0, 8:], vec[:2].mean(0))
    torch.testing.assert_close(out[1, 8:], vec[2])
    torch.testing.assert_close(out[2, 8:], torch.zeros(8))  # empty history
    # a catalog text for an item that never appeared with text in a frame
    assert tower.add_item_texts([items[5]], ["good wool shirt"]) == 1
    with torch.no_grad():
        row = tower.texts.index("good wool shirt")
        assert int(tower.item_rows[model.schema.vocabulary("item_id").index(items[5]) + 2]) == row
    assert tower.add_item_texts(["unknown item"], ["soft silk"]) == 0


def test_history_must_share_the_texts_key(tiny_bert):
    df = make_df(n=20)
    df["hist_items"] = [[] for _ in range(20)]
    feats = [
        rm.Sparse("item_id"),
        rm.Sequence("hist_items", vocab_from="item_id"),
        rm.Text("title"),  # row-level text: no key
    ]
    schema = rm.Schema(feats, tasks=[rm.Task("ctr", "click")]).fit(df)
    with pytest.raises(ValueError, match="share its ids"):
        rm.MultiTaskModel(schema, encoders=[BertTextTower(tiny_bert, history="hist_items")])


def test_tokenizer_must_match_the_model(tiny_bert, tmp_path):
    import shutil

    df = make_df(n=20)
    schema = make_schema().fit(df)
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_bert, f), no_tok / f)
    with pytest.raises((ValueError, OSError), match="tokenizer"):
        rm.MultiTaskModel(schema, encoders=[BertTextTower(str(no_tok), progress_bar=False)])
    big = tmp_path / "big_vocab"
    shutil.copytree(tiny_bert, big)
    words = (big / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (big / "vocab.txt").write_text("\n".join(words + ["extra1", "extra2"]) + "\n", "utf-8")
    for f in ("tokenizer.json",):
        if (big / f).exists():
            (big / f).unlink()
    with pytest.raises(ValueError, match="embedding has"):
        rm.MultiTaskModel(schema, encoders=[BertTextTower(str(big), progress_bar=False)])


def test_bare_name_never_touches_the_network(monkeypatch):
    schema = make_schema().fit(make_df(n=20))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the text tower tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # even a DNS lookup
    with pytest.raises(OSError, match="never downloads"):
        BertTextTower("recsys-mt-tests/not-a-cached-model", progress_bar=False).build(schema)
