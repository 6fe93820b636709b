"""Toy models and helpers shared by the Trainer tests (tests/test_trainer*.py).

The models are toy ``nn.Module``s implementing the trainer protocol (``training_step``,
``validation_metrics``, optionally ``param_groups``) on a synthetic logistic-regression frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys_mt.data.frame import TensorFrame
from recsys_mt.train import Trainer


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Rank-based ROC AUC (continuous scores, so ties are negligible)."""
    scores, labels = scores.flatten().double().cpu(), labels.flatten().double().cpu()
    ranks = torch.empty_like(scores)
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def make_frame(n: int = 2000, d: int = 8, seed: int = 0):
    """A logistic-regression data set; returns (frame, true logits)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    logits = x @ w + 0.3
    y = torch.bernoulli(torch.sigmoid(logits), generator=g)
    return TensorFrame({"dense": x, "labels": y[:, None]}), logits


class LogReg(nn.Module):
    """Logistic regression with optional input dropout."""

    def __init__(self, d: int = 8, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(x))

    def training_step(self, batch):
        logits = self(batch["dense"])
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        return {"loss": loss, "loss/ctr": loss.detach()}

    def validation_metrics(self, frame, batch_size):
        device = self.linear.weight.device
        logits = torch.cat([self(b["dense"].to(device)).float() for b in frame.batches(batch_size)])
        labels = frame["labels"].to(device)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return {"loss": float(loss), "auc": auc(logits, labels)}


class EmbModel(nn.Module):
    """An id embedding + linear head; embedding tables flagged sparse in param_groups."""

    def __init__(self, n_ids: int = 100, dim: int = 4):
        super().__init__()
        self.emb = nn.Embedding(n_ids, dim)
        self.head = nn.Linear(dim, 1)

    def param_groups(self, sparse: bool):
        self.emb.sparse = sparse
        return [
            {"params": [self.emb.weight], "sparse": True, "lr_scale": 2.0},
            {"params": list(self.head.parameters())},
        ]

    def training_step(self, batch):
        logits = self.head(self.emb(batch["ids"]))
        return {"loss": F.binary_cross_entropy_with_logits(logits, batch["labels"])}

    def validation_metrics(self, frame, batch_size):
        logits = self.head(self.emb(frame["ids"].to(self.head.weight.device)))
        labels = frame["labels"].to(logits.device)
        return {"loss": float(F.binary_cross_entropy_with_logits(logits, labels))}


def emb_frame(n: int = 512, touched: int = 20) -> TensorFrame:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, touched, (n,), generator=g)
    labels = (ids % 2).float()[:, None]
    return TensorFrame({"ids": ids, "labels": labels})


def trainer(**kw) -> Trainer:
    kw.setdefault("device", "cpu")
    kw.setdefault("progress_bar", False)
    kw.setdefault("batch_size", 128)
    kw.setdefault("max_epochs", 3)
    return Trainer(**kw)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float | None = None) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol is None:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)
