"""Precomputed image embeddings as a feature: ids alone cannot score items never seen in training,
the image vectors can.

The "images" are synthetic item embeddings standing in for the output of any vision model run
offline: each item's vector is its (hidden) style's centroid plus noise. Users like some styles
more than others and clicks follow that taste. The item table (``item_id``, ``image``) is joined
onto the impressions, and a quarter of the items appear only in the test rows (new arrivals).

Run: python examples/image_vectors.py [--impressions N] [--epochs E]
"""

import argparse

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

import recsys_mt as rm


def make_shop(n_users, n_items, n_impressions, dim, seed=0):
    """``(item table, impressions)``: items with an ``image`` vector ``[dim]`` per row, and
    impressions ``(user_id, item_id, click)`` drawn from the users' taste for item styles."""
    rng = np.random.default_rng(seed)
    n_styles = 8
    centroids = rng.normal(size=(n_styles, dim))
    style = rng.integers(0, n_styles, n_items)
    images = (centroids[style] + 0.7 * rng.normal(size=(n_items, dim))).astype(np.float32)
    items = pd.DataFrame({"item_id": np.arange(n_items), "image": list(images)})
    appeal = rng.normal(0, 1.0, n_styles)  # some styles sell better to everyone
    taste = rng.normal(0, 1.5, (n_users, n_styles))  # and each user has favourites
    users = rng.integers(0, n_users, n_impressions)
    shown = rng.integers(0, n_items, n_impressions)
    logit = appeal[style[shown]] + taste[users, style[shown]] - 1.0
    click = rng.random(n_impressions) < 1 / (1 + np.exp(-logit))
    impressions = pd.DataFrame({"user_id": users, "item_id": shown, "click": click.astype(int)})
    return items, impressions


def train_and_score(features, train_df, test_sets, epochs, seed):
    """Test AUC per test set of a CTR model on ``features``."""
    # new items are out of vocabulary by design: no OOVWarning for them
    schema = rm.Schema(features, tasks=[rm.Task("ctr", label="click")], oov_warn_rate=None)
    train = schema.fit_transform(train_df)
    torch.manual_seed(seed)
    model = rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=2, expert_dims=(64,)))
    rm.Trainer(max_epochs=epochs, batch_size=512, lr=3e-3, progress_bar=False, seed=seed).fit(
        model, train
    )
    return {name: roc_auc_score(df["click"], model.predict(df)["ctr"]) for name, df in test_sets}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--impressions", type=int, default=200_000)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    items, impressions = make_shop(args.users, args.items, args.impressions, args.dim, args.seed)
    df = impressions.merge(items, on="item_id", how="left")  # the image vector of each row
    new_item = df["item_id"] >= int(0.75 * args.items)
    test = np.random.default_rng(args.seed).random(len(df)) < 0.2
    train_df = df[~new_item & ~test]
    test_sets = [("seen items", df[~new_item & test]), ("new items", df[new_item])]

    ids = [rm.Sparse("user_id"), rm.Sparse("item_id")]
    image = rm.Vector("image", dim=args.dim, normalize="standard")
    results = {
        "ids": train_and_score(ids, train_df, test_sets, args.epochs, args.seed),
        "ids + image": train_and_score(ids + [image], train_df, test_sets, args.epochs, args.seed),
    }
    table = pd.DataFrame(results).T.round(4)
    table.index.name = "features"
    print(f"CTR test AUC ({len(train_df)} training rows, image vectors of dim {args.dim})")
    print(table.to_string())
    return results


if __name__ == "__main__":
    main()
