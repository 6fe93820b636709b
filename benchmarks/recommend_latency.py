"""Latency of one ``Recommender.recommend`` call: pair-frame scoring vs fast scoring.

Usage::

    PYTHONPATH=src python benchmarks/recommend_latency.py [--users 1 64] [--candidates 200]
        [--k 10] [--repeats 15] [--torch-threads 1] [--seed 0]

Fits the demo schema on the synthetic funnel (2,000 users, 1,000 items, 30-item histories) and
builds the demo's MMoE model (untrained: weights do not change the cost), then times one
``recommend(users, candidates, k)`` call per repeat with ``Recommender(..., fast_scoring=False)``
(``"pair"``: a DataFrame of every (user, candidate) pair is encoded) and with the default
``fast_scoring=True`` (``"fast"``: the catalog is encoded once, the users once per call, pair
rows are gathered). Each user gets ``--candidates`` distinct catalog items of their own; the two
paths alternate call by call. Prints JSON lines only: one per (users, path) with the median and
the fastest call in ms (after one untimed warm-up call, which also encodes the catalog) and
``encode_median_ms``, the median time of the encoding step alone (the only part that differs),
then one per users count with the speedup of the median call and ``same``: whether both paths
returned the identical DataFrame.
Timings depend on the machine and its load; compare runs on one otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.demo import build_schema


def time_paths(recs: dict, users, candidates, k: int, repeats: int):
    """``({path: result}, {path: [ms per recommend call]}, {path: [ms per encoding]})``:
    the paths alternate call by call (after one warm-up call each), so both see the same load.
    The encoding is the part of a call that differs: the pair DataFrame's ``Schema.transform``
    or the gathered rows."""
    positions, mask = recs["fast"]._candidate_positions(candidates, len(users))
    rows_u, rows_c = torch.nonzero(mask, as_tuple=True)
    encode = {
        "pair": lambda: recs["pair"]._pair_frame(users, positions, rows_u, rows_c),
        "fast": lambda: recs["fast"]._pairs.encode(users, rows_u, positions[rows_u, rows_c]),
    }
    out = {path: rec.recommend(users, candidates, k=k) for path, rec in recs.items()}
    calls: dict[str, list[float]] = {path: [] for path in recs}
    enc: dict[str, list[float]] = {path: [] for path in recs}
    for _ in range(repeats):
        for path, rec in recs.items():
            t0 = time.perf_counter()
            out[path] = rec.recommend(users, candidates, k=k)
            t1 = time.perf_counter()
            encode[path]()
            enc[path].append((time.perf_counter() - t1) * 1e3)
            calls[path].append((t1 - t0) * 1e3)
    return out, calls, enc


def main() -> None:
    parser = argparse.ArgumentParser(description="Recommender.recommend: pair vs fast scoring")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    data = make_funnel_data(
        n_users=2000, n_items=1000, n_impressions=20_000, hist_len=(30, 30), seed=args.seed
    )
    schema = build_schema()
    schema.fit(data.impressions)
    torch.manual_seed(args.seed)
    model = rm.MultiTaskModel(schema)
    catalog = data.items[["item_id", "category", "price"]]
    recs = {
        "pair": rm.Recommender(model, catalog, fast_scoring=False),
        "fast": rm.Recommender(model, catalog),
    }
    rng = np.random.default_rng(args.seed)
    ids = catalog.item_id.to_numpy()
    for n_users in args.users:
        users = data.users[["user_id", "age", "hist_items"]].sample(n_users, random_state=args.seed)
        users = users.reset_index(drop=True)
        cands = [
            rng.choice(ids, size=args.candidates, replace=False).tolist() for _ in range(n_users)
        ]
        results, calls, enc = time_paths(recs, users, cands, args.k, args.repeats)
        medians = {path: statistics.median(times) for path, times in calls.items()}
        for path, times in calls.items():
            line = {
                "users": n_users,
                "candidates": args.candidates,
                "path": path,
                "median_ms": round(medians[path], 2),
                "min_ms": round(min(times), 2),
                "encode_median_ms": round(statistics.median(enc[path]), 2),
                "repeats": args.repeats,
                "torch_threads": args.torch_threads,
            }
            print(json.dumps(line), flush=True)
        try:
            pd.testing.assert_frame_equal(results["pair"], results["fast"])
            same = True
        except AssertionError:
            same = False
        summary = {
            "users": n_users,
            "speedup": round(medians["pair"] / medians["fast"], 2),
            "same": same,
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
