"""Objective fusion: turn per-objective scores (pCTR, pCVR, price, ...) into one ranking score.

Every fusion is a callable ``fusion(scores)`` where ``scores`` is either

* a ``pandas.DataFrame`` with one column per objective -> returns a ``pandas.Series`` named
  ``"score"`` with the frame's index, or
* a mapping ``{name: Tensor}`` of same-shaped tensors (e.g. ``[B, N]``) -> returns a ``Tensor`` of
  that shape and of the promoted floating dtype of the inputs, where integer (and bool) tensors
  count as float64: large integer scores (ids, timestamps, prices in cents) stay distinct instead
  of rounding to ties in float32.

A missing objective raises ``KeyError`` naming it and listing the available ones.
:class:`WeightedSum` and :class:`WeightedProduct` accumulate in float64 and saturate: where all
their inputs are finite the result is finite (an overflow gives ``±finfo(dtype).max``), while
non-finite inputs propagate (a ``-inf`` "absent" score stays ``-inf`` in a sum).  An objective
with weight (exponent) ``0`` does not contribute at all: its column must exist, but whatever it
holds (``±inf``, NaN) is not read, so ``0 * inf`` never turns a score into NaN.  Fusions
serialise to JSON-able dicts with :meth:`Fusion.to_config` and back with
:meth:`Fusion.from_config`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "Fusion",
    "WeightedSum",
    "WeightedProduct",
    "CallableFusion",
    "ScoreInput",
    "DEFAULT_PRODUCT_EPS",
]

ScoreInput = pd.DataFrame | Mapping[str, Tensor]

#: Floor applied to every factor of :class:`WeightedProduct` before taking logs.
DEFAULT_PRODUCT_EPS: float = 1e-12


class _Columns(Mapping):
    """Read-only view of the objectives with a helpful ``KeyError``."""

    def __init__(self, scores: ScoreInput) -> None:
        if isinstance(scores, pd.DataFrame):
            self._data: Mapping[str, Any] = {str(c): c for c in scores.columns}
            self._names = list(self._data)
            self.frame: pd.DataFrame | None = scores
            self.shape: tuple[int, ...] = (len(scores),)
            self.dtype: Any = None
            return
        if not isinstance(scores, Mapping):
            raise TypeError(
                f"scores must be a pandas DataFrame or a mapping of tensors, got {type(scores)}"
            )
        tensors = {str(name): torch.as_tensor(value) for name, value in scores.items()}
        shapes = {tuple(t.shape) for t in tensors.values()}
        if len(shapes) > 1:
            raise ValueError(f"all score tensors must have the same shape, got {sorted(shapes)}")
        self._data = tensors
        self._names = list(tensors)
        self.frame = None
        self.shape = shapes.pop() if shapes else ()
        dtype = None
        for t in tensors.values():
            # integer / bool columns compute in float64: float32 would merge distinct large ints
            own = t.dtype if t.dtype.is_floating_point else torch.float64
            dtype = own if dtype is None else torch.promote_types(dtype, own)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(f"objective {name!r} not found; available: {self._names}")
        if self.frame is not None:
            return self.frame[self._data[name]].to_numpy(dtype=np.float64)
        return self._data[name].to(self.dtype)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def wrap(self, values: Any) -> Tensor | pd.Series:
        """Return ``values`` as the output kind matching the input kind."""
        if self.frame is not None:
            return pd.Series(
                np.asarray(values, dtype=np.float64), index=self.frame.index, name="score"
            )
        return values


def _check_params(params: Mapping[str, Any], what: str) -> dict[str, float]:
    if not params:
        raise ValueError(f"at least one {what} is required")
    out: dict[str, float] = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{what} for {name!r} must be a real number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{what} for {name!r} must be finite, got {value!r}")
        out[str(name)] = float(value)
    return out


def _saturate(value: Tensor, finite: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` clamped to the finite range of ``dtype`` where ``finite`` (elsewhere as is)."""
    big = torch.finfo(dtype).max
    return torch.where(finite, value.clamp(-big, big), value)


def _weighted_total(
    cols: _Columns, params: Mapping[str, float], transform: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """``(sum_i params_i * transform(x_i), all x_i finite)`` in float64, overflow-saturated.

    Objectives with ``params_i == 0`` are looked up (a missing one raises ``KeyError``) but add
    nothing, not even to the finiteness flag: their values may be ``±inf`` or NaN.  With every
    parameter zero the total is ``0`` (a product of ``x ** 0`` is 1).
    """
    total: Tensor | None = None
    finite: Tensor | None = None
    for name, p in params.items():
        x = cols[name]
        x = x.to(torch.float64) if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64)
        if p == 0.0:
            continue
        ok = torch.isfinite(x)
        term = _saturate(transform(x) * p, ok, torch.float64)
        finite = ok if finite is None else finite & ok
        total = term if total is None else _saturate(total + term, finite, torch.float64)
    if total is None:  # every parameter is zero
        total, finite = torch.zeros_like(x), torch.ones_like(x, dtype=torch.bool)
    return total, finite


def _wrap_total(cols: _Columns, total: Tensor, finite: Tensor) -> Tensor | pd.Series:
    """Saturate ``total`` to the output dtype and return it as the output kind."""
    if cols.frame is not None:
        return cols.wrap(_saturate(total, finite, torch.float64).numpy())
    return _saturate(total, finite, cols.dtype).to(cols.dtype)


class Fusion(abc.ABC):
    """Base class: ``fusion(scores) -> Tensor | pd.Series``."""

    #: ``"type"`` tag used in configs.
    kind: str = ""

    @abc.abstractmethod
    def __call__(self, scores: ScoreInput) -> Tensor | pd.Series:
        """Fuse the objectives of ``scores`` into one score per row/element."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-able description, inverse of :meth:`from_config`."""

    @staticmethod
    def from_config(
        config: Mapping[str, Any], functions: Mapping[str, Callable] | None = None
    ) -> Fusion:
        """Rebuild any fusion from :meth:`to_config` output (dispatches on ``config["type"]``).

        A config never imports code: a ``CallableFusion`` is rebuilt only from ``functions``,
        a mapping from the stored name (``"module:qualname"`` or the bare ``qualname``) to the
        function, which the caller supplies.
        """
        kind = config.get("type")
        classes = {c.kind: c for c in (WeightedSum, WeightedProduct, CallableFusion)}
        if kind not in classes:
            raise ValueError(f"unknown fusion type {kind!r}; expected one of {sorted(classes)}")
        if kind == CallableFusion.kind:
            return CallableFusion._from_config(config, functions or {})
        return classes[kind]._from_config(config)


class WeightedSum(Fusion):
    """``score = sum_i w_i * x_i``.

    Example: ``WeightedSum(ctr=1.0, ctcvr=5.0)``; names that are not Python identifiers can be
    passed as a mapping: ``WeightedSum({"p(click)": 1.0})``.
    """

    kind = "weighted_sum"

    def __init__(self, weights: Mapping[str, float] | None = None, /, **kw: float) -> None:
        self.weights = _check_params({**(weights or {}), **kw}, "weight")

    def __repr__(self) -> str:
        return f"WeightedSum({self.weights})"

    def __call__(self, scores: ScoreInput) -> Tensor | pd.Series:
        cols = _Columns(scores)
        return _wrap_total(cols, *_weighted_total(cols, self.weights, lambda x: x))

    def to_config(self) -> dict[str, Any]:
        return {"type": self.kind, "weights": dict(self.weights)}

    @classmethod
    def _from_config(cls, config: Mapping[str, Any]) -> WeightedSum:
        return cls(dict(config["weights"]))


class WeightedProduct(Fusion):
    """``score = prod_i x_i ** a_i``, computed as ``exp(sum_i a_i * log(max(x_i, eps)))``.

    Every factor is floored at ``eps`` (default :data:`DEFAULT_PRODUCT_EPS` = ``1e-12``) before
    the log, so zeros (and negatives) give a tiny finite value instead of ``NaN`` / ``-inf``;
    inputs are expected to be non-negative (probabilities, prices).  Example: expected GMV per
    impression ``WeightedProduct(ctr=1, cvr=1, price=1)`` = pCTR * pCVR * price.  ``eps`` is
    keyword-only and therefore reserved; pass an objective literally called ``"eps"`` through
    the mapping argument.
    """

    kind = "weighted_product"

    def __init__(
        self,
        exponents: Mapping[str, float] | None = None,
        /,
        *,
        eps: float = DEFAULT_PRODUCT_EPS,
        **kw: float,
    ) -> None:
        self.exponents = _check_params({**(exponents or {}), **kw}, "exponent")
        eps = float(eps)
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a positive finite number, got {eps}")
        self.eps = eps

    def __repr__(self) -> str:
        return f"WeightedProduct({self.exponents}, eps={self.eps})"

    def __call__(self, scores: ScoreInput) -> Tensor | pd.Series:
        cols = _Columns(scores)
        eps = self.eps
        log_total, finite = _weighted_total(
            cols, self.exponents, lambda x: torch.log(torch.clamp(x, min=eps))
        )
        return _wrap_total(cols, torch.exp(log_total), finite)

    def to_config(self) -> dict[str, Any]:
        return {"type": self.kind, "exponents": dict(self.exponents), "eps": self.eps}

    @classmethod
    def _from_config(cls, config: Mapping[str, Any]) -> WeightedProduct:
        return cls(dict(config["exponents"]), eps=config.get("eps", DEFAULT_PRODUCT_EPS))


class CallableFusion(Fusion):
    """Wrap a user function ``fn(scores) -> array-like``.

    ``fn`` receives a read-only mapping of the objectives (``fn(s)["ctr"]`` is a ``Tensor`` for
    tensor input, a float64 ``numpy`` array for DataFrame input; a missing name raises the
    package's descriptive ``KeyError``).  The result is converted to the output kind matching the
    input and must have the inputs' shape.  ``to_config`` stores the name
    ``"module:qualname"`` (module-level functions only); ``Fusion.from_config`` resolves it
    from a ``functions`` mapping the caller passes, never by importing.
    """

    kind = "callable"

    def __init__(self, fn: Callable[[Mapping[str, Any]], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        self.fn = fn

    def __repr__(self) -> str:
        return f"CallableFusion({getattr(self.fn, '__qualname__', self.fn)!r})"

    def __call__(self, scores: ScoreInput) -> Tensor | pd.Series:
        cols = _Columns(scores)
        result = self.fn(cols)
        if cols.frame is not None:
            values = np.asarray(result, dtype=np.float64)
            if values.shape not in ((len(cols.frame),), ()):
                raise ValueError(f"fn returned shape {values.shape}, expected ({len(cols.frame)},)")
            return cols.wrap(np.broadcast_to(values, (len(cols.frame),)))
        out = torch.as_tensor(result)
        if not out.dtype.is_floating_point:
            out = out.to(cols.dtype)
        if tuple(out.shape) != cols.shape:
            raise ValueError(f"fn returned shape {tuple(out.shape)}, expected {cols.shape}")
        return out

    def to_config(self) -> dict[str, Any]:
        module = getattr(self.fn, "__module__", None)
        qualname = getattr(self.fn, "__qualname__", None)
        if not module or not qualname or "<" in qualname:
            raise ValueError(
                f"cannot serialise {self.fn!r}: only module-level functions have an import path"
            )
        return {"type": self.kind, "fn": f"{module}:{qualname}"}

    @classmethod
    def _from_config(
        cls, config: Mapping[str, Any], functions: Mapping[str, Callable]
    ) -> CallableFusion:
        name = str(config["fn"])
        qualname = name.partition(":")[2]
        fn = functions.get(name, functions.get(qualname))
        if fn is None:
            raise ValueError(
                f"CallableFusion config names {name!r}; pass it explicitly, e.g. "
                f"Fusion.from_config(config, functions={{{qualname!r}: {qualname}}}) "
                "(configs never import code)"
            )
        return cls(fn)
