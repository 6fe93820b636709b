"""MMoE training / inference throughput, MFU and held-out AUC: recsys_mt next to its peers.

Usage::

    python benchmarks/train_throughput.py [--shapes criteo,small] [--rows 500000]
        [--libs recsys_mt,torch_rechub,deepctr_torch] [--threads 2] [--seed 0] [--quick]

(``PYTHONPATH=src`` when recsys_mt is not installed.) torch-rechub and DeepCTR-Torch come with
the ``bench`` extra (``pip install -e '.[bench]'``); a peer that is not installed is skipped
with a ``{"lib": ..., "skipped": ...}`` line and only the others are measured.

The data set is made in ``throughput_data.py`` and each library is run by
``throughput_runs.py``, beside this script.

Output: JSON lines on stdout, everything else (progress, the peers' prints) on stderr.
DeepCTR-Torch checks for a newer release on import and, offline, prints a non-JSON line to
stdout from a background thread; the script waits for that thread with stdout redirected, but
if the check outlives the wait the line can still land on stdout, so **read only the lines that
start with** ``{``. The lines, in order:

* ``{"peak_gflops": ...}``: the machine's fp32 matmul peak at ``--threads`` threads (best of
  several 2048 x 2048 ``torch.mm``), the denominator of the MFU;
* per shape, ``{"shape", "model", "mflop_fwd_per_sample", "mflop_train_per_sample", "rows", ...,
  "oracle_auc"}``: the architecture's FLOPs (see below) and the data set, with the AUC of the
  true logits on the held-out rows (the best any model can reach);
* per shape and library, ``{"lib", "shape", "model": "mmoe", "train_samples_per_s",
  "infer_samples_per_s", "mfu", "infer_mfu", "auc": {task: held-out AUC}, "prepare_s",
  "train_s", "infer_s", "mflop_fwd_counted"}``; ``mfu`` is the training MFU as a fraction
  (0.25 = 25 %);
* per shape and peer, ``{"shape", "ratio": "recsys_mt/<peer>", "train", "infer"}``: throughput
  ratios (> 1: recsys_mt is faster).

Shapes (MMoE, 3 binary tasks, embeddings of dimension 16, towers (64,), one epoch):

* ``criteo``: 26 sparse features (Zipf ids, vocabularies log-spaced 100 ... 100,000), 13 dense
  count features, experts 4 x (256, 128), batch 2048: compute-bound;
* ``small``: 8 sparse features (vocabularies 2 ... 3,000), no dense features, experts
  4 x (128, 64), batch 1024: overhead-bound.

Labels carry learnable signal: per task, a logit from a component shared by the three tasks and
a task-specific one, each made of per-id effects of a few features, low-rank pairwise id
interactions and (criteo) dense effects; intercepts give base rates 0.2 / 0.05 / 0.02. The data
is a deterministic function of ``--seed`` and ``--rows``. Every library trains on the same first
90 % of the rows (its own shuffling) and is scored on the same last 10 %.

Timing: before anything is timed the script pays torch's one-time process costs (the first
``torch.optim`` optimiser imports ``torch._dynamo``, several seconds; first kernel calls), which
would otherwise be charged to whichever library runs first. ``train_s`` is one epoch over the
training rows, ``infer_s`` one prediction pass over ``min(rows, 200,000)`` rows (the held-out
rows, then training rows) with batch ``--infer-batch`` (default 8192) for every library;
``prepare_s`` is each library's own data preparation before it (recsys_mt: DataFrame,
``Schema.fit_transform`` / ``transform``; peers: log1p + standardisation of the dense columns in
NumPy, as their examples do with scikit-learn, and their data loaders).

FLOPs: counted from the architecture, 2 x the multiply-adds of every Linear layer of the experts,
gates and towers per sample (embedding lookups, activations, BatchNorm and the gate mixing are
not counted); a training step counts 3 x the forward. MFU = samples/s x FLOPs per sample / peak.
Each library line also reports ``mflop_fwd_counted``, the same count taken from the library's
built modules, as a check that all three run the same architecture.

How each library is run (same rows, sizes, threads; Adam-family optimiser with lr 1e-3 and no
weight decay or L2 penalty anywhere):

* recsys_mt: ``Schema([Sparse ..., Dense(transform="log1p") ...], tasks=[Task ...])``,
  ``fit_transform``, ``MultiTaskModel(schema, head=MMoE(...))``,
  ``Trainer(max_epochs=1, ..., num_threads=threads).fit(model, train)`` (its defaults: AdamW
  for dense parameters, row-sparse Adam for the embedding tables), ``predict_logits``;
* torch-rechub: ``SparseFeature`` / ``DenseFeature`` lists built fresh per model (feature objects
  own their embedding tables), its ``MMOE``, ``DataGenerator(...).generate_dataloader`` for the
  training loader and ``DataLoader(PredictDataset(...))`` for inference, and
  ``MTLTrainer(optimizer_params={"lr": 1e-3, "weight_decay": 0})``. Training calls
  ``MTLTrainer.train_one_epoch(train_loader)``, the trainer's own epoch loop: ``fit`` is the same
  loop plus a validation pass and a checkpoint file it always writes, neither of which belongs
  in a training-throughput number. Inference is ``MTLTrainer.predict``;
* DeepCTR-Torch: ``SparseFeat`` / ``DenseFeat`` columns, its ``MMOE`` with
  ``gate_dnn_hidden_units=()`` (gates are one Linear, as in the other two) and
  ``l2_reg_* = 0``, ``model.compile("adam", loss=["binary_crossentropy"] * 3)``,
  ``model.fit(x, y, batch_size, epochs=1, verbose=0)`` and ``model.predict(x, batch_size)``.
  Its inputs travel as float32, exact for ids below 2^24 (the largest vocabulary here is 10^5).

Each peer gets the full id range as its vocabulary (neither handles unseen ids);
recsys_mt learns its vocabulary from the training rows and maps unseen held-out ids to OOV.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput_data import SHAPES, TASKS, Shape, held_out_auc, make_data  # noqa: E402
from throughput_runs import RUNNERS, peer_available  # noqa: E402

LIBS = ("recsys_mt", "torch_rechub", "deepctr_torch")
PEAK_N = 2048


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


# ----------------------------------------------------------------------------- FLOPs and peak
def mmoe_forward_flops(shape: Shape, num_tasks: int = len(TASKS)) -> int:
    """FLOPs of one sample's forward pass: 2 x multiply-adds of every Linear layer."""
    macs = 0
    prev = shape.input_dim
    for d in shape.expert_dims:  # experts
        macs += shape.num_experts * prev * d
        prev = d
    macs += num_tasks * shape.input_dim * shape.num_experts  # one linear gate per task
    for d in (*shape.tower_dims, 1):  # towers and their output layer
        macs += num_tasks * prev * d
        prev = d
    return 2 * macs


def measure_peak_gflops(repeats: int) -> float:
    """Best-of-``repeats`` fp32 GFLOP/s of a 2048 x 2048 matmul at the current thread count."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(PEAK_N, PEAK_N, generator=gen)
    b = torch.randn(PEAK_N, PEAK_N, generator=gen)
    out = torch.empty(PEAK_N, PEAK_N)
    torch.mm(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_N**3 / best / 1e9


def warm_up() -> None:
    """Pay torch's one-time process costs before anything is timed: the first ``torch.optim``
    optimiser imports ``torch._dynamo`` (seconds), and first forward / backward / inference
    calls initialise kernels. Whichever library ran first would otherwise be charged for it."""
    import torch._dynamo  # noqa: F401

    layer = nn.Linear(16, 16)
    for opt in (torch.optim.Adam, torch.optim.AdamW):
        optimiser = opt(layer.parameters(), lr=1e-3)
        layer(torch.randn(8, 16)).square().mean().backward()
        optimiser.step()
        optimiser.zero_grad()
    with torch.inference_mode():
        layer(torch.randn(8, 16))


# ----------------------------------------------------------------------------- main
def _csv(value: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what} must be a comma list of {list(allowed)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes", default="criteo,small", type=lambda s: _csv(s, list(SHAPES), "--shapes")
    )
    parser.add_argument("--libs", default=",".join(LIBS), type=lambda s: _csv(s, LIBS, "--libs"))
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="rows per shape, 10%% held out (default 500000; 20000 with --quick)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--emb-lr-scale",
        type=float,
        default=30.0,
        help="learning-rate multiplier of recsys_mt embedding tables",
    )
    parser.add_argument("--infer-batch", type=int, default=8192)
    parser.add_argument(
        "--peak-repeats",
        type=int,
        default=None,
        help="2048x2048 matmuls timed for the peak (default 10; 3 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 20000 rows unless --rows is given, fewer peak repeats",
    )
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 20_000 if args.quick else 500_000
    if args.peak_repeats is None:
        args.peak_repeats = 3 if args.quick else 10
    if args.rows < 100:
        parser.error("--rows must be at least 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, {args.threads} threads, rows {args.rows}, seed {args.seed}")

    libs = []
    for lib in args.libs:
        reason = peer_available(lib)
        if reason is None:
            libs.append(lib)
        else:
            log(f"skipping {lib}: {reason}")
            emit({"lib": lib, "skipped": reason})

    warm_up()
    peak = measure_peak_gflops(args.peak_repeats)
    emit(
        {
            "peak_gflops": round(peak, 1),
            "threads": args.threads,
            "matmul": f"{PEAK_N}x{PEAK_N} fp32, best of {args.peak_repeats}",
        }
    )

    failed = False
    results: dict[tuple[str, str], dict] = {}
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        start = time.perf_counter()
        data = make_data(shape, args.rows, args.seed)
        log(f"[{shape_name}] data: {data.n} rows in {time.perf_counter() - start:.1f}s")
        fwd = mmoe_forward_flops(shape)
        if shape_name == "criteo" and abs(fwd / 1e6 - 1.20) > 0.01:
            log(f"warning: criteo forward is {fwd / 1e6:.4f} MFLOP, expected about 1.20")
        y_test = data.labels[data.n_train :]
        emit(
            {
                "shape": shape_name,
                "model": "mmoe",
                "mflop_fwd_per_sample": round(fwd / 1e6, 4),
                "mflop_train_per_sample": round(3 * fwd / 1e6, 4),
                "input_dim": shape.input_dim,
                "batch_size": shape.batch_size,
                "rows": data.n,
                "rows_train": data.n_train,
                "rows_test": data.n_test,
                "rows_infer": len(data.infer_index),
                "positive_rate": {
                    t: round(float(y_test[:, j].mean()), 4) for j, t in enumerate(TASKS)
                },
                "oracle_auc": held_out_auc(data, data.logits[data.infer_index]),
            }
        )
        for lib in libs:
            gc.collect()
            log(f"[{shape_name}] {lib} ...")
            try:
                res = RUNNERS[lib](data, args)
            except Exception as e:  # report and go on with the other libraries
                failed = True
                traceback.print_exc(file=sys.stderr)
                emit(
                    {
                        "lib": lib,
                        "shape": shape_name,
                        "model": "mmoe",
                        "error": f"{type(e).__name__}: {e}",
                    }
                )
                continue
            train_sps = data.n_train / res.train_s
            infer_sps = len(data.infer_index) / res.infer_s
            line = {
                "lib": lib,
                "shape": shape_name,
                "model": "mmoe",
                "train_samples_per_s": round(train_sps, 1),
                "infer_samples_per_s": round(infer_sps, 1),
                "mfu": round(train_sps * 3 * fwd / (peak * 1e9), 4),
                "infer_mfu": round(infer_sps * fwd / (peak * 1e9), 4),
                "auc": held_out_auc(data, res.scores),
                "prepare_s": round(res.prepare_s, 2),
                "train_s": round(res.train_s, 2),
                "infer_s": round(res.infer_s, 2),
                "mflop_fwd_counted": round(res.flops_counted / 1e6, 4),
            }
            if res.flops_counted != fwd:
                log(f"warning: {lib} counts {res.flops_counted} forward FLOPs, expected {fwd}")
            results[(lib, shape_name)] = line
            emit(line)
        del data
    for shape_name in args.shapes:
        ours = results.get(("recsys_mt", shape_name))
        for peer in ("torch_rechub", "deepctr_torch"):
            theirs = results.get((peer, shape_name))
            if ours is None or theirs is None:
                continue
            emit(
                {
                    "shape": shape_name,
                    "ratio": f"recsys_mt/{peer}",
                    "train": round(ours["train_samples_per_s"] / theirs["train_samples_per_s"], 3),
                    "infer": round(ours["infer_samples_per_s"] / theirs["infer_samples_per_s"], 3),
                }
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
