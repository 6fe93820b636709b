"""Pareto search over objective fusion: choose the click / purchase / GMV / diversity trade-off.

Trains a small CTR -> CVR -> repurchase model on the synthetic funnel data, predicts every
validation (user, item) pair, and searches ``WeightedProduct(ctr^a * cvr^b * price^c)``
exponents together with the MMR trade-off ``lambda`` for the Pareto front of NDCG@10 on clicks
and on purchases, expected GMV@10 and intra-list diversity@10.  It prints the front, selects
the fusion with the highest expected GMV that keeps both NDCGs within 5 % of their best, saves
it as JSON and checks that ``Recommender.recommend(**choice.kwargs())`` ranks the validation
candidates the same way.

Run: python examples/pareto_fusion.py [--quick] [--trials 60] [--plot front.png] [--out fusion.json]
(``--plot`` needs ``pip install recsys-mt[plot]``; the search needs ``pip install recsys-mt[tune]``)
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.demo import build_schema

OBJECTIVES = ["ndcg@10:click", "ndcg@10:purchase", "gmv@10", "ild@10"]


def train(args):
    """(data, validation impressions, fitted schema, trained model)."""
    sizes = dict(n_users=300, n_items=200, n_impressions=20_000) if args.quick else {}
    sizes = sizes or dict(n_users=1000, n_items=500, n_impressions=120_000)
    data = make_funnel_data(n_categories=12, seed=args.seed, **sizes)
    train_df, val_df = data.split((0.8, 0.2), seed=args.seed)
    schema = build_schema()  # the demo's features and CTR -> CVR -> repurchase funnel
    train_frame = schema.fit_transform(train_df)
    torch.manual_seed(args.seed)
    model = rm.MultiTaskModel(
        schema,
        head=rm.SharedBottom(bottom_dims=(64,), tower_dims=(32,)),
        supervision="entire_space",
    )
    rm.Trainer(max_epochs=1 if args.quick else 3, lr=2e-3, progress_bar=False).fit(
        model, train_frame
    )
    return data, val_df, schema, model


def validation_candidates(data, val_df, schema, model) -> pd.DataFrame:
    """One row per validation (user, item) with predictions, labels and price."""
    keys = ["user_id", "item_id"]
    pairs = val_df.groupby(keys, as_index=False, sort=False)[["click", "purchase"]].max()
    pairs = pairs.merge(data.users[["user_id", "age", "hist_items"]], on="user_id")
    pairs = pairs.merge(data.items[["item_id", "category", "price"]], on="item_id")
    pred = model.predict(schema.transform(pairs, labels=False))
    return pd.concat([pairs.reset_index(drop=True), pred.reset_index(drop=True)], axis=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, one epoch, 30 trials")
    p.add_argument("--trials", type=int, default=None, help="trials (default 30 quick / 80)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="save the ndcg@10:click vs gmv@10 plot here")
    p.add_argument("--out", default=None, help="write the selected fusion as JSON here")
    args = p.parse_args(argv)
    n_trials = args.trials or (30 if args.quick else 80)

    data, val_df, schema, model = train(args)
    frame = validation_candidates(data, val_df, schema, model)
    vectors = np.asarray(data.info["item_vectors"], dtype=np.float32)  # [M, d] by item_id
    inputs = rm.pareto_inputs_from_frame(
        frame,
        predictions=["ctr", "cvr", "ctcvr", "price"],
        labels=["click", "purchase"],
        category="category",
        vectors=vectors,
    )
    b, n = inputs.shape
    print(f"validation: {b} users, up to {n} candidates each, {int(inputs.mask.sum())} pairs")

    result = rm.pareto_search(
        inputs,
        weights={"ctr": (0.0, 2.0), "cvr": (0.0, 2.0), "price": (0.0, 1.0)},
        fusion="product",
        reranker="mmr",
        reranker_range=(0.5, 1.0),
        objectives=OBJECTIVES,
        k=10,
        n_trials=n_trials,
        seed=args.seed,
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(f"\n{result}\n")
        print(result.front.drop(columns="front").round(3).to_string(index=False))
    constraints = {"ndcg@10:click": ">= 0.95 * max", "ndcg@10:purchase": ">= 0.95 * max"}
    choice = result.select(maximize="gmv@10", constraints=constraints)
    print(f"\nselected trial {choice.trial}: {choice.fusion} + {choice.reranker}")
    print({name: round(value, 4) for name, value in choice.objectives.items()})

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(args.out or pathlib.Path(tmp) / "fusion.json")
        choice.to_json(path)
        loaded = rm.load_fusion(path)
        agreement = recommender_agreement(data, inputs, loaded, model)
    print(f"Recommender with the loaded fusion ranks {agreement:.1%} of the lists identically")
    if args.plot:
        result.plot("ndcg@10:click", "gmv@10", path=args.plot)
        print(f"plot written to {args.plot}")
    return {"result": result, "choice": choice, "agreement": agreement}


def recommender_agreement(data, inputs, choice, model) -> float:
    """Fraction of users whose top-10 from ``Recommender`` equals ``choice.rank(inputs)``."""
    catalog = data.items[["item_id", "category", "price"]]
    vectors = np.asarray(data.info["item_vectors"], dtype=np.float32)[catalog.item_id]
    rec = rm.Recommender(model, catalog, item_vectors=vectors)
    users = data.users.set_index("user_id").loc[inputs.users, ["age", "hist_items"]]
    users = users.reset_index()
    mask = inputs.mask.numpy()
    candidates = [list(items[row]) for items, row in zip(inputs.items, mask)]
    out = rec.recommend(users, candidates=candidates, k=choice.k, **choice.kwargs())
    ranked = choice.rank(inputs).numpy()
    lists = {user: g.sort_values("rank").item.tolist() for user, g in out.groupby("user")}
    same = sum(
        lists.get(user) == [inputs.items[b, i] for i in ranked[b] if i >= 0]
        for b, user in enumerate(inputs.users)
    )
    return same / len(inputs.users)


if __name__ == "__main__":
    main()
