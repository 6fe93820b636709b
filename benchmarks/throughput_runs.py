"""How ``train_throughput.py`` trains and scores each library: recsys_mt, torch-rechub and
DeepCTR-Torch on the same rows and sizes (see that script's docstring)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from throughput_data import TASKS, Data, peer_arrays
from torch import nn


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
