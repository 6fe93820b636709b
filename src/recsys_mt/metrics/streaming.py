"""Streaming (accumulating) versions of AUC, GAUC and log-loss.

Each object follows the torchmetrics-style protocol ``update(...)`` per batch, ``compute()`` at
the end of an epoch, ``reset()`` to start over. Batches are detached and stored on CPU.

Distributed evaluation: ``state()`` returns a dict of CPU tensors; gather these dicts from all
ranks (e.g. ``torch.distributed.all_gather_object``) and fold them in with ``merge(state)``, or
merge metric objects directly with ``merge(other)``. The result of ``compute()`` equals the
one-shot function on the concatenated data.

Example:
    >>> m = StreamingAUC()
    >>> m.update([0, 1], [0.2, 0.7])
    >>> m.update([1, 0], [0.1, 0.05])
    >>> m.compute()
    0.75
"""

from __future__ import annotations

from typing import Any

import torch

from .classification import _as_float, _check_eps, _prepare_binary, _to_tensor, auc, gauc

__all__ = ["StreamingAUC", "StreamingGAUC", "StreamingLogLoss"]


def _cpu(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = _to_tensor(x).reshape(-1).cpu()
    return t if dtype is None else t.to(dtype)


class _Concatenating:
    """Base class storing lists of 1-D CPU tensors per state name."""

    _names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Drop all accumulated data."""
        self._parts: dict[str, list[torch.Tensor]] = {n: [] for n in self._names}

    def _append(self, **tensors: torch.Tensor) -> None:
        lengths = {t.numel() for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"inputs to update() must have the same length, got {sorted(lengths)}")
        for name, t in tensors.items():
            self._parts[name].append(t)

    def state(self) -> dict[str, torch.Tensor]:
        """Concatenated accumulated data as a dict of 1-D CPU tensors (for all-gather)."""
        out = {}
        for name in self._names:
            parts = self._parts[name]
            dtype = torch.long if name == "groups" else torch.float64
            out[name] = torch.cat(parts) if parts else torch.empty(0, dtype=dtype)
        return out

    def merge(self, other: Any) -> _Concatenating:
        """Add another metric's data (same class) or a ``state()`` dict. Returns ``self``."""
        if isinstance(other, _Concatenating):
            if type(other) is not type(self):
                raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
            other = other.state()
        missing = set(self._names) - set(other)
        if missing:
            raise ValueError(f"state dict is missing keys {sorted(missing)}")
        self._append(**{n: other[n].detach().reshape(-1).cpu() for n in self._names})
        return self

    def __len__(self) -> int:
        return sum(t.numel() for t in self._parts[self._names[0]])


class StreamingAUC(_Concatenating):
    """Accumulating ROC AUC; ``compute()`` equals :func:`auc` on all updates.

    ``update(y_true [N], y_score [N], sample_weight=None)``; missing weights count as 1.
    """

    _names = ("y_true", "y_score", "sample_weight")

    def update(self, y_true: Any, y_score: Any, sample_weight: Any = None) -> None:
        """Add a batch of labels ``[N]``, scores ``[N]`` and optional weights ``[N]``."""
        y, s, w = _prepare_binary(y_true, y_score, sample_weight)
        if w is None:
            w = torch.ones_like(s)  # unit weights give exactly the unweighted AUC
        self._append(y_true=y.cpu(), y_score=s.cpu(), sample_weight=w.cpu())

    def compute(self) -> float:
        """AUC over everything seen since the last ``reset()``."""
        st = self.state()
        if st["y_true"].numel() == 0:
            raise ValueError("compute() called before any update()")
        return auc(st["y_true"], st["y_score"], st["sample_weight"])


class StreamingGAUC(_Concatenating):
    """Accumulating group AUC; ``compute()`` equals :func:`gauc` on all updates.

    ``update(y_true [N], y_score [N], groups [N])`` with integer group ids (e.g. user ids); a
    group may be spread over several updates.
    """

    _names = ("y_true", "y_score", "groups")

    def __init__(self, weight: str = "impressions") -> None:
        if weight not in ("impressions", "uniform"):
            raise ValueError(f"weight must be 'impressions' or 'uniform', got {weight!r}")
        self.weight = weight
        super().__init__()

    def update(self, y_true: Any, y_score: Any, groups: Any) -> None:
        """Add a batch of labels ``[N]``, scores ``[N]`` and integer group ids ``[N]``."""
        y, s, _ = _prepare_binary(y_true, y_score)
        g = _cpu(groups)
        if g.is_floating_point() or g.dtype == torch.bool:
            raise ValueError("groups must be integer ids for StreamingGAUC")
        self._append(y_true=y.cpu(), y_score=s.cpu(), groups=g.long())

    def compute(self) -> float:
        """GAUC over everything seen since the last ``reset()``."""
        st = self.state()
        if st["y_true"].numel() == 0:
            raise ValueError("compute() called before any update()")
        return gauc(st["y_true"], st["y_score"], st["groups"], weight=self.weight)


class StreamingLogLoss:
    """Accumulating binary log-loss; ``compute()`` equals :func:`logloss` on all updates.

    Keeps only two float64 sums (loss and weight), so memory is constant.
    ``update(y_true [N], y_prob [N], sample_weight=None)``.
    """

    def __init__(self, eps: float = 1e-7) -> None:
        self.eps = _check_eps(eps)
        self.reset()

    def reset(self) -> None:
        """Zero the accumulated sums."""
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.weight_sum = torch.zeros((), dtype=torch.float64)

    def update(self, y_true: Any, y_prob: Any, sample_weight: Any = None) -> None:
        """Add a batch of labels ``[N]``, probabilities ``[N]`` and optional weights ``[N]``."""
        y, p, w = _prepare_binary(y_true, y_prob, sample_weight, score_name="y_prob")
        p = p.clamp(self.eps, 1 - self.eps)
        losses = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
        if w is None:
            w = torch.ones_like(losses)
        self.loss_sum = self.loss_sum + (losses * w).sum().cpu().double()
        self.weight_sum = self.weight_sum + w.sum().cpu().double()

    def state(self) -> dict[str, torch.Tensor]:
        """``{"loss_sum", "weight_sum"}`` scalar CPU tensors (sum them across ranks)."""
        return {"loss_sum": self.loss_sum.clone(), "weight_sum": self.weight_sum.clone()}

    def merge(self, other: StreamingLogLoss | dict[str, torch.Tensor]) -> StreamingLogLoss:
        """Add another ``StreamingLogLoss`` or its ``state()`` dict. Returns ``self``."""
        st = other.state() if isinstance(other, StreamingLogLoss) else other
        self.loss_sum = self.loss_sum + _as_float(st["loss_sum"]).cpu().double()
        self.weight_sum = self.weight_sum + _as_float(st["weight_sum"]).cpu().double()
        return self

    def compute(self) -> float:
        """Weighted mean log-loss over everything seen since the last ``reset()``."""
        if float(self.weight_sum) == 0:
            raise ValueError("compute() called before any update()")
        return float(self.loss_sum / self.weight_sum)
