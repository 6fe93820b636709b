"""Which features drive CTR and which drive CVR: integrated gradients on MovieLens-100k.

Usage::

    python benchmarks/explain_movielens.py [--rows 400] [--n-steps 32] [--max-epochs 3]
        [--seed 0] [--threads 2] [--cache DIR] [--plot docs/img/explain_ctr_cvr.png]

(``PYTHONPATH=src`` when recsys_mt is not installed; needs the ``explain`` extra, and
``plot`` for ``--plot``.) Builds the MovieLens funnel of ``movielens_funnel.py`` (uniform
negatives, ``click`` / ``buy`` = rating >= 4 / ``rebuy`` = rating 5), trains the ``full``
feature set of ``quality_movielens.py`` without the title tower (eight sparse ids, the earlier
rated and earlier liked movies, age, release year, history length, the movie's funnel
statistics) with an MMoE head, then explains ``--rows`` test rows with ``model.explain``: CTR on
all sampled rows, CVR (p(buy | click)) on sampled clicked rows, OOV baseline.

Prints one JSON line per task ``{"task", "rows", "n_steps", "seconds", "max_abs_delta",
"median_abs_change", "mean_abs": {feature: mean |attribution|}}`` and draws the mean
|attribution| of every feature for both tasks side by side. When MovieLens cannot be fetched it
prints ``{"skipped": ...}``; ``--synthetic`` then runs on the library's synthetic funnel instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens_funnel import SPARSE, DataUnavailable, build_funnel, load_movielens  # noqa: E402

import recsys_mt as rm  # noqa: E402


def movielens_setup(cache: str | None, seed: int):
    """``(schema, train, val, test)`` DataFrames of the MovieLens funnel, full features."""
    data = build_funnel(load_movielens(cache), sampling="uniform", seed=seed)
    features: list = [rm.Sparse(c, dim=16) for c in SPARSE]
    features += [
        rm.Sequence("hist_movies", vocab_from="movie_id", max_len=50),
        rm.Sequence("hist_liked", vocab_from="movie_id", max_len=50),
        rm.Dense("age"),
        rm.Dense("year", nan="mean"),
        rm.Dense("hist_len", transform="log1p"),
        rm.FunnelStats("movie_stats", entity="movie_id"),
    ]
    tasks = [
        rm.Task("ctr", label="click"),
        rm.Task("cvr", label="buy", given="ctr"),
        rm.Task("rebuy", label="rebuy", given="cvr"),
    ]
    return rm.Schema(features, tasks=tasks), data.train, data.val, data.test


def synthetic_setup(seed: int):
    """The same shape of run on ``make_funnel_data`` (when MovieLens is unavailable)."""
    from recsys_mt.data.synthetic import make_funnel_data

    df = make_funnel_data(n_impressions=60_000, seed=seed).impressions
    features = [
        rm.Sparse("user_id"),
        rm.Sparse("item_id"),
        rm.Sparse("category", dim=8),
        rm.Dense("price", transform="log1p"),
        rm.Dense("age", nan="mean"),
        rm.Sequence("hist_items", vocab_from="item_id", max_len=20),
    ]
    tasks = [
        rm.Task("ctr", label="click"),
        rm.Task("cvr", label="purchase", given="ctr"),
        rm.Task("repurchase", given="cvr"),
    ]
    a, b = int(len(df) * 0.8), int(len(df) * 0.9)
    return rm.Schema(features, tasks=tasks), df.iloc[:a], df.iloc[a:b], df.iloc[b:]


def plot(summary: dict[str, pd.Series], path: str, title: str) -> None:
    """Horizontal bars of mean |attribution| per feature, one colour per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame(summary)
    table = table.loc[table.max(axis=1).sort_values().index]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(table) + 1.6))
    y = np.arange(len(table))
    h = 0.4
    ax.barh(y + h / 2, table["ctr"], height=h, label="CTR (all rows)", color="#3b75af")
    ax.barh(y - h / 2, table["cvr"], height=h, label="CVR (clicked rows)", color="#ef8636")
    ax.set_yticks(y, table.index)
    ax.set_xlabel("mean |attribution| to the task's logit (integrated gradients, OOV baseline)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--n-steps", type=int, default=32)
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=None, help="folder of the MovieLens download")
    p.add_argument("--plot", default=None, help="write the bar chart here (PNG)")
    p.add_argument("--synthetic", action="store_true", help="synthetic data if MovieLens fails")
    args = p.parse_args(argv)
    try:
        import captum  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "captum is not installed (pip install recsys-mt[explain])"}))
        return 0
    torch.set_num_threads(args.threads)
    source = "MovieLens-100k"
    try:
        schema, train_df, val_df, test_df = movielens_setup(args.cache, args.seed)
    except DataUnavailable as e:
        print(json.dumps({"skipped": f"MovieLens-100k unavailable: {e}"}))
        if not args.synthetic:
            return 0
        schema, train_df, val_df, test_df = synthetic_setup(args.seed)
        source = "synthetic funnel"
    train = schema.fit_transform(train_df)
    val = schema.transform(val_df)
    torch.manual_seed(args.seed)
    model = rm.MultiTaskModel(schema, head=rm.MMoE(num_experts=4, expert_dims=(128, 64)))
    trainer = rm.Trainer(
        max_epochs=args.max_epochs,
        seed=args.seed,
        progress_bar=False,
        num_threads=args.threads,
        callbacks=[rm.EarlyStopping()],
    )
    start = time.perf_counter()
    trainer.fit(model, train, val)
    print(json.dumps({"source": source, "train_s": round(time.perf_counter() - start, 1)}))
    rng = np.random.default_rng(args.seed)
    click = schema.tasks[0].label
    picks = {
        "ctr": test_df.iloc[rng.choice(len(test_df), args.rows, replace=False)],
        "cvr": test_df[test_df[click] > 0].sample(args.rows, random_state=args.seed),
    }
    summary = {}
    for task, rows in picks.items():
        start = time.perf_counter()
        out = model.explain(rows, task=task, n_steps=args.n_steps, encoders=False)
        seconds = time.perf_counter() - start
        feats = [c for c in out.columns if c not in ("baseline_logit", "logit", "delta")]
        summary[task] = out[feats].abs().mean()
        record = {
            "task": task,
            "rows": len(rows),
            "n_steps": args.n_steps,
            "seconds": round(seconds, 1),
            "max_abs_delta": float(out["delta"].abs().max()),
            "median_abs_change": float((out["logit"] - out["baseline_logit"]).abs().median()),
            "mean_abs": {k: round(float(v), 4) for k, v in summary[task].items()},
        }
        print(json.dumps(record))
    if args.plot:
        plot(summary, args.plot, f"What drives CTR and CVR ({source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
