"""BertTextTower you can trust: thread-safe text table, cache keyed by the model's fingerprint,
only catalogue texts saved by default, save_extra into a new folder.

All tests use a tiny random BERT written to a temp folder (see tests/test_text_tower.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from _text_tower_helpers import WORDS, build, make_df

import recsys_mt as rm
from recsys_mt.encoders import text_loading
from recsys_mt.encoders.text import BertTextTower, load_encoder
from recsys_mt.encoders.text_encoding import encode_sorted, tokenize
from recsys_mt.encoders.text_loading import encoder_fingerprint

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("hf_offline")  # conftest.py; so is tiny_bert


def _reseed_weights(folder, seed: int) -> None:
    """Overwrite the weights in ``folder`` with another random model of the same shape."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    BertModel(BertConfig.from_pretrained(str(folder))).save_pretrained(str(folder))


def _pooled(path, texts, max_length=64, pooling="mean") -> torch.Tensor:
    """Reference frozen vectors ``[n, hidden]`` of ``texts`` computed by the model at ``path``."""
    tokenizer, model = load_encoder(str(path))
    ids, lengths = tokenize(tokenizer, texts, max_length)
    return encode_sorted(model, ids, lengths, pooling, 1000, torch.device("cpu"))


def _serving(df, titles) -> pd.DataFrame:
    """Unlabelled request rows (no ``click`` column) with the given titles."""
    return df.head(len(titles)).drop(columns=["click"]).assign(title=titles)


# ----------------------------------------------------------------------------- thread safety


def test_concurrent_predicts_with_new_texts_match_sequential_calls(tiny_bert):
    df = make_df(n=60, n_items=10)
    # batch_size=1: a text's vector does not depend on which texts share its encoding batch
    model, tower, _ = build(tiny_bert, df, batch_size=1)
    fresh = copy.deepcopy(model)
    known = sorted(df["title"].unique())
    threads, rounds = 8, 3
    all_texts = set(known)
    for r in range(rounds):
        rng = np.random.default_rng(r)
        shared = f"shared {' '.join(rng.choice(WORDS, 3))} round{r}"
        frames = []
        for i in range(threads):
            own = [f"{' '.join(rng.choice(WORDS, 4))} t{i} r{r} n{k}" for k in range(4)]
            frames.append(_serving(df, [*own, shared, known[i]]))
            all_texts.update([*own, shared])
        out: list = [None] * threads
        errors: list = []
        barrier = threading.Barrier(threads)

        def work(i, frames=frames, out=out, errors=errors, barrier=barrier):
            try:
                barrier.wait()
                out[i] = model.predict(frames[i])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, errors
        for i in range(threads):
            pd.testing.assert_frame_equal(out[i], fresh.predict(frames[i]), check_exact=True)
    texts = tower.texts
    assert texts[0] == "" and len(texts) == len(set(texts))  # every text exactly once
    assert set(texts[1:]) == all_texts == set(fresh.encoders[1].texts[1:])
    assert tower.cache.shape == (len(texts), 32)
    for row in (1, len(texts) - 1):  # each row still holds its own text's vector
        torch.testing.assert_close(tower.cache[row], _pooled(tiny_bert, [texts[row]])[0])


def test_deepcopy_gets_its_own_table_and_lock(tiny_bert, tmp_path):
    df = make_df(n=40, n_items=8)
    model, tower, frame = build(tiny_bert, df)
    twin = copy.deepcopy(model)
    twin_tower = twin.encoders[1]
    assert twin_tower.table.lock is not tower.table.lock
    assert torch.equal(twin.predict_logits(frame), model.predict_logits(frame))
    twin.predict(_serving(df, ["a brand new twin text"]))
    assert "a brand new twin text" in twin_tower.texts
    assert "a brand new twin text" not in tower.texts  # the copies do not share the table
    twin.save_pretrained(tmp_path / "ck")
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")
    got = loaded.predict_logits(loaded.schema.transform(df))
    assert torch.equal(got, model.predict_logits(frame))


# ----------------------------------------------------------------------------- fingerprint


def test_cache_of_another_model_at_the_same_path_is_computed_again(tiny_bert, tmp_path):
    base = shutil.copytree(tiny_bert, tmp_path / "base")
    df = make_df(n=80, n_items=12)
    model, tower, _ = build(str(base), df)
    (tmp_path / "cache").mkdir()
    tower.save_extra(tmp_path / "cache")
    _reseed_weights(base, seed=1)  # a different model, same path, same file names and sizes
    again = BertTextTower(str(base), feature="title", projection_dim=8, progress_bar=False)
    with pytest.warns(UserWarning, match="weights / config differ"):
        again.load_extra(tmp_path / "cache")
    rm.MultiTaskModel(model.schema, encoders=[rm.IDEmbedding(), again])
    texts = again.texts[1:]
    assert texts == tower.texts[1:] and again.encoded_rows == len(texts)
    torch.testing.assert_close(again.cache[1:], _pooled(base, texts))
    assert not torch.allclose(again.cache[1:], tower.cache[1:])  # not the stale vectors


def test_cache_follows_the_model_to_another_path(tiny_bert, tmp_path):
    df = make_df(n=80, n_items=12)
    model, tower, frame = build(tiny_bert, df)
    (tmp_path / "cache").mkdir()
    tower.save_extra(tmp_path / "cache")
    moved = shutil.copytree(tiny_bert, tmp_path / "elsewhere" / "model")
    again = BertTextTower(str(moved), feature="title", projection_dim=8, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recognised: no "computed again" warning
        again.load_extra(tmp_path / "cache")
    model2 = rm.MultiTaskModel(model.schema, encoders=[rm.IDEmbedding(), again])
    frame2 = model2.prepare(model.schema.transform(df))
    assert again.encoded_rows == 0 and again.base is None  # nothing encoded, no model load
    assert torch.equal(again.cache, tower.cache)
    assert torch.equal(frame2["text_row/title"], frame["text_row/title"])
    meta = json.loads((tmp_path / "cache" / "text_tower_title.json").read_text())
    assert meta["fingerprint"]["id"] == encoder_fingerprint(moved, 64, "mean")["id"]
    assert str(tmp_path) not in json.dumps(meta["fingerprint"])  # no path in the key


@pytest.mark.parametrize(
    ("setting", "message"), [({"max_length": 4}, "max_length 64 → 4"), ({"pooling": "cls"}, "")]
)
def test_other_max_length_or_pooling_invalidates_the_cache(tiny_bert, tmp_path, setting, message):
    df = make_df(n=80, n_items=12)
    model, tower, _ = build(tiny_bert, df)
    tower.save_extra(tmp_path)
    again = BertTextTower(
        tiny_bert, feature="title", projection_dim=8, progress_bar=False, **setting
    )
    with pytest.warns(UserWarning, match=message or "pooling 'mean' → 'cls'"):
        again.load_extra(tmp_path)
    rm.MultiTaskModel(model.schema, encoders=[rm.IDEmbedding(), again])
    texts = again.texts[1:]
    assert texts == tower.texts[1:] and again.encoded_rows == len(texts)
    expected = _pooled(tiny_bert, texts, again.max_length, again.pooling)
    torch.testing.assert_close(again.cache[1:], expected)
    assert not torch.allclose(again.cache[1:], tower.cache[1:])


def test_model_loaded_later_with_another_fingerprint_recomputes_the_cache(tiny_bert, tmp_path):
    base = shutil.copytree(tiny_bert, tmp_path / "base")
    df = make_df(n=60, n_items=10)
    model, _, _ = build(str(base), df)
    model.save_pretrained(tmp_path / "ck")
    shutil.move(str(base), str(tmp_path / "away"))  # not here: the saved cache is trusted
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")
    tower = loaded.encoders[1]
    assert tower.base is None
    shutil.copytree(tmp_path / "away", base)
    _reseed_weights(base, seed=2)  # another model shows up at the path
    with pytest.warns(UserWarning, match="cached vectors were not computed"):
        loaded.predict(_serving(df, ["good silk dress tonight"]))
    texts = tower.texts[1:]
    torch.testing.assert_close(tower.cache[1:], _pooled(base, texts))  # one embedding space


def test_file_hashes_are_computed_once_per_file_version(tiny_bert, tmp_path, monkeypatch):
    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    opened: list[str] = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(text_loading, "open", counting_open, raising=False)
    first = encoder_fingerprint(folder, 64, "mean")
    assert any(p.endswith("model.safetensors") for p in opened)
    assert any(p.endswith("vocab.txt") for p in opened)
    opened.clear()
    assert encoder_fingerprint(folder, 32, "mean")["model"] == first["model"]
    assert opened == []  # remembered per (path, size, mtime): nothing read again
    _reseed_weights(folder, seed=3)
    second = encoder_fingerprint(folder, 64, "mean")
    assert [p for p in opened if p.endswith(".safetensors")]
    assert second["model"] != first["model"] and second["tokenizer"] == first["tokenizer"]


# ----------------------------------------------------------------------------- privacy


def test_saved_table_holds_catalogue_texts_only(tiny_bert, tmp_path):
    df = make_df(n=80, n_items=12)
    model, tower, frame = build(tiny_bert, df)  # a labelled frame: catalogue texts
    items = sorted(df["item_id"].unique())
    assert tower.add_item_texts([items[0]], ["warm wool catalogue coat"]) == 1
    frame = model.prepare(model.schema.transform(df))
    expected = model.predict_logits(frame)
    query = "tight loose private query linen"
    served = model.predict(_serving(df, [query, "another private request"]))
    assert len(served) == 2 and query in tower.texts  # cached in memory while serving
    model.save_pretrained(tmp_path / "ck")
    saved = b"".join(p.read_bytes() for p in (tmp_path / "ck").iterdir())
    assert query.encode() not in saved and b"another private request" not in saved
    assert b"warm wool catalogue coat" in saved
    assert query not in tower.catalogue_texts
    table = json.loads((tmp_path / "ck" / "text_tower_title.json").read_text())
    assert set(table["texts"]) == {"", "warm wool catalogue coat", *df["title"]}
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")
    got = loaded.predict_logits(loaded.schema.transform(df))
    assert torch.equal(got, expected)  # catalogue rows are bit-identical
    assert query not in loaded.encoders[1].texts


def test_save_serving_texts_keeps_every_text(tiny_bert, tmp_path):
    df = make_df(n=80, n_items=12)
    model, tower, _ = build(tiny_bert, df, save_serving_texts=True)
    query = _serving(df, ["tight loose kept query"])
    expected = model.predict_logits(query)
    model.save_pretrained(tmp_path / "ck")
    assert b"tight loose kept query" in (tmp_path / "ck" / "text_tower_title.json").read_bytes()
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")
    again = loaded.encoders[1]
    assert again.save_serving_texts and again.texts == tower.texts
    assert "tight loose kept query" not in again.catalogue_texts  # still marked as serving
    assert torch.equal(loaded.predict_logits(query), expected) and again.encoded_rows == 0


def test_catalogue_rule_labels_or_explicit_flag(tiny_bert):
    df = make_df(n=40, n_items=8)
    model, tower, _ = build(tiny_bert, df)
    flagged = model.schema.transform(_serving(df, ["flagged catalogue text"]))
    flagged.meta["text_catalogue"] = True
    model.prepare(flagged)
    labelled = df.head(1).assign(title=["labelled test text"])
    model.predict(labelled)  # evaluation data carries labels: catalogue
    model.predict(_serving(df, ["plain request text"]))
    catalogue = tower.catalogue_texts
    assert "flagged catalogue text" in catalogue and "labelled test text" in catalogue
    assert "plain request text" not in catalogue
    model.prepare(model.schema.transform(df.head(1).assign(title=["plain request text"])))
    assert "plain request text" in tower.catalogue_texts  # seen later in labelled data


# ----------------------------------------------------------------------------- save_extra


def test_save_extra_creates_a_missing_folder(tiny_bert, tmp_path):
    df = make_df(n=40, n_items=8)
    model, tower, _ = build(tiny_bert, df)
    target = tmp_path / "not" / "yet" / "there"
    tower.save_extra(target)
    assert (target / "text_tower_title.json").is_file()
    again = BertTextTower(tiny_bert, feature="title", projection_dim=8, progress_bar=False)
    again.load_extra(target)
    rm.MultiTaskModel(model.schema, encoders=[rm.IDEmbedding(), again])
    assert again.texts == tower.texts and again.encoded_rows == 0
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file"):
        tower.save_extra(tmp_path / "a_file")


def test_tables_saved_before_the_fingerprint_still_load(tiny_bert, tmp_path):
    base = shutil.copytree(tiny_bert, tmp_path / "base")
    df = make_df(n=60, n_items=10)
    model, tower, frame = build(str(base), df)
    expected = model.predict_logits(frame)
    model.save_pretrained(tmp_path / "ck")
    meta_path = tmp_path / "ck" / "text_tower_title.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 1  # the layout before the fingerprint and the serving rows
    del meta["fingerprint"], meta["serving_rows"]
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="carry no fingerprint"):
        present = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")  # unverified: encoded again
    assert present.encoders[1].encoded_rows == len(tower.texts) - 1
    torch.testing.assert_close(present.encoders[1].cache, tower.cache)
    shutil.rmtree(base)
    absent = rm.MultiTaskModel.from_pretrained(tmp_path / "ck")  # cannot check: used as saved
    assert absent.encoders[1].base is None
    assert torch.equal(absent.predict_logits(absent.schema.transform(df)), expected)


def test_add_item_texts_with_an_anonymised_key(tiny_bert, tmp_path):
    df = make_df(n=60, n_items=10)
    key = b"catalogue secret"
    schema = rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id", anonymize=True, hash_key=key),
            rm.Text("title", key="item_id"),
        ],
        tasks=[rm.Task("ctr", "click")],
    ).fit(df)
    model, tower, _ = build(tiny_bert, df, schema=schema)
    item = df["item_id"].iloc[0]
    assert tower.add_item_texts([item, "never seen"], ["plain catalogue cap", "x"]) == 1
    row = tower.texts.index("plain catalogue cap")
    assert int(tower.item_rows[int(schema.encode_ids("item_id", [item])[0])]) == row
    model.save_pretrained(tmp_path / "m")
    assert item.encode() not in (tmp_path / "m" / "schema.json").read_bytes()
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m", schema_keys=key)
    pd.testing.assert_frame_equal(model.predict(df), loaded.predict(df), check_exact=True)
