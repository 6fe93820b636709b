"""Continuous inputs of integrated gradients for :func:`recsys_mt.model.explain.explain`.

Ids are discrete, so attributions are taken where the model first becomes continuous: the
looked-up embedding vectors of :class:`~recsys_mt.encoders.IDEmbedding` (one ``[B, W, d]``
tensor per table, every position owned by one feature), the standardised ``dense`` columns of
:class:`~recsys_mt.encoders.DenseEncoder`, the ``vec/<name>`` inputs (and presence flags) of
:class:`~recsys_mt.encoders.VectorEncoder`, and the vectors a
:class:`~recsys_mt.encoders.BertTextTower` builds its output from (row text, history profile,
query, base-model unit vectors), taken after the base model so that it runs once per row (see
:mod:`recsys_mt.model.explain_text`).

:class:`InputPlan` builds, for one batch, the actual values and the baseline of every such
input, and a forward function that runs encoders → fusion → head from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.features import OOV_ID, PAD_ID
from ..encoders import DenseEncoder, IDEmbedding, VectorEncoder
from ..encoders.id_embedding import routed_lookups

__all__ = ["BASELINES", "InputPart", "InputPlan"]

BASELINES = ("oov", "padding")
"""Id baselines: every id → its feature's OOV row, or → the missing row / empty history."""


@dataclass
class InputPart:
    """One continuous input: ``x`` and ``base`` (same shape ``[B, P, ...]``); ``owners[p]``
    names the feature that position ``p`` of dim 1 belongs to; ``encoder`` indexes
    ``model.encoders``; ``key`` says what the encoder reads it as."""

    key: str
    encoder: int
    x: Tensor
    base: Tensor
    owners: list[str] = field(default_factory=list)


@dataclass
class _Request:
    """Ids ``[B, w]`` one IDEmbedding table is read with, their baseline ids, the feature of
    each column, which columns keep their own row as baseline (padding in a history), and
    whether they are history entries."""

    ids: Tensor
    base: Tensor
    owners: list[str]
    keep: Tensor | None = None
    history: bool = False

    def kept(self) -> Tensor:
        return self.keep if self.keep is not None else torch.zeros_like(self.ids, dtype=torch.bool)


def _text_tower_class() -> type | None:
    try:
        from ..encoders.text import BertTextTower
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return None
    return BertTextTower


def check_encoders(model: nn.Module) -> None:
    """Raise ``TypeError`` naming an encoder :func:`explain` cannot attribute through."""
    tower = _text_tower_class()
    known = (IDEmbedding, DenseEncoder, VectorEncoder) + ((tower,) if tower else ())
    for i, enc in enumerate(model.encoders):
        if type(enc) not in known:
            raise TypeError(
                f"explain: encoder {i} ({type(enc).__name__}) is not supported; explanations "
                "cover IDEmbedding, DenseEncoder, VectorEncoder and BertTextTower"
            )


class InputPlan:
    """Inputs, baselines and a forward over them for ``model`` (in eval mode).

    Args:
        model: a :class:`~recsys_mt.model.MultiTaskModel` whose encoders passed
            :func:`check_encoders`.
        baseline: one of :data:`BASELINES`.
        target: maps logits ``[B, T]`` to the explained output ``[B]``.
    """

    def __init__(self, model: nn.Module, baseline: str, target: Callable[[Tensor], Tensor]):
        self.model = model
        self.baseline = baseline
        self.target = target
        self.schema = model.schema
        self._looked: dict[int, dict[int, Tensor]] = {}  # encoder -> dim -> embeddings
        self._captured: dict[int, dict[int, Tensor]] = {}
        self.keys: list[str] = []  # batch tensors passed alongside the inputs

    def patched(self) -> contextlib.AbstractContextManager[None]:
        """Route every IDEmbedding's table lookups through this plan while active, in the
        calling thread only (other threads scoring with the model see its own tables)."""
        routes = {
            enc: self._lookup_for(i, enc)
            for i, enc in enumerate(self.model.encoders)
            if isinstance(enc, IDEmbedding)
        }
        return routed_lookups(routes)

    def _lookup_for(self, i: int, enc: IDEmbedding) -> Callable[[Tensor, int], Tensor]:
        def lookup(ids: Tensor, dim: int) -> Tensor:
            given = self._looked.get(i)
            if given is None:  # capture pass: record the ids, look up as usual
                self._captured.setdefault(i, {})[dim] = ids
                return F.embedding(ids, enc._table(dim))
            emb = given[dim]
            if emb.shape[:-1] != ids.shape:
                raise RuntimeError(
                    f"explain: IDEmbedding lookup of shape {tuple(ids.shape)} for dim {dim} "
                    f"does not match the planned {tuple(emb.shape[:-1])}"
                )
            return emb

        return lookup

    # ------------------------------------------------------------------ building the inputs
    def parts(self, batch: dict[str, Tensor]) -> list[InputPart]:
        """Actual values and baselines of every continuous input of ``batch``."""
        self.keys = sorted(k for k in batch if k not in ("labels", "group"))
        out: list[InputPart] = []
        for i, enc in enumerate(self.model.encoders):
            if isinstance(enc, IDEmbedding):
                out += self._id_parts(i, enc, batch)
            elif isinstance(enc, DenseEncoder):
                out.append(self._dense_part(i, batch["dense"]))
            elif isinstance(enc, VectorEncoder):
                out += self._vector_parts(i, enc, batch)
            else:
                out += self._text_parts(i, enc, batch)
        return out

    def _id_parts(self, i: int, enc: IDEmbedding, batch: dict[str, Tensor]) -> list[InputPart]:
        """Per table: the looked-up rows ``[B, W, d]`` and their baseline rows."""
        sparse_names = [f.name for f in self.schema.sparse]
        self._captured.pop(i, None)
        with torch.no_grad():
            enc(batch)  # records the ids each table is read with
        captured = self._captured.pop(i)
        sparse = batch.get("sparse")
        base_id = OOV_ID if self.baseline == "oov" else PAD_ID
        requests: dict[int, list[_Request]] = {}  # per table, in IDEmbedding.forward's order
        for d in enc.group_dims:  # sparse fields
            cols, offs = getattr(enc, f"cols_{d}"), getattr(enc, f"offsets_{d}")
            ids = sparse.index_select(1, cols) + offs
            owners = [sparse_names[c] for c in cols]
            requests.setdefault(d, []).append(
                _Request(ids, torch.full_like(ids, base_id) + offs, owners)
            )
        for n, dim, off, *_ in enc._seq:  # history entries; padding positions stay as they are
            seq = batch[f"seq/{n}"]
            keep = seq == PAD_ID
            base = torch.where(keep, seq, torch.full_like(seq, OOV_ID)) + off
            req = _Request(seq + off, base, [n] * seq.shape[1], keep=keep, history=True)
            requests.setdefault(dim, []).append(req)
        for _n, dim, _off, tcol, toff, modes in enc._seq:  # attention targets: the candidate
            if "attention" in modes:
                ids = sparse[:, tcol : tcol + 1] + toff
                req = _Request(ids, torch.full_like(ids, base_id) + toff, [sparse_names[tcol]])
                requests.setdefault(dim, []).append(req)
        out = []
        for d in enc.dims:
            reqs = requests.get(d)
            if not reqs:
                continue
            ids = torch.cat([r.ids for r in reqs], dim=1)
            if not torch.equal(ids, captured[d]):
                raise RuntimeError(
                    f"explain: IDEmbedding read table {d} with ids other than planned; the "
                    "encoder's lookup layout is not the one explain knows"
                )
            table = enc._table(d).detach()
            x = F.embedding(ids, table)  # [B, W, d]
            b = F.embedding(torch.cat([r.base for r in reqs], dim=1), table)
            if self.baseline == "padding":  # zero vectors: exactly an empty history's pooling
                history = torch.cat(
                    [torch.full_like(r.ids, r.history, dtype=torch.bool) for r in reqs], 1
                )
                b = b.masked_fill(history.unsqueeze(-1), 0.0)
            keep = torch.cat([r.kept() for r in reqs], dim=1)
            b = torch.where(keep.unsqueeze(-1), x, b)
            owners = [o for r in reqs for o in r.owners]
            out.append(InputPart(f"emb/{d}", i, x, b, owners))
        return out

    def _dense_part(self, i: int, dense: Tensor) -> InputPart:
        """``dense [B, D]`` against the training means (0 for standardised columns)."""
        stats = self.schema.dense_stats_ or {}
        means = [float(stats.get(f.name, {}).get("fill", 0.0)) for f in self.schema.dense]
        means += [0.0] * (len(self.schema.dense_columns) - len(means))
        base = torch.tensor(means, dtype=dense.dtype, device=dense.device).expand_as(dense)
        return InputPart("dense", i, dense.float(), base.float(), list(self.schema.dense_columns))

    def _vector_parts(
        self, i: int, enc: VectorEncoder, batch: dict[str, Tensor]
    ) -> list[InputPart]:
        """Each vector ``[B, dim]`` (and presence flag ``[B, 1]``) against zeros."""
        out = []
        for n, flag in zip(enc._names, enc._flagged):
            x = batch[f"vec/{n}"].float()
            out.append(InputPart(f"vec/{n}", i, x, torch.zeros_like(x), [n] * x.shape[1]))
            if flag:
                p = batch[f"vec_present/{n}"].float().unsqueeze(1)
                out.append(InputPart(f"vec_present/{n}", i, p, torch.zeros_like(p), [n]))
        return out

    def _text_parts(self, i: int, enc: nn.Module, batch: dict[str, Tensor]) -> list[InputPart]:
        """The text tower's inputs: :func:`~recsys_mt.model.explain_text.text_parts`."""
        from .explain_text import text_parts  # it imports InputPart from here

        return text_parts(i, enc, batch)

    # ------------------------------------------------------------------ forward
    def forward(self, parts: list[InputPart], *tensors: Tensor) -> Tensor:
        """Explained output ``[N]`` from the inputs ``tensors[:len(parts)]`` (shaped like the
        parts' ``x``, any number of rows ``N``) and the batch tensors after them (``self.keys``
        order, repeated to ``N`` rows)."""
        values, rest = tensors[: len(parts)], tensors[len(parts) :]
        batch = dict(zip(self.keys, rest))
        by_encoder: dict[int, dict[str, Tensor]] = {}
        for part, value in zip(parts, values):
            by_encoder.setdefault(part.encoder, {})[part.key] = value
        outs = []
        try:
            for i, enc in enumerate(self.model.encoders):
                given = by_encoder.get(i, {})
                outs.append(self._encode(i, enc, batch, given))
        finally:
            self._looked.clear()
        logits = self.model.head(self.model.fusion(outs))
        return self.target(logits)

    def _encode(
        self, i: int, enc: nn.Module, batch: dict[str, Tensor], given: dict[str, Tensor]
    ) -> Tensor:
        if isinstance(enc, IDEmbedding):
            self._looked[i] = {int(k.split("/")[1]): v for k, v in given.items()}
            return enc(batch)
        if isinstance(enc, DenseEncoder):
            return enc({**batch, "dense": given["dense"]})
        if isinstance(enc, VectorEncoder):
            local = dict(batch)
            for key, value in given.items():
                local[key] = value.squeeze(1) if key.startswith("vec_present/") else value
            return enc(local)
        from .explain_text import text_output

        return text_output(enc, given)


def owners_in_order(parts: list[InputPart]) -> list[str]:
    """Distinct owner names of ``parts`` in first-seen order."""
    seen: dict[str, None] = {}
    for p in parts:
        for o in p.owners:
            seen.setdefault(o, None)
    return list(seen)


def reduce_part(attr: Tensor, part: InputPart) -> dict[str, Tensor]:
    """Sum an attribution shaped like ``part.x`` ``[B, P, ...]`` into ``{feature: [B]}``."""
    per_pos = attr.reshape(attr.shape[0], attr.shape[1], -1).sum(-1).double()  # [B, P]
    out: dict[str, Tensor] = {}
    for name in dict.fromkeys(part.owners):
        idx = torch.tensor(
            [p for p, o in enumerate(part.owners) if o == name], device=per_pos.device
        )
        out[name] = per_pos.index_select(1, idx).sum(1)
    return out


def describe(model: nn.Module) -> list[str]:
    """Column names of the per-encoder totals, ``encoder/<Class>`` (``[i]`` added to a class
    that appears more than once)."""
    names = [type(e).__name__ for e in model.encoders]
    return [
        f"encoder/{n}" if names.count(n) == 1 else f"encoder/{n}[{i}]" for i, n in enumerate(names)
    ]


def feature_order(model: nn.Module, found: list[str]) -> list[str]:
    """``found`` feature names in schema order (dense columns at their Dense / FunnelStats
    place), anything else after."""
    order: list[str] = []
    for f in model.schema.features:
        if f.kind == "funnel_stats":
            order += [c for c in model.schema.dense_columns if c.startswith(f"{f.name}.")]
        else:
            order.append(f.name)
    ranked = [n for n in order if n in found]
    return ranked + [n for n in found if n not in ranked]
