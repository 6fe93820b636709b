"""Fresh models: grow + continue training on a new period vs a stale model vs a full retrain.

Usage::

    python benchmarks/fresh_models.py [--seeds 0 1] [--impressions 20000] [--threads 2]
        [--epochs 3] [--update-epochs 2] [--drift 1.4] [--new-frac 0.15]

(``PYTHONPATH=src`` when recsys_mt is not installed.) One synthetic world per seed
(``make_funnel_data``, ``--users`` 300, ``--items`` 200) cut by time into three periods:

* period 1 (the first 40 % of the log): a random 15 % of the items ("new items") do not exist
  yet: their impressions are dropped and they are removed from the users' histories;
* period 2 (the next 30 %): every item, and preferences drift a little (the same world drawn
  with the user-item affinity weight ``--drift`` instead of 1.0, so labels change, rows not);
* period 3 (the last 30 %, drifted like period 2): the evaluation period.

Models (the demo's schema: user / item / category ids, the history sequence, price and age;
MMoE; AdamW, batch 512, lr 5e-3):

* ``stale``: trained on period 1 (``--epochs``), not updated; new items are out of vocabulary;
* ``continued``: the stale model trained ``--update-epochs`` more on period 2 with the old schema
  (new items stay OOV): fresh data without growth;
* ``grown``: ``schema.update(period2)``, ``model.grow(new_schema)``, then ``--update-epochs`` on
  period 2 (new items get their own rows, started from the OOV row);
* ``retrain``: a new schema and model fit from scratch on periods 1 + 2 (``--epochs``).

Prints one JSON line per seed and model (``ctr_auc``, ``cvr_auc`` on all period-3 rows,
``ctr_auc_new``, ``cvr_auc_new`` on rows showing a new item; CVR on clicked rows;
``row_epochs``: training rows times epochs, the machine-independent cost; ``seconds`` (wall)
and ``cpu_s`` (process CPU time, all threads) of that model's own schema work, growth and
training, the stale model's training not counted in the updates), then a table of the means
over seeds. Timings are only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

import recsys_mt as rm
from recsys_mt.data.synthetic import make_funnel_data
from recsys_mt.demo import build_schema

MODELS = ("stale", "continued", "grown", "retrain")
METRICS = ("ctr_auc", "cvr_auc", "ctr_auc_new", "cvr_auc_new", "row_epochs", "seconds", "cpu_s")


def periods(seed: int, args: argparse.Namespace) -> tuple[pd.DataFrame, ...]:
    """``(period1, period2, period3, new_items)`` of one world (see the module docstring)."""
    n = args.impressions
    size = {"n_users": args.users, "n_items": args.items, "n_impressions": n, "seed": seed}
    base = make_funnel_data(**size).impressions
    drifted = make_funnel_data(**size, interaction=args.drift).impressions
    items = np.sort(base["item_id"].unique())
    rng = np.random.default_rng(seed)
    new = set(rng.choice(items, size=round(args.new_frac * len(items)), replace=False).tolist())
    a, b = round(0.4 * n), round(0.7 * n)
    p1 = base.iloc[:a]
    p1 = p1[~p1["item_id"].isin(new)].copy()
    p1["hist_items"] = [[i for i in h if i not in new] for h in p1["hist_items"]]
    p2 = drifted.iloc[a:b].reset_index(drop=True)
    p3 = drifted.iloc[b:].reset_index(drop=True)
    return p1.reset_index(drop=True), p2, p3, new


def train(model: rm.MultiTaskModel, frame: rm.TensorFrame, epochs: int, seed: int) -> None:
    torch.manual_seed(seed)
    trainer = rm.Trainer(
        max_epochs=epochs, batch_size=512, lr=5e-3, progress_bar=False, device="cpu", seed=seed
    )
    trainer.fit(model, frame)


def scores(model: rm.MultiTaskModel, p3: pd.DataFrame, new: set) -> dict[str, float]:
    pred = model.predict(p3)
    click, buy = p3["click"].to_numpy(), p3["purchase"].to_numpy()
    is_new = p3["item_id"].isin(new).to_numpy()
    out = {}
    for suffix, rows in (("", np.ones(len(p3), dtype=bool)), ("_new", is_new)):
        out[f"ctr_auc{suffix}"] = roc_auc_score(click[rows], pred["ctr"].to_numpy()[rows])
        clicked = rows & (click == 1)
        out[f"cvr_auc{suffix}"] = roc_auc_score(buy[clicked], pred["cvr"].to_numpy()[clicked])
    return out


class Clock:
    """Wall and process CPU seconds since creation (CPU time is steadier on a shared machine)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {
            "seconds": time.perf_counter() - self.wall,
            "cpu_s": time.process_time() - self.cpu,
        }


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    p1, p2, p3, new = periods(seed, args)
    results: dict[str, dict[str, float]] = {}

    clock = Clock()
    schema = build_schema()
    frame1 = schema.fit_transform(p1)
    torch.manual_seed(seed)
    stale = rm.MultiTaskModel(schema, auto_calibrate=None)
    train(stale, frame1, args.epochs, seed)
    cost = clock.read()
    results["stale"] = {**scores(stale, p3, new), **cost, "row_epochs": len(p1) * args.epochs}

    clock = Clock()
    continued = copy.deepcopy(stale)
    train(continued, schema.transform(p2), args.update_epochs, seed)
    cost = clock.read()
    update_work = len(p2) * args.update_epochs
    results["continued"] = {**scores(continued, p3, new), **cost, "row_epochs": update_work}

    clock = Clock()
    grown = copy.deepcopy(stale)
    new_schema, growth = schema.update(p2)
    grown.grow(new_schema)
    train(grown, new_schema.transform(p2), args.update_epochs, seed)
    cost = clock.read()
    results["grown"] = {
        **scores(grown, p3, new),
        **cost,
        "row_epochs": update_work,
        "added": growth.added["item_id"],
    }

    clock = Clock()
    both = pd.concat([p1, p2], ignore_index=True)
    schema_all = build_schema()
    frame_all = schema_all.fit_transform(both)
    torch.manual_seed(seed)
    retrain = rm.MultiTaskModel(schema_all, auto_calibrate=None)
    train(retrain, frame_all, args.epochs, seed)
    cost = clock.read()
    work = len(both) * args.epochs
    results["retrain"] = {**scores(retrain, p3, new), **cost, "row_epochs": work}
    rows = {"p1": len(p1), "p2": len(p2), "p3": len(p3), "p3_new": int(p3.item_id.isin(new).sum())}
    for name, r in results.items():
        line = {"seed": seed, "model": name, **{k: round(float(v), 4) for k, v in r.items()}}
        print(json.dumps({**line, "rows": rows}), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--impressions", type=int, default=20_000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--epochs", type=int, default=3, help="epochs of the stale and retrain models")
    p.add_argument("--update-epochs", type=int, default=2, help="epochs on period 2")
    p.add_argument("--drift", type=float, default=1.4, help="affinity weight of periods 2-3")
    p.add_argument("--new-frac", type=float, default=0.15, help="share of items new in period 2")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=rm.OOVWarning)
    runs = [run_seed(s, args) for s in args.seeds]
    print(f"\nmean of seeds {args.seeds}\n")
    print("| model | " + " | ".join(METRICS) + " |")
    print("| --- |" + " ---: |" * len(METRICS))
    for name in MODELS:
        means = [np.mean([r[name][m] for r in runs]) for m in METRICS]
        cells = [f"{v:.4f}" for v in means[:4]] + [f"{means[4]:.0f}"]
        cells += [f"{v:.1f}" for v in means[5:]]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
