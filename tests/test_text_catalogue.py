"""An item's catalogue text is never replaced by a serving request (BertTextTower item map).

A catalogue frame (labelled, ``meta["text_catalogue"] = True`` or ``add_item_texts``) always sets
an item's text; an unlabelled request only gives a text to an item without one (or replaces an
earlier serving text), so serving never changes what other rows, histories or the saved model
see of the catalogue. Tiny random BERT of the ``tiny_bert`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from _text_tower_helpers import build, make_df, make_schema

import recsys_mt as rm
from recsys_mt.encoders.text_table import TextTable

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("hf_offline")  # conftest.py; so is tiny_bert


def _history_df(n=120, n_items=12, seed=0) -> pd.DataFrame:
    """``make_df`` rows with a history of up to 3 items seen in the frame."""
    df = make_df(n=n, n_items=n_items, seed=seed)
    rng = np.random.default_rng(seed + 1)
    items = sorted(df["item_id"].unique())
    df["hist_items"] = [list(rng.choice(items, int(rng.integers(0, 4)))) for _ in range(n)]
    return df


def _catalogue_model(tiny_bert, df, **kw):
    """A model whose tower learned the item titles of the labelled ``df`` (catalogue)."""
    return build(tiny_bert, df, schema=make_schema(history=True), history="hist_items", **kw)


def _probe(df) -> pd.DataFrame:
    """Unlabelled rows without titles: their text and history come from the item map."""
    return df.drop(columns="click").head(30).assign(title=None)


def _item_row(model, tower, item) -> int:
    return int(tower.item_rows[int(model.schema.encode_ids("item_id", [item])[0])])


def _text_of(model, tower, item) -> str:
    return tower.texts[_item_row(model, tower, item)]


def test_serving_request_keeps_the_catalogue_item_texts(tiny_bert):
    """The audit's repro: one unlabelled request with other titles for known items changes
    neither the item map nor any later prediction that reads it (rows without a title and
    history profiles), while the request itself is scored with the text it carries."""
    df = _history_df()
    model, tower, _ = _catalogue_model(tiny_bert, df)
    model.eval()
    probe = _probe(df)
    before = model.predict_logits(probe).clone()
    catalogue = {it: _text_of(model, tower, it) for it in df["item_id"].head(3)}
    request = df.drop(columns="click").head(3).assign(title="bad ugly red")
    own = model.predict_logits(request)
    assert torch.equal(model.predict_logits(probe), before)
    assert "bad ugly red" in tower.texts and "bad ugly red" not in tower.catalogue_texts
    assert {it: _text_of(model, tower, it) for it in catalogue} == catalogue
    assert not tower.table.item_serving.any()
    as_catalogued = request.assign(title=[catalogue[it] for it in request["item_id"]])
    assert not torch.equal(own, model.predict_logits(as_catalogued))  # the request's own text
    flagged = model.schema.transform(request.assign(title="bad ugly blue"))
    flagged.meta["text_catalogue"] = False  # a labelled-looking frame kept out of the catalogue
    model.prepare(flagged)
    assert torch.equal(model.predict_logits(probe), before)


def test_saved_model_predicts_the_probe_like_the_live_one(tiny_bert, tmp_path):
    """After serving requests, save_pretrained still holds every item's catalogue text: the
    reloaded model predicts the probe bit for bit like the live model (and like before)."""
    df = _history_df()
    model, tower, _ = _catalogue_model(tiny_bert, df)
    model.eval()
    probe = _probe(df)
    before = model.predict_logits(probe).clone()
    for title in ("bad ugly red", "soft warm wool"):
        model.predict_logits(df.drop(columns="click").head(5).assign(title=title))
    live = model.predict_logits(probe)
    model.save_pretrained(tmp_path / "m")
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    loaded.eval()
    assert torch.equal(loaded.predict_logits(probe), live)
    assert torch.equal(live, before)
    again = loaded.encoders[1]
    assert torch.equal(again.item_rows > 0, tower.item_rows > 0)
    for item in df["item_id"].unique():
        assert _text_of(loaded, again, item) == _text_of(model, tower, item)


def test_new_item_first_seen_at_serving_gets_its_text(tiny_bert, tmp_path):
    """An item with no text yet takes a serving request's text (and a later request's); a
    catalogue frame then replaces it for good."""
    df = _history_df()
    new = df["item_id"].iloc[0]
    model, tower, _ = _catalogue_model(
        tiny_bert, df.assign(title=df["title"].mask(df["item_id"] == new))
    )
    model.eval()
    assert _item_row(model, tower, new) == 0
    ask = df.drop(columns="click")[df["item_id"] == new].head(2)
    empty = ask.assign(title=None)
    no_text = model.predict_logits(empty).clone()
    model.predict_logits(ask.head(1).assign(title="long silk dress"))
    assert _text_of(model, tower, new) == "long silk dress"
    assert tower.table.item_serving[int(model.schema.encode_ids("item_id", [new])[0])]
    filled = model.predict_logits(empty)
    assert not torch.equal(filled, no_text)
    assert torch.equal(filled, model.predict_logits(ask.assign(title="long silk dress")))
    model.predict_logits(ask.head(1).assign(title="short linen shirt"))  # serving over serving
    assert _text_of(model, tower, new) == "short linen shirt"
    model.save_pretrained(tmp_path / "m")  # a serving text is not saved: the item has none
    loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
    assert _item_row(loaded, loaded.encoders[1], new) == 0
    model.predict(df[df["item_id"] == new].head(1).assign(title="nice wool dress"))  # labelled
    assert _text_of(model, tower, new) == "nice wool dress"
    assert not tower.table.item_serving.any()
    model.predict_logits(ask.head(1).assign(title="short linen shirt"))
    assert _text_of(model, tower, new) == "nice wool dress"


def test_catalogue_frame_replaces_an_items_text(tiny_bert):
    """Last catalogue row wins: a labelled frame, a flagged frame and add_item_texts each
    replace the item's text, and rows without a title then read the new one."""
    df = _history_df()
    model, tower, _ = _catalogue_model(tiny_bert, df)
    model.eval()
    item = df["item_id"].iloc[0]
    probe = _probe(df)[lambda d: d["item_id"] == item].head(2)
    model.predict(df[df["item_id"] == item].head(1).assign(title="cheap black shirt"))
    assert _text_of(model, tower, item) == "cheap black shirt"
    assert torch.equal(
        model.predict_logits(probe), model.predict_logits(probe.assign(title="cheap black shirt"))
    )
    flagged = model.schema.transform(probe.head(1).assign(title="tight white dress"))
    flagged.meta["text_catalogue"] = True
    model.prepare(flagged)
    assert _text_of(model, tower, item) == "tight white dress"
    assert tower.add_item_texts([item], ["loose green linen"]) == 1
    assert _text_of(model, tower, item) == "loose green linen"
    assert "loose green linen" in tower.catalogue_texts


def test_serving_marks_survive_save_and_older_tables(tiny_bert, tmp_path):
    """With save_serving_texts the saved map keeps serving texts and remembers which items
    have one, so after loading a request may replace those and no other; tables saved before
    the marks existed derive them from the serving rows."""
    df = _history_df()
    new = df["item_id"].iloc[0]
    model, tower, _ = _catalogue_model(
        tiny_bert, df.assign(title=df["title"].mask(df["item_id"] == new)), save_serving_texts=True
    )
    other = df["item_id"][df["item_id"] != new].iloc[0]
    request = df.drop(columns="click")[df["item_id"].isin([new, other])].drop_duplicates("item_id")
    model.predict_logits(request.assign(title="red wool"))
    catalogue_text = _text_of(model, tower, other)
    model.save_pretrained(tmp_path / "m")
    meta_path = tmp_path / "m" / "text_tower_title.json"
    new_id = int(model.schema.encode_ids("item_id", [new])[0])
    assert json.loads(meta_path.read_text())["serving_items"] == [new_id]
    for older in (False, True):
        if older:
            meta = json.loads(meta_path.read_text())
            del meta["serving_items"]
            meta_path.write_text(json.dumps(meta))
        loaded = rm.MultiTaskModel.from_pretrained(tmp_path / "m")
        again = loaded.encoders[1]
        assert np.flatnonzero(again.table.item_serving).tolist() == [new_id]
        loaded.predict_logits(request.assign(title="blue silk"))
        assert _text_of(loaded, again, new) == "blue silk"
        assert _text_of(loaded, again, other) == catalogue_text


def _table(vocab=6) -> TextTable:
    table = TextTable()
    table.setup(frozen=True, hidden=2, max_length=4, vocab=vocab)
    return table


def _encode(texts):
    return {"cache": torch.ones(len(texts), 2)}


def test_table_learn_items_catalogue_wins_in_any_order():
    """Unit level: whichever of a catalogue and a serving frame comes first, or racing from
    threads, the item ends with the catalogue text; items without one take the serving text."""
    item = np.array([2, 3, 4], dtype=np.int64)
    for order in ("catalogue first", "serving first"):
        table = _table()
        cat = table.rows_for(["a", "b", ""], _encode, catalogue=True).numpy()
        srv = table.rows_for(["x", "y", "z"], _encode, catalogue=False).numpy()
        steps = [(cat, True), (srv, False)]
        for rows, catalogue in steps if order == "catalogue first" else steps[::-1]:
            table.learn_items(item, rows, catalogue)
        assert table.item_rows.tolist()[2:5] == [cat[0], cat[1], srv[2]], order
        assert table.item_serving.tolist()[2:5] == [False, False, True], order
    assert table.grow_items(8) == 2 and table.item_serving.shape == (8,)
    old_map = table.snapshot()["item_rows"]
    assert table.learn_items(np.array([7]), np.array([srv[0]]), catalogue=False) == 1
    assert int(old_map[7]) == 0 and int(table.item_rows[7]) == srv[0]  # copy-on-write

    table = _table(vocab=50)
    ids = np.arange(2, 50, dtype=np.int64)
    cat = table.rows_for([f"c{i}" for i in ids], _encode, catalogue=True).numpy()
    srv = table.rows_for([f"s{i}" for i in ids], _encode, catalogue=False).numpy()
    start = threading.Barrier(5)

    def serve():
        start.wait()
        for _ in range(50):
            table.learn_items(ids, srv, catalogue=False)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    for i in range(len(ids)):
        table.learn_items(ids[i : i + 1], cat[i : i + 1], catalogue=True)
    for t in threads:
        t.join()
    assert table.item_rows[2:].tolist() == cat.tolist()
    assert not table.item_serving.any()
