"""MMoE training / inference throughput, MFU and held-out AUC: recsys_mt next to its peers.

Usage::

    python benchmarks/train_throughput.py [--shapes criteo,small] [--rows 500000]
        [--libs recsys_mt,torch_rechub,deepctr_torch] [--threads 2] [--seed 0] [--quick]

(``PYTHONPATH=src`` when recsys_mt is not installed.) torch-rechub and DeepCTR-Torch come with
the ``bench`` extra (``pip install -e '.[bench]'``); a peer that is not installed is skipped
with a ``{"lib": ..., "skipped": ...}`` line and only the others are measured.

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
import contextlib
import gc
import json
import math
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

LIBS = ("recsys_mt", "torch_rechub", "deepctr_torch")
TASKS = ("click", "like", "buy")
BASE_RATES = (0.2, 0.05, 0.02)
HOLDOUT = 0.1
INFER_ROWS = 200_000
PEAK_N = 2048


@dataclass(frozen=True)
class Shape:
    name: str
    num_sparse: int
    vocab_range: tuple[int, int]
    num_dense: int
    expert_dims: tuple[int, ...]
    batch_size: int
    num_experts: int = 4
    tower_dims: tuple[int, ...] = (64,)
    embed_dim: int = 16

    @property
    def vocabs(self) -> list[int]:
        lo, hi = self.vocab_range
        return [int(round(v)) for v in np.geomspace(lo, hi, self.num_sparse)]

    @property
    def sparse_names(self) -> list[str]:
        return [f"C{j + 1}" for j in range(self.num_sparse)]

    @property
    def dense_names(self) -> list[str]:
        return [f"I{j + 1}" for j in range(self.num_dense)]

    @property
    def input_dim(self) -> int:
        return self.num_sparse * self.embed_dim + self.num_dense


SHAPES = {
    "criteo": Shape("criteo", 26, (100, 100_000), 13, (256, 128), 2048),
    "small": Shape("small", 8, (2, 3_000), 0, (128, 64), 1024),
}


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


def counted_forward_flops(model: nn.Module) -> int:
    """The same count read off a built model: every ``nn.Linear`` plus recsys_mt's grouped
    (batched-GEMM) layers, whose ``weights`` are ``[groups, in, out]``."""
    macs = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features
        elif isinstance(getattr(m, "weights", None), nn.ParameterList) and hasattr(m, "groups"):
            macs += sum(w.numel() for w in m.weights)
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


# ----------------------------------------------------------------------------- data
@dataclass
class Data:
    shape: Shape
    sparse: dict[str, np.ndarray]  # name -> int64 [N], ids in [0, vocab)
    dense: dict[str, np.ndarray]  # name -> float32 [N], raw non-negative counts
    labels: np.ndarray  # float32 [N, T]
    logits: np.ndarray  # float64 [N, T], the true logits
    n_train: int
    infer_index: np.ndarray  # rows of the timed inference pass; the held-out rows come first

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def n_test(self) -> int:
        return self.n - self.n_train


def _zipf_ids(rng: np.random.Generator, vocab: int, n: int, exponent: float = 1.1) -> np.ndarray:
    """``n`` ids in ``[0, vocab)`` with Zipf frequencies; which id gets which rank is random."""
    p = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    rank = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), vocab - 1)
    return rng.permutation(vocab)[rank].astype(np.int64)


def _component(
    rng: np.random.Generator,
    ids: list[np.ndarray],
    vocabs: list[int],
    z: np.ndarray | None,
    n_main: int = 6,
    n_pairs: int = 3,
    rank: int = 4,
) -> np.ndarray:
    """A unit-variance logit component: per-id effects of ``n_main`` features, ``n_pairs``
    low-rank id × id interactions and (if any) linear effects of the dense features ``z``."""
    n, s = len(ids[0]), len(ids)
    out = np.zeros(n)
    for f in rng.choice(s, size=min(n_main, s), replace=False):
        out += rng.normal(0.0, 1.0, vocabs[f])[ids[f]]
    for _ in range(n_pairs if s > 1 else 0):
        f, g = rng.choice(s, size=2, replace=False)
        u = rng.normal(0.0, 1.0, (vocabs[f], rank))[ids[f]]
        v = rng.normal(0.0, 1.0, (vocabs[g], rank))[ids[g]]
        out += (u * v).sum(axis=1) / math.sqrt(rank)
    if z is not None:
        out += z @ rng.normal(0.0, 0.5, z.shape[1])
    return (out - out.mean()) / max(out.std(), 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _intercept(x: np.ndarray, rate: float) -> float:
    """``b`` with ``mean(sigmoid(b + x)) = rate`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + x).mean() < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def make_data(shape: Shape, n: int, seed: int) -> Data:
    """Deterministic synthetic data of ``n`` rows for ``shape`` and ``seed``."""
    rng = np.random.default_rng([seed, list(SHAPES).index(shape.name)])
    vocabs = shape.vocabs
    ids = [_zipf_ids(rng, v, n) for v in vocabs]
    dense: dict[str, np.ndarray] = {}
    z = None
    if shape.num_dense:
        raw = np.floor(np.exp(rng.normal(1.5, 1.2, (n, shape.num_dense))))
        logged = np.log1p(raw)
        z = (logged - logged.mean(0)) / logged.std(0)
        dense = {name: raw[:, j].astype(np.float32) for j, name in enumerate(shape.dense_names)}
    shared = _component(rng, ids, vocabs, z)
    logits = np.empty((n, len(TASKS)))
    for t, rate in enumerate(BASE_RATES):
        x = 1.2 * shared + 0.9 * _component(rng, ids, vocabs, z)
        logits[:, t] = x + _intercept(x, rate)
    labels = (rng.random((n, len(TASKS))) < _sigmoid(logits)).astype(np.float32)
    n_train = n - max(1, int(round(n * HOLDOUT)))
    n_infer = max(min(n, INFER_ROWS), n - n_train)
    infer_index = np.concatenate([np.arange(n_train, n), np.arange(n_infer - (n - n_train))])
    return Data(
        shape, dict(zip(shape.sparse_names, ids)), dense, labels, logits, n_train, infer_index
    )


def held_out_auc(data: Data, scores: np.ndarray) -> dict[str, float]:
    """Per-task AUC of ``scores`` (rows of ``data.infer_index``) on the held-out rows."""
    from recsys_mt.metrics import auc

    y = data.labels[data.n_train :]
    s = np.asarray(scores, dtype=np.float64)[: data.n_test]
    return {t: round(float(auc(y[:, j], s[:, j])), 4) for j, t in enumerate(TASKS)}


def peer_arrays(data: Data) -> tuple[dict, dict, np.ndarray]:
    """Train / inference feature dicts for the peers (ids as given; dense log1p + z-score with
    training statistics) and the training labels."""
    idx = data.infer_index
    train: dict[str, np.ndarray] = {}
    infer: dict[str, np.ndarray] = {}
    for name, col in data.sparse.items():
        train[name] = np.ascontiguousarray(col[: data.n_train])
        infer[name] = col[idx]
    for name, col in data.dense.items():
        x = np.log1p(col.astype(np.float64))
        mean, std = x[: data.n_train].mean(), x[: data.n_train].std()
        x = ((x - mean) / (std if std > 1e-12 else 1.0)).astype(np.float32)
        train[name] = np.ascontiguousarray(x[: data.n_train])
        infer[name] = x[idx]
    return train, infer, np.ascontiguousarray(data.labels[: data.n_train])


# ----------------------------------------------------------------------------- libraries
@dataclass
class Result:
    prepare_s: float
    train_s: float
    infer_s: float
    scores: np.ndarray  # [n_infer, T], any monotone scale
    flops_counted: int


def run_recsys_mt(data: Data, args: argparse.Namespace) -> Result:
    import pandas as pd

    import recsys_mt as rm

    shape = data.shape
    start = time.perf_counter()
    cols = {**data.sparse, **data.dense}
    frame = pd.DataFrame(cols)
    for j, t in enumerate(TASKS):
        frame[t] = data.labels[:, j]
    schema = rm.Schema(
        [rm.Sparse(n, dim=shape.embed_dim) for n in shape.sparse_names]
        + [rm.Dense(n, transform="log1p") for n in shape.dense_names],
        tasks=[rm.Task(t) for t in TASKS],
    )
    train = schema.fit_transform(frame.iloc[: data.n_train])
    infer = schema.transform(frame.iloc[data.infer_index], labels=False)
    prepare_s = time.perf_counter() - start

    torch.manual_seed(args.seed)
    head = rm.MMoE(
        num_experts=shape.num_experts, expert_dims=shape.expert_dims, tower_dims=shape.tower_dims
    )
    # lazy (row-sparse) Adam updates a row only when a batch holds it: the tables get a larger
    # learning rate, the library's recommended setting for one-epoch training (docs/benchmarks.md)
    model = rm.MultiTaskModel(
        schema,
        encoders=[rm.IDEmbedding(lr_scale=args.emb_lr_scale)]
        + ([rm.DenseEncoder()] if shape.dense_names else []),
        head=head,
    )
    trainer = rm.Trainer(
        max_epochs=1,
        batch_size=shape.batch_size,
        lr=1e-3,
        progress_bar=False,
        num_threads=args.threads,
        device="cpu",
        seed=args.seed,
    )
    start = time.perf_counter()
    trainer.fit(model, train)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    logits = model.predict_logits(infer, batch_size=args.infer_batch)
    infer_s = time.perf_counter() - start
    return Result(prepare_s, train_s, infer_s, logits.numpy(), counted_forward_flops(model.head))


def run_torch_rechub(data: Data, args: argparse.Namespace) -> Result:
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator, PredictDataset

    shape = data.shape
    start = time.perf_counter()
    x_train, x_infer, y_train = peer_arrays(data)
    x_test = {k: v[: data.n_test] for k, v in x_infer.items()}  # the held-out rows
    y_test = data.labels[data.n_train :]
    train_loader, _, _ = DataGenerator(x_train, y_train).generate_dataloader(
        x_val=x_test, y_val=y_test, x_test=x_test, y_test=y_test, batch_size=shape.batch_size
    )
    infer_loader = DataLoader(PredictDataset(x_infer), batch_size=args.infer_batch, shuffle=False)
    prepare_s = time.perf_counter() - start

    torch.manual_seed(args.seed)
    # fresh feature objects: each owns (and would share) its embedding table
    features = [
        SparseFeature(n, vocab_size=v, embed_dim=shape.embed_dim)
        for n, v in zip(shape.sparse_names, shape.vocabs)
    ] + [DenseFeature(n) for n in shape.dense_names]
    task_types = ["classification"] * len(TASKS)
    model = MMOE(
        features,
        task_types,
        n_expert=shape.num_experts,
        expert_params={"dims": list(shape.expert_dims)},
        tower_params_list=[{"dims": list(shape.tower_dims)} for _ in TASKS],
    )
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        trainer = MTLTrainer(
            model,
            task_types=task_types,
            optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
            n_epoch=1,
            device="cpu",
            model_path=tmp,
        )
        start = time.perf_counter()
        trainer.train_one_epoch(train_loader)
        train_s = time.perf_counter() - start

        start = time.perf_counter()
        preds = np.asarray(trainer.predict(model, infer_loader), dtype=np.float64)
        infer_s = time.perf_counter() - start
    return Result(prepare_s, train_s, infer_s, preds, counted_forward_flops(model))


def _import_deepctr():
    """Import DeepCTR-Torch with stdout sent to stderr, waiting (up to 15 s) for the
    version-check thread it starts on import, which prints to stdout when offline."""
    before = set(threading.enumerate())
    with contextlib.redirect_stdout(sys.stderr):
        import deepctr_torch  # noqa: F401

        for thread in set(threading.enumerate()) - before:
            thread.join(timeout=15)


def run_deepctr_torch(data: Data, args: argparse.Namespace) -> Result:
    _import_deepctr()
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models.multitask import MMOE

    shape = data.shape
    start = time.perf_counter()
    x_train, x_infer, y_train = peer_arrays(data)
    prepare_s = time.perf_counter() - start

    columns = [
        SparseFeat(n, vocabulary_size=v, embedding_dim=shape.embed_dim)
        for n, v in zip(shape.sparse_names, shape.vocabs)
    ] + [DenseFeat(n, 1) for n in shape.dense_names]
    model = MMOE(
        columns,
        num_experts=shape.num_experts,
        expert_dnn_hidden_units=shape.expert_dims,
        gate_dnn_hidden_units=(),
        tower_dnn_hidden_units=shape.tower_dims,
        l2_reg_linear=0.0,
        l2_reg_embedding=0.0,
        l2_reg_dnn=0.0,
        task_types=["binary"] * len(TASKS),
        task_names=list(TASKS),
        device="cpu",
        seed=args.seed,
    )
    model.compile("adam", loss=["binary_crossentropy"] * len(TASKS))
    with contextlib.redirect_stdout(sys.stderr):  # fit prints the device and sample counts
        start = time.perf_counter()
        model.fit(x_train, y_train, batch_size=shape.batch_size, epochs=1, verbose=0)
        train_s = time.perf_counter() - start

        start = time.perf_counter()
        preds = model.predict(x_infer, batch_size=args.infer_batch)
        infer_s = time.perf_counter() - start
    return Result(prepare_s, train_s, infer_s, preds, counted_forward_flops(model))


RUNNERS = {
    "recsys_mt": run_recsys_mt,
    "torch_rechub": run_torch_rechub,
    "deepctr_torch": run_deepctr_torch,
}


def peer_available(lib: str) -> str | None:
    """``None`` if ``lib`` imports, else why not. Peers are imported here, lazily, only when
    asked for (DeepCTR-Torch with its stdout print contained)."""
    try:
        if lib == "torch_rechub":
            import torch_rechub.models.multi_task  # noqa: F401
        elif lib == "deepctr_torch":
            _import_deepctr()
    except ImportError as e:
        return f"{type(e).__name__}: {e} (install the bench extra: pip install -e '.[bench]')"
    return None


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
