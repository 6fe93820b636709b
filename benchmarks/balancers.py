"""Loss and gradient balancers on a two-task funnel whose tasks conflict by a chosen amount.

Usage::

    python benchmarks/balancers.py [--conflict 0,0.5,1] [--rows 100000] [--epochs 3]
        [--balancers static,uncertainty,...] [--seeds 0] [--threads 2] [--quick]

(``PYTHONPATH=src`` when recsys_mt is not installed.) Output: JSON lines on stdout, one per
data set and balancer and seed: ``{"balancer", "data": {"conflict", "rows", "seed"}, "auc":
{"ctr", "cvr", "ctcvr"}, "step_ms", "weights"}``, after a ``"balancer": "oracle"`` line per data
set with the AUCs of the true probabilities (the ceiling); progress on stderr.

Data: users and items with latent vectors ``u, v ∈ R⁴`` and four dense features ``x``.
``click ~ Bern(σ(−1.2 + 1.5 a + x·w₁))`` with the affinity ``a = u·v / 2``;
``purchase | click ~ Bern(σ(−0.4 + 1.5 ((1 − k) b − k a) + x·w₂))`` with an independent
affinity ``b = u'·v' / 2`` and ``k = --conflict``: at 0 the purchase signal is unrelated to the
click signal, at 1 it is the negative of it (items users click are the ones they do not buy),
so a shared representation serves the two tasks with opposite gradients. The CVR AUC is
measured on clicked rows, CTCVR (``p(click ∧ buy)``) on all rows.

Every balancer trains the same model (``MMoE(num_experts=4)``, entire-space supervision,
AdamW lr 5e-3, batch 512, the same seed and epochs) on the same 80 % of the rows and is scored
on the other 20 %. ``step_ms`` is the mean wall time of one optimiser step during training.
``--quick``: 50,000 rows, 3 epochs, conflicts 0 and 0.8, seeds 0 and 1. Before anything is
timed, one tiny fit pays torch's one-time costs (optimiser imports, first kernel calls).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd
import torch

import recsys_mt as rm
from recsys_mt.metrics import auc

BALANCERS = {
    "static": lambda: rm.StaticWeights(),
    "uncertainty": lambda: rm.UncertaintyWeighting(),
    "dwa": lambda: rm.DWA(period=50),
    "gradnorm": lambda: rm.GradNorm(),
    "pcgrad": lambda: rm.PCGrad(),
    "mgda": lambda: rm.MGDA(),
    "mgda_ub": lambda: rm.MGDA(grads="representation"),
    "cagrad": lambda: rm.CAGrad(),
    "pareto": lambda: rm.ParetoWeights(bounds={"cvr": 0.3}),
}


def make_data(rows: int, conflict: float, seed: int) -> pd.DataFrame:
    """The two-task funnel described in the module docstring, as a DataFrame."""
    rng = np.random.default_rng(seed)
    n_users, n_items, d = 300, 200, 4
    u, v = rng.normal(size=(n_users, d)), rng.normal(size=(n_items, d))
    u2, v2 = rng.normal(size=(n_users, d)), rng.normal(size=(n_items, d))
    w1, w2 = rng.normal(size=4) * 0.5, rng.normal(size=4) * 0.5
    user = rng.integers(0, n_users, rows)
    item = rng.integers(0, n_items, rows)
    x = rng.normal(size=(rows, 4))
    a = (u[user] * v[item]).sum(1) / 2
    b = (u2[user] * v2[item]).sum(1) / 2
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    p_click = sig(-1.2 + 1.5 * a + x @ w1)
    p_buy = sig(-0.4 + 1.5 * ((1 - conflict) * b - conflict * a) + x @ w2)
    click = rng.random(rows) < p_click
    buy = click & (rng.random(rows) < p_buy)
    df = pd.DataFrame(
        {"user_id": user, "item_id": item, "click": click, "purchase": buy}
        | {"true_ctr": p_click, "true_cvr": p_buy, "true_ctcvr": p_click * p_buy}
    )
    for j in range(4):
        df[f"x{j}"] = x[:, j]
    return df.astype({"click": int, "purchase": int})


def oracle(test: pd.DataFrame) -> dict[str, float]:
    """AUC of the true probabilities: the best any model can reach on these rows."""
    clicked = test[test.click == 1]
    pairs = {
        "ctr": (test.true_ctr, test.click),
        "cvr": (clicked.true_cvr, clicked.purchase),
        "ctcvr": (test.true_ctcvr, test.purchase),
    }
    return {k: round(float(auc(y.to_numpy(), p.to_numpy())), 4) for k, (p, y) in pairs.items()}


def run_one(name: str, train: pd.DataFrame, test: pd.DataFrame, epochs: int, seed: int) -> dict:
    schema = rm.Schema(
        [rm.Sparse("user_id"), rm.Sparse("item_id")]
        + [rm.Dense(f"x{j}", transform="standard") for j in range(4)],
        tasks=[rm.Task("ctr", "click"), rm.Task("cvr", "purchase", given="ctr")],
    ).fit(train)
    torch.manual_seed(seed)
    model = rm.MultiTaskModel(
        schema, head=rm.MMoE(num_experts=4), balancer=BALANCERS[name](), auto_calibrate=None
    )
    trainer = rm.Trainer(max_epochs=epochs, batch_size=512, lr=5e-3, progress_bar=False, seed=seed)
    frame = schema.transform(train)
    t0 = time.perf_counter()
    trainer.fit(model, frame)
    seconds = time.perf_counter() - t0
    table = model.evaluate(test)
    auc = {r.task: round(float(r.value), 4) for r in table.itertuples() if r.metric == "auc"}
    return {
        "auc": auc,
        "step_ms": round(1000 * seconds / max(trainer.global_step, 1), 2),
        "weights": {k: round(v, 3) for k, v in model.balancer.weights().items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conflict", default="0,0.5,1")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--balancers", default=",".join(BALANCERS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rows, args.epochs, args.conflict, args.seeds = 50_000, 3, "0,0.8", "0,1"
    torch.set_num_threads(args.threads)
    names = [b for b in args.balancers.split(",") if b]
    unknown = sorted(set(names) - set(BALANCERS))
    if unknown:
        p.error(f"--balancers: unknown {unknown}; known: {sorted(BALANCERS)}")
    warm = make_data(2000, 0.0, 0)
    run_one("static", warm.iloc[:1600], warm.iloc[1600:].reset_index(drop=True), 1, 0)
    for conflict in (float(c) for c in args.conflict.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            df = make_data(args.rows, conflict, seed)
            cut = int(0.8 * len(df))
            train, test = df.iloc[:cut], df.iloc[cut:].reset_index(drop=True)
            data = {"conflict": conflict, "rows": args.rows, "seed": seed}
            print(json.dumps({"balancer": "oracle", "data": data, "auc": oracle(test)}))
            for name in names:
                print(f"conflict={conflict} seed={seed} {name}", file=sys.stderr)
                out = run_one(name, train, test, args.epochs, seed)
                print(json.dumps({"balancer": name, "data": data, **out}), flush=True)


if __name__ == "__main__":
    main()
