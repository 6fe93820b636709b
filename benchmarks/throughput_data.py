"""The synthetic data of ``train_throughput.py``: shapes, labels with learnable signal, the
held-out split and the arrays the peers read (see that script's docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TASKS = ("click", "like", "buy")
BASE_RATES = (0.2, 0.05, 0.02)
HOLDOUT = 0.1
INFER_ROWS = 200_000


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
