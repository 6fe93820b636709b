"""Pareto search over objective fusion on real data: MovieLens-100k's funnel.

Usage::

    python benchmarks/pareto_movielens.py [--cache DIR] [--sampling popularity] [--seed 0]
        [--trials 80] [--plot docs/img/pareto_movielens.png]

(``PYTHONPATH=src`` when recsys_mt is not installed; needs the ``tune`` extra (optuna) and, for
``--plot``, the ``plot`` extra.) Builds the funnel of ``benchmarks/quality_movielens.py``
(clicks = ratings, purchases = rating ≥ 4, repurchases = rating 5; sampled non-clicks; temporal
split), trains the library's default MMoE model on the training rows with early stopping on
the validation rows, predicts every test (user, movie) row, and searches
``WeightedProduct(ctr^a · cvr^b)`` exponents together with the ``CategoryCoverage`` trade-off
(genres) for the Pareto front of NDCG@10 on clicks, NDCG@10 on purchases and genre
coverage@10 over the test users' candidate lists. Prints one JSON line per front point and the
selection "most purchases with click NDCG ≥ 97 % of its best"; skips cleanly when the data
cannot be had.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens_funnel import DataUnavailable, build_funnel, load_movielens  # noqa: E402
from quality_movielens import TASKS, recsys_schema  # noqa: E402

import recsys_mt as rm  # noqa: E402

OBJECTIVES = ["ndcg@10:click", "ndcg@10:buy", "coverage@10"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=None, help="folder for the downloaded data")
    p.add_argument("--sampling", default="popularity", choices=("uniform", "popularity"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trials", type=int, default=80)
    p.add_argument("--min-candidates", type=int, default=20)
    p.add_argument("--plot", default=None, help="write the click vs purchase NDCG plot here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        raw = load_movielens(args.cache)
    except DataUnavailable as e:
        print(json.dumps({"skipped": str(e)}))
        return
    data = build_funnel(raw, sampling=args.sampling, seed=args.seed)
    schema, encoders = recsys_schema("defaults")
    assert [t.name for t in schema.tasks] == [t.name for t in TASKS]
    train = schema.fit_transform(data.train)
    torch.manual_seed(args.seed)
    model = rm.MultiTaskModel(
        schema, encoders=encoders, head=rm.MMoE(num_experts=4, expert_dims=(128, 64))
    )
    trainer = rm.Trainer(
        max_epochs=30, seed=args.seed, progress_bar=False, callbacks=[rm.EarlyStopping()]
    )
    trainer.fit(model, train, schema.transform(data.val))
    test = data.test.reset_index(drop=True)
    pred = model.predict(schema.transform(test))
    frame = test.assign(ctr=pred["ctr"].to_numpy(), cvr=pred["cvr"].to_numpy())
    # a sampled non-click can repeat a (user, movie) pair: one candidate per pair
    agg = {"ctr": "mean", "cvr": "mean", "click": "max", "buy": "max", "genre": "first"}
    frame = frame.groupby(["user_id", "movie_id"], as_index=False, sort=False).agg(agg)
    sizes = frame.groupby("user_id")["movie_id"].transform("size")
    frame = frame[sizes >= args.min_candidates]
    inputs = rm.pareto_inputs_from_frame(
        frame,
        predictions=["ctr", "cvr"],
        labels=["click", "buy"],
        item="movie_id",
        category="genre",
    )
    b, n = inputs.shape
    print(
        json.dumps(
            {
                "users": b,
                "max_candidates": n,
                "rows": int(inputs.mask.sum()),
                "epochs": len(trainer.history),
            }
        ),
        flush=True,
    )
    result = rm.pareto_search(
        inputs,
        weights={"ctr": (0.0, 2.0), "cvr": (0.0, 2.0)},
        fusion="product",
        reranker="coverage",
        reranker_range=(0.0, 1.0),
        objectives=OBJECTIVES,
        k=10,
        n_trials=args.trials,
        seed=args.seed,
    )
    front = result.front.sort_values("ndcg@10:click", ascending=False)
    for _, row in front.iterrows():
        line = {k: round(float(v), 4) for k, v in row.items() if k not in ("front",)}
        print(json.dumps({"front": line}), flush=True)
    choice = result.select(maximize="ndcg@10:buy", constraints={"ndcg@10:click": ">= 0.97 * max"})
    print(
        json.dumps(
            {
                "selected": {k: round(v, 4) for k, v in choice.objectives.items()},
                "trial": choice.trial,
            }
        ),
        flush=True,
    )
    if args.plot:
        result.plot("ndcg@10:click", "ndcg@10:buy", path=args.plot)
        print(json.dumps({"plot": args.plot}), flush=True)


if __name__ == "__main__":
    main()
