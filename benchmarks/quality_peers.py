"""Peer runners for ``quality_movielens.py``: torch-rechub and DeepCTR-Torch on the same funnel.

Every peer gets the same eight sparse ids (label-encoded on the training rows; ids unseen in
training, cold movies included, map to index 0, since neither library handles unseen ids), the
same sizes (embedding 16, MMoE 4 x (128, 64), towers (64,), ESMM / shared-bottom MLPs (128, 64)),
Adam with lr 1e-3 and no weight decay, batch 1024, and the same early stopping: after every epoch
the validation CTR AUC is computed, the best epoch's weights are kept, and training stops after
``patience`` epochs without improvement. Multi-task peers are trained on the entire-space labels
(click, click & buy, click & buy & rebuy), so their outputs are joint probabilities; ESMM models
output CTR and CTCVR (two stages).

Each runner returns ``(scores, epochs, train_seconds, train_rows)``; ``scores`` maps
``"ctr" / "ctcvr" / "s3"`` to joint probabilities of the test rows (``"s3"`` absent for ESMM).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from movielens_funnel import SPARSE, TASKS
from throughput_runs import _import_deepctr as import_deepctr  # quiet, waits for its thread

from recsys_mt.metrics import auc

USER_SIDE = ("user_id", "age_bucket", "gender", "occupation", "zip3")


def encode(train: pd.DataFrame, others: list[pd.DataFrame]) -> tuple[dict, list[dict], dict]:
    """Label-encode the sparse columns on ``train``: ids 1..V, unseen -> 0."""
    vocab = {}
    enc_train, enc_others = {}, [{} for _ in others]
    for c in SPARSE:
        index = pd.Index(pd.unique(train[c].astype(str)))
        vocab[c] = len(index) + 1
        enc_train[c] = (index.get_indexer(train[c].astype(str)) + 1).astype(np.int64)
        for d, frame in zip(enc_others, others):
            pos = index.get_indexer(frame[c].astype(str))
            d[c] = np.where(pos < 0, 0, pos + 1).astype(np.int64)
    return enc_train, enc_others, vocab


def _fit_loop(train_epoch, predict_val, y_val_click, state, load, patience, max_epochs):
    """Epochs of ``train_epoch()`` with early stopping on validation CTR AUC."""
    best, best_state, wait, epochs, train_s = -1.0, None, 0, 0, 0.0
    for _ in range(max_epochs):
        start = time.perf_counter()
        train_epoch()
        train_s += time.perf_counter() - start
        epochs += 1
        score = float(auc(y_val_click, predict_val()))
        if score > best:
            best, best_state, wait = score, copy.deepcopy(state()), 0
        else:
            wait += 1
            if wait >= patience:
                break
    load(best_state)
    return epochs, train_s


def run_rechub(kind: str, data, seed: int, patience: int, max_epochs: int):
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import ESMM, MMOE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator, PredictDataset

    x_tr, (x_va, x_te), vocab = encode(data.train, [data.val, data.test])
    y = {n: d[list(TASKS)].to_numpy(np.float32) for n, d in (("tr", data.train), ("va", data.val))}
    torch.manual_seed(seed)

    def feats(names):  # fresh objects: a feature owns its embedding table
        return [SparseFeature(n, vocab_size=vocab[n], embed_dim=16) for n in names]

    if kind == "esmm":
        user = [c for c in SPARSE if c in USER_SIDE]
        item = [c for c in SPARSE if c not in USER_SIDE]
        model = ESMM(feats(user), feats(item), {"dims": [128, 64]}, {"dims": [128, 64]})
        y = {k: v[:, [1, 0, 1]] for k, v in y.items()}  # [cvr (unused), ctr, ctcvr] columns
        task_types = ["classification"] * 3
        cols = {"ctr": 1, "ctcvr": 2}
    else:
        task_types = ["classification"] * 3
        towers = [{"dims": [64]} for _ in TASKS]
        if kind == "mmoe":
            model = MMOE(
                feats(SPARSE), task_types, n_expert=4, expert_params={"dims": [128, 64]},
                tower_params_list=towers,
            )  # fmt: skip
        else:
            model = SharedBottom(feats(SPARSE), task_types, {"dims": [128, 64]}, towers)
        cols = {"ctr": 0, "ctcvr": 1, "s3": 2}
    loader, _, _ = DataGenerator(x_tr, y["tr"]).generate_dataloader(
        x_val=x_va, y_val=y["va"], x_test=x_va, y_test=y["va"], batch_size=1024
    )
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        trainer = MTLTrainer(
            model, task_types=task_types, optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
            n_epoch=1, device="cpu", model_path=tmp,
        )  # fmt: skip

        def predict(x):
            dl = DataLoader(PredictDataset(x), batch_size=4096, shuffle=False)
            return np.asarray(trainer.predict(model, dl), dtype=np.float64)

        epochs, train_s = _fit_loop(
            lambda: trainer.train_one_epoch(loader),
            lambda: predict(x_va)[:, cols["ctr"]],
            data.val["click"].to_numpy(),
            model.state_dict,
            model.load_state_dict,
            patience,
            max_epochs,
        )
        out = predict(x_te)
    return {k: out[:, j] for k, j in cols.items()}, epochs, train_s, len(data.train)


def run_deepctr(kind: str, data, seed: int, patience: int, max_epochs: int):
    import_deepctr()
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models.multitask import ESMM, MMOE

    x_tr, (x_va, x_te), vocab = encode(data.train, [data.val, data.test])
    columns = [SparseFeat(c, vocabulary_size=vocab[c], embedding_dim=16) for c in SPARSE]
    no_l2 = {"l2_reg_embedding": 0.0, "l2_reg_dnn": 0.0}
    if kind == "esmm":
        model = ESMM(columns, tower_dnn_hidden_units=(128, 64), task_types=["binary"] * 2,
                     task_names=["ctr", "ctcvr"], device="cpu", seed=seed, **no_l2)  # fmt: skip
        labels, names = ["click", "buy"], ["ctr", "ctcvr"]
    else:
        model = MMOE(
            columns, num_experts=4, expert_dnn_hidden_units=(128, 64), gate_dnn_hidden_units=(),
            tower_dnn_hidden_units=(64,), l2_reg_linear=0.0, task_types=["binary"] * 3,
            task_names=list(TASKS), device="cpu", seed=seed, **no_l2,
        )  # fmt: skip
        labels, names = list(TASKS), ["ctr", "ctcvr", "s3"]
    model.compile("adam", loss=["binary_crossentropy"] * len(labels))
    y_tr = data.train[labels].to_numpy(np.float32)
    with contextlib.redirect_stdout(sys.stderr):
        epochs, train_s = _fit_loop(
            lambda: model.fit(x_tr, y_tr, batch_size=1024, epochs=1, verbose=0, shuffle=True),
            lambda: np.asarray(model.predict(x_va, 4096))[:, 0],
            data.val["click"].to_numpy(),
            model.state_dict,
            model.load_state_dict,
            patience,
            max_epochs,
        )
        out = np.asarray(model.predict(x_te, 4096), dtype=np.float64)
    return {k: out[:, j] for j, k in enumerate(names)}, epochs, train_s, len(data.train)


PEERS = {
    "torch_rechub/mmoe": lambda *a: run_rechub("mmoe", *a),
    "torch_rechub/esmm": lambda *a: run_rechub("esmm", *a),
    "torch_rechub/shared_bottom": lambda *a: run_rechub("shared_bottom", *a),
    "deepctr_torch/esmm": lambda *a: run_deepctr("esmm", *a),
    "deepctr_torch/mmoe": lambda *a: run_deepctr("mmoe", *a),
}


def peer_missing(name: str) -> str | None:
    """``None`` if the peer library imports, else why not."""
    try:
        if name.startswith("torch_rechub"):
            import torch_rechub.models.multi_task  # noqa: F401
        else:
            import_deepctr()
    except ImportError as e:
        return f"{type(e).__name__}: {e} (install the bench extra: pip install -e '.[bench]')"
    return None
