"""ID embeddings: every sparse and sequence feature looked up in a few fused tables."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.features import OOV_ID
from ..registry import register
from .base import Encoder, masked_mean
from .sparse_embedding import row_sparse_embedding

POOLINGS = ("mean", "attention")

_ROUTES = threading.local()  # .table: {id(IDEmbedding): lookup} of the current thread


@contextlib.contextmanager
def routed_lookups(routes: dict[Any, Callable[[Tensor, int], Tensor]]) -> Iterator[None]:
    """Within the block, and in the calling thread only, each ``IDEmbedding`` in ``routes``
    looks up its tables through ``routes[encoder](ids, dim)`` (``ids [...]`` →
    ``[..., dim]``) instead of its own tables.

    Other threads using the same modules at the same time see the plain lookups (what
    :func:`~recsys_mt.model.explain.explain` relies on). Blocks nest; the previous routes
    come back on exit, also after an error.
    """
    previous = getattr(_ROUTES, "table", None)
    table = dict(previous or {})
    table.update({id(enc): fn for enc, fn in routes.items()})
    _ROUTES.table = table
    try:
        yield
    finally:
        _ROUTES.table = previous


def _ids(frame: Any, key: str, col: int | None) -> Tensor:
    """A feature's ids in a frame or batch: ``frame[key]``, or its column ``col``."""
    return frame[key] if col is None else frame[key][:, col]


class TargetAttention(nn.Module):
    """Attention of a target vector over a history, masked.

    ``h [B, L, d]`` (history embeddings), ``t [B, d]`` (target, e.g. the candidate item),
    ``mask [B, L]`` → ``[B, d]``: ``Σ_l softmax_l((h_l W)·t / √d) h_l`` over valid positions;
    rows with an empty history give zeros. ``W`` starts as the identity.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Parameter(torch.eye(dim))
        self.scale = dim**-0.5

    def forward(self, h: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        q = t @ self.proj.t()  # [B, d]
        scores = torch.bmm(h, q.unsqueeze(-1)).squeeze(-1) * self.scale  # [B, L]
        scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=-1)
        w = torch.nan_to_num(w, nan=0.0)  # all-masked rows
        return torch.bmm(w.unsqueeze(1), h).squeeze(1)


@register("encoder", "id_embedding")
class IDEmbedding(Encoder):
    """Embeddings of sparse ids and pooled id sequences.

    All features with the same embedding dimension share one table with per-feature row
    offsets, so a batch costs one lookup per distinct dimension instead of one per feature.
    A :class:`~recsys_mt.data.Sequence` with ``vocab_from="item_id"`` reads the rows of
    ``item_id`` (shared weights). Id 0 (missing / padding) has a learned row per sparse feature
    and is masked out of sequence pooling.

    Output ``[B, out_dim]``: for each embedding dimension (ascending), the sparse fields (schema
    order) then the pooled sequence views, flattened; then, with ``interactions=True``, the
    pairwise dot products of the fields within each dimension.

    Args:
        features: names of the sparse / sequence features to embed (default: all).
        sequence_pooling: pooled views of each history, concatenated: ``"mean"`` (masked mean)
            and/or ``"attention"`` (:class:`TargetAttention` with the row's ``vocab_from``
            feature as target; only for sequences that have ``vocab_from``).
        init_std: std of the normal initialisation of the tables.
        interactions: also output the pairwise dot products of all embedded fields (sparse
            features and pooled sequence views with the same dimension), as in DLRM / FM
            (``F·(F−1)/2`` extra columns): MLPs learn multiplicative user × item affinities poorly
            from concatenated embeddings alone.
        id_dropout: during training, each known id (sparse features, history entries and
            attention targets) is replaced by its feature's OOV id with this probability, so
            the OOV row of every feature learns an "unknown value" vector. Without it the OOV
            rows are never reached by a training row, and ids unseen in training (new users,
            cold items) are scored with their untrained random initialisation.
        lr_scale: learning-rate multiplier of the tables (the Trainer's ``lr`` times this).
            With sparse gradients a row is only updated in batches that contain it, so rare
            ids get few steps; a larger rate (10–30) often converges faster in the first
            epochs.
        match_unseen: before training (:meth:`before_fit`, called by the Trainer), raise each
            feature's dropout to the share of the validation rows whose value of it is unseen
            in training, net of the share already unseen in the training rows (see
            :mod:`~recsys_mt.encoders.unseen_rates`), at most 0.9. With a temporal split most
            validation users are new, and the "unknown user" row is then trained on as many
            rows as it will serve; with a random split the rates stay at ``id_dropout``.
            Without a validation frame nothing changes.

    With sparse gradients on (the Trainer's default on one device), only the rows a batch
    touches receive gradients and optimizer updates.
    """

    def __init__(
        self,
        features: list[str] | None = None,
        sequence_pooling: tuple[str, ...] | list[str] = ("mean", "attention"),
        init_std: float = 0.05,
        interactions: bool = False,
        lr_scale: float = 1.0,
        id_dropout: float = 0.1,
        match_unseen: bool = True,
    ):
        super().__init__()
        bad = [p for p in sequence_pooling if p not in POOLINGS]
        if bad or not sequence_pooling:
            raise ValueError(
                f"sequence_pooling must be a non-empty subset of {POOLINGS}, got {bad}"
            )
        self.features = list(features) if features is not None else None
        self.sequence_pooling = tuple(sequence_pooling)
        self.init_std = init_std
        self.interactions = interactions
        self.lr_scale = lr_scale
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        self.id_dropout = float(id_dropout)
        self.match_unseen = bool(match_unseen)
        self._rates: dict[str, float] = {}  # set by before_fit; absent: id_dropout
        self.sparse_grad = False

    def build(self, schema: Any) -> None:
        from ..data.features import Sequence, Sparse

        names = self.features
        if names is None:
            names = [f.name for f in schema.features if isinstance(f, (Sparse, Sequence))]
        sparse_names = [f.name for f in schema.sparse]
        self._names, self._sparse_names = list(names), sparse_names
        # [n_sparse] dropout rate per sparse column while matched rates are set (a buffer, so
        # it follows the module across devices; not saved: before_fit sets it for each fit)
        self.register_buffer("sparse_rates", None, persistent=False)
        self._rates = {}
        for n in names:
            if not isinstance(schema.feature(n), (Sparse, Sequence)):
                raise ValueError(f"IDEmbedding: feature {n!r} is not a Sparse or Sequence feature")
        if not names:
            raise ValueError("IDEmbedding: the schema has no Sparse or Sequence features")
        rows: dict[int, int] = {}  # dim -> rows allocated so far
        offset_of: dict[str, tuple[int, int]] = {}  # vocabulary owner -> (dim, offset)

        def alloc(owner: str, dim: int) -> tuple[int, int]:
            if owner not in offset_of:
                offset_of[owner] = (dim, rows.get(dim, 0))
                rows[dim] = rows.get(dim, 0) + schema.vocab_size(owner)
            return offset_of[owner]

        groups: dict[int, list[tuple[int, int]]] = {}  # dim -> [(column, offset)]
        for n in names:
            f = schema.feature(n)
            if isinstance(f, Sparse):
                dim, off = alloc(n, f.dim)
                groups.setdefault(dim, []).append((sparse_names.index(n), off))
        self._seq: list[tuple] = []  # (name, dim, offset, target col, target offset, modes)
        seq_specs = []
        for n in names:
            f = schema.feature(n)
            if isinstance(f, Sequence):
                owner = f.vocab_from or n
                dim = schema.feature(owner).dim
                dim, off = alloc(owner, dim)
                target_col = sparse_names.index(f.vocab_from) if f.vocab_from else None
                # the target shares the sequence's rows: same owner, same offset
                seq_specs.append((n, dim, off, target_col, off))
        self.dims = sorted(rows)
        self._owner_offsets = dict(offset_of)
        self.tables = nn.ParameterList(
            [nn.Parameter(torch.randn(rows[d], d) * self.init_std) for d in self.dims]
        )
        self.group_dims = sorted(groups)
        for d in self.group_dims:
            cols = torch.tensor([c for c, _ in groups[d]], dtype=torch.long)
            offs = torch.tensor([o for _, o in groups[d]], dtype=torch.long)
            self.register_buffer(f"cols_{d}", cols, persistent=False)
            self.register_buffer(f"offsets_{d}", offs, persistent=False)
        self.attn = nn.ModuleDict()
        out = sum(d * len(groups[d]) for d in self.group_dims)
        for n, dim, off, tcol, toff in seq_specs:
            modes = [m for m in self.sequence_pooling if m == "mean" or tcol is not None]
            if "attention" in modes:
                self.attn[n] = TargetAttention(dim)
            self._seq.append((n, dim, off, tcol, toff, tuple(modes)))
            out += dim * len(modes)
        if self.interactions:
            fields: dict[int, int] = {}
            for d in self.group_dims:
                fields[d] = fields.get(d, 0) + len(groups[d])
            for _, dim, _, _, _, modes in self._seq:
                fields[dim] = fields.get(dim, 0) + len(modes)
            self._fields = fields
            out += sum(f * (f - 1) // 2 for f in fields.values())
        self.out_dim = out

    def _table(self, dim: int) -> Tensor:
        return self.tables[self.dims.index(dim)]

    def _lookup(self, ids: Tensor, dim: int) -> Tensor:
        table = getattr(_ROUTES, "table", None)
        if table:
            route = table.get(id(self))
            if route is not None:
                return route(ids, dim)
        if self.sparse_grad and self.training and torch.is_grad_enabled():
            return row_sparse_embedding(self._table(dim), ids)
        return F.embedding(ids, self._table(dim))

    @property
    def dropout_rates(self) -> MappingProxyType:
        """Per-feature rates set by :meth:`before_fit` (read-only; empty: every feature drops
        at ``id_dropout``)."""
        return MappingProxyType(self._rates)

    def _rate(self, name: str) -> float:
        return self._rates.get(name, self.id_dropout)

    def _drop_ids(self, ids: Tensor, rate: float | Tensor) -> Tensor:
        """Known ids (>= 2) replaced by ``OOV_ID`` with probability ``rate`` (a scalar, or a
        ``[C]`` rate per column of a ``[B, C]`` tensor) in training."""
        if not self.training or (isinstance(rate, float) and not rate):
            return ids
        drop = (torch.rand(ids.shape, device=ids.device) < rate) & (ids > OOV_ID)
        return ids.masked_fill(drop, OOV_ID)

    def _column_rates(self) -> float | Tensor:
        """``id_dropout``, or the ``[n_sparse]`` matched rates of the sparse columns."""
        return self.id_dropout if self.sparse_rates is None else self.sparse_rates

    def train_oov_columns(self) -> dict[str, tuple[str, int | None]]:
        """Streaming hook of ``MultiTaskModel.before_fit``: ``{feature: (batch key, column)}``
        of the ids whose training OOV share :meth:`before_fit` needs (column ``None``: a
        history; none without ``match_unseen``), counted over a streaming source."""
        if not self.match_unseen:
            return {}
        sparse = self._sparse_names
        return {
            n: ("sparse", sparse.index(n)) if n in sparse else (f"seq/{n}", None)
            for n in self._names
        }

    def before_fit(
        self, train: Any | None, val: Any | None, train_oov: Mapping[str, float] | None = None
    ) -> None:
        """Trainer protocol (through the model): set the per-feature dropout rates from the
        training frame and the validation frame (see ``match_unseen``). For a streaming source
        ``train`` is ``None`` and ``train_oov`` holds the training rows' OOV share per feature
        (see :meth:`train_oov_columns`; a feature without one counts as 0). Without
        ``match_unseen`` or a validation frame every feature drops at ``id_dropout``."""
        from .unseen_rates import matched_dropout_rates

        self._rates, self.sparse_rates = {}, None
        if not self.match_unseen or val is None:
            return
        columns = {}
        for n, (key, col) in self.train_oov_columns().items():
            tr = (train_oov or {}).get(n) if train is None else _ids(train, key, col)
            columns[n] = (tr, _ids(val, key, col))
        self._rates = matched_dropout_rates(columns, floor=self.id_dropout)
        rates = [self._rate(n) for n in self._sparse_names]
        self.sparse_rates = torch.tensor(rates, device=self.tables[0].device)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        sparse = batch.get("sparse")
        if sparse is not None:
            sparse = self._drop_ids(sparse, self._column_rates())
        seqs = {n: self._drop_ids(batch[f"seq/{n}"], self._rate(n)) for n, *_ in self._seq}
        # all ids that read one table are looked up together: one gather (and, with sparse
        # gradients, one coalesced gradient) per table per batch
        requests: dict[int, list[Tensor]] = {d: [] for d in self.dims}
        for d in self.group_dims:
            cols, offs = getattr(self, f"cols_{d}"), getattr(self, f"offsets_{d}")
            requests[d].append(sparse.index_select(1, cols) + offs)  # [B, n_d]
        for n, dim, off, _tcol, _toff, _modes in self._seq:
            requests[dim].append(seqs[n] + off)  # [B, L]
        for _n, dim, _off, tcol, toff, modes in self._seq:
            if "attention" in modes:
                requests[dim].append(sparse[:, tcol : tcol + 1] + toff)  # [B, 1]
        looked: dict[int, list[Tensor]] = {}
        for d, reqs in requests.items():
            if not reqs:
                continue
            ids = reqs[0] if len(reqs) == 1 else torch.cat(reqs, dim=1)
            emb = self._lookup(ids, d)  # [B, Σ widths, d]
            looked[d] = list(emb.split([r.shape[1] for r in reqs], dim=1))
        fields: dict[int, list[Tensor]] = {d: [] for d in self.dims}  # [B, n, d] per dim
        for d in self.group_dims:
            fields[d].append(looked[d].pop(0))  # [B, n_d, d]
        seq_emb = [looked[dim].pop(0) for _, dim, *_ in self._seq]
        for (n, dim, _off, _tcol, _toff, modes), h in zip(self._seq, seq_emb):
            mask = seqs[n] != 0  # [B, L]
            for m in modes:
                if m == "mean":
                    pooled = masked_mean(h, mask)
                else:
                    t = looked[dim].pop(0).squeeze(1)  # [B, d] target embedding
                    pooled = self.attn[n](h, t, mask)
                fields[dim].append(pooled.unsqueeze(1))
        stacked = [torch.cat(f, dim=1) if len(f) > 1 else f[0] for f in fields.values() if f]
        parts = [s.flatten(1) for s in stacked]
        if self.interactions:
            for s in stacked:
                n = s.shape[1]
                if n > 1:
                    dots = torch.bmm(s, s.transpose(1, 2))  # [B, n, n]
                    iu = torch.triu_indices(n, n, offset=1, device=s.device)
                    parts.append(dots[:, iu[0], iu[1]])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def embedding_of(self, name: str, ids: Tensor) -> Tensor:
        """Embedding rows of feature ``name`` for encoded ``ids`` (any shape) → ``[*ids.shape, d]``.

        Useful as item vectors for diversity re-ranking (``embedding_of("item_id", ids)``).
        """
        if name not in self._owner_offsets:
            raise KeyError(f"IDEmbedding has no table rows for feature {name!r}")
        dim, off = self._owner_offsets[name]
        return F.embedding(ids + off, self._table(dim))

    def grow(
        self,
        old_schema: Any,
        new_schema: Any,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        """Rebuild for ``new_schema``, whose vocabularies extend ``old_schema``'s, keeping rows.

        Each vocabulary's known rows move bit-identically to its new offset in the packed table;
        its new ids' rows (``old_size .. new_size - 1``) are copies of its trained OOV row plus
        ``N(0, noise_std²)`` noise (none by default). The attention weights are kept. The
        caller checks that ``new_schema`` extends ``old_schema``.
        """
        old_offsets = dict(self._owner_offsets)
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        old_tables = {d: state[f"tables.{i}"] for i, d in enumerate(self.dims)}
        device = old_tables[self.dims[0]].device
        with torch.random.fork_rng(devices=[]):  # build's random init must not move the seed
            self.build(new_schema)
        new_rows = {d: t.shape[0] for d, t in zip(self.dims, self.tables)}
        tables = {
            d: old_tables[d].new_zeros((new_rows[d], old_tables[d].shape[1])) for d in self.dims
        }
        for owner, (dim, new_off) in self._owner_offsets.items():
            _, old_off = old_offsets[owner]
            old_size, new_size = old_schema.vocab_size(owner), new_schema.vocab_size(owner)
            old = old_tables[dim]
            tables[dim][new_off : new_off + old_size] = old[old_off : old_off + old_size]
            added = new_size - old_size
            if added:
                rows = old[old_off + OOV_ID].expand(added, -1).clone()
                if noise_std:
                    noise = torch.randn(rows.shape, generator=generator, dtype=rows.dtype)
                    rows = rows + noise.to(rows.device) * noise_std
                tables[dim][new_off + old_size : new_off + new_size] = rows
        for i, d in enumerate(self.dims):
            state[f"tables.{i}"] = tables[d]
        self.to(device)
        self.load_state_dict(state)

    def param_groups(self, sparse: bool) -> list[dict[str, Any]]:
        self.sparse_grad = bool(sparse)
        return [
            {
                "params": list(self.tables),
                "sparse": bool(sparse),
                "weight_decay": 0.0,
                "lr_scale": self.lr_scale,
            }
        ]

    def to_config(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "sequence_pooling": list(self.sequence_pooling),
            "init_std": self.init_std,
            "interactions": self.interactions,
            "lr_scale": self.lr_scale,
            "id_dropout": self.id_dropout,
            "match_unseen": self.match_unseen,
        }
