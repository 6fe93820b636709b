"""Relevance vs diversity: sweep MMR λ, coverage λ and DPP θ and plot NDCG@10 against diversity.

On the women's clothing reviews data (``../shared/data/womens_clothing_reviews.parquet``) when it
is present, otherwise on the synthetic funnel data:

- reviews: items are products with at least 5 reviews, categories their ``Class Name``, item
  vectors a 64-d LSA embedding (TF-IDF + truncated SVD) of their review titles and texts. The
  reviews of each product are split in two halves: the ranking score is the (shrunk) mean rating
  of half A, the relevance used by NDCG the mean rating of half B — a noisy estimate ranked
  against held-out truth. Each of ``--users`` requests ranks a random set of ``--candidates``
  products.
- synthetic: items carry latent vectors and categories; the score is the true p(click ∧ buy)
  plus noise, the relevance the true probability.

For every re-ranker and trade-off value it prints a JSON line ``{"method", "param", "ndcg@10",
"ild", "coverage"}`` and, per method, the most diversity gained at ≤ 1 % NDCG loss; with
matplotlib installed (``pip install recsys-mt[plot]``) it writes the trade-off plot (``--out``).

Run: python examples/diversity_tradeoff.py [--out docs/img/diversity_tradeoff.png]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import torch

import recsys_mt as rm
from recsys_mt.metrics import category_coverage, intra_list_diversity, list_ndcg

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
REVIEWS = DATA / "womens_clothing_reviews.parquet"


def reviews_items(seed: int):
    """(score [M], relevance [M], vectors [M, 64], categories [M]) of the reviewed products."""
    import pandas as pd
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    df = pd.read_parquet(REVIEWS)
    df = df.dropna(subset=["Class Name"])
    counts = df.groupby("Clothing ID").size()
    df = df[df["Clothing ID"].isin(counts[counts >= 5].index)].copy()
    rng = np.random.default_rng(seed)
    df["half"] = rng.random(len(df)) < 0.5
    prior = df.Rating.mean()

    def shrunk_mean(part: pd.DataFrame, strength: float = 3.0) -> pd.Series:
        g = part.groupby("Clothing ID").Rating
        return (g.sum() + strength * prior) / (g.count() + strength)

    items = counts[counts >= 5].index
    score = shrunk_mean(df[df.half]).reindex(items).fillna(prior)
    relevance = shrunk_mean(df[~df.half], strength=0.0).reindex(items).fillna(prior)
    text = (df.Title.fillna("") + " " + df["Review Text"].fillna("")).groupby(df["Clothing ID"])
    docs = text.apply(" ".join).reindex(items)
    tfidf = TfidfVectorizer(min_df=2, max_features=20000, stop_words="english").fit_transform(docs)
    vectors = TruncatedSVD(64, random_state=seed).fit_transform(tfidf)
    cats = pd.factorize(df.groupby("Clothing ID")["Class Name"].first().reindex(items))[0]
    # graded relevance for NDCG: mean rating 1..5 -> 0..4
    return (score.to_numpy(), relevance.to_numpy() - 1.0, vectors, cats, "reviews")


def synthetic_items(seed: int):
    from recsys_mt.data.synthetic import make_funnel_data

    data = make_funnel_data(n_users=200, n_items=1000, n_impressions=20_000, seed=seed)
    items = data.items
    vectors = np.asarray(data.info["item_vectors"])
    rng = np.random.default_rng(seed)
    quality = items.quality.to_numpy()
    relevance = 1 / (1 + np.exp(-quality))
    score = relevance + 0.15 * rng.standard_normal(len(items))
    return score, 4 * relevance, vectors, items.category.to_numpy(), "synthetic"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=256)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="use synthetic data even if the reviews data is present",
    )
    p.add_argument("--out", default=None, help="PNG path for the trade-off plot")
    args = p.parse_args(argv)

    if REVIEWS.exists() and not args.synthetic:
        score, rel, vec, cats, source = reviews_items(args.seed)
    else:
        if not args.synthetic:
            print(f"{REVIEWS} not found: using synthetic data", file=sys.stderr)
        score, rel, vec, cats, source = synthetic_items(args.seed)
    m = len(score)
    n = min(args.candidates, m)
    g = torch.Generator().manual_seed(args.seed)
    cand = torch.stack([torch.randperm(m, generator=g)[:n] for _ in range(args.users)])  # [B, N]
    scores = torch.as_tensor(score, dtype=torch.float32)[cand]
    relevance = torch.as_tensor(rel, dtype=torch.float32)[cand]
    vectors = torch.as_tensor(vec, dtype=torch.float32)[cand]  # [B, N, d]
    categories = torch.as_tensor(cats, dtype=torch.long)[cand]
    num_cats = int(categories.max()) + 1

    sweeps = {
        "mmr": (lambda x: rm.MMR(lambda_=x), [1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]),
        "coverage": (
            lambda x: rm.CategoryCoverage(lambda_=x),
            [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9],
        ),
        "dpp": (lambda x: rm.DPP(theta=x), [1.0, 0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3]),
    }
    rows = []
    for method, (make, values) in sweeps.items():
        for v in values:
            sel = make(v)(scores, args.k, item_vectors=vectors, categories=categories)
            row = {
                "data": source,
                "method": method,
                "param": v,
                "ndcg@10": round(float(list_ndcg(sel, relevance, k=args.k)), 4),
                "ild": round(float(intra_list_diversity(sel, vectors)), 4),
                "coverage": round(
                    float(
                        category_coverage(
                            categories.gather(1, sel.clamp_min(0)), num_categories=num_cats
                        )
                    ),
                    4,
                ),
            }
            rows.append(row)
            print(json.dumps(row))
    for method in sweeps:
        pts = [r for r in rows if r["method"] == method]
        base = pts[0]
        ok = [r for r in pts if r["ndcg@10"] >= 0.99 * base["ndcg@10"]]
        for metric in ("ild", "coverage"):
            best = max(ok, key=lambda r: r[metric])
            print(
                json.dumps(
                    {
                        "method": method,
                        "max_gain_at_ndcg_loss_le_1pct": metric,
                        "param": best["param"],
                        "ndcg@10": best["ndcg@10"],
                        "base_ndcg@10": base["ndcg@10"],
                        "base": base[metric],
                        "value": best[metric],
                        "gain": round(best[metric] - base[metric], 4),
                    }
                )
            )
    if args.out:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(
                "matplotlib is not installed (pip install recsys-mt[plot]): no plot",
                file=sys.stderr,
            )
            return rows
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric, label in (
            (axes[0], "ild", "intra-list diversity"),
            (axes[1], "coverage", "category coverage"),
        ):
            for method in sweeps:
                pts = [r for r in rows if r["method"] == method]
                ax.plot([r[metric] for r in pts], [r["ndcg@10"] for r in pts], "o-", label=method)
            ax.set_xlabel(label)
            ax.set_ylabel("NDCG@10")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(
            f"Relevance vs diversity ({source} data, {args.users} requests × "
            f"{n} candidates, k={args.k})"
        )
        fig.tight_layout()
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
