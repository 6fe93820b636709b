"""Helpers shared by the BertTextTower tests (tests/test_text_tower*.py and others): a tiny
random BERT (hidden 32, 2 layers, 25-word vocabulary) written to a folder, a click frame whose
label is in the item titles, its schema, and a model built around the tower.

``transformers`` is imported only inside ``_write_tiny_bert``, so importing this module needs
no optional package.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm
from recsys_mt.encoders.text import BertTextTower

WORDS = (
    "good bad shirt dress red blue nice ugly the a soft warm cheap long short "
    "silk wool linen black white green small large tight loose"
).split()


def _write_tiny_bert(folder, words=WORDS) -> str:
    """A random BERT (hidden 32, 2 layers, seed 0) whose vocabulary is ``words``, saved in
    ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    return str(folder)


def make_df(n=300, n_items=30, seed=0, missing_every=0):
    """Rows of (user, item, title); label 1 iff the item's title contains "good"."""
    rng = np.random.default_rng(seed)
    items = [f"i{k}" for k in range(n_items)]
    fill = [w for w in WORDS if w != "good"]
    titles = {}
    for k, it in enumerate(items):
        words = list(rng.choice(fill, 3))
        if k % 2 == 0:
            words.insert(int(rng.integers(0, 4)), "good")
        titles[it] = " ".join(words)
    item = rng.choice(items, n)
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 40, n),
            "item_id": item,
            "title": [titles[i] for i in item],
        }
    )
    df["click"] = df["title"].str.contains("good").astype(int)
    if missing_every:
        df.loc[df.index[::missing_every], "title"] = None
    return df


def make_schema(history=False):
    feats = [rm.Sparse("user_id", dim=4), rm.Sparse("item_id", dim=4)]
    if history:
        feats.append(rm.Sequence("hist_items", vocab_from="item_id", max_len=4))
    feats.append(rm.Text("title", key="item_id"))
    return rm.Schema(feats, tasks=[rm.Task("ctr", label="click")])


def build(path, df, schema=None, seed=0, **kw):
    schema = schema or make_schema()
    if not schema.is_fitted:
        schema.fit(df)
    kw.setdefault("projection_dim", 8)
    kw.setdefault("progress_bar", False)
    torch.manual_seed(seed)
    tower = BertTextTower(path, feature="title", **kw)
    model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), tower])
    frame = model.prepare(schema.transform(df))
    return model, tower, frame
